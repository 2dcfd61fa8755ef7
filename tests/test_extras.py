"""HD-22: every extra installs what its examples need; a missing one is named at once.

Three layers of the same guarantee:

* every import of an optional package in ``src/dpopkit`` sits in a module-level
  ``with requires_extra(...)`` block (found by reading the source, so a new module cannot
  forget it), and the extra it names lists that package in pyproject.toml;
* with the package missing, importing such a module raises :class:`MissingExtraError`,
  one line naming the extra;
* each extra installed **alone** in a fresh virtualenv runs its documented example
  end to end (slow: it builds a wheel and installs from the package index).
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import tomllib
import venv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import missing_real_part

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "dpopkit"
STDLIB = set(sys.stdlib_module_names) | {"__future__"}
CORE_DEPENDENCIES = {"dpopkit", "cryptography"}

#: Imports of optional packages inside functions, and why each cannot fail at a request.
LAZY_OK: dict[str, str] = {
    "dpopkit._threads": "anyio is optional there: asyncio.to_thread is the fallback",
    "dpopkit.resource._fetch": "the validators that fetch keys check httpx at construction",
    "dpopkit.resource.jwt_tokens": "anyio comes with httpx, checked at construction",
    "dpopkit.server.config": "serve --check turns a missing store driver into a ConfigError",
}

#: Packages that come with another one (anyio and httpcore with httpx, asgiref with Django,
#: httpcore2 with httpx2, httpx2 and pydantic with the mcp SDK).
COMES_WITH: dict[str, tuple[str, ...]] = {
    "anyio": ("httpx", "httpx2", "mcp"),
    "httpcore": ("httpx",),
    "asgiref": ("django",),
    "httpcore2": ("httpx2", "mcp"),
    "httpx2": ("mcp",),
    "pydantic": ("mcp",),
    "oauthlib": ("oauth2_provider",),
}

#: Distribution names whose import name differs.
IMPORT_NAMES = {
    "prometheus-client": "prometheus_client",
    "psycopg[binary]": "psycopg",
    "python-pkcs11": "pkcs11",
    "tpm2-pytss": "tpm2_pytss",
    "django-oauth-toolkit": "oauth2_provider",
    "djangorestframework": "rest_framework",
}


def _requirement_name(requirement: str) -> str:
    name = re.split(r"[<>=!~; ]", requirement, maxsplit=1)[0]
    return IMPORT_NAMES.get(name, name.split("[")[0].replace("-", "_"))


def _extras() -> dict[str, set[str]]:
    """Extra -> import names it installs (dpopkit[...] references resolved)."""
    raw = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]

    def expand(extra: str) -> set[str]:
        names: set[str] = set()
        for req in raw[extra]:
            if req.startswith("dpopkit["):
                for inner in req[len("dpopkit[") : req.index("]")].split(","):
                    names |= expand(inner.strip())
            else:
                names.add(_requirement_name(req))
        return names

    extras = {extra: expand(extra) for extra in raw}
    for names in extras.values():
        names |= {pkg for pkg, parents in COMES_WITH.items() if names & set(parents)}
    return extras


def _guarded_imports() -> Iterator[tuple[str, str, str | None, int]]:
    """(module, top-level package, extra or None, line) of every optional-package import.

    ``line`` is negative for an import inside a function.
    """
    for path in sorted(SRC.rglob("*.py")):
        module = ".".join(path.relative_to(SRC.parent).with_suffix("").parts)
        module = module.removesuffix(".__init__")
        if module.startswith("dpopkit.cli."):
            continue  # commands turn ImportError into "pip install 'dpopkit[...]'" (exit 2)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        yield from _walk(tree, module, None, in_function=False)


def _walk(
    node: ast.AST, module: str, extra: str | None, *, in_function: bool
) -> Iterator[tuple[str, str, str | None, int]]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
            continue
        child_extra, child_function = extra, in_function
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
            child_function = True
        if isinstance(child, ast.With):
            call = child.items[0].context_expr
            if isinstance(call, ast.Call) and ast.unparse(call.func) == "requires_extra":
                arg = call.args[0]
                assert isinstance(arg, ast.Constant), f"{module}: requires_extra needs a literal"
                child_extra = str(arg.value)
        if isinstance(child, ast.Import | ast.ImportFrom) and not getattr(child, "level", 0):
            names = (
                [a.name for a in child.names]
                if isinstance(child, ast.Import)
                else [child.module or ""]
            )
            for name in names:
                top = name.split(".")[0]
                if top in STDLIB or top in CORE_DEPENDENCIES:
                    continue
                if in_function and child_extra is None and module in LAZY_OK:
                    continue
                yield module, top, child_extra, -child.lineno if in_function else child.lineno
        yield from _walk(child, module, child_extra, in_function=child_function)


GUARDED = list(_guarded_imports())
EXTRAS = _extras()


def test_hd22_every_optional_import_is_in_a_requires_extra_block() -> None:
    """HD-22: an optional package is never imported where its absence shows at a request."""
    unguarded = [f"{m}:{line} imports {pkg}" for m, pkg, extra, line in GUARDED if extra is None]
    assert unguarded == []


def test_hd22_each_requires_extra_names_an_extra_that_installs_the_package() -> None:
    """HD-22: the extra named in the error really installs the missing package."""
    wrong = [
        f"{m}:{line} {pkg} not in dpopkit[{extra}]"
        for m, pkg, extra, line in GUARDED
        if extra is not None and pkg not in EXTRAS.get(extra, set())
    ]
    assert wrong == []
    assert {extra for _, _, extra, _ in GUARDED} >= {"httpx", "requests", "redis", "postgres"}


FIRST_IMPORT = sorted(
    {(m, pkg, extra) for m, pkg, extra, line in GUARDED if extra is not None and line > 0}
)
BLOCK = """
import importlib, sys
sys.modules[{pkg!r}] = None  # the package is not installed
try:
    importlib.import_module({module!r})
