"""Shared fixtures. Real processes on real sockets; see tests/procs.py."""
