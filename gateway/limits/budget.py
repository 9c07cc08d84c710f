"""Token budgets per key: calendar periods in UTC (a day from 00:00, a month from the 1st).

Calendar periods, not rolling windows: a team plans "this month's tokens", /v1/usage and the
429's "resets at" name one fixed moment, and each period is one counter (a Redis hash per key
and period) that simply expires after it ends, instead of a window of per-hour buckets to sum.
The period is read from the gateway's clock (replicas are NTP-synced; a request within the
clock skew of midnight may count in the neighbouring period).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

# How long a finished period's counters are kept in Redis (for a late look at them).
KEEP_DAY = 8 * 86400
KEEP_MONTH = 62 * 86400


@dataclass(frozen=True, slots=True)
class Periods:
    day: str  # 20261201
    month: str  # 202612
    day_reset: float  # epoch seconds of the next 00:00 UTC
    month_reset: float  # epoch seconds of the next month's 1st, 00:00 UTC


_cache: dict[int, Periods] = {}  # the current second's, alone


def periods(now: float | None = None) -> Periods:
    """The current day and month (cached per second of wall time)."""
    wall = time.time() if now is None else now
    second = int(wall)
    if now is None and second in _cache:
        return _cache[second]
    moment = datetime.fromtimestamp(second, UTC)
    midnight = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    first = midnight.replace(day=1)
    following = (first + timedelta(days=32)).replace(day=1)
    result = Periods(
        day=moment.strftime("%Y%m%d"),
        month=moment.strftime("%Y%m"),
        day_reset=(midnight + timedelta(days=1)).timestamp(),
        month_reset=following.timestamp(),
    )
    if now is None:
        _cache.clear()
        _cache[second] = result
    return result


def reset_text(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
