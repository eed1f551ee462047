"""The embedded PostgreSQL (pgserver) stops quietly when it stops, and says so when it does not."""

import json
import logging
import subprocess
from pathlib import Path

import psycopg
import pytest

from db.embedded import EmbeddedPostgres

# A pid no live process has (above Linux's pid_max default of 4194304).
DEAD_PID = 4_194_305


def test_a_clean_stop_logs_no_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pg = EmbeddedPostgres(tmp_path)
    url = pg.start()
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    with caplog.at_level(logging.INFO, logger="pgserver"):
        pg.stop()
    assert not pg.running()
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    pg.stop()  # a second stop is a no-op


def test_a_handle_left_by_a_dead_process_does_not_keep_it_running(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pg = EmbeddedPostgres(tmp_path)
    pg.start()
    # pgserver stops the server only for the last handle; a killed process leaves its pid.
    handles = pg.pgdata / ".handle_pids.json"
    handles.write_text(json.dumps([*json.loads(handles.read_text()), DEAD_PID]))
    with caplog.at_level(logging.INFO, logger="pgserver"):
        pg.stop()
    assert not pg.running()
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_a_server_that_does_not_stop_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pgserver.postgres_server as pgs

    pg = EmbeddedPostgres(tmp_path)
    pg.start()
    server = pg._server

    def refuse(args: list[str], **kwargs: object) -> str:
        raise subprocess.CalledProcessError(1, ["pg_ctl", *args])

    with monkeypatch.context() as patch:
        patch.setattr(pgs, "pg_ctl", refuse)
        patch.setattr(server, "_cleanup", lambda: None)
        with pytest.raises(RuntimeError, match="did not stop"):
            pg.stop()
    assert pg.running()
    pg._server = server  # now stop it for real
    pg.stop()
    assert not pg.running()


def test_a_server_another_live_process_holds_keeps_running(tmp_path: Path) -> None:
    """`points verify` (or backup, or demo) beside a running `points up` on the same data
    dir: stopping its handle must not stop the server the service uses."""
    pg = EmbeddedPostgres(tmp_path)
    url = pg.start()
    holder = subprocess.Popen(["sleep", "60"])  # stands for `points up`: a live pid
    try:
        handles = pg.pgdata / ".handle_pids.json"
        handles.write_text(json.dumps([*json.loads(handles.read_text()), holder.pid]))
        pg.stop()
        assert pg.running()
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        holder.kill()
        holder.wait()
    # The holder is gone: the next handle to stop is the last live one, and stops it.
    again = EmbeddedPostgres(tmp_path)
    again.start()
    again.stop()
    assert not again.running()
