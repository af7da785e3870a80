"""Development settings: `make run`."""
from config.settings.base import *  # noqa: F401,F403
from config.settings.base import env, env_bool, env_list

DEBUG = env_bool("DEBUG", True)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]")
_PORT = env("HERALD_PORT", "8000")
HERALD_BASE_URL = env("HERALD_BASE_URL", f"http://127.0.0.1:{_PORT}").rstrip("/")
# The live page as `make run` serves it, by either loopback name; never "*".
HERALD_WS_ALLOWED_ORIGINS = env_list("WS_ALLOWED_ORIGINS", f"http://127.0.0.1:{_PORT},http://localhost:{_PORT}")
