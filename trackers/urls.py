from django.urls import path

from trackers import apis

urlpatterns = [
    path("orgs/<int:org_id>/trackers/", apis.TrackerListCreateApi.as_view(), name="org-trackers"),
    path("trackers/<int:tracker_id>/start", apis.TrackerStartApi.as_view(), name="tracker-start"),
    path("trackers/<int:tracker_id>/stop", apis.TrackerStopApi.as_view(), name="tracker-stop"),
    path("trackers/<int:tracker_id>/comments/", apis.TrackerCommentsApi.as_view(), name="tracker-comments"),
    path("time-entries/<int:entry_id>", apis.TimeEntryDetailApi.as_view(), name="time-entry-detail"),
    path("time-entries/<int:entry_id>/comments/", apis.TimeEntryCommentsApi.as_view(), name="time-entry-comments"),
    path("comments/<int:comment_id>", apis.CommentDetailApi.as_view(), name="comment-detail"),
]
