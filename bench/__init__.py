"""Benchmarks (``python -m bench``); importing the package first lets torch's OpenMP threads sleep when idle
(`core.openmp`), as the project's other entry points do."""
from spikingbert.core.openmp import prefer_passive_waits

prefer_passive_waits()
