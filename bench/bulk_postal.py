"""Benchmark: 100,000 postal-code updates, set-based vs the per-row ORM loop (issue 10, item 4).

Seeds one organization with MEMBERS members (and a second organization whose members share none of
its rows), builds ROWS updates (emails in mixed case; UNMATCHED of them match nobody), then, on the
same data in the same run:

1. set-based: organizations.services.membership_postal_codes_update (validation in one pass + one
   UPDATE ... FROM unnest(...)), as the endpoint runs it;
2. the per-row ORM loop, written to be fast: per row, the user id by lower(email) (the unique
   index the set-based statement uses), then `Membership.objects.filter(organization=...,
   user_id=...).update(postal_code=...)` (the (organization, user) unique index), in one
   transaction. The lookup excludes email "" so the partial unique index (user_email_unique_ci,
   WHERE email <> '') applies; without it every row scans the users table (140 ms a row here).

Postal codes are cleared between the two; both must leave the same table. Prints both times, the
ratio, and the statement's share of the set-based time.

    .venv/bin/python -m config.backing run -- .venv/bin/python bench/bulk_postal.py
"""
import argparse
import hashlib
import os
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import setup_database  # noqa: E402


def seed(members: int):
    from django.db import connection

    from organizations.models import Membership, Organization, User

    org = Organization.objects.create(name="Bulk", slug="bulk")
    other = Organization.objects.create(name="Other", slug="other")
    with connection.cursor() as cursor:
        cursor.execute("""
            INSERT INTO organizations_user (password, is_superuser, username, first_name, last_name, email, is_staff,
                                            is_active, date_joined, time_zone, phone, postal_code, slack_user_id)
            SELECT '!', false, 'member' || g, '', '', 'member' || g || '@example.com', false, true, now(), 'UTC',
                   '', '', ''
            FROM generate_series(1, %s) g""", [members + 1000])
        cursor.execute("""
            INSERT INTO organizations_membership (organization_id, user_id, role, postal_code, created_at)
            SELECT CASE WHEN row_number() OVER (ORDER BY id) <= %s THEN %s ELSE %s END, id, 'member', '', now()
            FROM organizations_user ORDER BY id""", [members, org.id, other.id])
        cursor.execute("ANALYZE organizations_user; ANALYZE organizations_membership")
    assert Membership.objects.filter(organization=org).count() == members
    return org, User


def table_digest(org) -> str:
    from organizations.models import Membership

    rows = Membership.objects.filter(organization=org).order_by("user_id").values_list("user_id", "postal_code")
    return hashlib.sha256(repr(list(rows)).encode()).hexdigest()[:16]


def clear(org) -> None:
    from organizations.models import Membership

    Membership.objects.filter(organization=org).update(postal_code="")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--unmatched", type=int, default=5_000)
    parser.add_argument("--loop-rows", type=int, default=100_000,
                        help="rows the per-row loop runs (its first N, also timed set-based); the loop costs "
                             "about a millisecond per row on an idle box, minutes on a shared one")
    parser.add_argument("--db-name", default="herald_bench_bulk_postal")
    args = parser.parse_args()

    setup_database(args, os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/herald"))
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection, transaction
    from django.db.models import EmailField
    from django.db.models.functions import Lower

    from organizations import services
    from organizations.models import Membership

    call_command("migrate", verbosity=0)
    t = time.perf_counter()
    org, user_model = seed(args.members)
    print(f"seeded {args.members} members (+1,000 in another organization) in {time.perf_counter() - t:.1f} s")

    rng = random.Random(7)
    matched = rng.sample(range(1, args.members + 1), args.rows - args.unmatched)
    rows = [{"email": (f"Member{i}@Example.com" if i % 2 else f"member{i}@example.com"),
             "postal_code": f"{rng.choice('ABCDEFGHJKLMNPRSTUVWXYZ')}{i % 90 + 10} {i % 9}{rng.choice('ABDEFGHJ')}Z"}
            for i in matched]
    rows += [{"email": f"nobody{i}@example.com", "postal_code": "10115"} for i in range(args.unmatched)]
    rng.shuffle(rows)

    # 1. set-based, as the endpoint runs it; the statement timed on its own too.
    statement_times: list[float] = []

    def timed(execute, sql, params, many, context):
        start = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            statement_times.append(time.perf_counter() - start)

    t = time.perf_counter()
    with connection.execute_wrapper(timed):
        result = services.membership_postal_codes_update(organization=org, updates=rows)
    set_based = time.perf_counter() - t
    statement = sum(statement_times)
    print(f"set-based: {set_based:.2f} s for {len(rows)} rows ({len(statement_times)} statement: {statement:.2f} s; "
          f"validation "
          f"and arrays {set_based - statement:.2f} s): matched {result.matched}, unmatched {len(result.unmatched)}")

    # 2. the per-row ORM loop on the first --loop-rows of the same rows, against set-based on them.
    sample = rows[:args.loop_rows]
    clear(org)
    t = time.perf_counter()
    sample_result = services.membership_postal_codes_update(organization=org, updates=sample)
    set_sample = time.perf_counter() - t
    digest_set = table_digest(org)
    clear(org)
    EmailField.register_lookup(Lower)
    t = time.perf_counter()
    loop_matched = 0
    with transaction.atomic():
        for row in sample:  # each step an index lookup: lower(email), then (organization, user)
            code = services.postal_code_normalize(row["postal_code"])
            user_id = (user_model.objects.filter(email__lower=row["email"].lower()).exclude(email="")
                       .values_list("id", flat=True).first())  # the partial unique index needs email <> ""
            if user_id is not None:
                loop_matched += Membership.objects.filter(organization=org, user_id=user_id).update(postal_code=code)
    loop = time.perf_counter() - t
    digest_loop = table_digest(org)
    assert loop_matched == sample_result.matched and digest_loop == digest_set, "the two ways disagree"
    if len(sample) == len(rows):
        print(f"per-row ORM loop: {loop:.2f} s for {len(rows)} rows ({len(rows)} UPDATE statements), same result "
              f"(table digest {digest_set}): set-based is {loop / set_based:.0f}x faster")
    else:
        per_row = loop / len(sample)
        print(f"on the first {len(sample)} rows: set-based {set_sample:.2f} s, per-row ORM loop {loop:.2f} s "
              f"({per_row * 1000:.2f} ms per row), same result (table digest {digest_set}): "
              f"{loop / set_sample:.0f}x")
        print(f"per-row loop extrapolated to {len(rows)} rows: {per_row * len(rows):.0f} s, "
              f"{per_row * len(rows) / set_based:.0f}x the set-based {set_based:.2f} s")
    print(f"box: load average {os.getloadavg()[0]:.1f} (shared: figures are pessimistic)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
