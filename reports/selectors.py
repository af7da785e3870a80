"""Reads of report jobs and the activity log, through the organization access helpers (404 for
another organization's or another member's report)."""
from django.db import connection
from django.db.models import Q, QuerySet

from config.errors import NotFound
from organizations.models import Membership, Organization
from organizations.selectors import ApiKeyPrincipal, organization_list_for_user, role_in_organization
from reports.errors import ReportsError
from reports.models import ActivityLog, ReportJob


def _visible_to(*, user) -> Q:
    """A member sees the reports they requested, admins (and the org's API keys) every report of
    their organizations."""
    if isinstance(user, ApiKeyPrincipal):
        return Q(organization_id=user.organization_id)
    admin_orgs = Membership.objects.filter(user=user, role__in=Membership.ADMIN_ROLES).values("organization_id")
    return Q(requested_by=user) | Q(organization_id__in=admin_orgs)


def report_list(*, organization: Organization, user) -> QuerySet[ReportJob]:
    jobs = ReportJob.objects.filter(organization=organization).select_related("requested_by", "api_key")
    if not isinstance(user, ApiKeyPrincipal) and \
            role_in_organization(user=user, organization_id=organization.id) not in Membership.ADMIN_ROLES:
        jobs = jobs.filter(requested_by=user)
    return jobs.order_by("-created_at", "-id")


def report_get_for_user(*, user, id: int) -> ReportJob:
    job = (ReportJob.objects.filter(id=id, organization__in=organization_list_for_user(user=user))
           .filter(_visible_to(user=user)).select_related("requested_by", "api_key").first())
    if job is None:
        raise NotFound("Report not found.", code=ReportsError.REPORT_NOT_FOUND)
    return job


def activity_list(*, organization_id: int) -> QuerySet[ActivityLog]:
    return ActivityLog.objects.filter(organization_id=organization_id).order_by("-created_at", "-id")


# --- report rows and stats: raw SQL, streamed or aggregated in Postgres -------------------------

def _csv_safe(expr: str, escape: bool) -> str:
    """A spreadsheet opens a CSV cell starting with = + - @ as a formula: such user-chosen text
    (tracker names, usernames) gets a leading apostrophe in CSV files."""
    if not escape:
        return expr
    return f"CASE WHEN left({expr}, 1) IN ('=', '+', '-', '@') THEN '''' || {expr} ELSE {expr} END"


# Bounds: [from 00:00, to + 1 day 00:00) in the organization's time zone.
_RANGE = ("e.organization_id = %(org)s AND e.started_at >= (%(from)s::date::timestamp AT TIME ZONE %(tz)s) "
          "AND e.started_at < ((%(to)s::date + 1)::timestamp AT TIME ZONE %(tz)s)")


def report_query(*, job: ReportJob, time_zone: str, escape: bool) -> tuple[list[str], str, str, dict]:
    """(columns, rows SQL, count SQL, params) for a job; rows come in a stable order."""
    params = {"org": job.organization_id, "from": job.date_from, "to": job.date_to, "tz": time_zone}
    local = "to_char(e.{col} AT TIME ZONE %(tz)s, 'YYYY-MM-DD\"T\"HH24:MI:SS')"
    if job.kind == ReportJob.Kind.TIME_ENTRIES:
        columns = ["entry_id", "tracker", "started_at", "stopped_at", "duration_seconds", "started_by",
                   "stopped_by", "notes"]
        sql = f"""
            SELECT e.id, {_csv_safe('t.name', escape)}, {local.format(col='started_at')},
                   {local.format(col='stopped_at')}, extract(epoch FROM e.duration)::bigint,
                   {_csv_safe('su.username', escape)}, {_csv_safe('pu.username', escape)},
                   {_csv_safe('e.notes', escape)}
            FROM trackers_timeentry e
            JOIN trackers_tracker t ON t.id = e.tracker_id
            LEFT JOIN organizations_user su ON su.id = e.started_by_id
            LEFT JOIN organizations_user pu ON pu.id = e.stopped_by_id
            WHERE {_RANGE}
            ORDER BY e.started_at"""  # the index order, no sort step (ties in any order)
        count = f"SELECT count(*) FROM trackers_timeentry e WHERE {_RANGE}"
        return columns, sql, count, params
    columns = ["member", "email", "date", "hours", "entries"]
    grouped = f"""
        SELECT e.started_by_id AS user_id, (e.started_at AT TIME ZONE %(tz)s)::date AS day,
               sum(extract(epoch FROM coalesce(e.duration, now() - e.started_at))) AS secs, count(*) AS n
        FROM trackers_timeentry e WHERE {_RANGE} GROUP BY 1, 2"""
    sql = f"""
        SELECT {_csv_safe("coalesce(u.username, '(unknown)')", escape)}, {_csv_safe("coalesce(u.email, '')", escape)},
               to_char(g.day, 'YYYY-MM-DD'), round((g.secs / 3600.0)::numeric, 4)::float8, g.n
        FROM ({grouped}) g LEFT JOIN organizations_user u ON u.id = g.user_id
        ORDER BY g.day, u.username NULLS LAST"""
    count = f"SELECT count(*) FROM ({grouped}) g"
    return columns, sql, count, params


def organization_stats(*, organization: Organization, date_from, date_to) -> dict:
    """Hours per member, per tracker and per day over the range, in one aggregate (GROUPING SETS)."""
    params = {"org": organization.id, "from": date_from, "to": date_to, "tz": organization.time_zone}
    sql = f"""
        WITH e AS (
            SELECT e.started_by_id AS user_id, e.tracker_id, (e.started_at AT TIME ZONE %(tz)s)::date AS day,
                   extract(epoch FROM coalesce(e.duration, now() - e.started_at)) AS secs
            FROM trackers_timeentry e WHERE {_RANGE}
        ), s AS (
            SELECT GROUPING(user_id, tracker_id, day) AS g, user_id, tracker_id, day,
                   sum(secs) AS secs, count(*) AS n
            FROM e GROUP BY GROUPING SETS ((user_id), (tracker_id), (day))
        )
        SELECT s.g, s.user_id, u.username, s.tracker_id, t.name, s.day, s.secs, s.n
        FROM s
        LEFT JOIN organizations_user u ON u.id = s.user_id
        LEFT JOIN trackers_tracker t ON t.id = s.tracker_id
        ORDER BY s.g, s.secs DESC"""
    members, trackers, by_day = [], [], {}
    with connection.cursor() as cur:
        cur.execute(sql, params)
        for group, user_id, username, tracker_id, name, day, secs, count in cur.fetchall():
            hours = round(float(secs or 0) / 3600.0, 4)
            # GROUPING bits: user_id 4, tracker_id 2, day 1; a set of one column leaves the other two set.
            if group == 0b011:
                members.append({"user_id": user_id, "username": username or "(unknown)", "hours": hours,
                                "entries": count})
            elif group == 0b101:
                trackers.append({"tracker_id": tracker_id, "name": name, "hours": hours, "entries": count})
            else:
                by_day[day] = {"hours": hours, "entries": count}
    days, day = [], date_from
    while day <= date_to:  # every day of the range, zero where nothing was tracked
        days.append({"date": day.isoformat(), **by_day.get(day, {"hours": 0.0, "entries": 0})})
        day = day.fromordinal(day.toordinal() + 1)
    return {"from": date_from.isoformat(), "to": date_to.isoformat(), "time_zone": organization.time_zone,
            "total_hours": round(sum(m["hours"] for m in members), 4),
            "members": members, "trackers": trackers, "days": days}
