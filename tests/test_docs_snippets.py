"""Every Python block of README.md and docs/*.md runs; every ``dpopkit`` command line parses.

The blocks of one page run **in page order in one namespace**, as a reader would
paste them: a later block may use the names an earlier one defined (the README's token
block makes ``key`` and ``access_token``; its httpx block uses them). Selecting one block
(``-k 'README.md:60'``) runs the blocks before it on that page first.

Blocks that need a live server get one on 127.0.0.1, and the placeholder names the page
leaves to the reader (``issuer``, ``secret``, ``access_token``, ``api_url``, ...) are put in
the namespace:

* README.md: dpopkit's own authorization server, built exactly as ``dpopkit serve`` builds
  it (with a configuration file), with the demo API at ``/api/whoami``, over HTTPS with a
  throw-away certificate trusted through ``SSL_CERT_FILE`` / ``REQUESTS_CA_BUNDLE``; it
  requires a server nonce on every proof, so the nonce round trip is exercised.
* docs/authorization-server.md: ``dpopkit serve`` in demo mode (no configuration). The page
  uses its default address ``http://127.0.0.1:8000``; the test serves the same app on a free
  port and replaces that one literal (:data:`SUBSTITUTIONS`).
* docs/client.md: the client test servers of ``tests/client/servers.py`` over HTTPS (its
  first block makes a key after the token exists, so the token binds at first use).

After each block, :func:`_check_effects` looks at what it left behind: a ``response`` must be
a 200, ``tokens`` must be DPoP tokens, and an ``app`` with DPoP-protected routes must answer
a request without credentials with 401 and a DPoP challenge (RFC 9449 §7.1).

A block is compiled only if it contains one of the markers of :data:`COMPILE_ONLY` (a person
at a browser). Any other block is executed; a page whose Python blocks cannot all be found
by the parser fails (:func:`test_every_python_block_is_collected`).
"""

from __future__ import annotations

import asyncio
import gc
import re
import shlex
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, redirect_stderr
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from dpopkit.cli import build_parser
from tests.tls import loopback_certificate

ROOT = Path(__file__).resolve().parents[1]
PAGES: tuple[Path, ...] = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))

#: Blocks that need a person at a browser: compiled, never executed. Keyed by a distinctive
#: substring of the block; every entry must match a block (see test_compile_only_is_current).
COMPILE_ONLY: dict[str, str] = {
    "login_native(": "opens the system browser and waits for a person to sign in",
    "send the user's browser": "needs a person to sign in at the authorization server",
    "class Orders(APIView)": "Django project code (urls.py): runs inside a configured project; "
    "examples/dot_project/urls.py is the same code under tests/integrations/dot",
}

#: Literal addresses a page uses that the test serves elsewhere: page -> {literal: fixture}.
SUBSTITUTIONS: dict[str, dict[str, str]] = {
    "docs/authorization-server.md": {"http://127.0.0.1:8000": "demo_as"},
}

