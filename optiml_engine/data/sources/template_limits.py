"""Resource limits of one template render (see sandbox.py): a CPU-time budget and a size bound
on the output and on every value built on the way, and the checks that refuse, before it runs, an
operation that would blow past them in one uninterruptible step.

The time budget is enforced two ways: a CPU-time timer (`ITIMER_VIRTUAL`, `SIGVTALRM`) interrupts
a render in the main thread wherever it is; in any thread, every operator, call, filter and block
the sandbox intercepts checks the clock. (A render in another thread that loops without reaching
any of those, `{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}`, is bounded only by
its input sizes.) A timer someone else armed is left alone; the checks then still hold.
"""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass

MAX_INT_BITS = 1 << 16  # integers of up to ~19,700 digits; 9**(9**8) has 136 million bits


@dataclass(frozen=True)
class TemplateLimits:
    """Per render of one record (bench config: `templates: {max_seconds, max_chars}`)."""

    max_seconds: float = 1.0  # CPU seconds (real templates take microseconds to milliseconds)
    max_chars: int = 1_000_000  # characters of the output and of any value built on the way


DEFAULT_LIMITS = TemplateLimits()


class TemplateRefused(Exception):
    """The template failed to render or reached outside its record."""

    fix = "fix the template or the record"


class TemplateLimitExceeded(TemplateRefused):
    """The template would exceed its time or size budget."""

    def __init__(self, what: str, key: str | None):
        super().__init__(what)
        if key is not None:
            self.fix = f"raise templates.{key} in the bench config, or fix the template"
        else:
            self.fix = f"fix the template; integers are limited to {MAX_INT_BITS} bits"


# --------------------------------------------------------------------------------------------
# The budget of the render in progress (one per thread)

_local = threading.local()


def size_of(value, cap: int) -> int:
    """Characters `value` stands for (strings, containers of them, digits of an int); counting
    stops once past `cap`."""
    if isinstance(value, str | bytes):
        return len(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value.bit_length() * 3 // 10 + 1
    if isinstance(value, list | tuple | dict | set | frozenset):
        total = len(value)
        for item in (value.items() if isinstance(value, dict) else value):
            total += size_of(item, cap)
            if total > cap:
                break
        return total
    return 0


class Budget:
    def __init__(self, limits: TemplateLimits):
        self.limits = limits
        self.deadline = time.process_time() + limits.max_seconds

    def tick(self) -> None:
        if time.process_time() > self.deadline:
            raise _timeout(self.limits)

    def chars(self, n: int, what: str) -> None:
        if n > self.limits.max_chars:
            raise TemplateLimitExceeded(f"{what} would hold {n} characters, above the "
                                        f"{self.limits.max_chars} allowed", "max_chars")

    def check(self, value, what: str):
        self.chars(size_of(value, self.limits.max_chars), what)
        return value

    def number(self, n, what: str) -> None:
        if isinstance(n, int) and not isinstance(n, bool) and n > self.limits.max_chars:
            raise TemplateLimitExceeded(f"{what} {n} is above the {self.limits.max_chars} "
                                        "characters allowed", "max_chars")


def _timeout(limits: TemplateLimits) -> TemplateLimitExceeded:
    return TemplateLimitExceeded(f"rendering took more than {limits.max_seconds:g} s of CPU "
                                 "time", "max_seconds")


class _CpuTimeout(BaseException):
    """Raised by the CPU-time timer's signal; a BaseException so no template-level handler
    swallows it on the way out."""


def _on_cpu_timer(signum, frame):
    if getattr(_local, "budget", None) is not None:
        raise _CpuTimeout


def run_within(limits: TemplateLimits, work):
    """`work()` under a fresh budget; in the main thread a CPU-time timer interrupts it too."""
    _local.budget = Budget(limits)
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGVTALRM, _on_cpu_timer)
        if signal.setitimer(signal.ITIMER_VIRTUAL, limits.max_seconds)[0] > 0:  # someone's own
            signal.setitimer(signal.ITIMER_VIRTUAL, 0)
            signal.signal(signal.SIGVTALRM, previous)
            previous = None  # theirs is left alone; the budget's checks still hold
    try:
        try:
            return work()
        finally:
            if previous is not None:
                signal.setitimer(signal.ITIMER_VIRTUAL, 0)
                signal.signal(signal.SIGVTALRM, previous)
            _local.budget = None
    except _CpuTimeout:
        raise _timeout(limits) from None


def current_budget() -> Budget | None:
    budget = getattr(_local, "budget", None)
    if budget is not None:
        budget.tick()
    return budget
