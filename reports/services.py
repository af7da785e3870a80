"""Report jobs: request (one active job per identical request), run (claim, stream, save, finish),
cancel, the stale-job sweep and the 7-day expiry.

A run claims the job by bumping `attempts` (status queued, or running with a stale heartbeat);
every later write of that run is conditional on its claim, so a cancelled job or one taken over
after a lost worker makes the old run stop at its next heartbeat. Rows are read from a
server-side cursor on a connection of their own (the job's own row is updated on the default one,
committed as it goes) and written to a local temporary file, then saved through Django's storage."""
import contextlib
import datetime as dt
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass

from celery import current_app
from django.conf import settings
from django.core.files import File
from django.core.files.storage import default_storage
from django.db import IntegrityError, connection, connections, transaction
from django.utils import timezone

from config.errors import ApplicationError, Conflict
from organizations.models import Organization
from organizations.selectors import ApiKeyPrincipal
from notifications import publish
from reports import events, selectors, writers
from reports.errors import ReportsError
from reports.models import ReportJob

logger = logging.getLogger("herald.reports")

RUN_TASK = "reports.tasks.run_report"


# --- validation shared with the stats endpoint ------------------------------------------------

def date_range_validate(*, date_from: dt.date, date_to: dt.date) -> None:
    if date_from > date_to:
        raise ApplicationError("'from' must not be after 'to'.", code=ReportsError.RANGE_INVALID,
                               extra={"from": date_from.isoformat(), "to": date_to.isoformat()})
    days = (date_to - date_from).days + 1
    if days > settings.REPORT_MAX_RANGE_DAYS:
        raise ApplicationError(f"The range may span at most {settings.REPORT_MAX_RANGE_DAYS} days.",
                               code=ReportsError.RANGE_TOO_LONG,
                               extra={"days": days, "max_days": settings.REPORT_MAX_RANGE_DAYS})


def _enqueue(job_id: int) -> None:
    """Best effort: with the broker down the job stays queued and the sweep sends it again."""
    try:
        current_app.send_task(RUN_TASK, kwargs={"job_id": job_id})
    except Exception:  # noqa: BLE001 - any broker failure; the sweep is the safety net
        logger.warning("report enqueue failed; the sweep will retry", extra={"job_id": job_id}, exc_info=True)


# --- request and cancel --------------------------------------------------------------------------

def report_job_request(*, organization: Organization, requester, kind: str, format: str,
                       date_from: dt.date, date_to: dt.date) -> tuple[ReportJob, bool]:
    """(job, created). The same request by the same requester while one is queued or running
    returns that job; the partial unique constraint settles a race between two requests."""
    if kind not in ReportJob.Kind.values:
        raise ApplicationError(f"Unknown report kind {kind!r}.", code=ReportsError.UNKNOWN_KIND,
                               extra={"allowed": ReportJob.Kind.values})
    if format not in ReportJob.Format.values:
        raise ApplicationError(f"Unknown report format {format!r}.", code=ReportsError.UNKNOWN_FORMAT,
                               extra={"allowed": ReportJob.Format.values})
    date_range_validate(date_from=date_from, date_to=date_to)
    who = ({"api_key": requester.api_key, "requested_by": None} if isinstance(requester, ApiKeyPrincipal)
           else {"requested_by": requester, "api_key": None})
    fields = {"organization": organization, "kind": kind, "format": format, "date_from": date_from,
              "date_to": date_to, **who}
    with transaction.atomic():
        existing = ReportJob.objects.filter(**fields, status__in=ReportJob.ACTIVE).first()
        if existing is not None:
            return existing, False
        try:
            with transaction.atomic():
                job = ReportJob.objects.create(**fields, heartbeat_at=timezone.now())
        except IntegrityError:
            existing = ReportJob.objects.filter(**fields, status__in=ReportJob.ACTIVE).first()
            if existing is None:
                raise
            return existing, False
        transaction.on_commit(lambda: _enqueue(job.pk))
    return job, True


def report_job_cancel(*, job: ReportJob) -> ReportJob:
    """Queued or running -> cancelled at once; a running worker notices at its next heartbeat."""
    with transaction.atomic():
        updated = ReportJob.objects.filter(pk=job.pk, status__in=ReportJob.ACTIVE).update(
            status=ReportJob.Status.CANCELLED, finished_at=timezone.now())
        job.refresh_from_db()
        if not updated:
            raise Conflict(f"The report is {job.status}; only queued or running reports can be cancelled.",
                           code=ReportsError.REPORT_NOT_CANCELLABLE, extra={"status": job.status})
        _push_progress(job)
    return job


# --- running ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunResult:
    kind: str  # "done" | "skipped" (finished or claimed elsewhere for good) | "busy" (retry after `wait`)
    wait: float = 0.0


class _Lost(Exception):
    """The run's claim is gone: cancelled, or taken over after its heartbeat went stale."""


