"""System checks: the channel registry (settings.HERALD_CHANNELS) is loadable and consistent; the
database keeps its statistics (autovacuum on)."""
from django.conf import settings
from django.core.checks import Error, Tags, Warning, register
from django.db import DatabaseError, connections
from django.utils.module_loading import import_string

from notifications.channels.base import Channel


@register()
def channels_check(app_configs=None, **kwargs) -> list[Error]:
    errors: list[Error] = []
    spec = getattr(settings, "HERALD_CHANNELS", None)
    if not isinstance(spec, dict) or not spec:
        return [Error("HERALD_CHANNELS must be a non-empty dict of name -> {BACKEND, OPTIONS}", id="herald.E001")]
    if "inapp" not in spec:
        errors.append(Error("HERALD_CHANNELS must contain the 'inapp' channel (the inbox and live feed)",
                            id="herald.E002"))
    for name, entry in spec.items():
        if not isinstance(name, str) or not name.isidentifier() or len(name) > 32:
            errors.append(Error(f"channel name {name!r} must be an identifier of at most 32 characters",
                                id="herald.E003"))
            continue
        if not isinstance(entry, dict) or "BACKEND" not in entry:
            errors.append(Error(f"HERALD_CHANNELS[{name!r}] needs a BACKEND", id="herald.E004"))
            continue
        try:
            backend = import_string(entry["BACKEND"])
        except ImportError as exc:
            errors.append(Error(f"HERALD_CHANNELS[{name!r}]: cannot import {entry['BACKEND']!r}: {exc}",
                                id="herald.E005"))
            continue
        if not (isinstance(backend, type) and issubclass(backend, Channel)):
            errors.append(Error(f"HERALD_CHANNELS[{name!r}]: {entry['BACKEND']} is not a Channel subclass",
                                id="herald.E006"))
            continue
        options = entry.get("OPTIONS", {})
        if not isinstance(options, dict):
            errors.append(Error(f"HERALD_CHANNELS[{name!r}]['OPTIONS'] must be a dict", id="herald.E007"))
            continue
        channel = backend(name, options)
        for option in ("batch_max", "retry_seconds"):
            if option in options and not (isinstance(options[option], int | float) and options[option] > 0):
                errors.append(Error(f"HERALD_CHANNELS[{name!r}]: {option} must be a positive number",
                                    id="herald.E008"))
        errors += channel.check()
    return errors


@register(Tags.database)
def autovacuum_check(app_configs=None, databases=None, **kwargs) -> list[Warning]:
    """Run with `migrate` (and `check --database default`). With autovacuum off nothing analyzes the
    tables the pipeline grows, so the generic plans kept by prepared statements stay those made for
    small tables (docs/operations.md, "Generic plans and statistics")."""
    warnings: list[Warning] = []
    for alias in databases or ():
        connection = connections[alias]
        if connection.vendor != "postgresql":
            continue
        try:
            with connection.cursor() as cursor:
                # track_counts off stops autovacuum as well (it has no counts to act on).
                cursor.execute("SELECT current_setting('autovacuum'), current_setting('track_counts')")
                autovacuum, track_counts = cursor.fetchone()
        except DatabaseError:
            continue  # unreachable: migrate fails on its own with the reason; /readyz reports it
        if autovacuum != "on" or track_counts != "on":
            warnings.append(Warning(
                f"Postgres autovacuum is off on database {alias!r} (autovacuum={autovacuum}, "
                f"track_counts={track_counts}): table statistics go stale and prepared "
                "statements keep plans made for small tables as the tables grow",
                hint="Turn autovacuum on (ALTER SYSTEM SET autovacuum = on; SELECT pg_reload_conf()), or "
                     "ANALYZE regularly; see docs/operations.md, 'Generic plans and statistics'.",
                id="herald.W010"))
    return warnings
