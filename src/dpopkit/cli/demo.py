"""``dpopkit demo``: the whole DPoP story on a real authorization server and API, checked.

Starts dpopkit's authorization server and the demo protected API on free
127.0.0.1 ports (SQLite in a temporary directory, no configuration), plays the
client and an attacker against them (:mod:`dpopkit.demo`), prints each step with
what was expected and what happened, and exits 0 only if every step behaved as
RFC 9449 requires (1 otherwise; 2 if the servers cannot be set up). The
servers and the directory are removed at the end, unless ``--keep`` keeps the
directory (the AS database, signing key and demo secrets) for inspection.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from dpopkit.cli import CommandError, missing_extra

__all__ = ["register"]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="show DPoP working end to end (a local AS, API, client and attacker)",
        description=(
            "Start an authorization server and a protected API on 127.0.0.1, then walk "
            "through the DPoP story: a bound token, a protected call, four attacks with a "
            "stolen token, a refresh, and a stolen refresh token. Exits 0 only if every "
            "step behaved as RFC 9449 requires."
        ),
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print machine-readable results: {ok, steps: [{name, expected, observed, ok}]}",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the temporary directory (AS database, keys, demo secrets) and print its path",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        from dpopkit.demo import demo_servers, play
        from dpopkit.server.config import ConfigError
    except ImportError as exc:
        raise missing_extra("server", exc) from None
    tmp = Path(tempfile.mkdtemp(prefix="dpopkit-demo-"))
    data_dir = tmp / "as"
    try:
        with demo_servers(data_dir) as target:
            code = play(target, out=sys.stdout, as_json=args.json)
    except (ConfigError, RuntimeError) as exc:
        raise CommandError(f"cannot start the demo servers: {exc}", 2) from None
    finally:
        if args.keep:
            print(
                f"dpopkit demo: kept {tmp} (dpopkit serve --data-dir {data_dir} reuses it)",
                file=sys.stderr,
            )
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return code
