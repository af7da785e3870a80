"""Task routing: org-scoped tasks go to the org's partition queue (sends to external providers to
the provider queue, see settings.DELIVERY_PROVIDER_QUEUE), everything else by name."""
import zlib

from django.conf import settings

MAINTENANCE_PREFIXES = ("notifications.tasks.sweep", "reports.tasks.purge", "reports.tasks.refresh",
                        "reports.tasks.sweep")
REPORT_TASKS = ("reports.tasks.run_report",)


def org_partition(org_id: int) -> int:
    """Stable across processes and hosts (unlike hash()): crc32 of the decimal id."""
    return zlib.crc32(str(org_id).encode()) % settings.ORG_QUEUE_PARTITIONS


def org_queue(org_id: int) -> str:
    return f"org-{org_partition(org_id)}"


PROVIDER_CHANNELS = ("slack", "email")


def route_task(name, args, kwargs, options, task=None, **kw):
    if kwargs and "org_id" in kwargs:
        if kwargs.get("channel") in PROVIDER_CHANNELS and settings.DELIVERY_PROVIDER_QUEUE:
            return {"queue": settings.DELIVERY_PROVIDER_QUEUE}
        return {"queue": org_queue(int(kwargs["org_id"]))}
    if name in REPORT_TASKS:
        return {"queue": settings.REPORTS_QUEUE}
    if name.startswith(MAINTENANCE_PREFIXES):
        return {"queue": "maintenance"}
    return {"queue": settings.CELERY_TASK_DEFAULT_QUEUE}
