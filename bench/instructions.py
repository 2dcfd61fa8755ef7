"""Instruction counts of the benchmark ops under callgrind: the deterministic companion of
``bench/core.py`` and ``bench/client.py`` (a benchmark, not a test).

Timing ratios on a shared 2-vCPU machine move by ±0.1 from run to run, and the
Python part of an op costs more time per instruction than OpenSSL's part (its
code and data are evicted between two signatures, and the host's other tenants
share the caches). Instruction counts do not move: the same binary and inputs give
the same count whatever else the machine does. They measure *work*, not time: the bars
below are set in instructions, and the timed ratios of ``bench/core.py`` and
``bench/client.py`` stay as information on what that work costs on a given machine.

For each op it runs ``valgrind --tool=callgrind`` twice on the benchmark's
``--loop`` mode: once preparing and running ``--count`` iterations, once only
preparing them (``--prepare-only``) or with ``--count 0``; the difference divided
by the count is the instructions per iteration. Two ops run at a time.

Each bar prints ``<label> X.XXX× (must ≤ M: PASS|FAIL)``; the script exits 2 when a
bar fails (0 when all pass, 1 without valgrind). The bars, in instructions: verify with a
new key ≤ 1.13× the floor's import + verify, verify with a key seen before ≤ 1.09× a bare
verify, create ≤ 1.13× a bare sign, and what httpx ``DPoPAuth`` adds to a request ≤ 1.12×
a bare sign. The minimal verifier's ratios are printed as a yardstick, without a bar.

Run: ``python bench/instructions.py [--count N] [--core-only | --client-only]``
(about 4 minutes; needs valgrind).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BENCH = Path(__file__).resolve().parent
_COLLECTED = re.compile(r"Collected : (\d+)")

CORE_OPS = (
    "ES256:floor.sign",
    "ES256:dpopkit.create",
    "ES256:floor.verify",
    "ES256:dpopkit.verify-warm",
    "ES256:minimal.verify-warm",
    "ES256:floor.import+verify",
    "ES256:dpopkit.verify-cold",
    "ES256:minimal.verify-cold",
)
CLIENT_OPS = (
    "floor.ES256.sign",
    "mem.httpx.bare",
    "mem.httpx.bare+sign",
    "mem.httpx.dpopkit",
)
# (label, numerator op, denominator op, must): ratios of instructions per op; a ratio with
# a must is a bar (PASS/FAIL), one without is the yardstick, printed for comparison.
CORE_RATIOS = (
    ("verify-cold ÷ floor import+verify", "dpopkit.verify-cold", "floor.import+verify", 1.13),
    ("verify-warm ÷ floor verify", "dpopkit.verify-warm", "floor.verify", 1.09),
    ("create ÷ floor sign", "dpopkit.create", "floor.sign", 1.13),
    ("minimal verify-cold ÷ import+verify", "minimal.verify-cold", "floor.import+verify", None),
    ("minimal verify-warm ÷ floor verify", "minimal.verify-warm", "floor.verify", None),
)
#: DPoPAuth (httpx): instructions it adds to a request ÷ a bare sign, at most.
CLIENT_MUST = 1.12


def verdict(label: str, value: float, must: float) -> tuple[str, bool]:
    """The bar's line, ``<label> X.XXX× (must ≤ M: PASS|FAIL)``, and whether it passed."""
    passed = value <= must
    return f"{label} {value:.3f}× (must ≤ {must:.2f}: {'PASS' if passed else 'FAIL'})", passed


def _collected(cmd: list[str]) -> int:
    # A fixed hash seed: str hashes (dict and set layouts) are the same in every run, so
    # what is left of the run-to-run spread comes from the random signatures and jti.
    out = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *cmd],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    match = _COLLECTED.search(out.stderr)
    if match is None:  # pragma: no cover - valgrind changed its output
        raise RuntimeError("no instruction total in callgrind's output")
    return int(match.group(1))


def per_iteration(script: str, op: str, count: int) -> float:
    """Instructions of one iteration of ``op`` (the prepared pool excluded)."""
    base = [sys.executable, str(BENCH / script), "--loop", op]
    full = _collected([*base, "--count", str(count)])
    # core.py prepares a pool per iteration (excluded); client.py prepares nothing.
    unrun = ["--count", str(count), "--prepare-only"] if script == "core.py" else ["--count", "0"]
    return (full - _collected([*base, *unrun])) / count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=400, help="iterations per op")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--core-only", action="store_true")
    group.add_argument("--client-only", action="store_true")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 1
    jobs = []
    if not args.client_only:
        jobs += [("core.py", op) for op in CORE_OPS]
    if not args.core_only:
        jobs += [("client.py", op) for op in CLIENT_OPS]
    with ThreadPoolExecutor(max_workers=2) as pool:
        counts = dict(
            zip(
                jobs,
                pool.map(lambda job: per_iteration(job[0], job[1], args.count), jobs),
                strict=True,
            )
        )
    failed = False
    print(f"# instructions per iteration (callgrind, {args.count} iterations, pools excluded)")
    for (script, op), n in counts.items():
        print(f"{script:10} {op:28} {n:>12,.0f}")
    if not args.client_only:
        core = {op.split(":", 1)[1]: n for (s, op), n in counts.items() if s == "core.py"}
        print("\nES256 ratios of instructions (the timed ratios are in bench/core.py):")
        for label, num, den, must in CORE_RATIOS:
            value = core[num] / core[den]
            if must is None:
                print(f"  {label} {value:.3f}× (yardstick)")
                continue
            line, passed = verdict(label, value, must)
            failed |= not passed
            print(f"  {line}")
        for kind, floor in (("cold", "floor.import+verify"), ("warm", "floor.verify")):
            print(
                f"  Python above the floor, {kind}: dpopkit "
                f"{core[f'dpopkit.verify-{kind}'] - core[floor]:,.0f}, minimal "
                f"{core[f'minimal.verify-{kind}'] - core[floor]:,.0f} instructions"
            )
    if not args.core_only:
        client = {op: n for (s, op), n in counts.items() if s == "client.py"}
        added = client["mem.httpx.dpopkit"] - client["mem.httpx.bare"]
        sign_in_request = client["mem.httpx.bare+sign"] - client["mem.httpx.bare"]
        print(
            "\nhttpx DPoPAuth, added instructions per request "
            "(the timed ratios are in bench/client.py):"
        )
        print(
            f"  added {added:,.0f}; ÷ a bare sign inside the request "
            f"{added / sign_in_request:.3f}× (for information)"
        )
        line, passed = verdict(
            "DPoPAuth added ÷ a bare sign", added / client["floor.ES256.sign"], CLIENT_MUST
        )
        failed |= not passed
        print(f"  {line}")
    print("\nverdict: " + ("FAIL" if failed else "PASS"))
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