except ImportError as exc:
    print(type(exc).__name__, getattr(exc, "extra", None), str(exc).count("\\n"), str(exc))
else:
    print("imported")
"""


@pytest.mark.parametrize(("module", "pkg", "extra"), FIRST_IMPORT, ids=lambda v: str(v))
def test_hd22_a_missing_package_is_one_line_naming_the_extra(
    module: str, pkg: str, extra: str
) -> None:
    """HD-22: importing an adapter without its package raises MissingExtraError at once."""
    out = subprocess.run(
        [sys.executable, "-c", BLOCK.format(pkg=pkg, module=module)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    ).stdout.split(" ", 3)
    named = out[1]  # the module's own extra, or that of a dpopkit module it imports first
    assert out[:3] == ["MissingExtraError", named, "0"]
    assert pkg in EXTRAS[named]
    assert pkg in EXTRAS[extra]
    assert f"pip install 'dpopkit[{named}]'" in out[3]


def test_hd22_metrics_without_prometheus_client_names_the_extra() -> None:
    """HD-22: the one guarded import inside a function fails where it is called."""
    code = """
import sys
sys.modules["prometheus_client"] = None
from dpopkit import MissingExtraError
from dpopkit.resource import CallableTokens, ResourceGuard
from dpopkit.storage.memory import MemoryReplayCache
guard = ResourceGuard(tokens=CallableTokens(print), replay=MemoryReplayCache(single_process=True))
try:
    guard.metrics.register_prometheus()
except MissingExtraError as exc:
    print(exc.extra)
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["metrics"]
    assert [line for m, _, _, line in GUARDED if line < 0] != []


