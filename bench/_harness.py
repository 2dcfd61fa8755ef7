"""Timing machinery for dpopkit's benchmarks (a benchmark, not a test).

Method (see docs/performance.md):

* every op is a ``prepare(n) -> run`` pair: ``prepare`` builds, untimed, whatever
  ``n`` iterations need (pools of fresh, distinct proofs; empty replay stores) and
  returns a closure that performs exactly ``n`` iterations;
* each op is calibrated once so that one repetition takes about ``target_ms``;
* repetitions run round-robin across all ops, so a noisy phase of the shared
  machine hits every op alike;
* timing uses the thread's CPU clock (``time.thread_time_ns``) by default, so
  that time the scheduler gives to other processes on a shared machine is not
  counted (``clock="wall"`` uses ``time.perf_counter_ns``); the cyclic GC is
  disabled (and collected just before), and the figure kept is the median over
  the repetitions;
* ratios are taken between medians of the same run, and the spread of the
  per-repetition ratios is reported as the noise.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

Run = Callable[[], object]
Prepare = Callable[[int], Run]


@dataclass
class Op:
    """One timed operation."""

    name: str
    prepare: Prepare
    max_n: int = 20_000
    n: int = 0
    samples_ns: list[float] = field(default_factory=list)

    @property
    def median_ns(self) -> float:
        return statistics.median(self.samples_ns)

    @property
    def spread(self) -> float:
        """(max - min) / median of the per-repetition figures."""
        if len(self.samples_ns) < 2:
            return 0.0
        return (max(self.samples_ns) - min(self.samples_ns)) / self.median_ns


CLOCKS: dict[str, Callable[[], int]] = {
    "cpu": time.thread_time_ns,
    "wall": time.perf_counter_ns,
}


def time_once(op: Op, n: int, clock: Callable[[], int] = time.thread_time_ns) -> float:
    """Prepare ``n`` iterations untimed, then time them; return ns per iteration."""
    run = op.prepare(n)
    gc.collect()
    gc.disable()
    try:
        start = clock()
        run()
        elapsed = clock() - start
    finally:
        gc.enable()
    return elapsed / n


def calibrate(op: Op, target_ms: float, clock: Callable[[], int] = time.thread_time_ns) -> None:
    """Choose ``op.n`` so that one repetition takes about ``target_ms``."""
    n = 8
    per_op = time_once(op, n, clock)
    # A second, larger probe: the first call pays for warming caches.
    n = max(8, min(op.max_n, int(target_ms * 1e6 / 10 / per_op)))
    per_op = time_once(op, n, clock)
    op.n = max(8, min(op.max_n, int(target_ms * 1e6 / per_op)))


def run_round_robin(
    ops: Sequence[Op],
    *,
    reps: int,
    target_ms: float,
    clock: str = "cpu",
    progress: Callable[[str], None] | None = None,
) -> None:
    """Calibrate every op, then run ``reps`` repetitions round-robin across all ops."""
    read = CLOCKS[clock]
    for op in ops:
        calibrate(op, target_ms, read)
    for rep in range(reps):
        if progress is not None:
            progress(f"repetition {rep + 1}/{reps}")
        for op in ops:
            op.samples_ns.append(time_once(op, op.n, read))


@dataclass(frozen=True)
class Ratio:
    """A ratio between two ops measured in the same run."""

    value: float  # median(op) / median(reference)
    low: float  # smallest per-repetition ratio
    high: float  # largest per-repetition ratio


def ratio(op: Op, reference: Op) -> Ratio:
    """``op`` over ``reference``: ratio of medians, and the range of per-repetition ratios."""
    per_rep = [a / b for a, b in zip(op.samples_ns, reference.samples_ns, strict=True)]
    return Ratio(op.median_ns / reference.median_ns, min(per_rep), max(per_rep))


def fmt_us(ns: float) -> str:
    """Format a duration in µs with a sensible number of digits."""
    us = ns / 1000
    return f"{us:.1f}" if us >= 10 else f"{us:.2f}"
