"""Webhook signatures (pure): how Points signs a fulfilment request and how a receiver checks it.

Header: `Points-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">`.
The timestamp is inside the MAC, so a receiver can refuse old (replayed) requests.
"""

import hashlib
import hmac

SIGNATURE_HEADER = "Points-Signature"
# A receiver should refuse signatures older than this.
TOLERANCE_S = 300


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    assert secret
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(
    secret: bytes, header: str, body: bytes, now: int, tolerance_s: int = TOLERANCE_S
) -> bool:
    """True when `header` is a valid signature of `body` made within `tolerance_s` of `now`."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
        given = parts["v1"]
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance_s:
        return False
    expected = sign(secret, timestamp, body).split("v1=", 1)[1]
    return hmac.compare_digest(expected, given)
