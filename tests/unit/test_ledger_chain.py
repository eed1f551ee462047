"""The hash chain's pure parts (db/ledger_chain.py): chain names, the hash in Python, and
what a broken link's flags say."""

import hashlib

import pytest

from db.ledger_chain import (
    APPEND_LINK,
    GENESIS_CHAIN,
    LINK_BODY,
    WALK_LINKS,
    broken_link_reason,
    chain_of,
    link_body,
    link_hash,
    link_hash_of,
)


def test_each_account_shard_has_its_own_chain() -> None:
    assert chain_of("account", 0) == "account-0"
    assert chain_of("account", 17) == "account-17"
    assert len({chain_of("account", n) for n in range(64)} | {GENESIS_CHAIN}) == 65
    with pytest.raises(AssertionError):
        chain_of("reward", 0)
    with pytest.raises(AssertionError):
        chain_of("account", -1)


def test_the_hash_chains_on_the_previous_link() -> None:
    first = link_hash_of(None, ['["a"]', '["b"]'])
    assert first == hashlib.sha256(b'["a"],["b"]').digest()
    second = link_hash_of(first, ['["c"]'])
    assert second == hashlib.sha256(first + b'["c"]').digest()
    # Any change to a document, its order or the previous hash changes the link.
    assert link_hash_of(None, ['["b"]', '["a"]']) != first
    assert link_hash_of(None, ['["a"]', '["B"]']) != first
    assert link_hash_of(second, ['["c"]']) != second
    with pytest.raises(AssertionError):
        link_hash_of(b"short", [])


def test_the_writer_and_the_verifier_share_one_expression() -> None:
    body = link_body("x.ids")
    assert "ANY(x.ids)" in body and "{" not in body
    assert LINK_BODY.format(txn_ids="x.ids") == body
    assert link_hash("p", "b") == "sha256(coalesce(p, ''::bytea) || convert_to(b, 'UTF8'))"
    assert link_hash("last.hash", "b.body") in APPEND_LINK
    assert link_hash("l.prev_hash", "b.body") in WALK_LINKS
    assert link_body("ids.a") in APPEND_LINK and link_body("l.txn_ids") in WALK_LINKS
    # Timestamps enter as epoch microseconds, never as text (TimeZone-dependent).
    stamps = ("t.created_at", "t.expires_at", "e.created_at")
    assert all(body.count(f"extract(epoch FROM {stamp})") == 1 for stamp in stamps)
    assert body.count("_at") == len(stamps)


def test_a_broken_links_reason_names_the_most_telling_flag() -> None:
    sound = {"gap": False, "unlinked": False, "missing": False, "altered": False}
    assert broken_link_reason(**sound) == ""
    assert "changed" in broken_link_reason(**{**sound, "altered": True})
    assert "missing" in broken_link_reason(**{**sound, "missing": True, "altered": True})
    assert "previous link" in broken_link_reason(**{**sound, "unlinked": True, "altered": True})
    assert "seq skips" in broken_link_reason(**{**sound, "gap": True, "unlinked": True})
