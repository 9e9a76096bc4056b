"""spikingbert.runtime.keep_freed_memory: its effect on glibc's malloc, measured with mallinfo2.

In a fresh process a 30 MB tensor is allocated and freed. glibc by default serves it with its own
``mmap`` (``hblkhd``, the bytes in mmapped blocks, grows by 30 MB) and gives it back to the kernel when it
is freed. With the setting applied it comes from the heap and stays there once freed (``fordblks``, the
free bytes malloc keeps, holds it). Where the user chose otherwise (``SPIKINGBERT_MALLOC=system``, glibc's
own ``MALLOC_*_`` variables) glibc's default behaviour is left as it is.
"""
import ctypes
import os
import platform
import subprocess
import sys

import pytest

from tests.helpers.world import REPO

pytestmark = [pytest.mark.system, pytest.mark.slow]

PROBE = """
import ctypes, torch
from spikingbert.runtime import keep_freed_memory
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                                                "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
keep_freed_memory()
before = libc.mallinfo2()
t = torch.empty(30 << 18).fill_(1.0)                 # 30 MB of float32
during = libc.mallinfo2()
del t
after = libc.mallinfo2()
print(during.hblkhd - before.hblkhd, after.fordblks - before.fordblks)
"""
MB = 1 << 20


def _has_mallinfo2() -> bool:
    try:
        return hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2")
    except OSError:
        return False


def _probe(**env):
    """(bytes of the tensor in mmapped blocks, bytes malloc keeps free after it was freed)."""
    full = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "SPIKINGBERT_MALLOC"))}
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env={**full, **env}, capture_output=True,
                          text=True, check=True)
    mmapped, kept = map(int, proc.stdout.split())
    return mmapped, kept


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or not _has_mallinfo2(), reason="glibc >= 2.33 (mallinfo2)")
def test_freed_memory_is_kept_in_the_heap_unless_the_user_chose_otherwise():
    mmapped, kept = _probe()
    assert mmapped < MB and kept >= 29 * MB                       # from the heap, and kept after free (less
    # a few kB that malloc reuses for its own bookkeeping)
    for env in ({"SPIKINGBERT_MALLOC": "system"}, {"MALLOC_TRIM_THRESHOLD_": "131072"}):
        mmapped, kept = _probe(**env)
        assert mmapped >= 30 * MB and kept < MB, env                 # glibc's own mmap, handed back on free
