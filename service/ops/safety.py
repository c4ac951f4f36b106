"""The safety switch: stop consuming when too many records in a row become dead letters.

A flood of dead letters usually means an upstream producer broke (a new format, a wrong topic), and
turning the whole backlog into dead letters helps nobody. The switch watches the share of dead
letters over a sliding window of the last records; when it reaches the threshold the shell finishes
and commits the batch in flight and pauses its partitions until an operator signal or a cool-down.

Pure: no I/O, no clock of its own (the caller passes monotonic seconds in).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SafetyPolicy:
    """When to trip, and when to resume by itself."""

    threshold: float
    """Trip when the share of dead letters in the window reaches this (0 < threshold <= 1)."""
    window_records: int
    """How many of the latest records the window holds."""
    min_records: int
    """Never trip while the window holds fewer records than this."""
    cooldown_seconds: float
    """Resume this long after tripping; 0 means only an operator signal resumes."""

    def __post_init__(self) -> None:
        if not 0 < self.threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1], not {self.threshold}")
        if not 1 <= self.min_records <= self.window_records:
            raise ValueError("need 1 <= min_records <= window_records")
        if self.cooldown_seconds < 0:
            raise ValueError("cooldown_seconds must not be negative")


class DeadLetterWindow:
    """The outcomes of the latest ``size`` records, run-length encoded: adding is O(1) amortized."""

    __slots__ = ("_dead", "_records", "_runs", "size")

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("the window holds at least one record")
        self.size = size
        self._runs: deque[list[int]] = deque()  # [is_dead (0 or 1), count], oldest first
        self._records = 0
        self._dead = 0

    @property
    def records(self) -> int:
        """Records in the window (at most ``size``)."""
        return self._records

    @property
    def dead_letters(self) -> int:
        """Dead letters among them."""
        return self._dead

    @property
    def ratio(self) -> float:
        """The share of dead letters in the window (0.0 when it is empty)."""
        return self._dead / self._records if self._records else 0.0

    def add(self, records: int, dead_letters: int) -> None:
        """Add one message's records, ``dead_letters`` of which were dead letters."""
        if not 0 <= dead_letters <= records:
            raise ValueError(f"{dead_letters} dead letters out of {records} records")
        self._push(0, records - dead_letters)
        self._push(1, dead_letters)
        excess = self._records - self.size
        runs = self._runs
        while excess > 0:
            run = runs[0]
            take = min(run[1], excess)
            run[1] -= take
            self._records -= take
            self._dead -= take * run[0]
            excess -= take
            if run[1] == 0:
                runs.popleft()

    def _push(self, dead: int, count: int) -> None:
        if count <= 0:
            return
        self._records += count
        self._dead += count * dead
        if self._runs and self._runs[-1][0] == dead:
            self._runs[-1][1] += count
        else:
            self._runs.append([dead, count])

    def clear(self) -> None:
        """Forget every record."""
        self._runs.clear()
        self._records = self._dead = 0


@dataclass(frozen=True, slots=True)
class Trip:
    """What the window held when the switch tripped."""

    ratio: float
    records: int
    dead_letters: int
    threshold: float


class SafetySwitch:
    """The window plus a latch: once tripped it stays tripped until ``resume``.

    ``observe`` trips the latch; the shell calls ``engage`` once it has actually paused consumption
    (after committing the batch in flight), and the cool-down counts from then.
    """

    __slots__ = ("paused_since", "policy", "tripped", "window")

    def __init__(self, policy: SafetyPolicy) -> None:
        self.policy = policy
        self.window = DeadLetterWindow(policy.window_records)
        self.tripped: Trip | None = None
        self.paused_since: float | None = None

    def observe(self, records: int, dead_letters: int) -> Trip | None:
        """Count one message's records; return the trip when this observation tripped the switch."""
        window = self.window
        window.add(records, dead_letters)
        if self.tripped is not None or window.records < self.policy.min_records:
            return None
        ratio = window.ratio
        if ratio < self.policy.threshold:
            return None
        self.tripped = Trip(ratio, window.records, window.dead_letters, self.policy.threshold)
        return self.tripped

    def engage(self, now: float) -> None:
        """Record that consumption is paused from ``now`` (monotonic seconds); needs a trip."""
        if self.tripped is None:
            raise RuntimeError("the safety switch has not tripped")
        if self.paused_since is None:
            self.paused_since = now

    def resume_due(self, now: float) -> bool:
        """True when paused and the cool-down (if there is one) is over."""
        since = self.paused_since
        cooldown = self.policy.cooldown_seconds
        return since is not None and cooldown > 0 and now - since >= cooldown

    def resumes_in(self, now: float) -> float | None:
        """Seconds until the cool-down resumes consumption; None when not paused or signal-only."""
        since = self.paused_since
        if since is None or self.policy.cooldown_seconds == 0:
            return None
        return max(0.0, since + self.policy.cooldown_seconds - now)

    def resume(self) -> Trip | None:
        """Reset the latch and the window; return the trip that ended (None if it was not tripped)."""
        trip, self.tripped, self.paused_since = self.tripped, None, None
        self.window.clear()
        return trip
