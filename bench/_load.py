"""HTTP load with wrk for dpopkit's benchmarks: fresh proofs, never reused (not a test).

A pool of requests' DPoP proofs is written to a file before the run; wrk's Lua script hands
them out so that no proof is sent twice (each thread takes every ``threads``-th line). A run
that would need more proofs than the pool holds is refused rather than reported; answers
other than 2xx are counted (``accepted`` stops on any). The server's CPU time is read from
``/proc`` for its process and every worker process under it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

_LUA = r"""
local proofs = {}
local idx = 0
local counter = 0
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
end
function init(args)
  local nthreads = tonumber(args[2])
  local f = io.open(args[1], "r")
  local i = 0
  for line in f:lines() do
    if i % nthreads == tid then table.insert(proofs, line) end
    i = i + 1
  end
  f:close()
end
function request()
  idx = idx + 1
  if idx > #proofs then idx = 1 end
  local headers = {}
  for k, v in pairs(fixed_headers) do headers[k] = v end
  headers["DPoP"] = proofs[idx]
  return wrk.format(method, path, headers, body)
end
"""


@dataclass(frozen=True)
class LoadResult:
    """One wrk run: requests/s, server CPU µs per request, requests sent, and how many
    of them were answered with anything but 2xx (a figure with refusals measures
    something else than accepted requests: callers say so or stop)."""

    rate: float
    cpu_us: float
    requests: int
    refused: int


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` and of its live descendants."""
    total = 0.0
    todo = [pid]
    while todo:
        current = todo.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            kids = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        todo += [int(k) for k in kids]
    return total


def _lua_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def wrk_run(
    url: str,
    *,
    method: str,
    headers: Mapping[str, str],
    body: str,
    proofs: Sequence[str],
    seconds: float,
    server_pid: int,
    connections: int = 8,
    threads: int = 2,
    reuse: bool = False,
) -> LoadResult:
    """Run wrk against ``url``, one proof of ``proofs`` per request.

    With ``reuse`` the pool starts over when it runs out (a server that checks replays
    then refuses, and ``refused`` counts it); without, a run that would need more
    proofs than the pool holds is refused.
    """
    path = "/" + url.split("/", 3)[3] if url.count("/") >= 3 else "/"
    fixed = ", ".join(f"[{_lua_string(k)}] = {_lua_string(v)}" for k, v in headers.items())
    script = (
        f"method = {_lua_string(method)}\npath = {_lua_string(path)}\n"
        f"body = {_lua_string(body) if body else 'nil'}\nfixed_headers = {{{fixed}}}\n" + _LUA
    )
    with tempfile.TemporaryDirectory() as tmp:
        pool = Path(tmp) / "proofs.txt"
        pool.write_text("".join(p + "\n" for p in proofs))
        lua = Path(tmp) / "load.lua"
        lua.write_text(script)
        before = tree_cpu_seconds(server_pid)
        out = subprocess.run(
            [
                "wrk",
                f"-t{threads}",
                f"-c{connections}",
                f"-d{seconds:g}s",
                "-s",
                str(lua),
                url,
                "--",
                str(pool),
                str(threads),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        cpu = tree_cpu_seconds(server_pid) - before
    total = int(re.search(r"([0-9]+) requests in", out).group(1))  # type: ignore[union-attr]
    if total >= len(proofs) and not reuse:
        raise SystemExit(f"wrk sent {total} requests from a pool of {len(proofs)}: raise --pool")
    refused = re.search(r"Non-2xx or 3xx responses:\s+([0-9]+)", out)
    rate = float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))  # type: ignore[union-attr]
    return LoadResult(
        rate=rate,
        cpu_us=cpu / max(total, 1) * 1e6,
        requests=total,
        refused=int(refused.group(1)) if refused else 0,
    )


def accepted(result: LoadResult) -> LoadResult:
    """``result``, or a stop when any request was refused (the figure would be invalid)."""
    if result.refused:
        raise SystemExit(f"wrk: {result.refused} requests refused: the figure is invalid")
    return result


BENCH_DATABASE = "dpopkit_bench"


def fresh_postgres_database() -> str:
    """A new, empty PostgreSQL database on 127.0.0.1 for a benchmark run; its SQLAlchemy URL."""
    import psycopg

    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {BENCH_DATABASE} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {BENCH_DATABASE}")
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{BENCH_DATABASE}"
