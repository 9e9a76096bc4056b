"""spikingbert.runtime.keep_freed_memory: applied once on glibc, skipped where the user chose."""
import platform
import subprocess
import sys

import pytest

from tests.test_pipeline import REPO

PROBE = "from spikingbert.runtime import keep_freed_memory as k; print(k(), k())"


def _probe(**env):
    import os
    full = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "SPIKINGBERT_MALLOC"))}
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env={**full, **env}, capture_output=True,
                          text=True, check=True)
    return proc.stdout.split()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc mallopt")
def test_applied_on_linux_and_skipped_on_request():
    assert _probe() == ["True", "True"]                         # applied, and the second call is a no-op
    assert _probe(SPIKINGBERT_MALLOC="system") == ["False", "False"]
    assert _probe(MALLOC_TRIM_THRESHOLD_="131072") == ["False", "False"]
