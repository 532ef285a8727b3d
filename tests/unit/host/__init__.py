"""The host CLI's own unit tests: they import only devstack, pytest and the standard library, so
they also run under a stock Mac's Python 3.9 (tests/integration/test_python39.py runs them there)."""
