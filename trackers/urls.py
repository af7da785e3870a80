from django.urls import path

from trackers import apis

urlpatterns = [
    path("orgs/<int:org_id>/trackers/", apis.TrackerListCreateApi.as_view(), name="org-trackers"),
    path("orgs/<int:org_id>/events/", apis.EventListApi.as_view(), name="org-events"),
    path("trackers/<int:tracker_id>/start", apis.TrackerStartApi.as_view(), name="tracker-start"),
    path("trackers/<int:tracker_id>/stop", apis.TrackerStopApi.as_view(), name="tracker-stop"),
]
