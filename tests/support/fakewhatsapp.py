"""A WhatsApp Cloud API-compatible endpoint on loopback (the part Herald uses):

    POST /v{version}/{phone_number_id}/messages   Authorization: Bearer <access token>
    {"messaging_product": "whatsapp", "recipient_type": "individual", "to": "14155550101",
     "type": "text", "text": {"preview_url": false, "body": "..."}}   (or "type": "template")

200 {"messaging_product": "whatsapp", "contacts": [{"input", "wa_id"}], "messages": [{"id": "wamid..."}]};
errors as Graph API answers them: {"error": {"message", "type": "OAuthException", "code": 131026,
"error_data": {...}, "fbtrace_id"}}. Besides the faults of FakeHTTPProvider (429 with
Retry-After, 5xx, slow answers, down): `undeliverable = {"14155550101"}` answers 400 / 131026.
"""
import re
import secrets

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

    def settings(self) -> dict:
        return {"url": self.base_url, "phone_number_id": self.phone_number_id, "access_token": self.access_token}

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
        return 200, {}, {"messaging_product": "whatsapp", "contacts": [{"input": body["to"], "wa_id": to}],
                         "messages": [{"id": "wamid." + secrets.token_urlsafe(24)}]}
