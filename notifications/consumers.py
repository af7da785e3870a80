"""The one WebSocket endpoint, /ws/: authenticate, join the member's groups, forward messages.

Groups: `org.<id>` for every organization the user belongs to, `user.<id>` for their own stream.
The consumer never writes; it only forwards what services publish. When a membership is added or
removed, `membership.changed` on the user's stream makes every open connection re-read its
organizations and join or leave their groups at once (a removed member stops receiving that
organization's events without waiting for a reconnect)."""
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from notifications.events import notification_created_message
from notifications.realtime import org_group, user_group
from organizations.models import Membership

UNAUTHORIZED = 4401


@database_sync_to_async
def _org_ids(user_id: int) -> list[int]:
    return list(Membership.objects.filter(user_id=user_id).values_list("organization_id", flat=True))


class LiveConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=UNAUTHORIZED)
            return
        self.user_id = user.pk
        query = parse_qs(self.scope.get("query_string", b"").decode())
        self.client_id = (query.get("client_id") or [None])[0]
        self.org_ids = set(await _org_ids(user.pk))
        self.groups_joined = [user_group(user.pk)] + [org_group(o) for o in sorted(self.org_ids)]
        for group in self.groups_joined:
            await self.channel_layer.group_add(group, self.channel_name)
        await self.accept()
        await self.send_json({"type": "hello", "user_id": user.pk, "org_ids": sorted(self.org_ids)})

    async def membership_changed(self, message):
        current = set(await _org_ids(self.user_id))
        for org_id in current - self.org_ids:
            await self.channel_layer.group_add(org_group(org_id), self.channel_name)
        for org_id in self.org_ids - current:
            await self.channel_layer.group_discard(org_group(org_id), self.channel_name)
        self.org_ids = current
        self.groups_joined = [user_group(self.user_id)] + [org_group(o) for o in sorted(current)]
        await self.send_json({"type": "memberships", "org_ids": sorted(current)})

    async def disconnect(self, code):
        for group in getattr(self, "groups_joined", []):
            await self.channel_layer.group_discard(group, self.channel_name)

    async def receive_json(self, content, **kwargs):
        if isinstance(content, dict) and content.get("type") == "ping":
            await self.send_json({"type": "pong"})

    async def tracker_event(self, message):
        if message.get("org_id") not in self.org_ids:
            return  # left the organization (the group discard may trail the removal)
        notifications = message.get("notifications", {})
        payload = {k: v for k, v in message.items() if k != "notifications"}
        await self.send_json(payload)
        own = notifications.get(str(self.user_id))
        if own is not None:
            verb = "started" if message["action"] == "start" else "stopped"
            await self.send_json(notification_created_message(
                notification_id=own, org_id=message["org_id"], seq=message["seq"], kind="tracker.event",
                title=f"{message['actor'] or 'Someone'} {verb} {message['tracker_name']}", body="",
                created_at=message["occurred_at"],
            ))

    async def notification_created(self, message):
        await self.send_json(message)

    async def notification_read(self, message):
        if self.client_id and message.get("origin") == self.client_id:
            return  # the device that marked it read already knows
        await self.send_json(message)
