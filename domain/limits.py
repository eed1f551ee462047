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
# Idempotency records are kept at least this long (the API promise is 7 days).
IDEMPOTENCY_RETENTION_S = 30 * 24 * 3600
PAGE_SIZE_DEFAULT = 50
PAGE_SIZE_MAX = 200
BODY_BYTES_MAX = 1024 * 1024
# Lots shown in the member view (newest-expiring first); the balance always counts all.
LOTS_IN_VIEW_MAX = 100
# A lot may not expire more than this far ahead (100 years).
EXPIRY_HORIZON_S = 100 * 366 * 24 * 3600
