"""The SpikingBERT library (run > cli > training > evaluation > data > runtime; see the README's Architecture).

Importing it first lets torch's OpenMP threads sleep when idle (`core.openmp`).
"""
from core.openmp import prefer_passive_waits

prefer_passive_waits()
