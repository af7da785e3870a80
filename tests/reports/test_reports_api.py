"""Report jobs through the API; runs are driven by calling the service the worker calls (the
real worker paths are in test_reports_stack.py)."""
import csv
import datetime as dt
import io
import re
import zipfile

import pytest
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from django.utils import timezone

from organizations.services import api_key_create
from reports import services
from reports.models import ReportJob
from tests.conftest import assert_error, queries_for
from tests.organizations.factories import UserFactory
from tests.reports.factories import ReportJobFactory, seed_entries
from trackers.models import Tracker

pytestmark = pytest.mark.django_db
START = dt.datetime(2026, 3, 1, 8, 0, tzinfo=dt.UTC)
TRANSACTIONAL = pytest.mark.django_db(transaction=True)
BODY = {"kind": "time_entries", "from": "2026-03-01", "to": "2026-03-31", "format": "csv"}


@pytest.fixture
def media(settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path)
    settings.REPORT_PROGRESS_SECONDS = 0.0
    return tmp_path


def org_url(org) -> str:
    return f"/api/v1/orgs/{org.id}/reports/"


def seeded(org_with_members, count=25):
    tracker = Tracker.objects.get(organization=org_with_members.org)
    seed_entries(tracker=tracker, users=[org_with_members.owner, org_with_members.member], count=count,
                 start=START)
    return tracker


def run(job_id: int) -> ReportJob:
    assert services.report_job_run(job_id=job_id).kind == "done"
    return ReportJob.objects.get(pk=job_id)


@TRANSACTIONAL  # the run streams on a connection of its own: the data must be committed
def test_csv_report_end_to_end(auth_client, org_with_members, media):
    tracker = seeded(org_with_members)
    tracker.name = "=HYPERLINK(evil)"
    tracker.save(update_fields=["name"])
    client = auth_client(org_with_members.member)
    response = client.post(org_url(org_with_members.org), BODY, format="json")
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["status"] == "queued" and body["progress"] == 0 and body["from"] == "2026-03-01"

    not_ready = client.get(f"/api/v1/reports/{body['id']}/download")
    assert_error(not_ready, 409, "report_not_ready")

    job = run(body["id"])
    assert (job.status, job.progress, job.rows, job.total_rows) == ("succeeded", 100, 25, 25)
    detail = client.get(f"/api/v1/reports/{job.id}").json()
    assert detail["status"] == "succeeded" and detail["rows"] == 25 and detail["started_at"] and detail["finished_at"]
    assert detail["error"] == "" and detail["download_url"] == f"/api/v1/reports/{job.id}/download"

    download = client.get(detail["download_url"])
    assert download.status_code == 200
    assert download["Content-Type"] == "text/csv; charset=utf-8"
    assert download["Content-Disposition"] == 'attachment; filename="time_entries_20260301-20260331.csv"'
    table = list(csv.reader(io.StringIO(b"".join(download.streaming_content).decode())))
    assert table[0] == ["entry_id", "tracker", "started_at", "stopped_at", "duration_seconds", "started_by",
                        "stopped_by", "notes"]
    assert len(table) == 26
    assert table[1][1] == "'=HYPERLINK(evil)"  # a formula-looking name is neutralized
    assert table[1][2:5] == ["2026-03-01T08:00:00", "2026-03-01T08:05:00", "300"]
    assert table[1][5] == org_with_members.owner.username


@TRANSACTIONAL  # the run streams on a connection of its own: the data must be committed
def test_xlsx_member_hours_report(auth_client, org_with_members, media):
    seeded(org_with_members, count=12)  # every 10 min, two members in turn: 6 x 5 min each
    client = auth_client(org_with_members.owner)
    response = client.post(org_url(org_with_members.org), {**BODY, "kind": "member_hours", "format": "xlsx"},
                           format="json")
    job = run(response.json()["id"])
    assert job.status == "succeeded" and job.rows == 2
    download = client.get(f"/api/v1/reports/{job.id}/download")
    assert download["Content-Type"] == "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    assert download["Content-Disposition"].endswith('filename="member_hours_20260301-20260331.xlsx"')
    book = zipfile.ZipFile(io.BytesIO(b"".join(download.streaming_content)))
    sheet = book.read("xl/worksheets/sheet1.xml").decode()
    strings = book.read("xl/sharedStrings.xml").decode() if "xl/sharedStrings.xml" in book.namelist() else sheet
    assert "member" in strings and org_with_members.owner.username in strings
    assert re.findall(r"<v>0\.5</v>", sheet), sheet[:2000]  # 6 x 5 minutes = 0.5 h per member


