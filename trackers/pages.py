"""Browser pages of the trackers app: live trackers at /, the tracker list, a tracker's page with its
comment threads (posted, edited and deleted through the same services as the API), time entries with
filters."""
import datetime
from urllib.parse import urlencode

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.shortcuts import redirect, render
from django.urls import path, reverse
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_POST

from config.errors import ApplicationError
from organizations.models import Membership
from organizations.selectors import membership_list, organization_get_for_user, organization_list_for_user
from trackers import selectors, services
from trackers.models import Tracker

COMMENTS_PER_PAGE = 20
ENTRIES_PER_PAGE = 50


@login_required
@ensure_csrf_cookie
def live_page(request):
    organizations = list(organization_list_for_user(user=request.user))
    return render(request, "trackers/live.html", {"organizations": organizations})


@login_required
def tracker_list_page(request, org_id: int):
    organization = organization_get_for_user(user=request.user, id=org_id)
    trackers = selectors.tracker_list(organization=organization)
    return render(request, "trackers/list.html", {"organization": organization, "trackers": trackers})


def _thread_context(*, tracker: Tracker, page_number: int) -> dict:
    count = selectors.comment_top_level(tracker_id=tracker.id, time_entry_id=None).count()
    paginator = Paginator(range(count), COMMENTS_PER_PAGE)  # pages of top-level comments only
    page = paginator.get_page(page_number)
    threads = selectors.comment_thread_page(tracker_id=tracker.id, time_entry_id=None,
                                            offset=page.start_index() - 1 if count else 0, limit=COMMENTS_PER_PAGE)
    return {"tracker": tracker, "threads": threads, "page": page, "comment_count": count}


@login_required
@ensure_csrf_cookie
def tracker_page(request, tracker_id: int):
    tracker = selectors.tracker_get_for_user(user=request.user, id=tracker_id)
    request.session["current_org_id"] = tracker.organization_id
    context = _thread_context(tracker=tracker, page_number=request.GET.get("page", 1))
    context["organization"] = tracker.organization
    return render(request, "trackers/detail.html", context)


@login_required
def tracker_comments_fragment(request, tracker_id: int):
    """The threads alone, for the page's script to swap in when a comment arrives live."""
    tracker = selectors.tracker_get_for_user(user=request.user, id=tracker_id)
    return render(request, "trackers/_threads.html",
                  _thread_context(tracker=tracker, page_number=request.GET.get("page", 1)))


def _back_to_tracker(tracker_id: int, page: str | None, anchor: str = "comments"):
    url = reverse("tracker", args=[tracker_id])
    return redirect(f"{url}?{urlencode({'page': page})}#{anchor}" if page else f"{url}#{anchor}")


@login_required
@require_POST
def comment_post_page(request, tracker_id: int):
    tracker = selectors.tracker_get_for_user(user=request.user, id=tracker_id)
    body = (request.POST.get("body") or "").strip()
    parent = request.POST.get("parent") or None
    try:
        if not body:
            raise ApplicationError("Write something first.", code="validation_error")
        comment = services.comment_create(tracker=tracker, author=request.user, body=body[:10000],
                                          parent_id=int(parent) if parent and parent.isdigit() else None)
    except ApplicationError as exc:
        messages.error(request, exc.message)
        return _back_to_tracker(tracker.id, request.POST.get("page"))
    return _back_to_tracker(tracker.id, request.POST.get("page"), anchor=f"comment-{comment.id}")


@login_required
@require_POST
def comment_change_page(request, comment_id: int):
    comment = selectors.comment_get_for_user(user=request.user, id=comment_id)
    try:
        if request.POST.get("action") == "delete":
            services.comment_delete(comment_id=comment.id, actor=request.user)
        else:
            body = (request.POST.get("body") or "").strip()
            if not body:
                raise ApplicationError("A comment cannot be empty.", code="validation_error")
            services.comment_update(comment_id=comment.id, actor=request.user, body=body[:10000])
    except ApplicationError as exc:
        messages.error(request, exc.message)
    return _back_to_tracker(comment.tracker_id, request.POST.get("page"), anchor=f"comment-{comment.id}")


class TimeEntryFilter(forms.Form):
    tracker = forms.TypedChoiceField(required=False, coerce=int, empty_value=None)
    member = forms.TypedChoiceField(required=False, coerce=int, empty_value=None)
    started_from = forms.DateField(required=False, label="From", widget=forms.DateInput(attrs={"type": "date"}))
    started_to = forms.DateField(required=False, label="To", widget=forms.DateInput(attrs={"type": "date"}))

    def __init__(self, *args, trackers, members, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["tracker"].choices = [("", "All trackers")] + [(t.id, t.name) for t in trackers]
        self.fields["member"].choices = [("", "Everyone")] + [(m.user_id, m.user.username) for m in members]

    def clean(self):
        data = super().clean()
        if data.get("started_from") and data.get("started_to") and data["started_from"] > data["started_to"]:
            raise forms.ValidationError("“From” must not be after “To”.")
        return data


@login_required
def time_entries_page(request, org_id: int):
    organization = organization_get_for_user(user=request.user, id=org_id)
    trackers = list(selectors.tracker_list(organization=organization))
    members: list[Membership] = list(membership_list(organization=organization))
    form = TimeEntryFilter(request.GET or None, trackers=trackers, members=members)
    filters = {}
    if form.is_bound and form.is_valid():
        data = form.cleaned_data
        filters = {"tracker_id": data["tracker"], "user_id": data["member"]}
        tz = datetime.UTC
        if data["started_from"]:
            filters["started_from"] = datetime.datetime.combine(data["started_from"], datetime.time(), tz)
        if data["started_to"]:
            filters["started_before"] = datetime.datetime.combine(
                data["started_to"] + datetime.timedelta(days=1), datetime.time(), tz)
    entries = selectors.time_entry_list(organization=organization, **filters)
    page = Paginator(entries, ENTRIES_PER_PAGE).get_page(request.GET.get("page", 1))
    query = request.GET.copy()
    query.pop("page", None)
    return render(request, "trackers/time_entries.html", {
        "organization": organization, "form": form, "page": page, "query": query.urlencode()})


urlpatterns = [
    path("", live_page, name="live"),
    path("orgs/<int:org_id>/trackers/", tracker_list_page, name="trackers"),
    path("orgs/<int:org_id>/time-entries/", time_entries_page, name="time-entries"),
    path("trackers/<int:tracker_id>/", tracker_page, name="tracker"),
    path("trackers/<int:tracker_id>/comments/", tracker_comments_fragment, name="tracker-comments-fragment"),
    path("trackers/<int:tracker_id>/comments/post", comment_post_page, name="comment-post"),
    path("comments/<int:comment_id>/change", comment_change_page, name="comment-change"),
]
