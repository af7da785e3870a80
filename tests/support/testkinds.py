"""A notification kind for channel tests ("test.notice": reaches every channel, its title and body
from the payload), registered in the test process with `register()` and in Celery workers a stack
test starts with `worker_argv()` (the boot code registers it before Celery starts)."""
import sys
from contextlib import contextmanager

from notifications.kinds import KINDS, Kind

NAME = "test.notice"
CHANNELS = ("inapp", "email", "sms", "push", "whatsapp", "apprise", "webhook", "slack")

KIND = Kind(name=NAME, category="tracker_event", title=lambda e: str(e.payload.get("title", "Notice")),
            body=lambda e: str(e.payload.get("body", "")), channels=CHANNELS)

_BOOT = ("import sys; from tests.support import testkinds; testkinds.register(); "
         "sys.argv[0] = 'celery'; from celery.__main__ import main; sys.exit(main())")


def register() -> None:
    KINDS[NAME] = KIND


@contextmanager
def registered():
    """The kind registered for the block (a test's fixture), gone afterwards."""
    register()
    try:
        yield KIND
    finally:
        KINDS.pop(NAME, None)


def worker_argv(name: str, queues: list[str], *, concurrency: int = 1) -> list[str]:
    """argv of a Celery worker (as Stack.start_worker builds it) whose process knows this kind."""
    return [sys.executable, "-c", _BOOT, "-A", "config", "worker", "-Q", ",".join(queues), "-c", str(concurrency),
            "-n", f"{name}@%h", "--without-gossip", "--without-mingle", "--without-heartbeat", "-P", "prefork",
            "-l", "INFO", "--prefetch-multiplier", "1"]
