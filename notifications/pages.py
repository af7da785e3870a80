"""Browser pages of the notifications app: the member's inbox (read, read all, live over /ws/), their
notification preferences, and an organization's webhook endpoints (admins). They call the same
selectors and services as the REST API, so answers and error codes are the API's."""
from datetime import time
from urllib.parse import urlencode

from django.conf import settings

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db import transaction
from django.shortcuts import redirect, render
from django.urls import path, reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_POST

from config.errors import ApplicationError, NotFound
from notifications import inbox, preferences, selectors
from notifications.channels import registry
from notifications.channels.webhook import webhook_create, webhook_delete
from notifications.categories import template_categories
from notifications.models import ChannelDestination
from organizations.selectors import organization_get_for_user, organization_list_for_user

INBOX_PER_PAGE = 25
WEBHOOKS_ON_PAGE = 100


def _back(request, default: str):
    target = request.POST.get("next") or ""
    if target and url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()},
                                                   require_https=request.is_secure()):
        return redirect(target)
    return redirect(default)


# --- inbox -----------------------------------------------------------------------------------------

def _inbox_context(request) -> dict:
    show = "unread" if request.GET.get("show") == "unread" else "all"
    notifications = selectors.notification_list(user=request.user, unread_only=show == "unread")
    page = Paginator(notifications, INBOX_PER_PAGE).get_page(request.GET.get("page", 1))
    names = {o.id: o.name for o in organization_list_for_user(user=request.user)}
    for notification in page:
        notification.organization_name = names.get(notification.organization_id, "")
    return {"page": page, "show": show, "unread_count": selectors.notification_unread_count(user=request.user),
            "here": f"{reverse('inbox')}?{urlencode({'show': show, 'page': page.number})}"}


@login_required
@ensure_csrf_cookie
def inbox_page(request):
    context = _inbox_context(request)
    if request.GET.get("fragment"):  # the list alone, redrawn by static/js/inbox.js on live messages
        return render(request, "notifications/_inbox_body.html", context)
    return render(request, "notifications/inbox.html", context)


@login_required
@require_POST
def inbox_read(request, notification_id: int):
    notification = selectors.notification_get_for_user(user=request.user, id=notification_id)
    inbox.notification_mark_read(notification=notification)
    return _back(request, reverse("inbox"))


@login_required
@require_POST
def inbox_read_all(request):
    count = inbox.notification_mark_all_read(user=request.user)
    messages.success(request, f"Marked {count} notification{'' if count == 1 else 's'} read.")
    return _back(request, reverse("inbox"))


# --- preferences -----------------------------------------------------------------------------------

CHANNEL_LABELS = {"inapp": "In-app", "email": "Email", "sms": "SMS", "push": "Push", "whatsapp": "WhatsApp"}
SOURCE_NOTES = {"default": "default", "organization_default": "organization default", "global": "as for all"}


def _preference_key(pref) -> str:
    return f"{pref.organization_id or 'all'}:{pref.channel}:{pref.category}"


def _time_or_none(value: str):
    value = (value or "").strip()
    if not value:
        return None
    try:
        return time.fromisoformat(value)
    except ValueError:
        raise ApplicationError("Enter times as HH:MM.", code="validation_error",
                               extra={"fields": {"quiet_hours": [value]}}) from None


def _preferences_save(request, user) -> int:
    """Apply what the member changed on the page (the same services as the API), all or nothing."""
    overview = preferences.preference_overview(user=user)
    current = {_preference_key(p): p for p in overview.matrix}
    organizations = {o.id: o for o in organization_list_for_user(user=user)}
    wanted_on = set(request.POST.getlist("on"))
    changed = 0
    with transaction.atomic():
        for key in request.POST.getlist("shown"):
            pref = current.get(key)
            if pref is None:
                raise ApplicationError("There is no such preference.", code="unknown_preference")
            wanted = key in wanted_on
            if pref.locked or wanted == pref.enabled:
                continue  # only what the member changed becomes an explicit choice
            organization = organizations.get(pref.organization_id) if pref.organization_id else None
            preferences.preference_set(user=user, organization=organization, channel=pref.channel,
                                       category=pref.category, enabled=wanted)
            changed += 1
        if "quiet_start" in request.POST:
            start, end = _time_or_none(request.POST.get("quiet_start")), _time_or_none(request.POST.get("quiet_end"))
            row = overview.settings
            if (start, end) != ((row.quiet_hours_start, row.quiet_hours_end) if row else (None, None)):
                preferences.member_quiet_hours_set(user=user, start=start, end=end)
                changed += 1
        caps = {}
        for cap in preferences.member_daily_caps(settings_row=overview.settings):
            field = f"cap_{cap['channel']}"
            if field not in request.POST:
                continue
            raw = request.POST.get(field, "").strip()
            if raw == "":
                if cap["source"] == "member":
                    caps[cap["channel"]] = None
                continue
            if not raw.isdigit():
                raise ApplicationError("A daily limit is a whole number.", code="validation_error",
                                       extra={"fields": {field: [raw]}})
            if int(raw) != cap["limit"]:
                caps[cap["channel"]] = int(raw)
        if caps:
            preferences.member_daily_caps_set(user=user, caps=caps)
            changed += 1
    return changed


