"""Named limits. Every bound in the product is one of these constants (units last)."""

import re

# Points moved by one credit or debit. 10^12 keeps any sum of a few million operations
# far from the 2^63 ceiling of a PostgreSQL bigint.
POINTS_PER_OPERATION_MAX = 10**12
# A member's book balance; a credit that would pass it is refused instead of overflowing.
BALANCE_MAX = 10**15
REASON_LENGTH_MAX = 500
ID_LENGTH_MAX = 128
# Safe alphabet for program and member ids: they appear in URLs, logs and keys.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"
ID_RE = re.compile(ID_PATTERN)
PROGRAM_NAME_LENGTH_MAX = 200
IDEMPOTENCY_KEY_LENGTH_MAX = 255
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]{1,255}$"
IDEMPOTENCY_KEY_RE = re.compile(IDEMPOTENCY_KEY_PATTERN)
# Idempotency records (and the remembered answers of events) are kept this long, then
# purged (db/retention_repo.py); a retry with an older key is applied as a new request. The
# minimum is the API promise: a client may retry for 7 days.
IDEMPOTENCY_RETENTION_DAYS_DEFAULT = 30
IDEMPOTENCY_RETENTION_DAYS_MIN = 7
IDEMPOTENCY_RETENTION_DAYS_MAX = 3650
assert (
    IDEMPOTENCY_RETENTION_DAYS_MIN
    <= IDEMPOTENCY_RETENTION_DAYS_DEFAULT
    <= IDEMPOTENCY_RETENTION_DAYS_MAX
)
# How often the retention job runs (account shard 0), by default: hourly.
RETENTION_INTERVAL_S_DEFAULT = 3600.0
# The purge deletes this many rows per statement, each its own short transaction, and
# pauses between statements, so it holds row locks for milliseconds and leaves the group
# commits most of the database.
PURGE_ROWS_PER_BATCH = 1000
PURGE_PAUSE_S = 0.05
# One pass deletes at most this many batches (10^6 rows); the next pass goes on.
PURGE_BATCHES_PER_PASS_MAX = 1000
PAGE_SIZE_DEFAULT = 50
PAGE_SIZE_MAX = 200
# An opaque page cursor (base64 of a position: an id, or a time and a uuid).
CURSOR_LENGTH_MAX = 200
# An id-keyed cursor is the id in base64 (4 characters per 3 bytes): the longest id fits.
assert 4 * -(-ID_LENGTH_MAX // 3) <= CURSOR_LENGTH_MAX
BODY_BYTES_MAX = 1024 * 1024
# Lots shown in the member view (newest-expiring first); the balance always counts all.
LOTS_IN_VIEW_MAX = 100
# A lot may not expire more than this far ahead (100 years).
EXPIRY_HORIZON_S = 100 * 366 * 24 * 3600

# --- Earning programs: policy, rules, tiers (domain/policy.py, rules.py, tiers.py) ---
# IANA names are short ("America/Argentina/ComodRivadavia" is the longest, 32 characters).
TIME_ZONE_LENGTH_MAX = 64
# Expiry counted from availability; ten years of days or months, a century of years.
EXPIRY_DAYS_MAX = 3650
EXPIRY_MONTHS_MAX = 120
EXPIRY_YEARS_MAX = 100
# Points held pending (refund and chargeback windows are weeks, not years).
PENDING_DAYS_MAX = 365
# Tier windows and grace: bounded so a member's per-day buckets stay small.
TIER_WINDOW_DAYS_MAX = 3660
TIER_GRACE_DAYS_MAX = 3650
TIERS_MAX = 20
TIER_NAME_LENGTH_MAX = 64
# Any multiplier factor (tier, campaign, rule): at most x100, so one event cannot mint
# points out of proportion to what the member did.
MULTIPLIER_MAX = 100
# Decimal strings (rates, factors, amounts): digits in total, and digits after the point.
DECIMAL_DIGITS_MAX = 30
DECIMAL_PLACES_MAX = 12
# A rule set and its rules.
RULES_PER_SET_MAX = 200
RULE_PRIORITY_MAX = 10_000
RULE_SET_VERSION_MAX = 2**31 - 1
EVENT_TYPE_LENGTH_MAX = 64
LADDER_BRACKETS_MAX = 50
# A per_amount rate, in points per unit of the attribute.
AWARD_RATE_MAX = 1_000_000
ATTRIBUTE_NAME_LENGTH_MAX = 64
# Conditions: parsed once at compile time, then walked per event, so their size bounds
# the work per event. Depth stays far below Python's recursion limit.
CONDITION_LENGTH_MAX = 1000
CONDITION_NODES_MAX = 300
CONDITION_DEPTH_MAX = 30
CONDITION_LITERAL_ITEMS_MAX = 100
# Integer literals in a condition and integer attribute values: a PostgreSQL bigint.
INTEGER_ABS_MAX = 2**63 - 1
# Explanation notes, one per rule line.
NOTE_LENGTH_MAX = 300
# Event attributes: nesting, total number of values, string and key lengths.
ATTRIBUTES_DEPTH_MAX = 4
ATTRIBUTES_VALUES_MAX = 200
ATTRIBUTE_STRING_LENGTH_MAX = 1000
# Events: how far from the server's clock occurred_at may be. A little future skew is
# tolerated (upstream clocks drift). Late events (an offline till syncing) are accepted for
# 35 days: the per-day cap counters are kept longer than that (domain/earning.py
# DAYS_KEPT_MIN), so a late event can never slip past a daily cap.
EVENT_FUTURE_SKEW_S = 5 * 60
EVENT_PAST_AGE_S = 35 * 24 * 3600
# Events in one POST /events/batch (and taken from the stream in one read).
EVENTS_PER_BATCH_MAX = 1000
# "expiring_soon" in the member view: amounts by date in this many days ahead.
EXPIRING_SOON_DAYS = 30
# Event types: a short lowercase word (order, check_in, card.spend); rules and events
# share this alphabet so a rule can always be matched.
EVENT_TYPE_PATTERN = r"^[a-z0-9_.-]{1,64}$"

# --- Risk control: velocity limits and reviews (domain/risk.py, domain/reviews.py) ---
# Redemptions a velocity limit may allow per hour (a points limit is bounded by
# POINTS_PER_OPERATION_MAX like any amount of points).
REDEMPTIONS_PER_HOUR_MAX = 1_000_000
# Reviews a member may have pending at once: they are loaded with the account, so their
# number bounds the work of loading it. A debit past it is refused (limit_exceeded).
PENDING_REVIEWS_PER_MEMBER_MAX = 100

# --- What-if replay of earning rules (domain/simulation.py) ---
# A simulation replays the events that occurred in [from, to): at most this long a window
# (a year, leap day included), so one job's work is bounded by a year of one program.
SIMULATION_WINDOW_DAYS_MAX = 366
# Members listed as the most affected (top N by absolute difference).
SIMULATION_TOP_MEMBERS_DEFAULT = 10
SIMULATION_TOP_MEMBERS_MAX = 100
# Rows the job fetches and replays between two progress updates (one UPDATE per page).
SIMULATION_PAGE_EVENTS = 5000
# A queued or running job whose heartbeat (its last progress update) is older than this is
# failed when read: its worker died (the replica that started it, or the Ray task).
SIMULATION_STALE_S = 60
assert SIMULATION_TOP_MEMBERS_DEFAULT <= SIMULATION_TOP_MEMBERS_MAX
# --- Reports (domain/reports.py, db/reports_repo.py) ---
# A point's money value: a currency (ISO 4217 code) and dated values, in minor units of the
# currency per point (a decimal string). At most this many dated values, each at most this
# large (a point worth 10^6 minor units, e.g. 10,000.00 EUR, is past any real program).
POINT_VALUES_MAX = 100
MINOR_UNITS_PER_POINT_MAX = 1_000_000
CURRENCY_PATTERN = r"^[A-Z]{3}$"
CURRENCY_RE = re.compile(CURRENCY_PATTERN)
# Periods a report covers, per granularity: ~13 months of days, 5 years of weeks, 10 years
# of months. Each is a bound on the rows of an answer and on the work behind it.
REPORT_DAYS_MAX = 400
REPORT_WEEKS_MAX = 260
REPORT_MONTHS_MAX = 120
# `expiring`: the months ahead it shows.
REPORT_EXPIRING_MONTHS = 12
# `members`: the activity windows it counts.
REPORT_ACTIVE_WINDOWS_DAYS = (30, 90)
