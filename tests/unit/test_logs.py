"""Log formatting: one record is one line, whatever control characters its message carries."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from app.logs import JSONFormatter, TextFormatter, escape_controls

HOSTILE = "/x\nforged INFO [-] router.access: method=GET\r\x1b[2J\x7f\x85\x9b\u2028\u2029\t\x00end"


def record(message: str, *args: object, exc_info: object = None, name: str = "router.access") -> logging.LogRecord:
    entry = logging.LogRecord(name, logging.INFO, __file__, 1, message, args, exc_info)
    entry.request_id = "req-1"
    return entry


@pytest.mark.parametrize(
    ("raw", "written"),
    [
        ("a\nb", "a\\nb"),
        ("a\r\nb", "a\\r\\nb"),
        ("tab\there", "tab\\there"),
        ("\x1b[31mred", "\\x1b[31mred"),
        ("nul\x00del\x7f", "nul\\x00del\\x7f"),
        ("next\x85line", "next\\x85line"),
        ("csi\x9b", "csi\\x9b"),
        ("line\u2028para\u2029", "line\\u2028para\\u2029"),
        ("plain ascii, ünïcödé and back\\slashes stay", "plain ascii, ünïcödé and back\\slashes stay"),
    ],
)
def test_control_characters_are_written_as_escapes(raw, written):
    assert escape_controls(raw) == written


def test_a_text_record_with_hostile_arguments_is_one_line():
    line = TextFormatter().format(record("method=%s path=%s status=%s", "GET", HOSTILE, 404))
    assert len(line.splitlines()) == 1
    assert line.endswith(
        "INFO [req-1] router.access: method=GET path=/x\\nforged INFO [-] router.access: "
        "method=GET\\r\\x1b[2J\\x7f\\x85\\x9b\\u2028\\u2029\\t\\x00end status=404"
    )


def test_a_traceback_follows_indented_so_only_a_new_record_starts_at_the_margin():
    try:
        raise ValueError(f"bad path {HOSTILE}")
    except ValueError:
        text = TextFormatter().format(record("failed on %s", HOSTILE, exc_info=sys.exc_info(), name="app.http"))
    first, *rest = text.split("\n")
    assert first.endswith("app.http: failed on " + escape_controls(HOSTILE))
    assert rest[0] == "  Traceback (most recent call last):"
    # The traceback keeps its own lines, a forged one included, but indented like every other.
    forged = HOSTILE.split("\n", 1)[1]
    assert rest[-2:] == ["  ValueError: bad path /x", "  " + escape_controls(forged)]
    assert all(line.startswith("  ") for line in rest)
    assert len(text.splitlines()) == len(rest) + 1  # no line break but the ones the formatter made


def test_a_json_record_with_hostile_arguments_is_one_line_that_parses_back_to_the_message():
    entry = record("path=%s", HOSTILE)
    entry.path = HOSTILE  # an ``extra`` field, as the access line has
    line = JSONFormatter().format(entry)
    assert len(line.splitlines()) == 1
    assert not any(char in line for char in "\x7f\x85\x9b\u2028\u2029")  # written as \u escapes
    parsed = json.loads(line)
    assert parsed["message"] == f"path={HOSTILE}" and parsed["path"] == HOSTILE
