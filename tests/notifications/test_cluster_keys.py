"""Redis Cluster: every key of one limiter or breaker script call hashes to one slot (a shared
`{provider}` hash tag), checked on the keys each call passes and against a real Redis server
running in cluster mode, which refuses a multi-slot script with CROSSSLOT."""
import shutil
import socket
import subprocess
import time

import pytest
import redis

from notifications.breaker import CircuitBreaker
from notifications.ratelimit import Check, RateLimiter, Scope, scopes_named
from tests.support.stack import free_port


def crc16(data: bytes) -> int:
    """CRC16-CCITT (XMODEM), the checksum Redis Cluster hashes keys with."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def key_slot(key: str) -> int:
    """Redis Cluster's slot: CRC16 of the hash tag (the text between the first `{` and the next
    `}`, when not empty), else of the whole key, mod 16384."""
    start = key.find("{")
    if start != -1:
        end = key.find("}", start + 1)
        if end > start + 1:
            key = key[start + 1:end]
    return crc16(key.encode()) % 16384


def test_slot_function_matches_the_cluster_spec():
    assert crc16(b"123456789") == 0x31C3  # the reference value in the Redis Cluster spec
    assert key_slot("{user1000}.following") == key_slot("{user1000}.followers") == key_slot("user1000")
    assert key_slot("foo{}{bar}") == crc16(b"foo{}{bar}") % 16384


class RecordingRedis(redis.Redis):
    """A real client that also keeps the keys of every script call it sends (EVAL or EVALSHA)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.eval_keys: list[list[str]] = []

    def eval(self, script, numkeys, *keys_and_args):
        self.eval_keys.append([str(k) for k in keys_and_args[:numkeys]])
        return super().eval(script, numkeys, *keys_and_args)

    def evalsha(self, sha, numkeys, *keys_and_args):
        result = super().evalsha(sha, numkeys, *keys_and_args)  # a first call the server lacks the script for
        self.eval_keys.append([str(k) for k in keys_and_args[:numkeys]])  # is retried: count the one that ran
        return result


def _exercise(client: redis.Redis) -> None:
    """Every script call the providers make, with the scope declarations of settings."""
    limiter = RateLimiter(client)
    slack = [Scope("slack.global"), Scope("slack.channel", "C1")]
    email = [Scope("email.api")]
    stats = [Scope("stats.caller", "user:1"), Scope("stats.org", "1")]
    for scopes in (slack, email, stats):
        limiter.acquire(scopes)
        limiter.acquire_fair(scopes, member="stream-1", since=time.time())
        limiter.pause(scopes_named(scopes, "all"), 0.01)
        limiter.pause(scopes[0], 0.01)
    for name in ("slack", "smtp-primary", "smtp-secondary"):
        breaker = CircuitBreaker(name, client)
        breaker.allow()
        breaker.record(ok=False)
    # The Slack gate: the breaker's allow inside the fair limiter's script, one call.
    breaker = CircuitBreaker("slack", client)
    limiter.acquire_fair(slack, member="stream-2", since=time.time(),
                         checks=[Check(breaker.ALLOW_SOURCE, breaker.keys, breaker.allow_args())])


def test_every_key_of_one_script_call_shares_one_slot(settings):
    client = RecordingRedis.from_url(settings.REDIS_URL)
    _exercise(client)

    assert len(client.eval_keys) == 19
    for keys in client.eval_keys:
        assert len(keys) >= 2, keys
        assert len({key_slot(k) for k in keys}) == 1, keys
        assert all("{" in k for k in keys), keys  # by tag, not by the luck of a whole-key collision
    slack_call = client.eval_keys[0]
    assert slack_call == ["herald:rl:{slack}:slack.global:", "herald:rl:{slack}:slack.channel:C1",
                          "herald:rl:{slack}:epoch"]


def test_scopes_of_different_providers_cannot_be_checked_together():
    with pytest.raises(ValueError, match="one provider tag"):
        RateLimiter().acquire([Scope("slack.global"), Scope("email.api")])


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000, fixed before Redis 7) is free too."""
    for _ in range(50):
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    pytest.skip("no free port pair for a cluster node")


@pytest.fixture
def cluster_node(tmp_path):
    """A Redis server of our own in cluster mode, owning all 16384 slots (one node is a cluster):
    it enforces the one-slot rule on every script call, as a real cluster does."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed")
    port = _cluster_port()
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1",
         "--cluster-enabled", "yes",
         "--cluster-config-file", str(tmp_path / "nodes.conf"), "--dir", str(tmp_path),
         "--save", "", "--appendonly", "no"],
        stdout=(tmp_path / "redis.log").open("wb"), stderr=subprocess.STDOUT)
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail(f"cluster node did not start: {(tmp_path / 'redis.log').read_text()[-2000:]}")
                time.sleep(0.05)
        client.execute_command("CLUSTER", "ADDSLOTS", *range(16384))  # ADDSLOTSRANGE is Redis 7 only
        while client.execute_command("CLUSTER", "INFO").decode().find("cluster_state:ok") == -1:
            if time.monotonic() > deadline:
                pytest.fail("the cluster node never reached cluster_state:ok")
            time.sleep(0.05)
        yield client
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=10)


def test_limiter_and_breakers_run_on_a_cluster_node(cluster_node):
    # The node refuses keys of two slots in one script: what the old untagged keys did.
    with pytest.raises(redis.ResponseError, match="CROSSSLOT"):
        cluster_node.eval("return 1", 2, "herald:rl:slack.global:", "herald:rl:slack.channel:C1")
    assert cluster_node.execute_command("CLUSTER", "KEYSLOT", "herald:rl:{slack}:x") == key_slot("herald:rl:{slack}:x")

    RateLimiter(cluster_node).start_fresh()
    _exercise(cluster_node)  # every call of every provider, none refused
    time.sleep(0.05)  # the 10 ms pauses _exercise set are over

    assert RateLimiter(cluster_node).acquire([Scope("slack.global"), Scope("slack.channel", "C2")]).allowed
    assert CircuitBreaker("slack", cluster_node).state()["state"] == "closed"
