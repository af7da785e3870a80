"""A Twilio-compatible SMS API on loopback (the part Herald uses):

    POST /2010-04-01/Accounts/{AccountSid}/Messages.json   (form: To, From, Body[, StatusCallback])
    GET  /2010-04-01/Accounts/{AccountSid}/Messages.json?To=...   (the account's messages, newest first)

HTTP basic auth with the account SID and auth token; 201 with the message resource
({"sid": "SM...", "status": "queued", ...}); errors as Twilio answers them:
{"code": 21211, "message": "...", "more_info": "https://www.twilio.com/docs/errors/21211", "status": 400}.
Besides the faults of FakeHTTPProvider (429 with Retry-After, 5xx, slow answers, down):
- `unreachable = {"+15550000000"}`: those numbers are refused with 400 / 21211 (invalid To);
- `deliver = "delivered" | "undelivered" | "failed" | [states...] | None`: after accepting, POST
  the message's states to its StatusCallback like Twilio does, asynchronously, `callback_delay`
  seconds apart (a carrier's receipt takes a while): "sent" then the final state, or exactly the
  listed states in that order (out of order, repeated). Form-encoded, signed with
  X-Twilio-Signature; `callbacks` records (url, params, answer status).
"""
import base64
import hashlib
import hmac
import re
import secrets
import threading
import time

import httpx

from tests.support.fakehttp import FakeHTTPProvider, Recorded

MESSAGES = re.compile(r"^/2010-04-01/Accounts/(?P<sid>AC[0-9a-zA-Z]+)/Messages\.json$")
E164 = re.compile(r"^\+[1-9][0-9]{1,14}$")


def twilio_signature(auth_token: str, url: str, params: dict) -> str:
    """Twilio's request signature: base64 HMAC-SHA1 of the URL followed by each POST parameter's
    name and value, sorted by name."""
    data = url + "".join(f"{k}{params[k]}" for k in sorted(params))
    return base64.b64encode(hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()).decode()


def _error(code: int, message: str, status: int) -> dict:
    return {"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status}


class FakeTwilio(FakeHTTPProvider):
    def __init__(self, *, account_sid: str = "AC" + "0" * 32, auth_token: str = "twilio-test-token", port: int = 0):
        super().__init__(port=port)
        self.account_sid, self.auth_token = account_sid, auth_token
        self.unreachable: set[str] = set()
        self.deliver: str | list[str] | None = None
        self.callback_delay = 0.3
        self.callbacks: list[tuple[str, dict, int]] = []

    def settings(self, from_number: str = "+15005550006") -> dict:
        return {"url": self.base_url, "account_sid": self.account_sid, "auth_token": self.auth_token,
                "from": from_number}

    def error_body(self, status: int) -> dict:
        if status == 429:
            return _error(20429, "Too Many Requests", 429)
        if status >= 500:
            return _error(20500, "Internal Server Error", status)
        return _error(20001, "Error", status)

    def messages(self) -> list[dict]:
        """The accepted messages' form parameters, in arrival order."""
        return [r.form() for r in self.accepted() if r.method == "POST"]

    def handle(self, request: Recorded):
        match = MESSAGES.match(request.path)
        if match is None:
            return 404, {}, _error(20404, "The requested resource was not found", 404)
        expected = base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        if match["sid"] != self.account_sid or request.headers.get("authorization") != f"Basic {expected}":
            return 401, {"WWW-Authenticate": 'Basic realm="Twilio API"'}, _error(20003, "Authenticate", 401)
        if request.method == "GET":
            to = (request.query.get("To") or [None])[0]
            with self.lock:
                found = [r.extra["resource"] for r in self.requests
                         if "resource" in r.extra and (to is None or r.extra["resource"]["to"] == to)]
            return 200, {}, {"messages": list(reversed(found))}
        form = request.form()
        to, body = form.get("To", ""), form.get("Body", "")
        if not E164.match(to) or to in self.unreachable:
            return 400, {}, _error(21211, f"The 'To' number {to} is not a valid phone number.", 400)
        if not form.get("From"):
            return 400, {}, _error(21603, "A 'From' phone number is required.", 400)
        if not body:
            return 400, {}, _error(21602, "Message body is required.", 400)
        if len(body) > 1600:
            return 400, {}, _error(21617, "The concatenated message body exceeds the 1600 character limit.", 400)
        resource = {"sid": "SM" + secrets.token_hex(16), "account_sid": self.account_sid, "to": to,
                    "from": form["From"], "body": body, "status": "queued",
                    "num_segments": str(max(1, -(-len(body) // 153))), "error_code": None,
                    "date_created": time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime())}
        request.extra["resource"] = resource
        if self.deliver and form.get("StatusCallback"):
            states = [self.deliver] if isinstance(self.deliver, str) else list(self.deliver)
            if isinstance(self.deliver, str) and self.deliver != "sent":
                states.insert(0, "sent")
            threading.Thread(target=self._callbacks, args=(form["StatusCallback"], resource, states),
                             daemon=True).start()
        return 201, {}, resource

    def _callbacks(self, url: str, resource: dict, states: list[str]) -> None:
        for status in states:
            time.sleep(self.callback_delay)
            params = {"AccountSid": self.account_sid, "MessageSid": resource["sid"], "SmsSid": resource["sid"],
                      "MessageStatus": status, "SmsStatus": status, "To": resource["to"], "From": resource["from"],
                      "ApiVersion": "2010-04-01"}
            if status in ("failed", "undelivered"):
                params["ErrorCode"] = "30003"
            headers = {"X-Twilio-Signature": twilio_signature(self.auth_token, url, params)}
            try:
                code = httpx.post(url, data=params, headers=headers, timeout=5).status_code
            except httpx.HTTPError:
                code = 0
            with self.lock:
                self.callbacks.append((url, params, code))
