"""Model instances from hand-written SQL, for the few statements every request runs.

Building a query through the ORM costs about a millisecond of CPU per statement on this box
(`bench/web_cost.py`: 1.24 ms for the token lookup with its user, 0.09 ms for the same SELECT
written out); the hot paths (token and API key resolution, the membership check, tracker
start/stop) write their SQL and turn rows back into models here, with each field's database
converters applied, so the instances are the ones the ORM would have returned.
"""
from functools import cached_property

from django.db import connection


class RowReader:
    """The concrete columns of `model` under a table alias, and instances built from a slice of a
    row that selected them (in that order)."""

    def __init__(self, model, alias: str):
        self.model, self.alias = model, alias

    @cached_property
    def fields(self) -> list:
        return list(self.model._meta.concrete_fields)

    @cached_property
    def attnames(self) -> list[str]:
        return [f.attname for f in self.fields]

    @cached_property
    def columns(self) -> str:
        quote = connection.ops.quote_name
        return ", ".join(f"{self.alias}.{quote(f.column)}" for f in self.fields)

    def __len__(self) -> int:
        return len(self.fields)

    @cached_property
    def _converters(self) -> list[tuple[int, list, object]]:
        out = []
        for i, field in enumerate(self.fields):
            expression = field.get_col(self.model._meta.db_table)
            converters = connection.ops.get_db_converters(expression) + expression.get_db_converters(connection)
            if converters:
                out.append((i, converters, expression))
        return out

    def build(self, values):
        values = list(values)
        for i, converters, expression in self._converters:
            for converter in converters:
                values[i] = converter(values[i], expression, connection)
        return self.model.from_db(connection.alias, self.attnames, values)
