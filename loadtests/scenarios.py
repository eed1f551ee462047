"""Defaults shared by `loadtests.setup` (which creates the data) and `loadtests/locustfile.py`
(which drives load against it), so the two agree without any flags.

Every default can be overridden: setup takes flags, the locustfile takes the same names as
Locust arguments or LOADTEST_* environment variables (see the locustfile's docstring).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Scenario:
    program: str
    reward: str | None  # None: the scenario needs no reward
    member_prefix: str  # members are f"{member_prefix}{i}" for i in range(members)
    members: int
    points: int  # credited to every member by setup
    stock: int | None  # units of the reward (None: unlimited)
    cost: int  # points per unit of the reward
    per_member_limit: int | None


SCENARIOS: dict[str, Scenario] = {
    # 10,000 fans, 1,000 units, one unit per fan: exactly 1,000 sales, 9,000 out_of_stock.
    "flash_sale": Scenario(
        program="flash",
        reward="flash-deal",
        member_prefix="fan-",
        members=10_000,
        points=1_000,
        stock=1_000,
        cost=100,
        per_member_limit=1,
    ),
    # Everyday traffic over 10,000 members; an unlimited reward nobody can sell out.
    "mixed": Scenario(
        program="mixed",
        reward="gift-card",
        member_prefix="m-",
        members=10_000,
        points=1_000_000,
        stock=None,
        cost=50,
        per_member_limit=None,
    ),
    # One member everybody writes to (the member id is the prefix + "0": "hot-0").
    "hot_member": Scenario(
        program="hot",
        reward=None,
        member_prefix="hot-",
        members=1,
        points=10**12,
        stock=None,
        cost=1,
        per_member_limit=None,
    ),
}


def default_admin_key() -> str | None:
    """POINTS_ADMIN_KEY, else the key `points up` wrote to ~/.points/admin_key (or
    $POINTS_DATA_DIR/admin_key)."""
    key = os.environ.get("POINTS_ADMIN_KEY")
    if key:
        return key.strip()
    data_dir = Path(os.environ.get("POINTS_DATA_DIR") or Path.home() / ".points")
    try:
        return (data_dir / "admin_key").read_text().strip() or None
    except OSError:
        return None
