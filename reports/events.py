"""Shapes of the reports app's real-time messages (sent with notifications.publish.push_user)."""
from reports.models import ReportJob


def report_state(job: ReportJob) -> dict:
    """The job as `GET /api/v1/reports/{id}` shows it (the fields a progress bar needs and more)."""
    succeeded = job.status == ReportJob.Status.SUCCEEDED and not job.expired
    return {
        "id": job.id, "organization_id": job.organization_id, "kind": job.kind, "format": job.format,
        "from": job.date_from.isoformat(), "to": job.date_to.isoformat(), "status": job.status,
        "progress": job.progress, "rows": job.rows, "total_rows": job.total_rows, "error": job.error,
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "download_url": f"/api/v1/reports/{job.id}/download" if succeeded else None,
    }


def report_progress_message(job: ReportJob) -> dict:
    return {"type": "report.progress", "report": report_state(job)}
