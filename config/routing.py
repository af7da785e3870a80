"""Task routing: a partition's drain (drain_partition) goes to its queue org-<k>; a stream's drain
to the organization's partition queue, or, for channels that send to an outside provider, to the
provider queue (settings.DELIVERY_PROVIDER_QUEUE); the channel registry says which. Everything
else by name."""
import zlib

from django.conf import settings

from notifications.channels import registry

MAINTENANCE_PREFIXES = ("notifications.tasks.sweep", "notifications.tasks.archive", "reports.tasks.purge",
                        "reports.tasks.refresh",
                        "reports.tasks.sweep")
REPORT_TASKS = ("reports.tasks.run_report",)
PARTITION_TASK = "notifications.tasks.drain_partition"


def org_partition(org_id: int) -> int:
    """Stable across processes and hosts (unlike hash()): crc32 of the decimal id."""
    return zlib.crc32(str(org_id).encode()) % settings.ORG_QUEUE_PARTITIONS


def partition_queue(partition: int) -> str:
    return f"org-{partition}"


def org_queue(org_id: int) -> str:
    return partition_queue(org_partition(org_id))


def _provider_channel(name: str | None) -> bool:
    try:
        return bool(name) and registry.get(name).provider_queue
    except registry.UnknownChannel:
        return False


def route_task(name, args, kwargs, options, task=None, **kw):
    if name == PARTITION_TASK:
        return {"queue": partition_queue(int(kwargs["partition"]))}
    if kwargs and "org_id" in kwargs:
        if settings.DELIVERY_PROVIDER_QUEUE and _provider_channel(kwargs.get("channel")):
            return {"queue": settings.DELIVERY_PROVIDER_QUEUE}
        return {"queue": org_queue(int(kwargs["org_id"]))}
    if name in REPORT_TASKS:
        return {"queue": settings.REPORTS_QUEUE}
    if name.startswith(MAINTENANCE_PREFIXES):
        return {"queue": "maintenance"}
    return {"queue": settings.CELERY_TASK_DEFAULT_QUEUE}
