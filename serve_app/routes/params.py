"""Path and query parameters shared by the routers (bounds from domain/limits.py)."""

import re
from typing import Annotated

from fastapi import Path, Query
from pydantic import AwareDatetime, BeforeValidator

from domain.limits import (
    CURSOR_LENGTH_MAX,
    ID_LENGTH_MAX,
    ID_PATTERN,
    PAGE_SIZE_DEFAULT,
    PAGE_SIZE_MAX,
)

ProgramId = Annotated[str, Path(pattern=ID_PATTERN, max_length=ID_LENGTH_MAX)]
MemberId = Annotated[str, Path(pattern=ID_PATTERN, max_length=ID_LENGTH_MAX)]
RewardId = Annotated[str, Path(pattern=ID_PATTERN, max_length=ID_LENGTH_MAX)]
EventId = Annotated[str, Path(pattern=ID_PATTERN, max_length=ID_LENGTH_MAX)]
Limit = Annotated[int, Query(ge=1, le=PAGE_SIZE_MAX, description="page size")]
Cursor = Annotated[
    str | None,
    Query(max_length=CURSOR_LENGTH_MAX, description="next_cursor of the previous page"),
]
DryRun = Annotated[bool, Query(description="answer without writing anything")]
LIMIT_DEFAULT = PAGE_SIZE_DEFAULT


def _rfc3339(value: object) -> object:
    # Query values are text; pydantic would read "0.5" as a Unix time. Only RFC 3339.
    if not isinstance(value, str) or not RFC3339_RE.fullmatch(value):
        raise ValueError("must be an RFC 3339 date-time with a zone, e.g. 2026-01-01T00:00:00Z")
    return value


RFC3339_RE = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})")
Moment = Annotated[
    AwareDatetime | None,
    BeforeValidator(lambda v: v if v is None else _rfc3339(v)),
    Query(description="RFC 3339 date-time with a zone"),
]
