"""Celery entry points of the reports app. Thin: load by id, call a service, apply its verdict.
Routing: run_report to the reports queue, sweep/purge to maintenance (config.routing)."""
from celery import shared_task
from django.conf import settings
from django.db import OperationalError

from reports import activity, services
from reports.search import top


@shared_task(name="reports.tasks.run_report", acks_late=True, reject_on_worker_lost=True,
             time_limit=settings.REPORT_TIME_LIMIT, soft_time_limit=settings.REPORT_TIME_LIMIT - 30,
             autoretry_for=(OperationalError,), retry_backoff=True, max_retries=None)
def run_report(*, job_id: int) -> str:
    result = services.report_job_run(job_id=job_id)
    if result.kind == "busy":  # claimed by a run that may be dead: look again once it could be stale
        run_report.apply_async(kwargs={"job_id": job_id}, countdown=result.wait)
    return result.kind


@shared_task(name="reports.tasks.sweep_reports", acks_late=True, time_limit=60)
def sweep_reports() -> dict:
    return services.reports_sweep()


@shared_task(name="reports.tasks.purge_expired_reports", acks_late=True, time_limit=600)
def purge_expired_reports() -> int:
    return services.reports_expire()


@shared_task(name="reports.tasks.purge_activity_log", acks_late=True, time_limit=600)
def purge_activity_log() -> dict:
    return activity.activity_maintain()


@shared_task(name="reports.tasks.refresh_search_top", acks_late=True, time_limit=600)
def refresh_search_top() -> dict:
    return top.search_top_refresh()
