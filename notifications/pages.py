"""Browser pages of the notifications app: the member's inbox (read, read all, live over /ws/), their
notification preferences, and an organization's webhook endpoints (admins). They call the same
selectors and services as the REST API, so answers and error codes are the API's."""
from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.shortcuts import redirect, render
from django.urls import path, reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_POST

from config.errors import ApplicationError, NotFound
from notifications import inbox, preferences, selectors
from notifications.channels import registry
from notifications.channels.webhook import webhook_create, webhook_delete
from notifications.models import ChannelDestination, PreferenceCategory
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

def _preference_key(pref) -> str:
    return f"{pref.organization_id or 'all'}:{pref.channel}:{pref.category}"


@login_required
def preferences_page(request):
    user = request.user
    if request.method == "POST":
        current = {_preference_key(p): p for p in preferences.preference_list(user=user)}
        shown = request.POST.getlist("shown")
        organizations = {o.id: o for o in organization_list_for_user(user=user)}
        changed = 0
        try:
            for key in shown:
                pref = current.get(key)
                if pref is None:
                    raise ApplicationError("There is no such preference.", code="unknown_preference")
                wanted = key in request.POST.getlist("on")
                if pref.locked or wanted == pref.enabled:
                    continue  # only what the member changed becomes an explicit choice
                organization = organizations.get(pref.organization_id) if pref.organization_id else None
                preferences.preference_set(user=user, organization=organization, channel=pref.channel,
                                           category=pref.category, enabled=wanted)
                changed += 1
        except ApplicationError as exc:
            messages.error(request, exc.display())
        else:
            messages.success(request, "Preferences saved." if changed else "Nothing changed.")
        return redirect("preferences")
    organizations = list(organization_list_for_user(user=user))
    by_key = {_preference_key(p): p for p in preferences.preference_list(user=user)}
    columns = [(None, "All my organizations")] + [(o.id, o.name) for o in organizations]
    rows = []
    for channel, category in preferences.DEFAULTS:
        cells = []
        for org_id, name in columns:
            key = f"{org_id or 'all'}:{channel}:{category}"
            cells.append({"pref": by_key[key], "key": key, "column": name,
                          "id": f"pref-{org_id or 'all'}-{channel}-{category}"})
        rows.append({"channel": channel, "category": category, "label": PreferenceCategory(category).label,
                     "cells": cells})
    return render(request, "notifications/preferences.html", {"rows": rows, "columns": columns})


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
