"""Log lines: one JSON object per line, or text; the format chosen per process."""

import io
import json
import logging

import pytest

from serve_app import logs


def test_json_lines_carry_time_level_logger_message_and_exception() -> None:
    stream = io.StringIO()
    logs.configure("json", stream)
    log = logging.getLogger("points.test")
    log.warning("batch of %d failed", 3)
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("commit failed")
    lines = stream.getvalue().splitlines()
    assert len(lines) >= 2  # the traceback is inside the second object, not extra lines
    first, second = (json.loads(line) for line in lines[:2])
    assert first["level"] == "WARNING" and first["logger"] == "points.test"
    assert first["message"] == "batch of 3 failed" and first["time"].endswith("Z")
    assert "request_id" not in first  # no Serve request here
    assert "ValueError: boom" in second["exception"]
    assert len(lines) == 2


def test_text_lines_and_the_format_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    logs.configure("text", stream)
    logging.getLogger("points.test").info("hello")
    assert stream.getvalue().rstrip().endswith("INFO points.test: hello")
    monkeypatch.setenv(logs.LOG_FORMAT_ENV, "json")
    logs.configure_from_env()
    handler = logging.getLogger("points").handlers[0]
    assert isinstance(handler.formatter, logs.JsonFormatter)
    monkeypatch.setenv(logs.LOG_FORMAT_ENV, "xml")  # unknown: text
    logs.configure_from_env()
    assert not isinstance(logging.getLogger("points").handlers[0].formatter, logs.JsonFormatter)
    logs.configure("text")
