"""The repository speaks to its users: no work-log bookkeeping, and every cited id is defined.

Source, tests, guides and benchmarks cite what a reader can look up: RFC sections, and the
requirement, attack and hardening ids that docs/security.md defines in its tables. They do not
cite internal work items, documents that are not part of the repository, or a history of who
measured what and when (measurement history belongs in bench/README.md as method and
results, not as a diary).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("src", "tests", "docs", "bench", "README.md")
SKIPPED_PARTS = {"node_modules", "__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache"}
TEXT_SUFFIXES = {".py", ".md", ".json", ".toml", ".txt", ".html", ".js", ".mjs", ".css", ".yml"}

#: Work-log bookkeeping, each with the reason a user cannot follow it. Written so that the
#: patterns do not describe themselves: each needs a digit, a possessive or a word after it.
BOOKKEEPING: dict[str, re.Pattern[str]] = {
    "a numbered work item": re.compile(
        r"\bissues?\s+#?\d|\bitem\s+\d+\b(?!\s+of\b)", re.IGNORECASE
    ),
    "a work item as a reference": re.compile(
        r"\bissue'?s\s+(?:bar|goal|wording|figures?|must|done)|\bthe\s+issue'?s\b|\bthe\s+issue\b",
        re.IGNORECASE,
    ),
    "a measurement diary": re.compile(
        r"\b(?:first|second|third|final|other)\s+machine\b|\bthis\s+session\b"
        r"|\bthe\s+session'?s\b|\bhelpers?\s+running\b|\bup\s+to\s+\d+\s+helpers\b"
        r"|\b\d{1,2}:\d{2}(?:\s*-\s*\d{1,2}:\d{2})?\s+UTC\b",
        re.IGNORECASE,
    ),
    "a document outside the repository": re.compile(
        r"\bDESIGN(?:\.md\b|:)|\bSTYLE(?:\.md\b|\s+B\.)|\battacks\.md\b|rfc9449[-]checklist|\bhardening\s+task\b"
        r"|\bAttacks\s+\"|\battacks\s+(?:#|SEC-)|\bchecklist\s+§",
        re.IGNORECASE,
    ),
}

#: Catalogue ids: requirement (RFC 9449 and related), attack (SEC-nn) and hardening (HD-n).
CATALOGUE_ID = re.compile(r"(?<![\w-])(?:HD|SEC|PRIV|IANA|AS|RS|G|P|V|C|X)-\d+\b(?!-\w)")
#: Ids of the labelled proof corpus: family letter, number, slug (``H-04-other-host``).
CORPUS_ID = re.compile(r"(?<![\w-])([A-N])-\d{2}-[a-z]")
#: A family of the proof corpus named in prose (``family H``, ``Family A``).
FAMILY_REF = re.compile(r"\b[Ff]amil(?:y|ies)\s+([A-Z])\b")
#: Names that look like catalogue ids but are not (elliptic curves).
NOT_IDS = frozenset({"P-192", "P-224", "P-256", "P-384", "P-521"})


def _files() -> list[Path]:
    found: list[Path] = []
    for name in SCANNED:
        path = ROOT / name
        if path.is_file():
            found.append(path)
            continue
        for file in sorted(path.rglob("*")):
            parts = set(file.relative_to(ROOT).parts)
            if file.is_file() and file.suffix in TEXT_SUFFIXES and not parts & SKIPPED_PARTS:
                found.append(file)
    return found


FILES = _files()


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _defined() -> tuple[set[str], set[str]]:
    """Ids and corpus families defined by a table row of docs/security.md."""
    text = _read(ROOT / "docs" / "security.md")
    ids = set(re.findall(r"^\| ([A-Z]+-\d+) \|", text, re.MULTILINE))
    families = set(re.findall(r"^\| ([A-N]) \|", text, re.MULTILINE))
    return ids, families


def test_scan_sees_the_repository() -> None:
    """The scan covers every area it names (an empty scan would pass anything)."""
    areas = {path.relative_to(ROOT).parts[0] for path in FILES}
    assert areas == set(SCANNED)
    assert ROOT / "tests" / "test_repository_speaks_to_users.py" in FILES


@pytest.mark.parametrize("kind", sorted(BOOKKEEPING))
def test_no_bookkeeping(kind: str) -> None:
    """No work items, measurement diaries or unpublished documents in code, tests or docs."""
    pattern = BOOKKEEPING[kind]
    hits = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()[:120]}"
        for path in FILES
        for number, line in enumerate(_read(path).splitlines(), start=1)
        if pattern.search(line)
    ]
    assert hits == [], f"{kind}:\n" + "\n".join(hits)


def test_every_cited_id_is_defined_in_security_md() -> None:
    """Every catalogue id cited in src, tests, docs, bench or README is a docs/security.md row."""
    ids, families = _defined()
    assert {"HD-1", "HD-31", "V-9", "SEC-80"} <= ids  # the tables are where the test looks
    missing: dict[str, str] = {}
    for path in FILES:
        text = _read(path)
        for match in CATALOGUE_ID.finditer(text):
            cited = match.group(0)
            if cited not in NOT_IDS and cited not in ids:
                missing.setdefault(cited, str(path.relative_to(ROOT)))
        for match in [*CORPUS_ID.finditer(text), *FAMILY_REF.finditer(text)]:
            if match.group(1) not in families:
                missing.setdefault(match.group(0), str(path.relative_to(ROOT)))
    assert missing == {}, "ids cited but not defined in docs/security.md: " + repr(missing)


def test_id_pattern_recognises_citations_and_nothing_else() -> None:
    """The id pattern finds citations in their usual forms and skips curve and hash names."""
    text = "RFC 9449 §4.3 (V-9, SEC-01/02); HD-14: ... C-11..C-14; P-256 SHA-256 H-04-other-host"
    cited = [m.group(0) for m in CATALOGUE_ID.finditer(text) if m.group(0) not in NOT_IDS]
    assert cited == ["V-9", "SEC-01", "HD-14", "C-11", "C-14"]
    assert [m.group(1) for m in CORPUS_ID.finditer(text)] == ["H"]
    letter = "N"  # not a corpus family: spelled apart so that this file passes its own scan
    assert [m.group(1) for m in FAMILY_REF.finditer(f"family {letter}; Families A")] == ["N", "A"]
