"""Issue #31: no secret or control character on a screen or in a stored file, no formula in a CSV
cell (bench/core/redact.py and where it is used)."""

from __future__ import annotations

import pytest

from bench.core.redact import csv_cell, printable, redact, safe_text
from bench.core.storage import safe_url


@pytest.mark.parametrize("text, secret", [
    ("postgresql://:TOPSECRET@db.example/bench", "TOPSECRET"),
    ("postgresql://user:pa@ss@word@db.example:5432/bench", "pa@ss@word"),
    ("postgresql://db.example/bench?user=u&password=TOPSECRET&sslmode=require", "TOPSECRET"),
    ("https://api.example/v1?api_key=TOPSECRET", "TOPSECRET"),
    ("echo: Authorization: Basic dXNlcjpUT1BTRUNSRVQ=", "dXNlcjpUT1BTRUNSRVQ="),
    ("proxy-authorization: Digest username=u, response=TOPSECRET", "TOPSECRET"),
    ("Authorization: Bearer sk-TOPSECRETTOPSECRET", "TOPSECRETTOPSECRET"),
])
def test_credentials_are_masked_everywhere(text, secret):
    assert secret not in redact(text) and secret not in safe_url(text) and "***" in redact(text)


def test_hosts_and_paths_stay_readable():
    assert safe_url("postgresql://u:pw@db.example:5432/bench") == "postgresql://***@db.example:5432/bench"
    long_path = "/tmp/pytest-of-root/test_a_run_killed_before_its_first_checkpoint0/runs"
    assert redact(long_path) == long_path  # 32+ character names are only masked in server text
    assert "***" in redact("x" * 40, long_tokens=True)


@pytest.mark.parametrize("text", ["\x1b[2J\x1b[H", "\x1b]0;owned\x07", "\x1b]52;c;aGVsbG8=\x07", "a\x00b", "\x9b31m"])
def test_escape_sequences_and_control_characters_are_removed(text):
    out = printable("ok " + text + " done")
    assert "\x1b" not in out and "\x00" not in out and "\x07" not in out and "\x9b" not in out
    assert out.startswith("ok ") and out.endswith(" done")


def test_safe_text_is_one_line_cut_to_its_limit():
    assert safe_text("a\nb\tc  d", limit=5) == "a b c..."


@pytest.mark.parametrize("cell, expect", [("=HYPERLINK(\"http://x\")", "'=HYPERLINK(\"http://x\")"), ("+1", "'+1"), ("-2", "'-2"),
                                          ("@SUM(A1)", "'@SUM(A1)"), ("dhc", "dhc"), (0.5, 0.5)])
def test_csv_cells_cannot_run_as_formulas(cell, expect):
    assert csv_cell(cell) == expect


def test_cli_errors_never_print_a_password(capsys):
    from bench.cli import main

    assert main(["tune", "--method", "supervised", "--preset", "tiny", "--storage",
                 "postgresql://u:TOPSECRET@127.0.0.1:1/none?password=TOPSECRET"]) == 2
    err = capsys.readouterr().err
    assert "TOPSECRET" not in err and len(err.strip().splitlines()) == 1


def test_a_method_named_like_a_formula_is_neutral_in_table_csv(tmp_path):
    from reports.collect import collect
    from reports.render import to_csv
    from reports.table import build_table
    from tests.test_reports import _run

    _run(tmp_path, "=cmd", 0, {"spleen": 0.9, "liver": 0.9, "gallbladder": 0.5})
    text = to_csv(build_table(collect(tmp_path)))
    assert "'=cmd" in text and "\n=cmd" not in text and ",=cmd" not in text
