"""How torch's OpenMP threads wait: asleep (``OMP_WAIT_POLICY=PASSIVE``) unless the user says otherwise.

By default the OpenMP runtime lets a thread that finished its share of a parallel loop spin for a while before
it sleeps. Between torch's many short parallel operators that keeps every thread of the pool busy all the time:
on an idle machine it burns the spare core's time (CPU seconds twice the wall time at two threads); on a shared
one the spinning threads take the cores from the threads with work and from the other processes (measured: an IDE
training step of the demo student on the shared 2-core AMD EPYC at load 13-15, two threads, 16-17 s wall and
4.4 CPU seconds spinning against 2.7-3.2 s and 0.73-0.75 CPU s asleep; one thread 2.6-2.7 s and 0.70-0.73; see
``bench/README.md``). The runtime reads the policy once, when torch loads it, so importing `spikingbert` sets it (the
`apps` and `bench` packages import `spikingbert` first), before anything imports torch.
"""
from __future__ import annotations

import os
import sys

__all__ = ["WAIT_POLICY_ENV", "prefer_passive_waits"]

WAIT_POLICY_ENV = "OMP_WAIT_POLICY"


def prefer_passive_waits() -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` when neither the user set a policy nor torch is loaded yet; returns whether
    it did."""
    if WAIT_POLICY_ENV in os.environ or "torch" in sys.modules:
        return False
    os.environ[WAIT_POLICY_ENV] = "PASSIVE"
    return True
