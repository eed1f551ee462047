"""Reviews: a debit or a redemption above the program's review threshold waits for an
operator.

    pending --approve--> approved   (the held points are spent: a debit from member:held;
                                     a redemption's saga goes on to fulfilment)
    pending --reject---> rejected   (the held points go back into their lots; a
                                     redemption's units go back into stock)

A decision is final. Deciding again the way it was decided answers the decision as it was
made (the first reason and time stay): a retried approve is harmless. Deciding the other
way is `invalid_state`. The held points are a `hold` transaction in the ledger
(domain/ledger.py); the review records which transaction held them and which one decided.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from domain.errors import Code, PointsError
from domain.limits import REASON_LENGTH_MAX


class ReviewStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"


class ReviewKind(StrEnum):
    DEBIT = "debit"
    REDEMPTION = "redemption"


# The `status` of the answer to a request held for review (a debit's, a redemption's).
HELD_FOR_REVIEW = "pending_review"
APPROVE = "approve"
REJECT = "reject"
DECISIONS: dict[str, ReviewStatus] = {
    APPROVE: ReviewStatus.APPROVED,
    REJECT: ReviewStatus.REJECTED,
}


@dataclass(slots=True)
class Review:
    review_id: uuid.UUID
    program_id: str
    member_id: str
    kind: ReviewKind
    points: int
    # The reason of the request held (the debit's, or the redemption's).
    reason: str
    status: ReviewStatus
    hold_txn_id: uuid.UUID
    # The Idempotency-Key of the request held (a redemption's: its saga's debit key).
    key: str
    created_at: datetime
    redemption_id: uuid.UUID | None = None
    reward_id: str | None = None
    # Set by the decision: the debit (approved) or the release (rejected).
    decision_txn_id: uuid.UUID | None = None
    decision_reason: str | None = None
    decided_at: datetime | None = None

    def check(self) -> None:
        assert self.points > 0
        assert (self.kind is ReviewKind.REDEMPTION) == (self.redemption_id is not None)
        assert (self.redemption_id is None) == (self.reward_id is None)
        decided = self.status is not ReviewStatus.PENDING
        assert decided == (self.decision_txn_id is not None)
        assert decided == (self.decided_at is not None) == (self.decision_reason is not None)


def check_decision_reason(reason: object) -> str:
    if not isinstance(reason, str) or not 1 <= len(reason) <= REASON_LENGTH_MAX:
        raise PointsError(
            Code.VALIDATION_ERROR, f"reason must be 1..{REASON_LENGTH_MAX} characters"
        )
    if "\x00" in reason:
        raise PointsError(Code.VALIDATION_ERROR, "reason must not contain NUL characters")
    return reason


def decide(review: Review, decision: str) -> bool:
    """Check a decision against the review's state: True when it is to be made now (the
    review is pending), False when it was already made this way (answer it as it was).
    Raises invalid_state when the review was decided the other way. Changes nothing."""
    target = DECISIONS[decision]
    review.check()
    if review.status is ReviewStatus.PENDING:
        return True
    if review.status is target:
        return False
    raise PointsError(Code.INVALID_STATE, f"review {review.review_id} is already {review.status}")


def record_decision(
    review: Review, decision: str, txn_id: uuid.UUID, reason: str, now: datetime
) -> None:
    """Mark a pending review decided. Mutates `review`."""
    assert review.status is ReviewStatus.PENDING
    check_decision_reason(reason)
    review.status = DECISIONS[decision]
    review.decision_txn_id = txn_id
    review.decision_reason = reason
    review.decided_at = now
    review.check()
    assert review.status is not ReviewStatus.PENDING


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _str(value: uuid.UUID | None) -> str | None:
    return None if value is None else str(value)


def review_view(review: Review) -> dict[str, Any]:
    """The review resource as the API shows it (JSON-ready)."""
    review.check()
    return {
        "review_id": str(review.review_id),
        "program_id": review.program_id,
        "member_id": review.member_id,
        "kind": str(review.kind),
        "points": review.points,
        "reason": review.reason,
        "status": str(review.status),
        "hold_transaction_id": str(review.hold_txn_id),
        "decision_transaction_id": _str(review.decision_txn_id),
        "decision_reason": review.decision_reason,
        "redemption_id": _str(review.redemption_id),
        "reward_id": review.reward_id,
        "created_at": _iso(review.created_at),
        "decided_at": _iso(review.decided_at),
    }
