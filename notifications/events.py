"""Shapes of the real-time messages sent over /ws/ (the external contract in DESIGN.md)."""
from datetime import datetime


def tracker_event_message(*, org_id: int, seq: int, event_id: int, tracker_id: int, tracker_name: str,
                          action: str, actor: str, occurred_at: datetime,
                          notifications: dict[int, int] | None = None) -> dict:
    """`notifications` maps recipient user id -> notification id; each member's consumer turns its
    own entry into a `notification.created`, so one group message serves the whole organization."""
    return {
        "type": "tracker.event",
        "org_id": org_id,
        "seq": seq,
        "event_id": event_id,
        "tracker_id": tracker_id,
        "tracker_name": tracker_name,
        "action": action,
        "actor": actor,
        "occurred_at": occurred_at.isoformat() if isinstance(occurred_at, datetime) else occurred_at,
        "notifications": {str(k): v for k, v in (notifications or {}).items()},
    }


def notification_created_message(*, notification_id: int, org_id: int | None, seq: int | None, kind: str,
                                 title: str, body: str, created_at: str) -> dict:
    return {
        "type": "notification.created",
        "id": notification_id,
        "org_id": org_id,
        "seq": seq,
        "kind": kind,
        "title": title,
        "body": body,
        "created_at": created_at,
    }


def notification_read_message(*, ids: list[int] | None, all_read: bool, unread_count: int,
                              origin: str | None) -> dict:
    return {"type": "notification.read", "ids": ids or [], "all": all_read, "unread_count": unread_count,
            "origin": origin}


def entry_message(*, entry, private: bool = False) -> dict:
    """The WebSocket (and events API) shape of one log entry. Tracker entries keep the
    `tracker.event` shape of the contract; other kinds are `log.entry` with their payload. A
    member outside the entry's audience gets only its seq (`private`), so every connection still
    sees every seq of the organization."""
    if private:
        return {"type": "log.entry", "org_id": entry.organization_id, "seq": entry.seq, "kind": entry.kind,
                "private": True}
    occurred_at = entry.occurred_at.isoformat() if isinstance(entry.occurred_at, datetime) else entry.occurred_at
    if entry.kind == "tracker.event":
        payload = entry.payload
        message = tracker_event_message(
            org_id=entry.organization_id, seq=entry.seq, event_id=entry.id, tracker_id=payload.get("tracker_id"),
            tracker_name=payload.get("tracker_name", ""), action=payload.get("action", ""),
            actor=entry.actor_name, occurred_at=occurred_at)
        del message["notifications"]
        return message
    return {"type": "log.entry", "org_id": entry.organization_id, "seq": entry.seq, "kind": entry.kind,
            "entry_id": entry.id, "actor": entry.actor_name, "occurred_at": occurred_at, "payload": entry.payload}
