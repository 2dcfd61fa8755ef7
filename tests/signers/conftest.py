"""Session fixtures: one SoftHSM 2 configuration and one swtpm for every signer test."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator

import pytest

from tests.conftest import missing_real_part
from tests.signers.devices import SoftHSM, SwTPM, init_softhsm, run_swtpm


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHSM]:
    """SoftHSM tokens ``dpop`` and ``spare``; ``SOFTHSM2_CONF`` points at them meanwhile.

    SoftHSM reads its configuration when the module is first loaded, so the
    variable is set for the whole session (and restored afterwards).
    """
    hsm = init_softhsm(tmp_path_factory.mktemp("softhsm"))
    before = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(hsm.conf)
    try:
        yield hsm
    finally:
        if before is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = before


@pytest.fixture(scope="session")
def swtpm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SwTPM]:
    """A fresh swtpm for the session (and tpm2-pytss to talk to it)."""
    if importlib.util.find_spec("tpm2_pytss") is None:
        missing_real_part("tpm2-pytss is not installed (pip install '.[tpm]', needs libtss2-dev)")
    with run_swtpm(tmp_path_factory.mktemp("swtpm")) as tpm:
        yield tpm
