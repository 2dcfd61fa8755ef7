"""Timing machinery for dpopkit's benchmarks (a benchmark, not a test).

Method (see bench/README.md):

* every op is a ``prepare(n) -> run`` pair: ``prepare`` builds, untimed, whatever
  ``n`` iterations need (pools of fresh, distinct proofs; empty replay stores) and
  returns a closure that performs exactly ``n`` iterations;
* each op is calibrated once so that one repetition takes about ``target_ms``;
* repetitions run round-robin across all ops, so a noisy phase of the shared
  machine hits every op alike; repetitions are short and many, so that most of
  them fall between two disturbances;
* timing uses the thread's CPU clock (``time.thread_time_ns``) by default, so
  that time the scheduler gives to other processes on a shared machine is not
  counted (``clock="wall"`` uses ``time.perf_counter_ns``); the cyclic GC is
  disabled (and collected just before), and the figure kept is the median over
  the repetitions;
* a ratio between two ops is the median of their per-repetition ratios (each
  pair measured seconds apart at most, so slow drifts cancel), reported with the
  ratio of the medians and the interquartile range of the per-repetition ratios
  as the noise.
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
    def min_ns(self) -> float:
        """The least-disturbed repetition (noise on a shared machine only adds time)."""
        return min(self.samples_ns)

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


def time_once(
    op: Op, n: int, clock: Callable[[], int] = time.thread_time_ns, *, collect: bool = True
) -> float:
    """Prepare ``n`` iterations untimed, then time them; return ns per iteration."""
    run = op.prepare(n)
    if collect:
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
        if progress is not None and (rep + 1) % max(1, reps // 5) == 0:
            progress(f"repetition {rep + 1}/{reps}")
        gc.collect()
        for op in ops:
            op.samples_ns.append(time_once(op, op.n, read, collect=False))


@dataclass(frozen=True)
class Ratio:
    """A ratio between two ops measured in the same run."""

    value: float  # median of the per-repetition ratios op/reference
    of_medians: float  # median(op) / median(reference)
    q1: float  # first quartile of the per-repetition ratios
    q3: float  # third quartile


def ratio(op: Op, reference: Op) -> Ratio:
    """``op`` over ``reference``: median of per-repetition ratios, ratio of medians, quartiles."""
    per_rep = [a / b for a, b in zip(op.samples_ns, reference.samples_ns, strict=True)]
    if len(per_rep) >= 2:
        q1, _, q3 = statistics.quantiles(per_rep, n=4)
    else:
        q1 = q3 = per_rep[0]
    return Ratio(statistics.median(per_rep), op.median_ns / reference.median_ns, q1, q3)


def fmt_us(ns: float) -> str:
    """Format a duration in µs with a sensible number of digits."""
    us = ns / 1000
    return f"{us:.1f}" if us >= 10 else f"{us:.2f}"
