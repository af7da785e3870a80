"""Server-side parameter binding (DB_SERVER_SIDE_BINDING, on by default): Postgres, not psycopg,
reads the parameters, so it must be able to tell each one's type from the statement alone. psycopg
sends a str or None as `unknown`: a parameter used in two places that deduce different types (a
varchar column, then a comparison with a text literal) fails with "inconsistent types deduced for
parameter", one in no typed place at all with "could not determine data type of parameter". The
hand-written SQL casts such parameters (`%(state)s::text`).

Every module-level SQL statement of the apps is prepared here with all of its parameters unknown,
the strictest case (a Python int is sent as smallint, integer or bigint; a list of them as an array
of one)."""
import importlib
import pkgutil
import re

import pytest
from django.conf import settings
from django.db import connection, transaction

APPS = ("config", "organizations", "trackers", "notifications", "reports")
SQL = re.compile(r"^\s*(WITH|SELECT|INSERT|UPDATE|DELETE)\b", re.I)
PLACEHOLDER = re.compile(r"%(?:\((\w+)\))?s")
HOLE = re.compile(r"\{\w+\}")
# Statements with a {format} hole filled at run time: the clauses the caller puts in it. Other
# templates are skipped (the statements formatted from them are checked).
HOLES = {"{access}": ("", "AND t.organization_id = %(access_org_id)s",
                      "AND t.organization_id IN (SELECT m.organization_id FROM organizations_membership m "
                      "WHERE m.user_id = %(access_user_id)s)")}
# A fragment that is not a statement by itself (prefixed to another).
FRAGMENTS = {"notifications.send.services._SEND_DONE_CTE"}


def _modules():
    for app in APPS:
        package = importlib.import_module(app)
        yield package
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{app}."):
            if ".migrations" in info.name or info.name.startswith(("config.settings", "config.wsgi")):
                continue
            yield importlib.import_module(info.name)


def _statements():
    found = []
    for module in _modules():
        for name, value in vars(module).items():
            qualified = f"{module.__name__}.{name}"
            if not isinstance(value, str) or qualified in FRAGMENTS or not SQL.match(value):
                continue
            if not PLACEHOLDER.search(value):
                continue
            variants = [value]
            for hole, fills in HOLES.items():
                if hole in value:
                    variants = [v.replace(hole, fill) for v in variants for fill in fills]
            if any(HOLE.search(v) for v in variants):
                continue  # a template: the statements made from it are module constants too
            found.extend((f"{qualified}#{i}", sql) for i, sql in enumerate(variants))
    return found


def _numbered(sql: str) -> str:
    """psycopg's placeholders as Postgres's: %s -> $1, $2...; %(name)s -> the same $n every time."""
    numbers: dict = {}

    def number(match):
        key = match.group(1) or object()
        return f"${numbers.setdefault(key, len(numbers) + 1)}"

    return PLACEHOLDER.sub(number, sql).replace("%%", "%")


STATEMENTS = _statements()


def test_server_side_binding_is_the_default():
    options = settings.DATABASES["default"]["OPTIONS"]
    assert options.get("server_side_binding") is True
    assert options.get("prepare_threshold") == 5


def test_statements_were_found():
    names = {name.split("#")[0] for name, _ in STATEMENTS}
    assert "notifications.delivery.status._RECORD_SQL" in names
    assert "trackers.services._START_SQL" in names
    assert len(names) > 40


@pytest.mark.django_db
@pytest.mark.parametrize("name,sql", STATEMENTS, ids=[name for name, _ in STATEMENTS])
def test_statement_prepares_with_unknown_parameter_types(name, sql):
    with connection.cursor() as cursor:
        try:
            with transaction.atomic():
                cursor.execute(f"PREPARE herald_binding_check AS {_numbered(sql)}")
        except Exception as exc:  # the message names the parameter and both types
            pytest.fail(f"{name}: {exc}")
        cursor.execute("DEALLOCATE herald_binding_check")
