"""Reads of the send API: a send for its caller (404 for another organization's), its counts per
channel and state, its status rows."""
from datetime import datetime

from django.db.models import Count, QuerySet

from config.errors import Forbidden, NotFound
from notifications.errors import NotificationsError
from notifications.models import Send, SendDelivery
from organizations.models import Membership
from organizations.selectors import ApiKeyPrincipal, role_in_organization


def send_organization_check(*, principal, organization_id: int) -> None:
    """Who may send for an organization and read its sends: its API keys (scope checked by the
    permission) and its owners and admins. Anyone else: 404 (not a member) or 403."""
    if isinstance(principal, ApiKeyPrincipal):
        if principal.organization_id != organization_id:
            raise NotFound("Organization not found.", code="organization_not_found")
        return
    role = role_in_organization(user=principal, organization_id=organization_id)
    if role is None:
        raise NotFound("Organization not found.", code="organization_not_found")
    if role not in Membership.ADMIN_ROLES:
        raise Forbidden("Only owners and admins can send notifications.", code="admin_required")


def send_get_for_principal(*, principal, id: int) -> Send:
    send = Send.objects.filter(pk=id).first()
    if send is None:
        raise NotFound("Send not found.", code=NotificationsError.SEND_NOT_FOUND)
    try:
        send_organization_check(principal=principal, organization_id=send.organization_id)
    except NotFound:
        raise NotFound("Send not found.", code=NotificationsError.SEND_NOT_FOUND) from None
    return send


def send_counts(*, send: Send) -> dict[str, dict[str, int]]:
    """{channel: {state: count}} in one grouped query (the unique index on send, channel, user)."""
    counts: dict[str, dict[str, int]] = {channel: {} for channel in send.channels}
    rows = (SendDelivery.objects.filter(send=send).values("channel", "state").annotate(n=Count("id"))
            .order_by("channel", "state"))
    for row in rows:
        counts.setdefault(row["channel"], {})[row["state"]] = row["n"]
    return counts


def send_delivery_list(*, send: Send, channel: str | None = None, state: str | None = None) -> QuerySet[SendDelivery]:
    rows = SendDelivery.objects.filter(send=send)
    if channel:
        rows = rows.filter(channel=channel)
    if state:
        rows = rows.filter(state=state)
    return rows.order_by("id")


def send_failures(*, organization_id: int, since: datetime) -> QuerySet[SendDelivery]:
    """An organization's status rows that failed (retrying) or died since `since` ("failures of an
    organization in the last hour"), newest first: index senddelivery_org_failed on (organization,
    failed_at); `state` is re-checked on the row (a row that failed and then went out keeps its
    failed_at)."""
    return (SendDelivery.objects.filter(organization_id=organization_id, failed_at__gte=since,
                                        state__in=[SendDelivery.State.FAILED, SendDelivery.State.DEAD])
            .order_by("-failed_at"))
