"""Signing throughput of DPoP proofs by where the key lives (information only, not a test).

Run: ``python bench/keys.py [--reps N] [--target-ms MS]`` from the repository root.

Times :func:`dpopkit.create_proof` (with ``ath``) with the same kind of key held

* in memory (``DPoPKey.generate``),
* in a SoftHSM 2 token (:mod:`dpopkit.signers.pkcs11`, ``CKM_ECDSA`` / ``CKM_RSA_PKCS_PSS``),
* in a TPM 2.0 simulator (:mod:`dpopkit.signers.tpm`, swtpm over TCP).

Both devices are started here, as the tests start them (``tests/signers/devices.py``);
a device that is not installed is reported and left out. Wall-clock time is used: the
TPM signs in another process, whose time the thread's CPU clock would not see. SoftHSM
runs in-process, so its figure is OpenSSL plus the PKCS#11 layers; a hardware HSM, smart
card or TPM chip is slower by orders of magnitude (milliseconds per signature), which is
why a client signs one proof per request and no more.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

from _harness import Op, fmt_us, run_round_robin  # noqa: E402

from dpopkit import DPoPKey, create_proof  # noqa: E402

URL = "https://rs.example.com/api/v1/orders/12345"
ACCESS_TOKEN = "eyJ" + "A" * 829 + "x.y"


def _op(name: str, key: DPoPKey, max_n: int) -> Op:
    def prepare(n: int) -> Callable[[], object]:
        def run() -> object:
            for _ in range(n):
                create_proof(key, htm="POST", htu=URL, access_token=ACCESS_TOKEN)
            return None

        return run

    return Op(name, prepare, max_n=max_n)


@contextmanager
def _devices(stack: ExitStack, root: Path) -> Iterator[dict[str, DPoPKey]]:
    import os

    from tests.signers.devices import USER_PIN, init_softhsm, run_swtpm

    keys: dict[str, DPoPKey] = {}
    try:
        hsm = init_softhsm(root / "softhsm")
        os.environ["SOFTHSM2_CONF"] = str(hsm.conf)
        from dpopkit.signers.pkcs11 import generate_pkcs11_key

        keys["softhsm ES256"] = generate_pkcs11_key(hsm.uri("bench-es"), pin=USER_PIN)
        keys["softhsm PS256"] = generate_pkcs11_key(hsm.uri("bench-ps"), alg="PS256", pin=USER_PIN)
    except BaseException as exc:  # pytest's skip outside pytest, a missing extra
        print(f"SoftHSM not measured: {exc}", file=sys.stderr)
    try:
        tpm = stack.enter_context(run_swtpm(root / "swtpm"))
        from dpopkit.signers.tpm import generate_tpm_key

        keys["swtpm ES256"] = generate_tpm_key(tpm.new_reference())
    except BaseException as exc:
        print(f"swtpm not measured: {exc}", file=sys.stderr)
    yield keys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--target-ms", type=float, default=40.0)
    args = parser.parse_args()
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        keys = {
            "memory ES256": DPoPKey.generate("ES256"),
            "memory PS256": DPoPKey.generate("PS256"),
        }
        keys.update(stack.enter_context(_devices(stack, Path(tmp))))
        ops = [_op(name, key, 5000) for name, key in keys.items()]
        run_round_robin(ops, reps=args.reps, target_ms=args.target_ms, clock="wall")
    print(f"{'key':<16} {'µs/proof':>10} {'proofs/s':>10}")
    for op in ops:
        print(f"{op.name:<16} {fmt_us(op.median_ns):>10} {1e9 / op.median_ns:>10.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
