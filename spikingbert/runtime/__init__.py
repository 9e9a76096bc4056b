"""Where a run executes (`devices`), how it logs (`logs`) and its random state (`rng`)."""
from .devices import Runtime, cpu_name, keep_freed_memory, setup_runtime
from .logs import LOG_FORMAT, setup_logging
from .rng import get_rng_state, set_rng_state, set_seed

__all__ = ["Runtime", "setup_runtime", "cpu_name", "keep_freed_memory", "LOG_FORMAT", "setup_logging", "set_seed",
           "get_rng_state", "set_rng_state"]
