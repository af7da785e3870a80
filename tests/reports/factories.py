"""Factories and set-based seeding for report tests."""
import datetime as dt

import factory
from django.db import connection

from reports.models import ReportJob
from tests.organizations.factories import OrganizationFactory, UserFactory


class ReportJobFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ReportJob

    organization = factory.SubFactory(OrganizationFactory)
    requested_by = factory.SubFactory(UserFactory)
    kind = ReportJob.Kind.TIME_ENTRIES
    format = ReportJob.Format.CSV
    date_from = dt.date(2026, 1, 1)
    date_to = dt.date(2026, 1, 31)


def seed_entries(*, tracker, users, count: int, start: dt.datetime, step_seconds: int = 600,
                 duration_seconds: int = 300) -> None:
    """`count` stopped entries on `tracker`, one every `step_seconds` from `start`, members taken in
    turn from `users`: one INSERT ... SELECT generate_series."""
    ids = [u.pk for u in users]
    with connection.cursor() as cur:
        cur.execute(
            """
            INSERT INTO trackers_timeentry (organization_id, tracker_id, started_by_id, stopped_by_id, started_at,
                                            stopped_at, duration, notes)
            SELECT %(org)s, %(tracker)s, (%(ids)s::bigint[])[1 + g %% %(n)s], (%(ids)s::bigint[])[1 + g %% %(n)s],
                   %(start)s + g * make_interval(secs => %(step)s),
                   %(start)s + g * make_interval(secs => %(step)s) + make_interval(secs => %(dur)s),
                   make_interval(secs => %(dur)s), ''
            FROM generate_series(0, %(count)s - 1) g
            """, {"org": tracker.organization_id, "tracker": tracker.pk, "ids": ids, "n": len(ids), "start": start,
                  "step": step_seconds, "dur": duration_seconds, "count": count})
