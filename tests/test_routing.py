"""Task routing: the in-app fan-out stays on the org's partition queue; sends to external providers
go to the provider queue unless DELIVERY_PROVIDER_QUEUE is empty."""
from config.routing import org_queue, route_task

DELIVER = "notifications.tasks.deliver_stream"


def test_inapp_goes_to_the_orgs_partition_queue():
    assert route_task(DELIVER, (), {"org_id": 42, "channel": "inapp"}, {}) == {"queue": org_queue(42)}
    assert org_queue(42).startswith("org-")


def test_provider_sends_go_to_the_provider_queue(settings):
    settings.DELIVERY_PROVIDER_QUEUE = "providers"
    assert route_task(DELIVER, (), {"org_id": 42, "channel": "slack"}, {}) == {"queue": "providers"}
    assert route_task(DELIVER, (), {"org_id": 42, "channel": "email", "destination": "7"}, {}) == {"queue": "providers"}


def test_provider_sends_stay_on_the_partition_queue_when_the_setting_is_empty(settings):
    settings.DELIVERY_PROVIDER_QUEUE = ""
    assert route_task(DELIVER, (), {"org_id": 42, "channel": "slack"}, {}) == {"queue": org_queue(42)}


def test_the_partition_is_stable_and_within_range(settings):
    settings.ORG_QUEUE_PARTITIONS = 8
    assert org_queue(1) == org_queue(1)
    assert {int(org_queue(i).split("-")[1]) for i in range(1000)} == set(range(8))


def test_maintenance_and_other_tasks(settings):
    assert route_task("notifications.tasks.sweep_streams", (), {}, {}) == {"queue": "maintenance"}
    assert route_task("notifications.tasks.send_late_delivery", (), {"delivery_id": 1}, {}) == {
        "queue": settings.CELERY_TASK_DEFAULT_QUEUE}
