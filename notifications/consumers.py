"""The one WebSocket endpoint, /ws/: authenticate, join the member's groups, forward messages, and
keep every connection's view of each organization's log gapless (DESIGN.md, rule 6).

Groups: `org.<id>` for every organization the user belongs to, `user.<id>` for their own stream.
The consumer never writes; it forwards what services publish and reads the log to fill gaps.

Per connection and organization the consumer remembers the last seq it forwarded. An org message
with seq <= last is a duplicate (dropped); last + 1 is forwarded; a larger seq means messages were
lost or overtaken (the pub/sub layer drops what a process was not subscribed for and past a
connection's queue capacity, the queue layer past capacity and after its expiry, and the fan-out
publishes after commit, so two drains' messages may cross): the missing entries are read from
Postgres and forwarded in order first. When the layer knows it dropped something for this
connection it says so ({"type": "live.gap"}), and the connection reads the log at once. A lost
tail that no later message reveals is found by a periodic check, which also re-reads memberships
(a removed member's connection leaves the org at once, even if the membership push was lost) and,
on the queue layer, re-joins the groups before channels-redis' group
expiry (a tab open for days keeps receiving). A gap over LIVE_GAP_MAX entries is not replayed: the
client gets {"type": "resync", "org_id"} and refetches from the API. A client says where it is
with `?after=<org>:<seq>,...` or a {"type": "resume", "after": {"<org>": seq}} frame and is brought
up to date before any live message, which closes the window between page load and connect.
"""
import asyncio
import json
import logging
import time
from collections import OrderedDict
from datetime import datetime
from urllib.parse import parse_qs

from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from django.contrib.auth import HASH_SESSION_KEY
from django.utils.crypto import constant_time_compare

from config.admission import LiveLag
from config.api import error_payload
from config.parsers import JsonTooDeep, json_loads_bounded
from notifications.events import notification_created_message
from notifications.realtime import org_group, user_group
from notifications.selectors import LiveBacklog, live_backlog, live_watermarks, live_watermarks_many
from organizations.models import Membership, User, UserToken

logger = logging.getLogger("herald.realtime")

UNAUTHORIZED = 4401
NOTIFIED_MEMORY = 2048  # notification ids remembered per connection to send each created once
# The encoded frames of an org message, cached in the message by the first of this process'
# connections that forwards it (the pub/sub layer hands one dict to them all): each frame is
# encoded once per process, not once per socket.
_TEXT_CACHE = "__live_text__"
# Routing data of a group message (who is notified, with which inbox row and title), never forwarded.
_INTERNAL_KEYS = ("notifications", "audience", "title", "body", _TEXT_CACHE)
_ID_PLACEHOLDER = '"id": 0'  # where a member's own notification id goes in a notification.created
REVERIFY_SECONDS = 1.0  # a private entry re-reads memberships at most this often (see _org_message)


def _epoch(occurred_at) -> float:
    """An org message's occurred_at (ISO 8601) as epoch seconds; 0.0 if it has none."""
    try:
        return datetime.fromisoformat(occurred_at).timestamp() if occurred_at else 0.0
    except (TypeError, ValueError):
        return 0.0


@database_sync_to_async
def _org_ids(user_id: int) -> set[int]:
    return set(Membership.objects.filter(user_id=user_id).values_list("organization_id", flat=True))


@database_sync_to_async
def _access_ended(user_id: int, token_id: int | None, session) -> bool:
    """Whether this connection's credential no longer holds (read only): the user deactivated, its
    token revoked, or, for a session cookie, the password changed since the session was made. What
    `access.revoked` says, for when that message may have been lost."""
    user = User.objects.filter(pk=user_id, is_active=True).first()
    if user is None:
        return True
    if token_id is not None:
        return not UserToken.objects.filter(pk=token_id, user_id=user_id, revoked_at__isnull=True).exists()
    session_hash = session.get(HASH_SESSION_KEY) if session is not None else None
    return session_hash is not None and not constant_time_compare(session_hash, user.get_session_auth_hash())


@database_sync_to_async
def _watermarks(user_id: int) -> dict[int, int]:
    return live_watermarks(user_id=user_id)


