"""The plug-in's shipped migration matches its models (DOT's swappable models included)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

CHECK = """
import django
from django.conf import settings
settings.configure(
    INSTALLED_APPS=[
        "django.contrib.contenttypes",
        "django.contrib.auth",
        "oauth2_provider",
        "dpopkit.integrations.django_oauth_toolkit",
    ],
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
    DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
)
django.setup()
from django.core.management import call_command
call_command("makemigrations", "dpopkit_dot", check=True, dry_run=True, verbosity=0)
call_command("migrate", verbosity=0)
from django.db import connection
print(sorted(t for t in connection.introspection.table_names() if t.startswith("dpopkit_dot")))
"""


def test_dot_migration_matches_the_models() -> None:
    """HD-22: ``makemigrations --check`` finds nothing to add; migrate creates four tables."""
    run = subprocess.run(
        [sys.executable, "-c", CHECK],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split("\n")[0] == str(
        [
            "dpopkit_dot_accesstokenbinding",
            "dpopkit_dot_clientdpopsettings",
            "dpopkit_dot_grantbinding",
            "dpopkit_dot_refreshtokenbinding",
        ]
    )
