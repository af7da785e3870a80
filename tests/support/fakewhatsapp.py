"""A WhatsApp Cloud API-compatible endpoint on loopback (the part Herald uses):

    POST /v{version}/{phone_number_id}/messages   Authorization: Bearer <access token>
    {"messaging_product": "whatsapp", "recipient_type": "individual", "to": "14155550101",
     "type": "text", "text": {"preview_url": false, "body": "..."}}   (or "type": "template")

200 {"messaging_product": "whatsapp", "contacts": [{"input", "wa_id"}], "messages": [{"id": "wamid..."}]};
errors as Graph API answers them: {"error": {"message", "type": "OAuthException", "code": 131026,
"error_data": {...}, "fbtrace_id"}}. Besides the faults of FakeHTTPProvider (429 with
Retry-After, 5xx, slow answers, down): `undeliverable = {"14155550101"}` answers 400 / 131026.

Status webhooks like the Cloud API's: with `webhook_url` and `deliver` ("delivered", "read",
"failed", or a list of states in the order to post them), each accepted message's states are
POSTed to the app's webhook asynchronously, `callback_delay` seconds apart ("sent" first unless a
list is given), as {"object": "whatsapp_business_account", "entry": [{"id", "changes": [{"field":
"messages", "value": {"messaging_product", "metadata", "statuses": [{"id": wamid, "status",
"timestamp", "recipient_id", "biz_opaque_callback_data", "errors"?}]}}]}]} signed with
X-Hub-Signature-256 (sha256= hex HMAC-SHA256 of the raw body with `app_secret`); `callbacks` records
(status, answer status).
"""
import hashlib
import hmac
import json
import re
import secrets
import threading
import time

import httpx

from tests.support.fakehttp import FakeHTTPProvider, Recorded

SEND = re.compile(r"^/v(?P<version>[0-9.]+)/(?P<phone_number_id>[0-9]+)/messages$")
CODES = {400: 100, 401: 190, 429: 130429, 500: 131000, 503: 131016}


def graph_error(status: int, message: str, code: int | None = None) -> dict:
    return {"error": {"message": message, "type": "OAuthException", "code": code or CODES.get(status, 1),
                      "fbtrace_id": secrets.token_hex(8)}}


class FakeWhatsApp(FakeHTTPProvider):
    def __init__(self, *, phone_number_id: str = "106540352242922", access_token: str = "wa-test-token",
                 port: int = 0):
        super().__init__(port=port)
        self.phone_number_id, self.access_token = phone_number_id, access_token
        self.undeliverable: set[str] = set()
        self.app_secret = "wa-app-secret"
        self.webhook_url: str | None = None
        self.deliver: str | list[str] | None = None
        self.callback_delay = 0.3
        self.callbacks: list[tuple[str, int]] = []

    def settings(self) -> dict:
        return {"url": self.base_url, "phone_number_id": self.phone_number_id, "access_token": self.access_token,
                "app_secret": self.app_secret}

    def webhook_body(self, wamid: str, to: str, status: str, opaque: str | None = None) -> bytes:
        report = {"id": wamid, "status": status, "timestamp": str(int(time.time())), "recipient_id": to}
        if opaque:
            report["biz_opaque_callback_data"] = opaque
        if status == "failed":
            report["errors"] = [{"code": 131026, "title": "Message undeliverable",
                                 "error_data": {"details": "Message Undeliverable."}}]
        return json.dumps({"object": "whatsapp_business_account", "entry": [{"id": "102290129340398", "changes": [
            {"field": "messages", "value": {"messaging_product": "whatsapp",
                                            "metadata": {"display_phone_number": "15550783881",
                                                         "phone_number_id": self.phone_number_id},
                                            "statuses": [report]}}]}]}).encode()

    def sign(self, body: bytes) -> str:
        return "sha256=" + hmac.new(self.app_secret.encode(), body, hashlib.sha256).hexdigest()

    def _callbacks(self, wamid: str, to: str, opaque: str | None, states: list[str]) -> None:
        for status in states:
            time.sleep(self.callback_delay)
            body = self.webhook_body(wamid, to, status, opaque)
            try:
                code = httpx.post(self.webhook_url, content=body, timeout=5, headers={
                    "Content-Type": "application/json", "X-Hub-Signature-256": self.sign(body)}).status_code
            except httpx.HTTPError:
                code = 0
            with self.lock:
                self.callbacks.append((status, code))

    def error_body(self, status: int) -> dict:
        return graph_error(status, {429: "(#130429) Rate limit hit", 503: "Service temporarily unavailable"}
                           .get(status, "Something went wrong"))

    def messages(self) -> list[dict]:
        return [r.json() for r in self.accepted()]

    def handle(self, request: Recorded):
        match = SEND.match(request.path)
        if match is None or request.method != "POST":
            return 404, {}, graph_error(404, "Unsupported request", 100)
        if request.headers.get("authorization") != f"Bearer {self.access_token}":
            return 401, {}, graph_error(401, "Error validating access token: Session has expired", 190)
        if match["phone_number_id"] != self.phone_number_id:
            return 400, {}, graph_error(400, "Object with ID does not exist", 100)
        try:
            body = request.json()
        except ValueError:
            return 400, {}, graph_error(400, "Invalid JSON", 100)
        to = str(body.get("to", "")).lstrip("+")
        if body.get("messaging_product") != "whatsapp" or not to.isdigit():
            return 400, {}, graph_error(400, "(#100) Invalid parameter", 100)
        if body.get("type") == "text" and not (body.get("text") or {}).get("body"):
            return 400, {}, graph_error(400, "(#100) The parameter text['body'] is required.", 100)
        if len((body.get("text") or {}).get("body", "")) > 4096:
            return 400, {}, graph_error(400, "(#100) Param text['body'] must be at most 4096 characters long.", 100)
        if to in self.undeliverable:
            return 400, {}, graph_error(400, "Message Undeliverable.", 131026)
        wamid = "wamid." + secrets.token_urlsafe(24)
        if self.deliver and self.webhook_url:
            states = [self.deliver] if isinstance(self.deliver, str) else list(self.deliver)
            if isinstance(self.deliver, str) and self.deliver != "sent":
                states.insert(0, "sent")
            threading.Thread(target=self._callbacks, args=(wamid, to, body.get("biz_opaque_callback_data"), states),
                             daemon=True).start()
        return 200, {}, {"messaging_product": "whatsapp", "contacts": [{"input": body["to"], "wa_id": to}],
                         "messages": [{"id": wamid}]}
