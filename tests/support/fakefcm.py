"""An FCM HTTP v1-compatible push API on loopback (the part Herald uses):

    POST /v1/projects/{project_id}/messages:send   Authorization: Bearer <access token>
    {"message": {"token": "...", "notification": {"title", "body"}, "data": {...}, "android": ..., "apns": ...}}

200 {"name": "projects/{project_id}/messages/<id>"}; errors as FCM answers them (google.rpc.Status):
{"error": {"code": 404, "message": "Requested entity was not found.", "status": "NOT_FOUND",
 "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "UNREGISTERED"}]}}.
Besides the faults of FakeHTTPProvider (429 with Retry-After, 5xx, slow answers, down):
`unregistered = {token, ...}`: those tokens get 404 UNREGISTERED (an app uninstalled).
"""
import re
import secrets

from tests.support.fakehttp import FakeHTTPProvider, Recorded

SEND = re.compile(r"^/v1/projects/(?P<project>[a-z0-9-]+)/messages:send$")
STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
          429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}
FCM_ERROR = {400: "INVALID_ARGUMENT", 401: "THIRD_PARTY_AUTH_ERROR", 403: "SENDER_ID_MISMATCH", 404: "UNREGISTERED",
             429: "QUOTA_EXCEEDED", 500: "INTERNAL", 503: "UNAVAILABLE"}


def fcm_error(status: int, message: str, error_code: str | None = None) -> dict:
    details = [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                "errorCode": error_code or FCM_ERROR.get(status, "UNSPECIFIED_ERROR")}]
    return {"error": {"code": status, "message": message, "status": STATUS.get(status, "UNKNOWN"), "details": details}}


class FakeFCM(FakeHTTPProvider):
    def __init__(self, *, project_id: str = "herald-test", access_token: str = "fcm-test-token", port: int = 0):
        super().__init__(port=port)
        self.project_id, self.access_token = project_id, access_token
        self.unregistered: set[str] = set()

    def settings(self) -> dict:
        return {"url": self.base_url, "project_id": self.project_id, "access_token": self.access_token}

    def error_body(self, status: int) -> dict:
        return fcm_error(status, {429: "Quota exceeded.", 503: "The service is currently unavailable."}
                         .get(status, "Internal error encountered."))

    def messages(self) -> list[dict]:
        """The accepted messages ({"token", "notification", "data", ...}), in arrival order."""
        return [r.json()["message"] for r in self.accepted()]

    def handle(self, request: Recorded):
        match = SEND.match(request.path)
        if match is None or request.method != "POST":
            return 404, {}, fcm_error(404, "Not found.", "UNSPECIFIED_ERROR")
        if request.headers.get("authorization") != f"Bearer {self.access_token}":
            return 401, {}, fcm_error(401, "Request had invalid authentication credentials.", "THIRD_PARTY_AUTH_ERROR")
        if match["project"] != self.project_id:
            return 403, {}, fcm_error(403, "Permission denied.", "SENDER_ID_MISMATCH")
        try:
            message = request.json()["message"]
        except (ValueError, KeyError, TypeError):
            return 400, {}, fcm_error(400, "Invalid JSON payload received.")
        token = message.get("token")
        if not token or not isinstance(token, str):
            return 400, {}, fcm_error(400, "The registration token is not a valid FCM registration token")
        if token in self.unregistered:
            return 404, {}, fcm_error(404, "Requested entity was not found.", "UNREGISTERED")
        data = message.get("data") or {}
        if not all(isinstance(v, str) for v in data.values()):
            return 400, {}, fcm_error(400, "Invalid value at 'message.data': string values only.")
        return 200, {}, {"name": f"projects/{self.project_id}/messages/{secrets.randbelow(10**16)}"}