class _Heartbeat:
    """Keeps `heartbeat_at` fresh from a thread of its own (its own DB connection) while the run
    streams, counts or saves; sets `lost` when the claim no longer holds."""

    def __init__(self, job_id: int, attempt: int):
        self.job_id, self.attempt = job_id, attempt
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"report-{job_id}-heartbeat", daemon=True)

    def _run(self) -> None:
        try:
            while not self._stop.wait(settings.REPORT_HEARTBEAT_SECONDS):
                if not _claimed(self.job_id, self.attempt).update(heartbeat_at=timezone.now()):
                    self.lost.set()
                    return
        except Exception:  # noqa: BLE001 - a database blip: the sweep decides if the run is stale
            logger.warning("report heartbeat failed", extra={"job_id": self.job_id}, exc_info=True)
        finally:
            connection.close()  # this thread's connection

    def __enter__(self) -> "_Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def _claimed(job_id: int, attempt: int):
    return ReportJob.objects.filter(pk=job_id, attempts=attempt, status=ReportJob.Status.RUNNING)


def _claim(job_id: int) -> tuple[int | None, ReportJob | None]:
    stale = timezone.now() - dt.timedelta(seconds=settings.REPORT_STALE_SECONDS)
    with connection.cursor() as cur:
        cur.execute(
            """
            UPDATE reports_reportjob
               SET status = 'running', attempts = attempts + 1, started_at = now(), heartbeat_at = now(),
                   progress = 0, rows = 0, error = ''
             WHERE id = %s AND attempts < %s
               AND (status = 'queued' OR (status = 'running' AND heartbeat_at < %s))
            RETURNING attempts
            """, [job_id, settings.REPORT_MAX_ATTEMPTS, stale])
        row = cur.fetchone()
    job = ReportJob.objects.select_related("organization").filter(pk=job_id).first()
    return (row[0] if row else None), job


def report_job_run(*, job_id: int) -> RunResult:
    """Run a job once claimed; idempotent for a redelivered message."""
    attempt, job = _claim(job_id)
    if job is None:
        return RunResult("skipped")
    if attempt is None:
        if job.status == ReportJob.Status.RUNNING:  # alive elsewhere (or not stale yet): look again later
            return RunResult("busy", wait=float(settings.REPORT_STALE_SECONDS))
        if job.status == ReportJob.Status.QUEUED:  # claimed too often: a job that kills its worker
            _finish_failed(job_id, None, f"gave up after {job.attempts} attempts (worker lost)")
        return RunResult("skipped")
    _push_progress(job)
    try:
        with _Heartbeat(job_id, attempt) as heartbeat:
            name, size, rows = _generate(job, attempt, heartbeat)
    except _Lost:
        logger.info("report run lost its claim", extra={"job_id": job_id, "attempt": attempt})
        return RunResult("skipped")
    except Exception as exc:  # noqa: BLE001 - the job records why it failed
        logger.exception("report failed", extra={"job_id": job_id})
        _finish_failed(job_id, attempt, f"{type(exc).__name__}: {exc}"[:1000])
        return RunResult("done")
    with transaction.atomic():
        now = timezone.now()
        done = _claimed(job_id, attempt).update(
            status=ReportJob.Status.SUCCEEDED, progress=100, rows=rows, total_rows=rows, file=name,
            file_size=size, finished_at=now, heartbeat_at=now,
            expires_at=now + dt.timedelta(days=settings.REPORT_RETENTION_DAYS))
        if not done:  # cancelled while saving
            transaction.on_commit(lambda: default_storage.delete(name))
            return RunResult("skipped")
        job.refresh_from_db()
        _push_progress(job)
        _notify_ready(job)
    return RunResult("done")


def _finish_failed(job_id: int, attempt: int | None, error: str) -> None:
    with transaction.atomic():
        jobs = ReportJob.objects.filter(pk=job_id, status__in=ReportJob.ACTIVE)
        if attempt is not None:
            jobs = jobs.filter(attempts=attempt)
        if jobs.update(status=ReportJob.Status.FAILED, error=error, finished_at=timezone.now()):
            _push_progress(ReportJob.objects.get(pk=job_id))


def _generate(job: ReportJob, attempt: int, heartbeat: _Heartbeat) -> tuple[str, int, int]:
    """Stream the rows into a temporary file, then save it; returns (storage name, size, rows)."""
    escape = job.format == ReportJob.Format.CSV
    columns, sql, count_sql, params = selectors.report_query(job=job, time_zone=job.organization.time_zone,
                                                            escape=escape)
    stream = connections.create_connection("default")  # not in the handler: closed below
    try:
        stream.ensure_connection()
        raw = stream.connection
        with raw.cursor() as cur:
            cur.execute(count_sql, params)
            total = cur.fetchone()[0]
        if heartbeat.lost.is_set():
            raise _Lost
        _claimed(job.pk, attempt).update(total_rows=total)
        with tempfile.TemporaryDirectory(prefix="herald-report-") as tmpdir:
            path = os.path.join(tmpdir, f"report.{job.format}")
            rows = _write(job, attempt, heartbeat, raw, columns, sql, params, total, path, tmpdir)
            if heartbeat.lost.is_set():
                raise _Lost
            size = os.path.getsize(path)
            with open(path, "rb") as fh:
                name = default_storage.save(
                    f"reports/{job.organization_id}/{job.pk}-{attempt}-{job.download_name}", File(fh))
        return name, size, rows
    finally:
        stream.close()


