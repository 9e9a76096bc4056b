"""Builders and runners shared by the test modules (the test modules import only from here and conftest)."""
