"""The two shard repositories against a real PostgreSQL: each is its own repository (the
reward one has no ledger methods), and each fences a stale owner's commit, whole."""

import secrets
import uuid
from datetime import UTC, datetime

import psycopg
import pytest

from db.errors import FencedError
from db.ledger_chain import chain_of
from db.ledger_repo import BatchWrite, LedgerRepo
from db.ledger_repo import FencedError as LedgerFencedError
from db.reward_repo import FencedError as RewardFencedError
from db.reward_repo import RewardRepo, RewardWrite
from domain.ledger import credit, new_account
from domain.rewards import Reward, RewardStock

NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def program(database_url: str) -> str:
    program_id = f"prog-{secrets.token_hex(4)}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO programs (program_id, name) VALUES (%s, 'Test')", (program_id,))
    return program_id


def count(url: str, table: str, program_id: str) -> int:
    with psycopg.connect(url) as conn:
        cur = conn.execute(
            f"SELECT count(*) FROM {table} WHERE program_id = %s",
            (program_id,),
        )
        (n,) = cur.fetchall()[0]
        return int(n)


def test_the_reward_repository_is_not_a_ledger_repository() -> None:
    assert not issubclass(RewardRepo, LedgerRepo)
    for name in ("commit_batch", "load_accounts", "lookup_idempotency", "load_refund_sources"):
        assert not hasattr(RewardRepo, name), name
    # The callers' imports keep working, and name the one shared error.
    assert LedgerFencedError is RewardFencedError is FencedError


def credited(program: str, member: str, points: int) -> BatchWrite:
    account = new_account(program, member)
    batch = BatchWrite(chain=chain_of("account", 0))
    batch.transactions.append(
        (credit(account, points, "seed", NOW, uuid.uuid4(), uuid.uuid4()), None)
    )
    batch.new_accounts.append(account)
    return batch


async def test_a_stale_ledger_commit_is_fenced_and_writes_nothing(
    database_url: str, program: str
) -> None:
    repo = LedgerRepo(database_url)
    try:
        await repo.commit_batch(credited(program, "ann", 10), NOW)  # the row is at version 1
        # A second credit, from a view of the account at version 0 (another owner moved
        # on from it), in a batch that also creates a new account.
        stale = credited(program, "ann", 5)
        stale.updated_accounts.append((stale.new_accounts.pop(), 0))
        stale.new_accounts.append(new_account(program, "bob"))
        with pytest.raises(FencedError, match="stale version"):
            await repo.commit_batch(stale, NOW)
    finally:
        await repo.close()
    # Nothing of the stale batch committed: not the credit, not the new account.
    assert count(database_url, "accounts", program) == 1
    assert count(database_url, "transactions", program) == 1


def reward(program: str, reward_id: str, stocked: int) -> Reward:
    stock = RewardStock(reward_id, stocked)
    return Reward(program, reward_id, "Mug", 100, stock, None, {}, 0, NOW, NOW)


async def test_a_stale_reward_commit_is_fenced_and_writes_nothing(
    database_url: str, program: str
) -> None:
    repo = RewardRepo(database_url)
    try:
        await repo.commit_rewards(RewardWrite(new_rewards=[reward(program, "mug", 5)]), NOW)
        stale = RewardWrite(
            new_rewards=[reward(program, "cap", 3)],
            updated_rewards=[(reward(program, "mug", 50), 7)],  # the row is at version 1
        )
        with pytest.raises(FencedError, match="stale version"):
            await repo.commit_rewards(stale, NOW)
        loaded = await repo.load_rewards([(program, "mug"), (program, "cap")])
    finally:
        await repo.close()
    assert list(loaded) == [(program, "mug")]  # the new reward rolled back with the batch
    assert loaded[(program, "mug")].reward.stock.stocked == 5
    assert loaded[(program, "mug")].reward.version == 1