def _write(job, attempt, heartbeat, raw, columns, sql, params, total, path, tmpdir) -> int:
    with contextlib.ExitStack() as stack:
        if job.format == ReportJob.Format.CSV:
            writer = writers.CsvWriter(stack.enter_context(open(path, "wb")))
        else:
            writer = writers.XlsxWriter(path, tmpdir=tmpdir)
        writer.header(columns)
        rows = _stream(job, attempt, heartbeat, raw, sql, params, total, writer)
        writer.close()
    return rows


def _stream(job, attempt, heartbeat, raw, sql, params, total, writer) -> int:
    rows, last_report = 0, time.monotonic()
    chunk = settings.REPORT_CHUNK_ROWS
    with raw.transaction(), raw.cursor(name=f"report_{job.pk}_{attempt}") as cur:
        cur.itersize = chunk
        cur.execute(sql, params)
        while batch := cur.fetchmany(chunk):
            writer.rows(batch)
            rows += len(batch)
            if heartbeat.lost.is_set():
                raise _Lost
            if time.monotonic() - last_report >= settings.REPORT_PROGRESS_SECONDS:
                last_report = time.monotonic()
                progress = min(99, rows * 100 // total) if total else 99
                if not _claimed(job.pk, attempt).update(progress=progress, rows=rows, heartbeat_at=timezone.now()):
                    raise _Lost
                job.progress, job.rows, job.status = progress, rows, ReportJob.Status.RUNNING
                _push_progress(job)
    return rows


# --- notifications ---------------------------------------------------------------------------------

def _push_progress(job: ReportJob) -> None:
    """`report.progress` to the requester's sockets, after commit (at once outside a transaction).
    Jobs requested with an API key have no sockets to tell."""
    if job.requested_by_id:
        publish.push_user(user_id=job.requested_by_id, message=events.report_progress_message(job))


def _notify_ready(job: ReportJob) -> None:
    """A `report.ready` entry of the organization's log for the requester only (a private kind:
    their inbox, their email stream through the email limit, their sockets; never Slack or
    webhooks). In the caller's transaction: a rolled-back success announces nothing. A job
    requested with an API key has nobody to tell."""
    if not job.requested_by_id:
        return
    publish.publish(
        organization_id=job.organization_id, kind="report.ready", audience=[job.requested_by_id],
        payload={"report_id": job.id, "report_kind": job.kind, "format": job.format,
                 "from": job.date_from.isoformat(), "to": job.date_to.isoformat(), "rows": job.rows,
                 "download_url": f"/api/v1/reports/{job.id}/download"})


# --- maintenance -----------------------------------------------------------------------------------

def reports_sweep() -> dict:
    """Running jobs whose heartbeat went stale (a killed worker) go back to queued and are sent
    again; queued jobs not picked up for REPORT_RESEND_SECONDS (a message lost with the broker
    down at commit, or a long queue) are sent again. Extra messages are harmless: a run claims
    the job first, and a second one finds it claimed."""
    now = timezone.now()
    stale = now - dt.timedelta(seconds=settings.REPORT_STALE_SECONDS)
    with transaction.atomic():
        requeued = list(ReportJob.objects.filter(status=ReportJob.Status.RUNNING, heartbeat_at__lt=stale)
                        .select_for_update(skip_locked=True).values_list("id", flat=True)[:500])
        ReportJob.objects.filter(id__in=requeued).update(status=ReportJob.Status.QUEUED, heartbeat_at=now)
        unsent = now - dt.timedelta(seconds=settings.REPORT_RESEND_SECONDS)
        resend = list(ReportJob.objects.filter(status=ReportJob.Status.QUEUED, heartbeat_at__lt=unsent)
                      .select_for_update(skip_locked=True).values_list("id", flat=True)[:500])
        ReportJob.objects.filter(id__in=resend).update(heartbeat_at=now)
        for job_id in requeued + resend:
            transaction.on_commit(lambda job_id=job_id: _enqueue(job_id))
    if requeued:
        logger.warning("stale report runs requeued", extra={"job_ids": requeued})
    return {"requeued": len(requeued), "resent": len(resend)}


def reports_expire(*, batch: int = 500) -> int:
    """Delete files of succeeded reports past expires_at; the job row stays (status, counts)."""
    expired = 0
    while True:
        with transaction.atomic():
            jobs = list(ReportJob.objects.filter(status=ReportJob.Status.SUCCEEDED, expired=False,
                                                 expires_at__lt=timezone.now())
                        .select_for_update(skip_locked=True).only("id", "file")[:batch])
            if not jobs:
                return expired
            for job in jobs:
                if job.file:
                    default_storage.delete(job.file)
            ReportJob.objects.filter(id__in=[j.id for j in jobs]).update(expired=True, file="")
            expired += len(jobs)
