"""New comments appear live for members viewing the tracker: a comment posted through the API
reaches every member's /ws/ as a `comment.created` log entry (what static/js/comments.js redraws
on), with no inbox row; a reply reaches the parent's author as `notification.created`
(comment.reply) and the other members only as its seq. Real Daphne and Celery worker."""
import json
import threading
import time

import pytest
from rest_framework.test import APIClient
from websockets.sync.client import connect

from notifications.models import Notification
from organizations import services as org_services
from tests.support.stack import DELIVERY_QUEUES, Stack
from trackers.models import Tracker

pytestmark = [pytest.mark.stack, pytest.mark.django_db(transaction=True), pytest.mark.timeout(180)]


class Socket(threading.Thread):
    def __init__(self, url: str, origin: str, token: str):
        super().__init__(daemon=True)
        self.url, self.origin, self.token = url, origin, token
        self.messages: list[dict] = []
        self.ready, self.stopping = threading.Event(), threading.Event()

    def run(self):
        with connect(f"{self.url}/ws/?token={self.token}", origin=self.origin, open_timeout=15) as ws:
            self.messages.append(json.loads(ws.recv(timeout=15)))
            self.ready.set()
            while not self.stopping.is_set():
                try:
                    self.messages.append(json.loads(ws.recv(timeout=0.2)))
                except TimeoutError:
                    continue

    def of_kind(self, kind: str) -> list[dict]:
        return [m for m in list(self.messages) if m.get("kind") == kind]


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_comments_and_replies_reach_open_pages_live(org_with_members):
    org = org_with_members.org
    tracker = Tracker.objects.get(organization=org)
    tokens = {name: org_services.user_token_create(user=getattr(org_with_members, name))
              for name in ("owner", "admin", "member")}
    with Stack() as stack:
        stack.start_daphne("web")
        stack.start_worker("orgs", DELIVERY_QUEUES)
        stack.wait_ready(timeout=60)
        sockets = {name: Socket(stack.ws_url(), stack.url(), token) for name, token in tokens.items()}
        for ws in sockets.values():
            ws.start()
            assert ws.ready.wait(20)
        with stack.dump_logs_on_failure(lines=60):
            client = APIClient()
            client.credentials(HTTP_AUTHORIZATION=f"Token {tokens['owner']}")
            top = client.post(f"/api/v1/trackers/{tracker.id}/comments/", {"body": "Standup at 10"}, format="json")
            assert top.status_code == 201, top.content
            for ws in sockets.values():  # every member's page, the author's included
                [live] = wait_for(lambda ws=ws: ws.of_kind("comment.created"), 20, "comment.created")
                assert live["type"] == "log.entry" and live["payload"]["tracker_id"] == tracker.id
                assert live["payload"]["comment_id"] == top.json()["id"]
                assert live["payload"]["excerpt"] == "Standup at 10"
            client.credentials(HTTP_AUTHORIZATION=f"Token {tokens['member']}")
            reply = client.post(f"/api/v1/trackers/{tracker.id}/comments/",
                                {"body": "I'll be late", "parent": top.json()["id"]}, format="json")
            assert reply.status_code == 201, reply.content
            note = wait_for(lambda: [m for m in sockets["owner"].of_kind("comment.reply")
                                     if m["type"] == "notification.created"], 20, "the owner's reply notification")
            redacted = wait_for(lambda: sockets["admin"].of_kind("comment.reply"), 20, "the admin's redacted entry")
            wait_for(lambda: len(sockets["admin"].of_kind("comment.created")) == 2, 20, "the reply, live")
            for ws in sockets.values():
                ws.stopping.set()
                ws.join(timeout=5)
    assert note[0]["title"] == f"{org_with_members.member.username} replied on {tracker.name}"
    assert redacted == [{"type": "log.entry", "org_id": org.id, "seq": redacted[0]["seq"], "kind": "comment.reply",
                         "private": True}]
    assert not any(m["type"] == "notification.created" for m in sockets["member"].messages)  # the replier
    assert not Notification.objects.filter(kind="comment.created").exists()
    assert list(Notification.objects.filter(kind="comment.reply").values_list("recipient_id", flat=True)) == [
        org_with_members.owner.id]
