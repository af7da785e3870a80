"""The Celery application. Routing of tasks to queues lives in config.routing."""
import os
import threading

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")


class HeraldCelery(Celery):
    """Celery keeps its result backend per thread and builds it by scanning the installed
    packages' entry points. Django under Daphne runs each request on a fresh thread, so every
    `apply_async` from a view (the kick after a tracker event) paid that scan: about half the CPU
    of a start/stop request. Results are disabled here (CELERY_RESULT_BACKEND = None), and the
    disabled backend holds no state, so one instance serves every thread."""

    _shared_backend = None
    _shared_backend_lock = threading.Lock()

    def _get_backend(self):
        if self.conf.result_backend not in (None, "", "disabled"):
            return super()._get_backend()
        with self._shared_backend_lock:
            if self._shared_backend is None:
                type(self)._shared_backend = super()._get_backend()
            return self._shared_backend


app = HeraldCelery("herald")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