def test_hd22_validators_that_fetch_need_httpx_at_construction() -> None:
    """HD-22: without httpx, a validator that would fetch fails when built, not at a request."""
    code = """
import sys
sys.modules["httpx"] = None
from dpopkit import MissingExtraError
from dpopkit.resource import (
    AsyncIntrospectionTokens, AsyncJWTAccessTokens, IntrospectionTokens, JWTAccessTokens,
)
idp = {"issuer": "https://idp.example", "audience": "https://api.example"}
intro = {"endpoint": "https://idp.example/introspect", "client_id": "rs", "client_secret": "s"}
for build in (
    lambda: JWTAccessTokens(**idp),
    lambda: AsyncJWTAccessTokens(**idp),
    lambda: IntrospectionTokens(**intro, audience="https://api.example"),
    lambda: AsyncIntrospectionTokens(**intro, audience="https://api.example"),
):
    try:
        build()
    except MissingExtraError as exc:
        print(exc.extra)
    else:
        print("built")
JWTAccessTokens(**idp, jwks={"keys": []})  # static keys: nothing to fetch, no httpx needed
print("static")
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["httpx", "httpx", "httpx", "httpx", "static"]


# -- each extra alone in a fresh virtualenv ------------------------------------------------------

#: Extra -> the example it must run (tests/extras/example_<name>.py, or a dpopkit command).
EXAMPLES: dict[str, list[str]] = {
    "httpx": ["-m", "tests.extras.example_httpx"],
    "requests": ["-m", "tests.extras.example_requests"],
    "fastapi": ["-m", "tests.extras.example_fastapi"],
    "flask": ["-m", "tests.extras.example_flask"],
    "django": ["-m", "tests.extras.example_django"],
    "redis": ["-m", "tests.extras.example_redis"],
    "postgres": ["-m", "tests.extras.example_postgres"],
    "metrics": ["-m", "tests.extras.example_metrics"],
    "mcp": [  # both halves: a protected MCP server, and the DPoP client provider
        "-c",
        "import runpy; runpy.run_module('tests.extras.example_mcp', run_name='__main__');"
        " runpy.run_module('tests.extras.example_mcp_client', run_name='__main__')",
    ],
    "server": ["-m", "dpopkit", "demo"],
    "pkcs11": ["-m", "tests.extras.example_pkcs11"],
    "tpm": ["-m", "tests.extras.example_tpm"],
    "authlib": ["-m", "tests.extras.example_authlib"],
    "django-oauth-toolkit": ["-m", "tests.extras.example_django_oauth_toolkit"],
    "httpx2": ["-m", "tests.extras.example_httpx2"],
}


def test_hd22_every_extra_has_an_example() -> None:
    """HD-22: no extra goes untried (``all`` is the sum of the others, ``test`` our own)."""
    assert set(EXAMPLES) == set(EXTRAS) - {"all", "test"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (built,) = out.glob("dpopkit-*.whl")
    return built


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """``dpopkit serve`` in demo mode, issuing the tokens the RS examples validate."""
    from urllib.parse import urlsplit

    from dpopkit.cli.serve import _build
    from tests.live import serve_in_thread

    data_dir = tmp_path_factory.mktemp("as-data")
    services: list[Any] = []

    def build(base: str) -> Any:
        spec = {"config": None, "host": "127.0.0.1", "port": urlsplit(base).port}
        _, app, service = _build({**spec, "data_dir": str(data_dir), "no_api": False})
        services.append(service)
        return app

    with serve_in_thread(build) as base:
        secret = (data_dir / "demo-client-secret").read_text(encoding="utf-8").strip()
        yield {"DPOPKIT_EXAMPLE_ISSUER": base, "DPOPKIT_EXAMPLE_SECRET": secret}
    for service in services:
        service.close()


@pytest.mark.slow
@pytest.mark.parametrize("extra", sorted(EXAMPLES))
def test_hd22_each_extra_alone_runs_its_example(
    extra: str, wheel: Path, issuer: dict[str, str], tmp_path: Path
) -> None:
    """HD-22: ``pip install 'dpopkit[EXTRA]'`` alone is enough for that extra's example."""
    if extra == "tpm" and subprocess.run(["pkg-config", "--exists", "tss2-esys"]).returncode:
        missing_real_part("libtss2 (Debian libtss2-dev), which tpm2-pytss builds against")
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = str(env_dir / "bin" / "python")
    install = subprocess.run(
        [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", f"{wheel}[{extra}]"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    run = subprocess.run(
        [python, *EXAMPLES[extra]],
        cwd=ROOT if "tests.extras" in " ".join(EXAMPLES[extra]) else tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**env, **issuer},
    )
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
