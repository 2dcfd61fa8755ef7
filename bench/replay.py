"""Memory replay cache under a full table: the slowest single call (a benchmark, not a test).

Run: ``python bench/replay.py [--entries 1000000] [--calls 200000] [--clock cpu|wall]``

Fills a :class:`~dpopkit.storage.memory.MemoryReplayCache` to ``--entries`` with
keys spread over a 65 s window, then moves the clock so that every entry has
expired (the table is full of expired entries still in their grace) and
later past the grace, and times each ``check_and_store`` on the thread's CPU
clock (time the scheduler gives other processes on a shared machine is not
counted; ``--clock wall`` counts it).
The figures are information, not a pass/fail bar: the slowest call must stay
in microseconds however large the table is, because expired entries are
purged in bounded steps (``purge_step`` heap entries per call). A cache that
purges its whole backlog in one call shows up here as one call of the order
of a second for a million entries.
"""

from __future__ import annotations

import argparse
import gc
import secrets
import statistics
import time
from collections.abc import Callable

from dpopkit.storage.memory import MemoryReplayCache

NOW = 1_700_000_000.0
WINDOW = 65.0
GRACE = 300.0


def phase(
    cache: MemoryReplayCache, now: float, calls: int, clock: Callable[[], int]
) -> tuple[float, float, float]:
    """Time ``calls`` inserts at ``now``: (median µs, p99.9 µs, max µs)."""
    keys = [secrets.token_hex(32) for _ in range(calls)]
    samples = []
    for key in keys:
        start = clock()
        cache.check_and_store(key, now + WINDOW, now=now)
        samples.append((clock() - start) / 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.999)], samples[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    args = parser.parse_args()
    clock = time.thread_time_ns if args.clock == "cpu" else time.perf_counter_ns
    cache = MemoryReplayCache(max_entries=args.entries, purge_grace=GRACE)
    for i in range(args.entries):
        cache.check_and_store(secrets.token_hex(32), NOW + 1 + WINDOW * i / args.entries, now=NOW)
    gc.collect()
    gc.disable()
    print(
        f"memory replay cache, {args.entries:,} entries, {args.calls:,} calls per phase, "
        f"{args.clock} clock"
    )
    print(f"{'phase':<36} {'median µs':>10} {'p99.9 µs':>10} {'max µs':>10}")
    for label, now in (
        ("full, every entry expired (grace)", NOW + WINDOW + 2),
        ("full, every entry past its grace", NOW + WINDOW + 2 + GRACE + 1),
    ):
        median, p999, worst = phase(cache, now, args.calls, clock)
        print(f"{label:<36} {median:>10.1f} {p999:>10.1f} {worst:>10.1f}")
    gc.enable()


if __name__ == "__main__":
    main()