FENCE = re.compile(r"^```\s*([\w+-]*)\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced code block of a page."""

    page: str  # relative to the repository root
    line: int  # 1-based line of the opening fence
    lang: str
    code: str

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def compile_only(self) -> str | None:
        for marker, why in COMPILE_ONLY.items():
            if marker in self.code:
                return why
        return None


def _blocks(path: Path) -> list[Block]:
    page = path.relative_to(ROOT).as_posix()
    found: list[Block] = []
    lang: str | None = None
    start = 0
    body: list[str] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        match = FENCE.match(line)
        if lang is None:
            if match:
                lang, start, body = match.group(1), number, []
        elif line.strip() == "```":
            found.append(Block(page, start, lang, "\n".join(body) + "\n"))
            lang = None
        else:
            body.append(line)
    assert lang is None, f"{page}:{start}: unclosed code fence"
    return found


BLOCKS: dict[str, list[Block]] = {p.relative_to(ROOT).as_posix(): _blocks(p) for p in PAGES}
PYTHON: list[Block] = [b for page in BLOCKS.values() for b in page if b.lang == "python"]


# -- servers -----------------------------------------------------------------------------------


def _bind() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextmanager
def _serve(app: Any, sock: socket.socket, tls: tuple[Path, Path] | None = None) -> Iterator[None]:
    """Serve ``app`` under uvicorn in a thread on the bound ``sock`` (HTTPS with ``tls``)."""
    config = uvicorn.Config(
        app,
        log_level="warning",
        lifespan="off",
        access_log=False,
        timeout_graceful_shutdown=2,  # a client left open must not hold the teardown
        ssl_certfile=None if tls is None else str(tls[0]),
        ssl_keyfile=None if tls is None else str(tls[1]),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


README_SECRET = "readme-client-secret-value"

README_AS_CONFIG = """
issuer = "{issuer}"
host = "127.0.0.1"
port = {port}

[dpop]
nonce = "always"

[[clients]]
client_id = "my-app"
client_secret = "{secret}"
grant_types = ["client_credentials"]
scope = "orders:read"
dpop_bound_access_tokens = true
"""


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return loopback_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def readme_as(
    tmp_path_factory: pytest.TempPathFactory, tls: tuple[Path, Path], runs: dict[str, PageRun]
) -> Iterator[dict[str, Any]]:
    """``dpopkit serve --config`` (the app it builds), over HTTPS, for the README's blocks."""
    from dpopkit.cli.serve import _build

    directory = tmp_path_factory.mktemp("readme-as")
    sock = _bind()
    port = sock.getsockname()[1]
    issuer = f"https://127.0.0.1:{port}"
    config = directory / "as.toml"
    config.write_text(README_AS_CONFIG.format(issuer=issuer, port=port, secret=README_SECRET))
    spec = {"config": str(config), "host": None, "port": None, "data_dir": str(directory)}
    _, app, service = _build({**spec, "no_api": False})
    with ExitStack() as stack:
        stack.callback(service.close)
        stack.enter_context(_serve(app, sock, tls))
        yield {"issuer": issuer, "secret": README_SECRET, "api_url": issuer + "/api/whoami"}
        _close_pages(runs)  # before the server stops: no client connection may hold it


@pytest.fixture(scope="module")
def demo_as(
    tmp_path_factory: pytest.TempPathFactory, runs: dict[str, PageRun]
) -> Iterator[dict[str, Any]]:
    """``dpopkit serve`` in demo mode (no configuration), on a free port instead of 8000."""
    from dpopkit.cli.serve import _build

    data_dir = tmp_path_factory.mktemp("as-data")
    sock = _bind()
    port = sock.getsockname()[1]
    spec = {"config": None, "host": "127.0.0.1", "port": port, "data_dir": str(data_dir)}
    _, app, service = _build({**spec, "no_api": False})
    secret = (data_dir / "demo-client-secret").read_text(encoding="utf-8").strip()
    with ExitStack() as stack:
        stack.callback(service.close)
        stack.enter_context(_serve(app, sock))
        yield {"base": f"http://127.0.0.1:{port}", "secret": secret}
        _close_pages(runs)


@pytest.fixture(scope="module")
def client_servers(tls: tuple[Path, Path], runs: dict[str, PageRun]) -> Iterator[Any]:
    """The client test servers (tests/client/servers.py) over HTTPS."""
    from tests.client.servers import Servers, running

    with running(Servers(), certfile=str(tls[0]), keyfile=str(tls[1])) as servers:
        yield servers
        _close_pages(runs)


# -- what each page needs ------------------------------------------------------------------------


@dataclass
class Setup:
    """The placeholders, environment and substitutions of one page."""

    names: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    replace: dict[str, str] = field(default_factory=dict)


def _tls_env(tls: tuple[Path, Path]) -> dict[str, str]:
    return {"SSL_CERT_FILE": str(tls[0]), "REQUESTS_CA_BUNDLE": str(tls[0])}


def _setup(page: str, request: pytest.FixtureRequest) -> Setup:
    if page == "README.md":
        server = request.getfixturevalue("readme_as")
        return Setup(names=dict(server), env=_tls_env(request.getfixturevalue("tls")))
    if page == "docs/client.md":
        from tests.client.servers import CLIENT_SECRET, issue_token

        servers = request.getfixturevalue("client_servers")
        base = servers.state.base
        names = {
            "access_token": issue_token(servers, None),  # bound to the page's key at first use
            "api_url": base + "/api/orders",
            "issuer": base,
            "secret": CLIENT_SECRET,
        }
        return Setup(names=names, env=_tls_env(request.getfixturevalue("tls")))
    if page == "docs/authorization-server.md":
        from dpopkit.storage.sql import hash_secret

        demo = request.getfixturevalue("demo_as")
        names = {"secret": demo["secret"], "password_hash": hash_secret("alice's password")}
        replace = {k: demo["base"] for k, v in SUBSTITUTIONS[page].items() if v == "demo_as"}
        return Setup(names=names, replace=replace)
    return Setup()


@dataclass
class PageRun:
    """The state of one page's blocks, run in order in one namespace."""

    setup: Setup
    namespace: dict[str, Any]
    done: int = 0  # how many of the page's Python blocks have run
    failed: str | None = None
    outcome: dict[str, str] = field(default_factory=dict)


def _unauthenticated(app: Any, url: str) -> httpx.Response:
    if hasattr(app, "wsgi_app"):  # Flask
        with httpx.Client(transport=httpx.WSGITransport(app=app)) as client:
            return client.get(url)

    async def call() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as client:
            return await client.get(url)

    return asyncio.run(call())


ROUTE = re.compile(r"""(?:@app\.(?:get|route)\(|Route\()\s*["'](/[^"']*)["']""")
ORIGIN = re.compile(r"""public_origin=["'](https://[^"']+)["']""")


def _check_effects(block: Block, before: dict[str, Any], namespace: dict[str, Any]) -> None:
    """What a block left behind must show that it worked (not only that it did not raise)."""
    new = {k for k, v in namespace.items() if k not in before or before[k] is not v}
    if "response" in new:
        assert namespace["response"].status_code == 200, namespace["response"].text
    if "tokens" in new and hasattr(namespace["tokens"], "is_dpop"):
        assert namespace["tokens"].is_dpop
    origin = ORIGIN.search(block.code)
    if "app" in new and origin is not None:
        # RFC 9449 §7.1 / RFC 6750 §3.1: a protected route without credentials -> 401 + DPoP.
        paths = ROUTE.findall(block.code)
        assert paths, f"{block.id}: a protected app whose routes the test cannot find"
        for path in paths:
            answer = _unauthenticated(namespace["app"], origin.group(1) + path)
            assert answer.status_code == 401, (path, answer.status_code)
            assert answer.headers["www-authenticate"].startswith("DPoP "), path


def _run_block(block: Block, run: PageRun) -> None:
    source = block.code
    for literal, value in run.setup.replace.items():
        source = source.replace(literal, value)
    code = compile(source, block.id, "exec")
    if block.compile_only is not None:
        run.outcome[block.id] = "compiled"
        return
    before = dict(run.namespace)
    exec(code, run.namespace)  # noqa: S102 - our own documentation
    _check_effects(block, before, run.namespace)
    run.outcome[block.id] = "executed"


def _close(namespace: dict[str, Any]) -> None:
    """Close what the blocks opened (services, sessions, responses), so no socket stays open.

    urllib3 2 closes a pool's idle connections only when the pool is garbage collected (a
    closed requests session leaves them to a finalizer, and a response keeps its pool alive),
    so the namespace is emptied and collected once the objects are closed.
    """
    import requests

    from dpopkit.server.service import TokenService

    pools = False
    for value in namespace.values():
        if isinstance(value, TokenService | requests.Session | requests.Response | httpx.Client):
            value.close()
            pools = pools or isinstance(value, requests.Session | requests.Response)
    namespace.clear()
    if pools:
        gc.collect()  # ~1 s in a full test run: only for pages that used requests


@pytest.fixture(scope="module")
def runs() -> Iterator[dict[str, PageRun]]:
    state: dict[str, PageRun] = {}
    yield state
    _close_pages(state)


def _close_pages(runs: dict[str, PageRun]) -> None:
    for run in runs.values():
        _close(run.namespace)


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Blocks run in a fresh directory, so files they write never land in the repository."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


# -- the tests -------------------------------------------------------------------------------------


def test_every_python_block_is_collected() -> None:
    """No block can slip past: the parser finds every ```python fence of every page."""
    assert (ROOT / "docs" / "index.md") in PAGES
    for path in PAGES:
        page = path.relative_to(ROOT).as_posix()
        # Any fence naming python, indented or with attributes, must be one the parser saw.
        fences = re.findall(r"^\s*```\s*python\b", path.read_text(encoding="utf-8"), flags=re.M)
        assert len(fences) == len([b for b in BLOCKS[page] if b.lang == "python"]), page
    assert len([b for b in PYTHON if b.page == "README.md"]) >= 7
    assert len(PYTHON) >= 25


def test_compile_only_is_current() -> None:
    """Every compile-only marker matches a block, and the list stays short."""
    assert len(COMPILE_ONLY) <= 3
    for marker in COMPILE_ONLY:
        assert any(marker in b.code for b in PYTHON), f"stale COMPILE_ONLY entry {marker!r}"
    for page, literals in SUBSTITUTIONS.items():
        for literal in literals:
            assert any(literal in b.code for b in BLOCKS[page] if b.lang == "python"), literal


@pytest.mark.parametrize("block", PYTHON, ids=[b.id for b in PYTHON])
def test_python_block_runs(
    block: Block,
    runs: dict[str, PageRun],
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    in_tmp: Path,
) -> None:
    """The block runs as written (after the blocks before it on its page)."""
    run = runs.get(block.page)
    if run is None:
        setup = _setup(block.page, request)
        namespace: dict[str, Any] = {"__name__": "docs_snippet", **setup.names}
        run = runs[block.page] = PageRun(setup=setup, namespace=namespace)
    for name, value in run.setup.env.items():
        monkeypatch.setenv(name, value)
    page_blocks = [b for b in PYTHON if b.page == block.page]
    index = page_blocks.index(block)
    while run.done <= index:
        current = page_blocks[run.done]
        run.done += 1
        if run.failed is not None:
            pytest.fail(f"{current.id} not run: the earlier block {run.failed} failed")
        try:
            _run_block(current, run)
        except BaseException:
            run.failed = current.id
            raise
        if run.done == len(page_blocks):
            _close(run.namespace)  # the page is done: close its sessions before the servers stop
    assert run.outcome[block.id] in ("executed", "compiled")
    if block.compile_only is None:
        assert run.outcome[block.id] == "executed"


# -- dpopkit command lines in bash / console blocks ------------------------------------------


SUBSTITUTION = re.compile(r"\$\(([^()]*)\)")
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def _logical_lines(block: Block) -> Iterator[tuple[int, str]]:
    """Shell lines with their continuations joined; in console blocks only ``$ `` lines."""
    lines = block.code.splitlines()
    i = 0
    while i < len(lines):
        number, line = block.line + 1 + i, lines[i]
        i += 1
        if block.lang == "console":
            if not line.startswith("$ "):
                continue
            line = line[2:]
        while line.endswith("\\") and i < len(lines):
            line = line[:-1] + " " + lines[i].strip()
            i += 1
        yield number, line


def _commands(line: str) -> list[list[str]]:
    """Every ``dpopkit ...`` argument list in one shell line, ``$(...)`` included."""
    found: list[list[str]] = []
    inner = SUBSTITUTION.search(line)
    while inner is not None:
        found.extend(_commands(inner.group(1)))
        line = line[: inner.start()] + "SUBSTITUTED" + line[inner.end() :]
        inner = SUBSTITUTION.search(line)
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    segment: list[str] = []
    for token in [*lexer, ";"]:
        if token and set(token) <= set("();<>|&"):
            while segment and ASSIGNMENT.match(segment[0]):
                segment.pop(0)  # VAR=value dpopkit ...
            if segment and segment[0] == "dpopkit":
                found.append(segment[1:])
            segment = []
        else:
            segment.append(token)
    return found


COMMAND_LINES: list[tuple[str, list[str]]] = [
    (f"{b.page}:{number}", args)
    for page in BLOCKS.values()
    for b in page
    if b.lang in ("bash", "sh", "shell", "console")
    for number, line in _logical_lines(b)
    for args in _commands(line)
]


def test_command_lines_are_collected() -> None:
    """The shell examples name the commands the README promises."""
    readme = {args[0] for where, args in COMMAND_LINES if where.startswith("README.md:")}
    assert {"demo", "serve", "keygen", "proof", "inspect"} <= readme
    every = {args[0] for _, args in COMMAND_LINES if args}
    assert {"token", "request", "serve-api", "thumbprint"} <= every
    assert _commands('X=$(dpopkit proof --url "a b") && echo | dpopkit inspect - # c') == [
        ["proof", "--url", "a b"],
        ["inspect", "-"],
    ]


@pytest.mark.parametrize(
    "args", [args for _, args in COMMAND_LINES], ids=[where for where, _ in COMMAND_LINES]
)
def test_dpopkit_command_line_parses(args: list[str]) -> None:
    """The sub-command exists and accepts these options (the real argparse parser)."""
    parser = build_parser()
    stderr = StringIO()
    try:
        with redirect_stderr(stderr):
            parsed = parser.parse_args(args)
    except SystemExit as exc:
        pytest.fail(f"dpopkit {shlex.join(args)}: exit {exc.code}: {stderr.getvalue().strip()}")
    assert parsed.command == args[0]
    assert callable(parsed.func)


def test_readme_answers_the_first_hour_questions() -> None:
    """The README's core example records the proof (RFC 9449 §11.1), and the AS section says
    how a token gets the audience of another API (RFC 8707 ``resource``, ``--audience``)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    core = readme.split("## The core in five lines", 1)[1].split("\n## ", 1)[0]
    assert "verify_proof(" in core
    assert "record_proof(" in core
    assert "from dpopkit.storage.memory import MemoryReplayCache" in core
    serve = readme.split("## Run an authorization server", 1)[1].split("\n## ", 1)[0]
    for needle in ("resource=", "--audience", "[tokens] audience"):
        assert needle in serve
    guide = (ROOT / "docs" / "authorization-server.md").read_text(encoding="utf-8")
    assert "-d resource=" in guide
    assert "serve-api --audience" in guide
