"""The Celery messages of the kicks (notifications.delivery.kicks), as the broker gets them."""
from notifications.delivery import kicks


def test_enqueued_drains_carry_their_arguments_for_monitoring(monkeypatch):
    """The reprs are given rather than made by Celery's saferepr (its CPU, per event, in the web):
    what `celery inspect` and the worker's log show of a drain is still its arguments."""
    sent = []
    monkeypatch.setattr("kombu.messaging.Producer.publish",
                        lambda self, body, **kw: sent.append((kw["headers"]["task"], kw["headers"]["argsrepr"],
                                                              kw["headers"]["kwargsrepr"], body[1])))
    kicks.drain_enqueue(org_id=7, channel="slack", destination="C1", retry=True)
    kicks.partition_enqueue(partition=3)
    drain_kwargs = {"org_id": 7, "channel": "slack", "destination": "C1", "retry": True}
    assert sent == [(kicks.DRAIN_TASK, "()", repr(drain_kwargs), drain_kwargs),
                    (kicks.PARTITION_TASK, "()", repr({"partition": 3}), {"partition": 3})]