def test_the_run_is_sent_only_after_commit(auth_client, org_with_members, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = auth_client(org_with_members.member).post(org_url(org_with_members.org), BODY, format="json")
    assert response.status_code == 202 and len(callbacks) == 1


@TRANSACTIONAL  # the run streams on a connection of its own: the data must be committed
def test_same_request_while_active_returns_the_same_job(auth_client, org_with_members, media):
    client = auth_client(org_with_members.member)
    first = client.post(org_url(org_with_members.org), BODY, format="json")
    again = client.post(org_url(org_with_members.org), BODY, format="json")
    assert first.status_code == 202 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    other_member = auth_client(org_with_members.admin).post(org_url(org_with_members.org), BODY, format="json")
    assert other_member.status_code == 202 and other_member.json()["id"] != first.json()["id"]
    run(first.json()["id"])
    after = client.post(org_url(org_with_members.org), BODY, format="json")
    assert after.status_code == 202 and after.json()["id"] != first.json()["id"]  # finished: a new job
    assert ReportJob.objects.count() == 3


def test_the_database_refuses_a_second_active_job_for_the_same_request(org_with_members):
    job = ReportJobFactory(organization=org_with_members.org, requested_by=org_with_members.member)
    with pytest.raises(IntegrityError), transaction.atomic():
        ReportJobFactory(organization=org_with_members.org, requested_by=org_with_members.member)
    ReportJob.objects.filter(pk=job.pk).update(status="running")
    with pytest.raises(IntegrityError), transaction.atomic():
        ReportJobFactory(organization=org_with_members.org, requested_by=org_with_members.member)
    ReportJob.objects.filter(pk=job.pk).update(status="failed")
    ReportJobFactory(organization=org_with_members.org, requested_by=org_with_members.member)


@pytest.mark.parametrize("body, code", [
    ({**BODY, "from": "2026-04-01", "to": "2026-03-01"}, "range_invalid"),
    ({**BODY, "from": "2025-01-01", "to": "2026-03-01"}, "range_too_long"),
    ({**BODY, "kind": "everything"}, "unknown_report_kind"),
    ({**BODY, "format": "pdf"}, "unknown_report_format"),
    ({**BODY, "from": "yesterday"}, "validation_error"),
    ({**BODY, "colour": "red"}, "validation_error"),
    ({"kind": "time_entries"}, "validation_error"),
])
def test_bad_requests_are_400_with_a_code_and_write_nothing(auth_client, org_with_members, body, code):
    response = auth_client(org_with_members.member).post(org_url(org_with_members.org), body, format="json")
    assert_error(response, 400, code)
    assert not ReportJob.objects.exists()


def test_a_range_of_exactly_a_year_is_accepted(auth_client, org_with_members, media):
    body = {**BODY, "from": "2025-03-01", "to": "2026-03-01"}  # 366 days, both ends included
    assert auth_client(org_with_members.member).post(org_url(org_with_members.org), body,
                                                     format="json").status_code == 202


def test_another_orgs_report_is_404_on_every_endpoint(auth_client, org_with_members, other_org, media):
    job = ReportJobFactory(organization=other_org.org, requested_by=other_org.owner)
    client = auth_client(org_with_members.owner)
    for method, url in [("get", f"/api/v1/reports/{job.id}"), ("get", f"/api/v1/reports/{job.id}/download"),
                        ("post", f"/api/v1/reports/{job.id}/cancel")]:
        assert_error(getattr(client, method)(url), 404, "report_not_found")
    assert_error(client.get(org_url(other_org.org)), 404, "organization_not_found")
    assert_error(client.post(org_url(other_org.org), BODY, format="json"), 404, "organization_not_found")
    assert ReportJob.objects.get(pk=job.pk).status == "queued"


def test_a_member_sees_only_their_reports_an_admin_all(auth_client, org_with_members, media):
    mine = ReportJobFactory(organization=org_with_members.org, requested_by=org_with_members.member)
    theirs = ReportJobFactory(organization=org_with_members.org, requested_by=org_with_members.admin)
    member = auth_client(org_with_members.member)
    assert [j["id"] for j in member.get(org_url(org_with_members.org)).json()["results"]] == [mine.id]
    assert_error(member.get(f"/api/v1/reports/{theirs.id}"), 404, "report_not_found")
    admin_ids = [j["id"] for j in auth_client(org_with_members.owner).get(org_url(org_with_members.org))
                 .json()["results"]]
    assert admin_ids == [theirs.id, mine.id]


def test_list_query_count_is_constant(auth_client, org_with_members, django_assert_max_num_queries):
    client = auth_client(org_with_members.owner)
    for _ in range(3):
        ReportJobFactory(organization=org_with_members.org, requested_by=UserFactory())
    client.get(org_url(org_with_members.org))  # the token's first use writes last_used_at
    few, _ = queries_for(django_assert_max_num_queries, 10, lambda: client.get(org_url(org_with_members.org)))
    for _ in range(20):
        ReportJobFactory(organization=org_with_members.org, requested_by=UserFactory())
    many, response = queries_for(django_assert_max_num_queries, 10,
                                 lambda: client.get(org_url(org_with_members.org)))
    assert response.json()["count"] == 23
    assert many == few


def test_cancel_a_queued_job_then_the_run_does_nothing(auth_client, org_with_members, media):
    client = auth_client(org_with_members.member)
    job_id = client.post(org_url(org_with_members.org), BODY, format="json").json()["id"]
    response = client.post(f"/api/v1/reports/{job_id}/cancel")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    assert services.report_job_run(job_id=job_id).kind == "skipped"
    assert ReportJob.objects.get(pk=job_id).status == "cancelled"
    assert_error(client.post(f"/api/v1/reports/{job_id}/cancel"), 409, "report_not_cancellable")
    assert_error(client.get(f"/api/v1/reports/{job_id}/download"), 409, "report_not_ready")


def test_api_key_can_request_and_its_repeat_is_the_same_job(api_key_client, org_with_members, media):
    _, key = api_key_create(organization=org_with_members.org, name="ci", created_by=org_with_members.owner)
    client = api_key_client(key)
    first = client.post(org_url(org_with_members.org), BODY, format="json")
    again = client.post(org_url(org_with_members.org), BODY, format="json")
    assert first.status_code == 202 and again.json()["id"] == first.json()["id"]
    assert first.json()["requested_by"].startswith("api-key:")


@TRANSACTIONAL  # the run streams on a connection of its own: the data must be committed
def test_a_run_that_lost_its_claim_stops_and_a_stale_run_is_taken_over(org_with_members, media, settings):
    seeded(org_with_members, count=5)
    job = ReportJobFactory(organization=org_with_members.org, requested_by=org_with_members.member,
                           date_from=dt.date(2026, 3, 1), date_to=dt.date(2026, 3, 2))
    ReportJob.objects.filter(pk=job.pk).update(status="running", attempts=1, heartbeat_at=START)  # a dead run
    settings.REPORT_STALE_SECONDS = 60
    assert services.report_job_run(job_id=job.pk).kind == "done"  # heartbeat long stale: taken over
    job.refresh_from_db()
    assert (job.status, job.attempts, job.rows) == ("succeeded", 2, 5)


def test_a_fresh_running_job_is_left_alone(org_with_members, media):
    job = ReportJobFactory(organization=org_with_members.org, requested_by=org_with_members.member)
    ReportJob.objects.filter(pk=job.pk).update(status="running", attempts=1, heartbeat_at=timezone.now())
    result = services.report_job_run(job_id=job.pk)
    assert result.kind == "busy" and result.wait > 0
    assert ReportJob.objects.get(pk=job.pk).attempts == 1


def test_sweep_requeues_stale_and_gives_up_after_max_attempts(org_with_members, media, settings,
                                                              django_capture_on_commit_callbacks):
    settings.REPORT_MAX_ATTEMPTS = 2
    job = ReportJobFactory(organization=org_with_members.org, requested_by=org_with_members.member)
    ReportJob.objects.filter(pk=job.pk).update(status="running", attempts=2, heartbeat_at=START)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        assert services.reports_sweep() == {"requeued": 1, "resent": 0}
    assert len(callbacks) == 1
    assert ReportJob.objects.get(pk=job.pk).status == "queued"
    assert services.report_job_run(job_id=job.pk).kind == "skipped"
    job.refresh_from_db()
    assert job.status == "failed" and "attempts" in job.error


@TRANSACTIONAL  # the run streams on a connection of its own: the data must be committed
def test_expiry_deletes_the_file_and_download_says_gone(auth_client, org_with_members, media):
    seeded(org_with_members, count=3)
    client = auth_client(org_with_members.member)
    job = run(client.post(org_url(org_with_members.org), BODY, format="json").json()["id"])
    assert default_storage.exists(job.file)
    assert job.expires_at - job.finished_at == dt.timedelta(days=7)
    assert services.reports_expire() == 0
    ReportJob.objects.filter(pk=job.pk).update(expires_at=START)
    assert services.reports_expire() == 1
    assert not default_storage.exists(job.file)
    assert_error(client.get(f"/api/v1/reports/{job.id}/download"), 410, "report_expired")


@TRANSACTIONAL  # the run streams on a connection of its own: the data must be committed
def test_a_failing_query_marks_the_job_failed_with_the_error(org_with_members, media, monkeypatch):
    job = ReportJobFactory(organization=org_with_members.org, requested_by=org_with_members.member)

    def broken(**kwargs):
        return ["a"], "SELECT 1/0", "SELECT 1", {}

    monkeypatch.setattr(services.selectors, "report_query", broken)
    assert services.report_job_run(job_id=job.pk).kind == "done"
    job.refresh_from_db()
    assert job.status == "failed" and "division by zero" in job.error and job.finished_at
