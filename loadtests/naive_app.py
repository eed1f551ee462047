"""The naive reference: credits and debits the way most services implement them.

`loadtests.bench` compares the Points service with this app to show what sharded actors and
group commit buy. It is deliberately ordinary, not a straw man: FastAPI, psycopg 3 with an
async connection pool, one PostgreSQL transaction per request that locks the account row
(`SELECT … FOR UPDATE`), checks the balance, updates it, appends a ledger row and records the
idempotency key (unique; a key seen before replays its stored answer). Every request pays
its own round trips and its own COMMIT (fsync), and requests for one member queue on its
row lock: that is the cost being measured.

Run by the bench as `uvicorn loadtests.naive_app:app`; configured by environment:
NAIVE_DATABASE_URL (required), NAIVE_API_KEY (Bearer key), NAIVE_POOL_SIZE (default 16).
It creates its own tables (`naive_*`) at startup and never touches the service's tables.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import FastAPI, Header, Path
from fastapi.responses import JSONResponse
from psycopg import Rollback
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel, ConfigDict, Field, StrictInt

DATABASE_URL_ENV = "NAIVE_DATABASE_URL"
API_KEY_ENV = "NAIVE_API_KEY"
POOL_SIZE_ENV = "NAIVE_POOL_SIZE"
POOL_SIZE_DEFAULT = 16
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"

SCHEMA = """
CREATE TABLE IF NOT EXISTS naive_accounts (
    program_id text NOT NULL,
    member_id text NOT NULL,
    balance bigint NOT NULL CHECK (balance >= 0),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (program_id, member_id)
);
CREATE TABLE IF NOT EXISTS naive_ledger (
    txn_id uuid PRIMARY KEY,
    program_id text NOT NULL,
    member_id text NOT NULL,
    kind text NOT NULL,
    points bigint NOT NULL CHECK (points > 0),
    reason text NOT NULL,
    balance_after bigint NOT NULL,
    idempotency_key text NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS naive_ledger_member
    ON naive_ledger (program_id, member_id, created_at DESC);
CREATE TABLE IF NOT EXISTS naive_idempotency (
    program_id text NOT NULL,
    member_id text NOT NULL,
    key text NOT NULL,
    request_hash text NOT NULL,
    status int NOT NULL,
    body jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (program_id, member_id, key)
);
"""

LOCK_ACCOUNT = (
    "SELECT balance FROM naive_accounts WHERE program_id = %s AND member_id = %s FOR UPDATE"
)
CREATE_ACCOUNT = (
    "INSERT INTO naive_accounts (program_id, member_id, balance) VALUES (%s, %s, 0) "
    "ON CONFLICT DO NOTHING"
)
UPDATE_BALANCE = (
    "UPDATE naive_accounts SET balance = %s, updated_at = %s "
    "WHERE program_id = %s AND member_id = %s"
)
INSERT_LEDGER = (
    "INSERT INTO naive_ledger (txn_id, program_id, member_id, kind, points, reason, "
    "balance_after, idempotency_key, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
)
INSERT_KEY = (
    "INSERT INTO naive_idempotency (program_id, member_id, key, request_hash, status, body) "
    "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING 1"
)
STORED_ANSWER = (
    "SELECT request_hash, status, body FROM naive_idempotency "
    "WHERE program_id = %s AND member_id = %s AND key = %s"
)


class Movement(BaseModel):
    """Body of a credit or a debit (same shape and strictness as the Points API)."""

    model_config = ConfigDict(extra="forbid")
    points: StrictInt = Field(ge=1, le=10**12)
    reason: str = Field(min_length=1, max_length=500)


def _pool_size() -> int:
    return int(os.environ.get(POOL_SIZE_ENV, POOL_SIZE_DEFAULT))


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Open the pool and create the tables once, before the first request."""
    size = _pool_size()
    pool = AsyncConnectionPool(
        os.environ[DATABASE_URL_ENV], min_size=size, max_size=size, open=False
    )
    await pool.open(wait=True)
    async with pool.connection() as conn:
        await conn.execute(SCHEMA)
    app.state.pool = pool
    try:
        yield
    finally:
        await pool.close()


app = FastAPI(title="Naive points (reference)", lifespan=lifespan)

Id = Annotated[str, Path(pattern=ID_PATTERN)]


def _problem(status: int, code: str, detail: str) -> JSONResponse:
    return JSONResponse({"code": code, "detail": detail, "status": status}, status_code=status)


def _authorized(authorization: str | None) -> bool:
    expected = "Bearer " + os.environ.get(API_KEY_ENV, "")
    return authorization is not None and hmac.compare_digest(authorization, expected)


def _request_hash(kind: str, program_id: str, member_id: str, body: Movement) -> str:
    canonical = json.dumps(
        {"op": kind, "program_id": program_id, "member_id": member_id, **body.model_dump()},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


async def _move(
    kind: str,
    program_id: str,
    member_id: str,
    body: Movement,
    authorization: str | None,
    idempotency_key: str | None,
) -> JSONResponse:
    if not _authorized(authorization):
        return _problem(401, "unauthorized", "send Authorization: Bearer <api key>")
    if not idempotency_key or len(idempotency_key) > 255:
        return _problem(400, "validation_error", "the Idempotency-Key header is required")
    digest = _request_hash(kind, program_id, member_id, body)
    pool: AsyncConnectionPool = app.state.pool
    async with pool.connection() as conn:
        async with conn.transaction() as tx:
            if kind == "credit":
                await conn.execute(CREATE_ACCOUNT, (program_id, member_id))
            row = await (await conn.execute(LOCK_ACCOUNT, (program_id, member_id))).fetchone()
            if row is None:
                status, answer = 404, {"code": "not_found", "detail": "member not found"}
            elif kind == "debit" and row[0] < body.points:
                status, answer = 409, {"code": "insufficient_points", "detail": "not enough"}
            else:
                now = datetime.now(UTC)
                balance = row[0] + body.points if kind == "credit" else row[0] - body.points
                txn_id = uuid.uuid4()
                await conn.execute(UPDATE_BALANCE, (balance, now, program_id, member_id))
                await conn.execute(
                    INSERT_LEDGER,
                    (
                        txn_id,
                        program_id,
                        member_id,
                        kind,
                        body.points,
                        body.reason,
                        balance,
                        idempotency_key,
                        now,
                    ),
                )
                status = 201
                answer = {
                    "transaction_id": str(txn_id),
                    "program_id": program_id,
                    "member_id": member_id,
                    "type": kind,
                    "points": body.points,
                    "reason": body.reason,
                    "created_at": now.isoformat(),
                    "balance_after": balance,
                }
            if status == 404:  # nothing to remember: the member does not exist
                return JSONResponse(answer, status_code=status)
            inserted = await (
                await conn.execute(
                    INSERT_KEY,
                    (program_id, member_id, idempotency_key, digest, status, Jsonb(answer)),
                )
            ).fetchone()
            if inserted is None:  # key used before: undo this attempt, replay the first
                raise Rollback(tx)
        if inserted is None:
            return await _replay(conn, program_id, member_id, idempotency_key, digest)
    return JSONResponse(answer, status_code=status)


async def _replay(
    conn: Any, program_id: str, member_id: str, key: str, digest: str
) -> JSONResponse:
    stored = await (await conn.execute(STORED_ANSWER, (program_id, member_id, key))).fetchone()
    await conn.rollback()
    if stored is None:  # cannot happen: the insert conflicted with a committed row
        return _problem(503, "unavailable", "retry")
    stored_hash, status, answer = stored
    if stored_hash != digest:
        return _problem(409, "idempotency_conflict", "key already used with another body")
    return JSONResponse(answer, status_code=status, headers={"Idempotent-Replayed": "true"})


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/v1/programs/{program_id}/members/{member_id}/credits")
async def credit(
    program_id: Id,
    member_id: Id,
    body: Movement,
    authorization: Annotated[str | None, Header()] = None,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> JSONResponse:
    return await _move("credit", program_id, member_id, body, authorization, idempotency_key)


@app.post("/v1/programs/{program_id}/members/{member_id}/debits")
async def debit(
    program_id: Id,
    member_id: Id,
    body: Movement,
    authorization: Annotated[str | None, Header()] = None,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> JSONResponse:
    return await _move("debit", program_id, member_id, body, authorization, idempotency_key)
