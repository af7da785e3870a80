"""Settings of `make run`: the whole product on one machine, served as production serves it.

DEBUG is off unless asked for (`DEBUG=true make run`): with it on, Django wraps every query in its
debug cursor and keeps the last 9,000 statements per connection, and an error page shows settings
and tracebacks to whoever opened it. What differs from production here is only what a laptop
needs: plain HTTP, loopback hosts, and a development encryption key generated per checkout.
"""
from config.settings.base import *  # noqa: F401,F403
from config.settings.base import BASE_DIR, env, env_bool, env_list

DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]")
_PORT = env("HERALD_PORT", "8000")
HERALD_BASE_URL = env("HERALD_BASE_URL", f"http://127.0.0.1:{_PORT}").rstrip("/")
# The live page as `make run` serves it, by either loopback name; never "*".
HERALD_WS_ALLOWED_ORIGINS = env_list("WS_ALLOWED_ORIGINS", f"http://127.0.0.1:{_PORT},http://localhost:{_PORT}")
# Without HERALD_ENCRYPTION_KEYS, this checkout's own key under .run/ (organizations.secrets).
HERALD_DEV_ENCRYPTION_KEY_FILE = env("HERALD_DEV_ENCRYPTION_KEY_FILE", str(BASE_DIR / ".run" / "dev-encryption-key"))