@database_sync_to_async
def _watermarks_many(user_ids: list[int]) -> dict[int, dict[int, int]]:
    return live_watermarks_many(user_ids=user_ids)


class LiveWatch:
    """The periodic check of every connection of one event loop (one web process), batched: one
    query every LIVE_CHECK_SECONDS reads the watermarks of all connected users, then each
    connection runs its check with its user's marks. A query per connection per interval cost
    100 queries/s (and as many thread hops) at 500 open sockets, more than the events themselves."""

    _by_loop: dict = {}

    def __init__(self):
        self.consumers: dict[LiveConsumer, None] = {}
        self.task: asyncio.Task | None = None

    @classmethod
    def of_running_loop(cls) -> "LiveWatch":
        loop = asyncio.get_running_loop()
        watch = cls._by_loop.get(loop)
        if watch is None:
            for old in [lp for lp in cls._by_loop if lp.is_closed()]:
                del cls._by_loop[old]  # a finished loop (tests run one per test)
            watch = cls._by_loop[loop] = cls()
        return watch

    def add(self, consumer: "LiveConsumer") -> None:
        self.consumers[consumer] = None
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run())

    def discard(self, consumer: "LiveConsumer") -> None:
        self.consumers.pop(consumer, None)

    async def _run(self) -> None:
        while self.consumers:
            await asyncio.sleep(settings.LIVE_CHECK_SECONDS)
            consumers = list(self.consumers)
            if not consumers:
                break
            try:
                marks = await _watermarks_many(sorted({c.user_id for c in consumers}))
            except asyncio.CancelledError:
                raise
            except Exception:  # Postgres away for a moment: try again next time
                logger.warning("live check failed", extra={"connections": len(consumers)}, exc_info=True)
                continue
            for consumer in consumers:
                if consumer not in self.consumers:
                    continue  # closed meanwhile
                try:
                    await consumer._check(marks.get(consumer.user_id, {}))
                except asyncio.CancelledError:
                    raise
                except Exception:  # Redis away for a moment, or this socket broke: next time
                    logger.warning("live check failed", extra={"user_id": consumer.user_id}, exc_info=True)


@database_sync_to_async
def _backlog(user_id: int, org_id: int, after_seq: int, upto_seq: int, limit: int) -> LiveBacklog:
    return live_backlog(user_id=user_id, organization_id=org_id, after_seq=after_seq, upto_seq=upto_seq,
                        limit=limit)


def parse_after(raw) -> dict[int, int]:
    """`after` as the query string spells it ("12:40,13:7") or as a resume frame does
    ({"12": 40}); malformed parts are ignored (the client then gets live messages only)."""
    pairs: dict[int, int] = {}
    items = raw.items() if isinstance(raw, dict) else (p.split(":", 1) for p in str(raw or "").split(",") if ":" in p)
    for org, seq in items:
        try:
            org_id, after = int(org), int(seq)
        except (TypeError, ValueError):
            continue
        if after >= 0:
            pairs[org_id] = after
    return pairs


class LiveConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=UNAUTHORIZED)
            return
        self.user_id = user.pk
        self.token_id = self.scope.get("auth_token_id")  # None: authenticated by the session cookie
        query = parse_qs(self.scope.get("query_string", b"").decode())
        self.client_id = (query.get("client_id") or [None])[0]
        resume = parse_after((query.get("after") or [""])[0])
        self.lock = asyncio.Lock()
        self.org_ids: set[int] = set()
        self.last_seq: dict[int, int] = {}
        self.seen_marks: dict[int, int] = {}
        self.notified: OrderedDict[int, None] = OrderedDict()
        self.verified_at = 0.0
        # The user group first: a membership change committed after this point is pushed to this
        # connection, so the read below cannot miss one.
        await self.channel_layer.group_add(user_group(self.user_id), self.channel_name)
        for org_id in sorted(await _org_ids(self.user_id)):
            await self.channel_layer.group_add(org_group(org_id), self.channel_name)
            self.org_ids.add(org_id)
        self.groups_added_at = time.monotonic()
        await self.accept()
        async with self.lock:
            # Read after joining: every seq above these marks is published after the join, so it
            # reaches this connection through its group (or a later check finds it).
            marks = await _watermarks(self.user_id)
            await self._apply_memberships(marks)
            for org_id in self.org_ids:
                self.last_seq[org_id] = marks[org_id]
            self.seen_marks = dict(marks)
            await self.send_json({"type": "hello", "user_id": self.user_id, "org_ids": sorted(self.org_ids)})
            await self._resume(resume, marks)
        self.watch = LiveWatch.of_running_loop()
        self.watch.add(self)

    async def access_revoked(self, message):
        """The user was deactivated, changed password, or revoked the token this socket was opened
        with (organizations.services, after commit): close at once."""
        token_ids = message.get("token_ids")
        if token_ids is None or (self.token_id is not None and self.token_id in token_ids):
            await self.close(code=UNAUTHORIZED)

    async def disconnect(self, code):
        watch = getattr(self, "watch", None)
        if watch is not None:
            watch.discard(self)
        if not hasattr(self, "user_id"):
            return
        for group in [user_group(self.user_id)] + [org_group(o) for o in sorted(self.org_ids)]:
            await self.channel_layer.group_discard(group, self.channel_name)

    async def receive(self, text_data=None, bytes_data=None, **kwargs):
        """A frame that is not one JSON object (binary, too large, malformed, nested too deep) is
        answered with an error message; the socket stays open (no 1011 from a decoding crash)."""
        problem = None
        if text_data is None:
            problem = ("Binary frames are not accepted; send JSON text.", "binary_frame")
        elif len(text_data) > settings.HERALD_MAX_WS_FRAME_BYTES:
            problem = (f"Frame larger than {settings.HERALD_MAX_WS_FRAME_BYTES} bytes.", "frame_too_large")
        else:
            try:
                content = json_loads_bounded(text_data)
            except JsonTooDeep as exc:
                problem = (str(exc), "json_too_deep")
            except ValueError:
                problem = ("Frames must be JSON.", "malformed_frame")
            else:
                if not isinstance(content, dict):
                    problem = ("Frames must be JSON objects.", "malformed_frame")
        if problem is not None:
            await self.send_json({"type": "error", **error_payload(*problem)})
            return
        await self.receive_json(content, **kwargs)

    async def receive_json(self, content, **kwargs):
        if not isinstance(content, dict):
            return
        if content.get("type") == "ping":
            await self.send_json({"type": "pong"})
        elif content.get("type") == "resume":
            marks = await _watermarks(self.user_id)
            async with self.lock:
                await self._apply_memberships(marks)
                await self._resume(parse_after(content.get("after")), marks)

    async def dispatch(self, message):
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            # An ephemeral push (push_user / push_org: report.progress ...) carries no seq and has
            # no handler of its own: forward it as it is rather than failing the connection.
            if "seq" not in message and not str(message.get("type", "")).startswith("websocket."):
                await self.send_json(message)
                return
            raise ValueError(f"No handler for message type {message['type']}")
        # Not Channels' dispatch: it runs close_old_connections() on a worker thread before every
        # message (a thread round trip per socket per event). This consumer reaches the database
        # only through database_sync_to_async, which closes stale connections in its own thread.
        await handler(message)

    # --- org messages: forwarded in seq order, gaps filled from the log ------------------------

    async def tracker_event(self, message):
        await self._org_message(message)

    async def log_entry(self, message):
        await self._org_message(message)

    async def _org_message(self, message: dict) -> None:
        org_id, seq = message.get("org_id"), message.get("seq")
        async with self.lock:
            if org_id not in self.org_ids or not isinstance(seq, int):
                return  # left the organization (the group discard may trail the removal)
            last = self.last_seq[org_id]
            if seq <= last:
                return  # a duplicate, or filled from the log already
            if seq > last + 1:
                await self._fill(org_id, upto=seq - 1)
                if org_id not in self.org_ids or self.last_seq[org_id] >= seq:
                    return
            private, texts = self._texts_for(message)
            if private and time.monotonic() - self.verified_at >= REVERIFY_SECONDS:
                # Outside the audience: perhaps no longer a member (entries written after a removal
                # leave them out), and the membership push may have been lost. Check before sending.
                if await self._apply_memberships(await _watermarks(self.user_id)):
                    await self.send_json({"type": "memberships", "org_ids": sorted(self.org_ids)})
                if org_id not in self.org_ids:
                    return
            await self._send_texts(texts)
            self.last_seq[org_id] = seq
            happened = message[_TEXT_CACHE].get("at")
            if happened is None:
                happened = message[_TEXT_CACHE]["at"] = _epoch(message.get("occurred_at"))
            if happened:  # how late this process forwards: the admission control's own lag signal
                LiveLag.observe(time.time() - happened)

    def _texts_for(self, message: dict) -> tuple[bool, list[tuple[int | None, str]]]:
        """The frames one group message becomes for this user, encoded: the org message (redacted
        when the user is outside the entry's audience) and their own notification.created, if
        any, each with its notification id (None for the org message). True first if redacted."""
        cache = message.get(_TEXT_CACHE)
        if cache is None:
            cache = message[_TEXT_CACHE] = {}
        audience = message.get("audience")
        if audience is not None and self.user_id not in audience:
            text = cache.get("private")
            if text is None:
                text = cache["private"] = json.dumps({
                    "type": "log.entry", "org_id": message["org_id"], "seq": message["seq"],
                    "kind": message.get("kind", message["type"]), "private": True})
            return True, [(None, text)]
        text = cache.get("public")
        if text is None:
            text = cache["public"] = json.dumps({k: v for k, v in message.items() if k not in _INTERNAL_KEYS})
        texts = [(None, text)]
        own = (message.get("notifications") or {}).get(str(self.user_id))
        if own is not None:
            template = cache.get("created")
            if template is None:
                title = message.get("title")
                if title is None and message["type"] == "tracker.event":
                    verb = "started" if message["action"] == "start" else "stopped"
                    title = f"{message['actor'] or 'Someone'} {verb} {message['tracker_name']}"
                created = notification_created_message(
                    notification_id=0, org_id=message["org_id"], seq=message["seq"],
                    kind=message.get("kind", message["type"]), title=title or "", body=message.get("body", ""),
                    created_at=message["occurred_at"])
                # "type" comes first and is a constant, so the first `"id": 0` is the id's own place.
                template = cache["created"] = tuple(json.dumps(created).split(_ID_PLACEHOLDER, 1))
            texts.append((int(own), f'{template[0]}"id": {int(own)}{template[1]}'))
        return False, texts

    async def _send_texts(self, texts: list[tuple[int | None, str]]) -> None:
        for notification_id, text in texts:
            if notification_id is not None and not self._first_notification(notification_id):
                continue
            await self.send(text_data=text)

    def _first_notification(self, notification_id: int) -> bool:
        """False if this notification.created was sent already (from the log, or by the fan-out's
        own push); otherwise remember it."""
        if notification_id in self.notified:
            return False
        self.notified[notification_id] = None
        if len(self.notified) > NOTIFIED_MEMORY:
            self.notified.popitem(last=False)
        return True

    async def _send_frames(self, frames: list[dict]) -> None:
        for frame in frames:
            if frame["type"] == "notification.created" and not self._first_notification(frame["id"]):
                continue
            await self.send_json(frame)

    async def _fill(self, org_id: int, *, upto: int, verified: bool = False) -> None:
        """Forward the entries after last_seq[org_id] up to `upto` from Postgres, in order; or, for
        a gap too large to replay, tell the client to resync. Holds self.lock."""
        if not verified:  # never read an organization's log for someone who left it
            await self._apply_memberships(await _watermarks(self.user_id))
            if org_id not in self.org_ids:
                return
        last = self.last_seq[org_id]
        if upto <= last:
            return
        gap_max = settings.LIVE_GAP_MAX
        if upto - last <= gap_max:
            backlog = await _backlog(self.user_id, org_id, last, upto, gap_max)
            for seq, frames in backlog.entries:
                if seq != self.last_seq[org_id] + 1:
                    break  # an entry is missing from the log (purged): the client must resync
                await self._send_frames(frames)
                self.last_seq[org_id] = seq
            if self.last_seq[org_id] >= upto:
                logger.info("live gap filled", extra={"org_id": org_id, "after_seq": last, "upto_seq": upto})
                return
        logger.info("live gap too large, resync", extra={"org_id": org_id, "after_seq": last, "upto_seq": upto})
        await self.send_json({"type": "resync", "org_id": org_id})
        self.last_seq[org_id] = upto

    async def _resume(self, after: dict[int, int], marks: dict[int, int]) -> None:
        """The client has seen each org up to `after[org]`: continue from there. Holds self.lock."""
        for org_id in sorted(set(after) & self.org_ids):
            self.last_seq[org_id] = after[org_id]
            await self._fill(org_id, upto=marks.get(org_id, 0), verified=True)

    # --- memberships and groups, re-verified periodically ---------------------------------------

    async def _apply_memberships(self, marks: dict[int, int]) -> bool:
        """Join and leave org groups to match the memberships in `marks`; True if they changed."""
        current = set(marks)
        for org_id in sorted(current - self.org_ids):
            await self.channel_layer.group_add(org_group(org_id), self.channel_name)
            self.last_seq[org_id] = marks[org_id]  # a new organization: live from now on
        for org_id in sorted(self.org_ids - current):
            await self.channel_layer.group_discard(org_group(org_id), self.channel_name)
            self.last_seq.pop(org_id, None)
        changed = current != self.org_ids
        self.org_ids = current
        self.verified_at = time.monotonic()
        return changed

    async def _check(self, marks: dict[int, int]) -> None:
        """With the user's memberships and each organization's published seq (`marks`, read for
        every connection at once by LiveWatch): fills what was published at least one interval ago
        and never arrived (a lost tail), so messages still in flight are not fetched twice."""
        async with self.lock:
            if await self._apply_memberships(marks):
                await self.send_json({"type": "memberships", "org_ids": sorted(self.org_ids)})
            if time.monotonic() - self.groups_added_at >= settings.LIVE_GROUP_REFRESH_SECONDS:
                await self._refresh_groups()
            for org_id in sorted(self.org_ids):
                due = min(marks[org_id], self.seen_marks.get(org_id, 0))
                if due > self.last_seq[org_id]:
                    await self._fill(org_id, upto=due, verified=True)
            self.seen_marks = dict(marks)

    async def live_gap(self, message):
        """The layer dropped messages meant for this connection (its queue in this process was
        full, or the process lost Redis for a moment): bring every organization up to its
        published seq now rather than at the next check, and re-read the memberships. What was
        dropped may have been an access.revoked: the credential is checked first."""
        if await _access_ended(self.user_id, self.token_id, self.scope.get("session")):
            await self.close(code=UNAUTHORIZED)
            return
        marks = await _watermarks(self.user_id)
        async with self.lock:
            if await self._apply_memberships(marks):
                await self.send_json({"type": "memberships", "org_ids": sorted(self.org_ids)})
            for org_id in sorted(self.org_ids):
                if marks[org_id] > self.last_seq[org_id]:
                    await self._fill(org_id, upto=marks[org_id], verified=True)
        logger.info("live gap reported by the layer", extra={"user_id": self.user_id})

    async def _refresh_groups(self) -> None:
        """Re-join every group: the queue layer (ServerClockRedisChannelLayer) forgets a member
        `group_expiry` after it joined. On the pub/sub layer a join lasts as long as the process'
        subscription, and this is a local no-op."""
        for group in [user_group(self.user_id)] + [org_group(o) for o in sorted(self.org_ids)]:
            await self.channel_layer.group_add(group, self.channel_name)
        self.groups_added_at = time.monotonic()

    # --- the user's own stream --------------------------------------------------------------------

    async def membership_changed(self, message):
        marks = await _watermarks(self.user_id)
        async with self.lock:
            await self._apply_memberships(marks)
            await self.send_json({"type": "memberships", "org_ids": sorted(self.org_ids)})

    async def notification_created(self, message):
        await self._send_frames([message])

    async def notification_read(self, message):
        if self.client_id and message.get("origin") == self.client_id:
            return  # the device that marked it read already knows
        await self.send_json(message)
