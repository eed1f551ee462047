"""Log lines: text for people, or one JSON object per line for machines
(`POINTS_LOG_FORMAT=json|text`), with the request id when there is one.

The request id is Serve's: the `X-Request-Id` a client (or HAProxy, when it has none) sent,
which the answer carries back. Inside an ingress replica, every line logged while a
request is handled names it (`request_id`), so one request's lines can be found in the
replicas' logs; Serve's own lines are JSON too (its deployment `logging_config`).

Every process of the service logs this way: `points up` itself, and each Ray worker (the
ingress replicas, the shards, the coordinator, the stream consumer) through the job's
worker setup hook (serve_app/runtime.py `start_ray`), which reads the format from the
POINTS_LOG_FORMAT environment variable the job hands its workers.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime

from actors import tracing

LOG_FORMAT_ENV = "POINTS_LOG_FORMAT"
FORMATS = ("text", "json")
LOGGER = "points"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def request_id() -> str | None:
    """The id of the request being handled in this task, if any (actors/tracing.py)."""
    return tracing.request_id() or None


# Fields a line may carry besides its message (`log.info(..., extra={...})`): a group
# commit's line names its shard and the requests it wrote.
EXTRA_FIELDS = ("shard", "batch", "ops", "transactions", "commit_ms", "request_ids")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, RFC 3339), level, logger, message, the request
    id when there is one, the exception when there is one, and the process id."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat().replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        found = request_id()
        if found is not None:
            entry["request_id"] = found
        for name in EXTRA_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class _RequestIdText(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        found = request_id()
        if found is not None:
            line = f"{line} [request {found}]"
        ids = record.__dict__.get("request_ids")
        return f"{line} [requests {' '.join(ids)}]" if ids else line


def formatter(log_format: str) -> logging.Formatter:
    assert log_format in FORMATS, log_format
    return JsonFormatter() if log_format == "json" else _RequestIdText(TEXT_FORMAT)


def configure(log_format: str, stream: object = None) -> None:
    """The service's loggers (`points.*`) write `log_format` lines to stderr (or `stream`),
    at INFO and above; set once per process (calling again replaces the handler)."""
    logger = logging.getLogger(LOGGER)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    handler.setFormatter(formatter(log_format))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def configure_from_env() -> None:
    """In a Ray worker: the format the job was started with (text when unset or unknown)."""
    found = os.environ.get(LOG_FORMAT_ENV, "text")
    configure(found if found in FORMATS else "text")


def setup_worker() -> None:
    """Ray worker setup hook when no other is set (the default Serve profile)."""
    configure_from_env()
