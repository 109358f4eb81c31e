"""hubkit.formats.tables: CSV rows with their line numbers; what a spreadsheet adds is not data."""

from __future__ import annotations

from pathlib import Path

import pytest

from hubkit.errors import ArtifactError
from hubkit.formats.tables import parse_float, read_csv


def test_rows_keep_their_line_numbers_and_columns_are_normalized(tmp_path: Path) -> None:
    f = tmp_path / "t.csv"
    f.write_text(" Task ,Passed\na,1\n\n,\nb,0\n")
    cols, rows = read_csv(f, "t.csv")
    assert cols == ["task", "passed"]
    assert rows == [(2, {"task": "a", "passed": "1"}), (5, {"task": "b", "passed": "0"})]


def test_a_byte_order_mark_is_not_part_of_the_first_column(tmp_path: Path) -> None:
    f = tmp_path / "excel.csv"
    f.write_bytes("task,passed\na,1\n".encode("utf-8-sig"))
    cols, _ = read_csv(f, "excel.csv")
    assert cols == ["task", "passed"]


@pytest.mark.parametrize(("text", "message"), [
    ("task,passed,Passed\na,1,0\n", "excel.csv:1: column 'passed' appears more than once"),
    ("task,passed\na,1,2\n", "excel.csv:2: 3 fields, header has 2"),
    ("", "excel.csv:1: empty CSV"),
])
def test_refusals_name_the_line(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "excel.csv"
    f.write_text(text)
    with pytest.raises(ArtifactError, match=message):
        read_csv(f, "excel.csv")


def test_parse_float() -> None:
    assert parse_float("0.5") == 0.5 and parse_float("x") is None
