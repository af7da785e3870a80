"""Report jobs on real Celery workers and beat: a job runs to the end with progress, and a worker
killed mid-run (SIGKILL of its whole process group) leaves no job stuck "running": beat's sweep
queues it again once its heartbeat is stale and another worker finishes it."""
import csv
import datetime as dt
import json
import threading
import time

import pytest
from django.core.files.storage import default_storage

from organizations import services as org_services
from reports import services
from reports.models import ReportJob
from tests.reports.factories import seed_entries
from notifications.models import Notification
from tests.support.stack import DELIVERY_QUEUES, Stack
from trackers.models import Tracker
from websockets.sync.client import connect

pytestmark = [pytest.mark.stack, pytest.mark.django_db(transaction=True), pytest.mark.timeout(180)]
START = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
FAST = {"REPORT_STALE_SECONDS": "3", "REPORT_HEARTBEAT_SECONDS": "0.5", "REPORT_SWEEP_INTERVAL_SECONDS": "1",
        "REPORT_PROGRESS_SECONDS": "0.1", "REPORT_CHUNK_ROWS": "2000",
        "REPORT_RESEND_SECONDS": "3"}


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Socket(threading.Thread):
    """A member's /ws/ connection recording every message."""

    def __init__(self, url: str, origin: str, token: str):
        super().__init__(daemon=True)
        self.url, self.origin, self.token = url, origin, token
        self.messages: list[dict] = []
        self.ready, self.stopping = threading.Event(), threading.Event()

    def run(self):
        with connect(f"{self.url}/ws/?token={self.token}", origin=self.origin, open_timeout=15) as ws:
            self.messages.append(json.loads(ws.recv(timeout=15)))  # hello
            self.ready.set()
            while not self.stopping.is_set():
                try:
                    self.messages.append(json.loads(ws.recv(timeout=0.2)))
                except TimeoutError:
                    continue

    def progress(self) -> list[dict]:
        return [m["report"] for m in list(self.messages) if m.get("type") == "report.progress"]


def job_state(job_id: int) -> ReportJob:
    return ReportJob.objects.get(pk=job_id)


@pytest.fixture
def data(org_with_members):
    tracker = Tracker.objects.get(organization=org_with_members.org)
    return org_with_members, tracker


def test_a_job_runs_on_a_worker_with_progress_pushed_over_the_websocket(data, settings):
    members, tracker = data
    seed_entries(tracker=tracker, users=[members.owner, members.member], count=60_000, start=START, step_seconds=30)
    member_token = org_services.user_token_create(user=members.member)
    owner_token = org_services.user_token_create(user=members.owner)
    with Stack(env=FAST) as stack:
        stack.start_daphne("web")
        stack.start_worker("reports", ["reports"])
        stack.start_worker("orgs", DELIVERY_QUEUES)  # the in-app fan-out of report.ready
        stack.wait_ready(timeout=60)
        member_ws = Socket(stack.ws_url(), stack.url(), member_token)
        owner_ws = Socket(stack.ws_url(), stack.url(), owner_token)
        for ws in (member_ws, owner_ws):
            ws.start()
            assert ws.ready.wait(20)
        with stack.dump_logs_on_failure(lines=60):
            job, created = services.report_job_request(
                organization=members.org, requester=members.member, kind="time_entries", format="csv",
                date_from=dt.date(2026, 3, 1), date_to=dt.date(2026, 3, 31))
            assert created
            seen = set()

            def finished():
                state = job_state(job.pk)
                seen.add((state.status, state.progress))
                return state if state.status in ReportJob.FINISHED else None

            final = wait_for(finished, 60, "the job to finish", interval=0.02)
            pushed = wait_for(lambda: (p := member_ws.progress()) and p[-1]["status"] == "succeeded" and p, 10,
                              "the last report.progress message")
            ready = wait_for(lambda: [m for m in list(member_ws.messages) if m.get("type") == "notification.created"
                                      and m.get("kind") == "report.ready"], 20, "the report.ready notification")
            redacted = wait_for(lambda: [m for m in list(owner_ws.messages) if m.get("kind") == "report.ready"], 10,
                                "the owner's redacted report.ready entry")
            for ws in (member_ws, owner_ws):
                ws.stopping.set()
                ws.join(timeout=5)
    assert final.status == "succeeded", final.error
    assert [p["id"] for p in pushed] == [job.pk] * len(pushed)
    assert any(p["status"] == "running" and 0 < p["progress"] < 100 for p in pushed), pushed
    assert [p["progress"] for p in pushed] == sorted(p["progress"] for p in pushed)
    assert pushed[-1]["progress"] == 100 and pushed[-1]["download_url"] == f"/api/v1/reports/{job.pk}/download"
    assert owner_ws.progress() == []  # only the requester's sockets hear of it
    # report.ready: the requester's inbox row and notification.created; everyone else only the seq.
    assert ready[0]["title"] == "Your report is ready" and "60000 rows" in ready[0]["body"]
    inbox = list(Notification.objects.filter(kind="report.ready").values_list("recipient_id", "data"))
    assert [(r, d["report_id"]) for r, d in inbox] == [(members.member.id, job.pk)]
    assert redacted == [{"type": "log.entry", "org_id": members.org.id, "seq": redacted[0]["seq"],
                         "kind": "report.ready", "private": True}]
    assert not any(m.get("type") == "notification.created" for m in owner_ws.messages)
    assert final.rows == 60_000 and final.progress == 100 and final.attempts == 1
    assert any(status == "running" and 0 < progress < 100 for status, progress in seen), seen
    with default_storage.open(final.file, "r") as fh:
        assert sum(1 for _ in csv.reader(fh)) == 60_001


def test_a_killed_worker_leaves_no_job_stuck_running(data):
    members, tracker = data
    seed_entries(tracker=tracker, users=[members.owner, members.member], count=200_000, start=START,
                 step_seconds=10)
    with Stack(env=FAST) as stack:
        stack.start_worker("reports-a", ["reports"])
        stack.start_worker("maintenance", ["maintenance"])
        stack.start_beat()
        stack.wait_ready(timeout=60)
        with stack.dump_logs_on_failure(lines=80):
            job, _ = services.report_job_request(
                organization=members.org, requester=members.member, kind="time_entries", format="csv",
                date_from=dt.date(2026, 3, 1), date_to=dt.date(2026, 3, 31))
            wait_for(lambda: job_state(job.pk).rows > 0, 60, "the first worker to make progress", interval=0.02)
            stack.kill("reports-a")  # SIGKILL to the whole group: no chance to clean up or ack
            assert job_state(job.pk).status == "running"

            stack.start_worker("reports-b", ["reports"])
            final = wait_for(lambda: (s := job_state(job.pk)).status in ReportJob.FINISHED and s, 120,
                             "the job to be swept and finished by the second worker")
            assert "sweep_reports" in stack.log("maintenance")
            assert "run_report" in stack.log("reports-b")  # the second worker finished it
    assert final.status == "succeeded", final.error
    assert final.attempts == 2 and final.rows == 200_000 and final.progress == 100
    assert default_storage.size(final.file) == final.file_size
