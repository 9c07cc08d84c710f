"""Routing: which workers serve a model (registry) and which one takes a request (policy)."""
