"""Thin HTTP handlers: they orchestrate, the modules they call do the work."""
