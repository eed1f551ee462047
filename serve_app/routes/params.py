"""Path and query parameters shared by the routers (bounds from domain/limits.py)."""

from typing import Annotated

from fastapi import Path, Query

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
