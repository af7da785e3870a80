"""Streaming file writers for reports: rows go straight to a local temporary file in constant
memory (csv module; XlsxWriter in constant_memory mode), then the file is saved through Django's
storage API. One protocol: `writer.header(cols)`, `writer.rows(batch)`, `writer.close()`."""
import csv
import io
from typing import IO, Protocol

import xlsxwriter

XLSX_MAX_ROWS = 1_048_576  # rows per worksheet in Excel, header included


class ReportWriter(Protocol):
    def header(self, columns: list[str]) -> None: ...
    def rows(self, batch: list[tuple]) -> None: ...
    def close(self) -> None: ...


class CsvWriter:
    def __init__(self, fileobj: IO[bytes]):
        self._text = io.TextIOWrapper(fileobj, encoding="utf-8", newline="", write_through=False)
        self._csv = csv.writer(self._text)

    def header(self, columns: list[str]) -> None:
        self._csv.writerow(columns)

    def rows(self, batch: list[tuple]) -> None:
        self._csv.writerows(batch)

    def close(self) -> None:
        self._text.flush()
        self._text.detach()  # leave the binary file open for the caller


class XlsxWriter:
    """XlsxWriter's constant_memory mode flushes each row as the next begins (rows must come in
    order), so memory stays flat whatever the row count. Past Excel's row limit it continues on a
    new worksheet with the same header. Strings are written as strings, never as formulas or URLs
    (a tracker named "=HYPERLINK(...)" stays text)."""

    def __init__(self, path: str, *, tmpdir: str | None = None):
        self._book = xlsxwriter.Workbook(path, {
            "constant_memory": True, "tmpdir": tmpdir, "strings_to_formulas": False,
            "strings_to_urls": False, "strings_to_numbers": False, "use_zip64": True,
        })
        self._bold = self._book.add_format({"bold": True})
        self._columns: list[str] = []
        self._sheet = None
        self._row = 0

    def _new_sheet(self) -> None:
        number = len(self._book.worksheets()) + 1
        self._sheet = self._book.add_worksheet("Report" if number == 1 else f"Report {number}")
        self._sheet.write_row(0, 0, self._columns, self._bold)
        self._sheet.freeze_panes(1, 0)
        self._row = 1

    def header(self, columns: list[str]) -> None:
        self._columns = list(columns)
        self._new_sheet()

    def rows(self, batch: list[tuple]) -> None:
        write_row = self._sheet.write_row
        for values in batch:
            if self._row >= XLSX_MAX_ROWS:
                self._new_sheet()
                write_row = self._sheet.write_row
            write_row(self._row, 0, values)
            self._row += 1

    def close(self) -> None:
        self._book.close()
