"""The Celery messages of the kicks (notifications.delivery.kicks), as the Redis broker holds them."""
import json

import redis
from django.conf import settings
from kombu.messaging import Producer

from config.routing import partition_queue, route_task
from notifications.delivery import kicks

ORG, PARTITION = 987_654, 3


def _taken(client: redis.Redis, queue: str, task: str) -> list[dict]:
    """The messages of `task` on `queue` (Celery's Redis transport: a list named after the queue),
    removed from it."""
    found = []
    for raw in client.lrange(queue, 0, -1):
        message = json.loads(raw)
        if message["headers"]["task"] == task:
            client.lrem(queue, 1, raw)
            found.append(message["headers"])
    return found


def test_enqueued_drains_carry_their_arguments_for_monitoring():
    """The reprs are given rather than made by Celery's saferepr (its CPU, per event, in the web):
    what `celery inspect` and the worker's log show of a drain is still its arguments."""
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    drain_kwargs = {"org_id": ORG, "channel": "slack", "destination": "C1", "retry": True}
    drain_queue = route_task(kicks.DRAIN_TASK, (), drain_kwargs, {})["queue"]
    kicks.drain_enqueue(org_id=ORG, channel="slack", destination="C1", retry=True)
    kicks.partition_enqueue(partition=PARTITION)
    drains = [h for h in _taken(client, drain_queue, kicks.DRAIN_TASK) if str(ORG) in h["kwargsrepr"]]
    partitions = _taken(client, partition_queue(PARTITION), kicks.PARTITION_TASK)
    assert [(h["argsrepr"], h["kwargsrepr"]) for h in drains] == [("()", repr(drain_kwargs))]
    assert [(h["argsrepr"], h["kwargsrepr"]) for h in partitions] == [("()", repr({"partition": PARTITION}))]


def test_drains_reach_their_queues_without_a_declaration_per_message(monkeypatch):
    """No queue is declared per message (kombu's maybe_declare cost the web 4.6 % of its CPU): the
    anonymous exchange routes by queue name, so a message reaches its list with no binding in Redis."""
    declared = []
    real = Producer.maybe_declare

    def counted(self, entity, *args, **kwargs):
        declared.append(entity)
        return real(self, entity, *args, **kwargs)

    monkeypatch.setattr(Producer, "maybe_declare", counted)
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    drain_queue = route_task(kicks.DRAIN_TASK, (), {"org_id": ORG, "channel": "slack"}, {})["queue"]
    client.delete(*[f"_kombu.binding.{q}" for q in (drain_queue, partition_queue(PARTITION))])
    kicks.drain_enqueue(org_id=ORG, channel="slack", destination="C2")
    kicks.partition_enqueue(partition=PARTITION)
    drains = [h for h in _taken(client, drain_queue, kicks.DRAIN_TASK) if "'C2'" in h["kwargsrepr"]]
    assert len(drains) == 1
    assert len(_taken(client, partition_queue(PARTITION), kicks.PARTITION_TASK)) == 1
    assert declared == []
