"""core.openmp: the project's entry points let torch's OpenMP threads sleep when idle, unless the user chose a
policy or torch was loaded first (then the runtime has read its setting already)."""
import os
import subprocess
import sys

import pytest

from tests.helpers.world import REPO

pytestmark = pytest.mark.system

PROBE = "import os, sys\n{imports}\nprint(os.environ.get('OMP_WAIT_POLICY', 'unset'))"


def _policy(imports: str, **env) -> str:
    environ = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", PROBE.format(imports=imports)], cwd=REPO, env={**environ, **env},
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


@pytest.mark.parametrize("entry", ["spikingbert", "apps", "bench"])
def test_entry_packages_make_idle_threads_sleep(entry):
    assert _policy(f"import {entry}; import torch") == "PASSIVE"


def test_the_users_policy_and_an_earlier_torch_win():
    assert _policy("import spikingbert", OMP_WAIT_POLICY="ACTIVE") == "ACTIVE"
    assert _policy("import torch; import spikingbert") == "unset"
