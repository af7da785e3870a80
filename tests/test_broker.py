"""config.broker: Celery's Redis transport keeping one client per channel for its synchronous
commands (kombu's built a redis.Redis per command: a quarter of a send_task's CPU)."""
import redis
from celery import current_app
from django.conf import settings

from config import broker


def test_the_redis_broker_uses_herald_transport():
    assert settings.CELERY_BROKER_URL.startswith("redis://")
    with current_app.connection_for_write() as connection:
        assert isinstance(connection.default_channel, broker.Channel)


def test_one_client_per_channel_on_its_pool_and_a_new_one_with_a_new_pool():
    with current_app.connection_for_write() as connection:
        channel = connection.default_channel
        first = channel._create_client()
        assert channel._create_client() is first and first.connection_pool is channel.pool
        assert channel._create_client(asynchronous=True) is not first  # the async pool stays kombu's
        channel._pool = None  # e.g. the channel's pool rebuilt
        again = channel._create_client()
        assert again is not first and again.connection_pool is channel.pool


def test_messages_published_and_read_back_through_the_transport():
    queue = "herald-test-broker"
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    client.delete(queue)
    with current_app.connection_for_write() as connection:
        with connection.SimpleQueue(queue) as simple:
            for n in range(3):
                simple.put({"n": n})
            received = []
            for _ in range(3):
                message = simple.get(timeout=5)
                received.append(message.payload["n"])
                message.ack()
    assert received == [0, 1, 2]
    assert client.llen(queue) == 0