@login_required
def preferences_page(request):
    user = request.user
    if request.method == "POST":
        try:
            changed = _preferences_save(request, user)
        except ApplicationError as exc:
            messages.error(request, exc.display())
        else:
            messages.success(request, "Preferences saved." if changed else "Nothing changed.")
        return redirect("preferences")
    overview = preferences.preference_overview(user=user)
    by_key = {_preference_key(p): p for p in overview.matrix}
    channels = [(c, CHANNEL_LABELS.get(c, c)) for c in preferences.preference_channels()]
    scopes = []
    for org_id, name in [(None, "All my organizations")] + [(o.id, o.name)
                                                            for o in organization_list_for_user(user=user)]:
        rows = []
        for category in template_categories():
            cells = []
            for channel, channel_label in channels:
                key = f"{org_id or 'all'}:{channel}:{category.name}"
                pref = by_key[key]
                cells.append({"pref": pref, "key": key, "channel_label": channel_label,
                              "id": f"pref-{org_id or 'all'}-{channel}-{category.name}",
                              "note": SOURCE_NOTES.get(pref.source, "") if org_id or pref.source != "global" else ""})
            rows.append({"category": category, "cells": cells})
        scopes.append({"id": org_id or "all", "name": name, "rows": rows})
    row = overview.settings
    return render(request, "notifications/preferences.html", {
        "scopes": scopes, "channels": channels,
        "quiet_start": row.quiet_hours_start.strftime("%H:%M") if row and row.quiet_hours_start else "",
        "quiet_end": row.quiet_hours_end.strftime("%H:%M") if row and row.quiet_hours_end else "",
        "time_zone": user.time_zone or "UTC",
        "caps": [dict(c, label=CHANNEL_LABELS.get(c["channel"], c["channel"]))
                 for c in preferences.member_daily_caps(settings_row=row)],
        "cap_max": settings.HERALD_DAILY_CAP_MAX})


# --- webhooks (admins) -----------------------------------------------------------------------------

def _webhook_channel():
    try:
        return registry.get("webhook")
    except registry.UnknownChannel:
        raise NotFound("Webhooks are not enabled here.", code="webhook_not_found") from None


@login_required
@ensure_csrf_cookie
def webhooks_page(request, org_id: int):
    organization = organization_get_for_user(user=request.user, id=org_id, admin=True)
    channel = _webhook_channel()
    created = None
    form = {"url": "", "description": ""}
    if request.method == "POST":
        form = {"url": (request.POST.get("url") or "").strip()[:2000],
                "description": (request.POST.get("description") or "").strip()[:200]}
        try:
            if not form["url"]:
                raise ApplicationError("Invalid input.", code="validation_error",
                                       extra={"fields": {"url": ["This field is required."]}})
            row, secret = webhook_create(channel=channel, organization=organization, **form)
            created = {"row": row, "secret": secret}  # shown once, in this answer only
            form = {"url": "", "description": ""}
        except ApplicationError as exc:
            messages.error(request, exc.display())
    rows = list(ChannelDestination.objects.filter(organization=organization, channel=channel.name, enabled=True)
                .order_by("id")[:WEBHOOKS_ON_PAGE])
    response = render(request, "notifications/webhooks.html", {
        "organization": organization, "webhooks": rows, "created": created, "form": form})
    if created:
        response["Cache-Control"] = "no-store"
    return response


@login_required
@require_POST
def webhook_delete_page(request, org_id: int, webhook_id: int):
    organization = organization_get_for_user(user=request.user, id=org_id, admin=True)
    webhook_delete(channel=_webhook_channel(), organization=organization, webhook_id=webhook_id)
    messages.success(request, "Webhook endpoint removed: it gets no more deliveries.")
    return redirect("webhooks", organization.id)


urlpatterns = [
    path("inbox/", inbox_page, name="inbox"),
    path("inbox/<int:notification_id>/read", inbox_read, name="inbox-read"),
    path("inbox/read-all", inbox_read_all, name="inbox-read-all"),
    path("me/notifications/", preferences_page, name="preferences"),
    path("orgs/<int:org_id>/admin/webhooks/", webhooks_page, name="webhooks"),
    path("orgs/<int:org_id>/admin/webhooks/<int:webhook_id>/delete", webhook_delete_page, name="webhook-delete"),
]
