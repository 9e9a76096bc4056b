"""Compiled CPU kernels of the event-driven simulation engine: build and load.

The sources in ``modules/csrc/`` register ``torch.ops.spikingbert``:

* ``pack_weight(W)`` — a dense weight ``(N, K)`` as tiles of ``W^T`` for :func:`spike_linear`;
* ``spike_linear(spikes, packed, bias, N, max_density, isa, steps=1)`` — binary spikes ``(M, K)`` times ``W^T``
  plus bias from the inputs that fired only (an empty tensor when more than ``max_density`` fired); ``steps``: the
  rows are that many steps of the same positions, which the kernel may group by position;
* ``if_scan(currents, u, vth, leak)`` — the integrate-and-fire update of a chunk of steps;
* ``spike_attention(q, k, v, mask, heads)`` — the attention context from spiking keys and values
  (AVX-512 only), additions in place of the products by 0/1;
* ``vector_peak(kind, iterations)`` — register-only vector adds (0) or FMAs (1): the core's peak rate, timed by
  ``bench/limit.py``;
* ``bert_adam_update(param, grad, exp_avg, exp_avg_sq, b1, b2, e, weight_decay, lr, floor, isa)`` — BertAdam's
  update of one float32 parameter in one pass, bit-identical to the optimizer's tensor operations;
* ``event_isa()`` — 2 with AVX-512, 1 with AVX2 + FMA, 0 without either (no ``spike_linear``).

``make install`` builds the library once (``python -m spikingbert.modules.event_ops``) with PyTorch's C++
extension build into ``modules/csrc/build/``, named after a hash of the sources, the compiler flags
and the torch version, so a stale library is never loaded. The build loads the new library in a child
process (a library that crashes on load is deleted) and records its SHA-256 beside it; :func:`load`
checks that checksum before loading (a truncated or replaced file would crash the process) and the
registered ops after. Nothing is compiled at run time: where the library is missing or fails these
checks (no compiler, another torch, another platform, an interrupted build) :func:`load` says why and
the simulation runs on the dense path. On an x86-64 CPU with AVX2 the kernels are expected
(:func:`kernels_expected`): there a failed build fails ``make install``.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

import torch

__all__ = ["SOURCES", "OPS", "build", "load", "library_path", "kernels_expected"]

logger = logging.getLogger(__name__)

CSRC = Path(__file__).resolve().parent / "csrc"
#: The library's sources; the header they share is part of what names a build.
SOURCES = (CSRC / "event_ops.cpp", CSRC / "spike_attention.cpp", CSRC / "vector_peak.cpp", CSRC / "bert_adam.cpp")
HEADERS = (CSRC / "event_common.h",)
BUILD_ROOT = CSRC / "build"
# -fopenmp: at::parallel_for runs on OpenMP threads (the libgomp torch already loaded), so the kernels
# follow torch.set_num_threads. No fast-math: the float32 arithmetic must stay that of the dense path.
CFLAGS = ("-O3", "-fopenmp", "-ffp-contract=off", "-fno-trapping-math", "-fno-math-errno")
#: The ops the library registers (`torch.ops.spikingbert`); a library without one of them is another build's.
OPS = ("pack_weight", "spike_linear", "if_scan", "event_isa", "train_convergence", "spike_attention", "vector_peak",
       "bert_adam_update")


def _tag() -> str:
    digest = hashlib.sha256()
    for path in (*SOURCES, *HEADERS):
        digest.update(path.read_bytes())
    digest.update(" ".join(CFLAGS).encode())
    digest.update(torch.__version__.encode())
    return digest.hexdigest()[:12]


def library_path() -> Path:
    """Where the library for this source, these flags and this torch lives (built or not)."""
    name = f"spikingbert_event_ops_{_tag()}"
    return BUILD_ROOT / name / f"{name}.so"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _checksum_path(path: Path) -> Path:
    return path.with_suffix(".sha256")


def kernels_expected() -> bool:
    """Whether this machine runs the kernels (x86-64 with AVX2 or AVX-512): a missing build there is an error."""
    return platform.machine().lower() in ("x86_64", "amd64") and torch.backends.cpu.get_cpu_capability() in (
        "AVX2", "AVX512")


def _probe(path: Path) -> Optional[str]:
    """Load the library in a child process (a crash there cannot take this one down); None when it loads."""
    code = (f"import torch; torch.ops.load_library({str(path)!r}); "
            f"assert all(hasattr(torch.ops.spikingbert, op) for op in {OPS!r})")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    if result.returncode == 0:
        return None
    lines = result.stderr.strip().splitlines()
    return lines[-1] if lines else f"exit status {result.returncode}"


def build(verbose: bool = False) -> Path:
    """Compile the kernels for this torch (a few seconds to a minute), check that the library loads in a child
    process and record its checksum; returns the library path."""
    from torch.utils import cpp_extension

    path = library_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    # the ninja of this environment (pip's), also when the environment is not activated
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    cpp_extension.load(name=path.stem, sources=[str(p) for p in SOURCES], extra_cflags=list(CFLAGS),
                       extra_ldflags=["-fopenmp"], build_directory=str(path.parent),
                       is_python_module=False, verbose=verbose)
    for old in BUILD_ROOT.glob("spikingbert_event_ops_*"):            # builds of earlier sources
        if old != path.parent:
            shutil.rmtree(old, ignore_errors=True)
    failure = _probe(path)
    if failure is not None:
        path.unlink(missing_ok=True)
        raise RuntimeError(f"the built library does not load ({failure})")
    from spikingbert.core.files import atomic_write_text

    atomic_write_text(_checksum_path(path), _digest(path) + "\n")
    return path


@functools.lru_cache(maxsize=None)
def load() -> Optional[str]:
    """Load the library once; ``None`` when ``torch.ops.spikingbert`` is ready, else why it is not."""
    path = library_path()
    if not path.is_file():
        return f"the CPU kernels are not built for this source and torch {torch.__version__} (run `make install`)"
    checksum = _checksum_path(path)
    if not checksum.is_file() or checksum.read_text(encoding="utf-8").strip() != _digest(path):
        return f"{path.name} does not match the checksum of its build (an interrupted build?); rebuild it with " \
               "`make install`"
    try:
        torch.ops.load_library(str(path))
    except OSError as e:
        return f"{path.name} cannot be loaded ({e}); rebuild it with `make install`"
    missing = [op for op in OPS if not hasattr(torch.ops.spikingbert, op)]
    if missing:
        return (f"{path.name} has no op {', '.join(missing)} (a library of another build); rebuild it with "
                "`make install`")
    return None


def main(argv: Optional[list[str]] = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Build the CPU kernels of the event-driven engine.",
                                     allow_abbrev=False)
    parser.add_argument("--verbose", action="store_true", help="show the compiler commands")
    args = parser.parse_args(argv)
    try:
        path = build(verbose=args.verbose)
    except (RuntimeError, OSError, ImportError, subprocess.SubprocessError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if kernels_expected():
            print(f"error: the event engine's CPU kernels were not built ({first}); this x86-64 CPU with AVX2 runs "
                  "them: install a C++ compiler (and ninja) and run `make install` again", file=sys.stderr)
            return 1
        print(f"warning: the event engine's CPU kernels were not built ({first}); "
              f"the simulation will use the dense engine", file=sys.stderr)
        return 0
    print(f"built {path.relative_to(CSRC.parent.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
