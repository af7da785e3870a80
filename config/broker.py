"""Celery's Redis transport, with one Redis client per channel for its synchronous commands.

kombu's Redis channel builds a new `redis.Redis` client for every synchronous command it sends
(`conn_or_acquire`: each publish's LPUSH, and in the worker each message's unacked bookkeeping on
receipt and on ack). The client shares the channel's connection pool, so the cost is the object: its
constructor copies redis-py's table of about eighty response callbacks into a case-insensitive dict,
one `str.upper` per entry. That was 24 % of the CPU of a `send_task` (cProfile: 0.40 of 1.68 s over
2,000 sends), which the web processes pay on every tracker event (the provider drain kicked after
commit) and the Celery workers on every message.

A `redis.Redis` client is safe to share between threads (each command takes a connection from the
pool and gives it back), and this one is built on the same pool, so the channel keeps the first it
builds. Nothing else changes: same pool, same connections, same commands.

Used when the broker URL is `redis://` (settings: CELERY_BROKER_TRANSPORT); other schemes keep
kombu's own transport.
"""
from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    _sync_client = None

    def _create_client(self, asynchronous=False):
        if asynchronous:
            return super()._create_client(asynchronous=True)
        client = self._sync_client
        if client is None or client.connection_pool is not self.pool:
            client = self._sync_client = super()._create_client()
        return client


class Transport(kombu_redis.Transport):
    Channel = Channel
