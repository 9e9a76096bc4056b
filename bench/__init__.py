"""Benchmarks (``python -m bench``); importing the package first lets torch's OpenMP threads sleep when idle
(`core.openmp`), as the project's other entry points do."""
import spikingbert  # noqa: F401  (first: its import sets the policy)
