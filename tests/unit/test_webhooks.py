"""Webhook signatures: what a receiver checks."""

from domain.webhooks import sign, verify

SECRET = b"whsec_test"
BODY = b'{"type":"redemption.fulfill"}'


def test_a_signature_verifies_and_any_change_breaks_it() -> None:
    header = sign(SECRET, 1_700_000_000, BODY)
    assert header.startswith("t=1700000000,v1=")
    assert verify(SECRET, header, BODY, now=1_700_000_010)
    assert not verify(SECRET, header, BODY + b" ", now=1_700_000_010)  # body changed
    assert not verify(b"other", header, BODY, now=1_700_000_010)  # wrong secret
    forged = header.replace("t=1700000000", "t=1700000005")  # timestamp moved
    assert not verify(SECRET, forged, BODY, now=1_700_000_010)


def test_old_or_malformed_signatures_are_refused() -> None:
    header = sign(SECRET, 1_700_000_000, BODY)
    assert not verify(SECRET, header, BODY, now=1_700_000_000 + 301)
    for bad in ("", "t=1", "v1=abc", "t=x,v1=abc", "garbage"):
        assert not verify(SECRET, bad, BODY, now=1_700_000_000)
