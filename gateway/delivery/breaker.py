"""Circuit breaker of a lane: closed, open, half-open.

Closed: requests flow; it opens after ``failures`` consecutive failed requests, or when at least
``min_requests`` requests in the last ``window`` seconds failed in a ``failure_ratio`` share.
Open: nothing is sent until the cooldown ends. Half-open: at most ``probes`` requests are in
flight, and their answers are judged in rounds of ``probes`` by the same ratio (resilience4j's
permitted calls in half-open state): fewer failed than ``failure_ratio`` closes it; every one
failed means the integration is down, and it opens again for twice the cooldown (up to
``max_cooldown``); some got through but more failed than the ratio allows means it answers but
struggles, and the next round starts at once (the cooldown back at its base): a flaky
integration keeps delivering, ``probes`` requests at a time, instead of being starved by
single probes that each doubled the cooldown when they happened to fail.

A failed request here is one that may succeed later (timeouts, connection errors, 5xx, 429): a
permanent 4xx says the integration is up and answering.
"""

from __future__ import annotations

import collections
import time
from enum import StrEnum

from gateway.mapping.options import BreakerOptions


class BreakerState(StrEnum):
    """A breaker's state, as the admin API and metrics show it."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


STATE_VALUES = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


class CircuitBreaker:
    """One lane's breaker. Not thread-safe: lanes live on the event loop."""

    def __init__(self, options: BreakerOptions) -> None:
        self.options = options
        self._state = BreakerState.CLOSED
        self.consecutive = 0
        self.open_until = 0.0
        self.cooldown = options.cooldown
        self.opened = 0  # times it opened (metrics, tests)
        self._window: collections.deque[tuple[float, bool]] = collections.deque()
        self._window_failures = 0
        self._probes_out = 0  # attempts let through half-open and not yet finished
        self._probe_results: list[bool] = []  # answers of this half-open round

    def state(self, now: float | None = None) -> BreakerState:
        """The state now: an open breaker whose cooldown ended is half-open."""
        now = time.monotonic() if now is None else now
        if self._state == BreakerState.OPEN and now >= self.open_until:
            self._state = BreakerState.HALF_OPEN
            self._probes_out = 0
            self._probe_results = []
        return self._state

    @property
    def probing(self) -> bool:
        """Half-open with ``probes`` attempts in flight: nothing more may go until one is back."""
        return self._state == BreakerState.HALF_OPEN and self._probes_out >= self.options.probes

    def allow(self, now: float | None = None) -> bool:
        """Whether a request may go now; in half-open state, claims one of the probes (give it
        back with :meth:`probe_returned` once its answers are recorded)."""
        state = self.state(now)
        if state == BreakerState.CLOSED:
            return True
        if state == BreakerState.HALF_OPEN and not self.probing:
            self._probes_out += 1
            return True
        return False

    def probe_returned(self) -> None:
        """A probe claimed with :meth:`allow` finished, its answers recorded (or none came:
        nothing was sent, so its place goes to another probe)."""
        self._probes_out = max(0, self._probes_out - 1)

    def wait(self, now: float | None = None) -> float:
        """Seconds until a request may be allowed (0 when closed or half-open)."""
        now = time.monotonic() if now is None else now
        return max(0.0, self.open_until - now) if self.state(now) == BreakerState.OPEN else 0.0

    def record(self, ok: bool, now: float | None = None) -> None:
        """Count a finished request: ``ok`` False for a failure that may pass later."""
        now = time.monotonic() if now is None else now
        state = self.state(now)
        if state == BreakerState.HALF_OPEN:
            self._probe_results.append(ok)
            self._judge_probes(now)
            return
        if state == BreakerState.OPEN:
            return  # a request sent before it opened; its answer changes nothing
        self._push(now, ok)
        self.consecutive = 0 if ok else self.consecutive + 1
        o = self.options
        total = len(self._window)
        if self.consecutive >= o.failures or (
            total >= o.min_requests and self._window_failures / total >= o.failure_ratio
        ):
            self._open(now, o.cooldown)

    def _judge_probes(self, now: float) -> None:
        # Decided as soon as the answers still to come cannot change the verdict.
        o = self.options
        results = self._probe_results
        failed = results.count(False)
        pending = max(o.probes - len(results), 0)
        if (failed + pending) / o.probes < o.failure_ratio:
            self._close()
        elif pending == 0 and failed == len(results):
            self._open(now, self.cooldown * 2)  # none got through: down, back off further
        elif failed < len(results) and failed / o.probes >= o.failure_ratio:
            # Answering, struggling: another round at once, probes at a time.
            self._probe_results = []
            self.cooldown = o.cooldown

    def _push(self, now: float, ok: bool) -> None:
        self._window.append((now, ok))
        if not ok:
            self._window_failures += 1
        horizon = now - self.options.window
        while self._window and self._window[0][0] < horizon:
            _, old_ok = self._window.popleft()
            if not old_ok:
                self._window_failures -= 1

    def _open(self, now: float, cooldown: float) -> None:
        self.cooldown = min(max(cooldown, self.options.cooldown), self.options.max_cooldown)
        self.open_until = now + self.cooldown
        self._state = BreakerState.OPEN
        self.opened += 1
        self.consecutive = 0
        self._window.clear()
        self._window_failures = 0

    def _close(self) -> None:
        self._state = BreakerState.CLOSED
        self.cooldown = self.options.cooldown
        self.consecutive = 0
