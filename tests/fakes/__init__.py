"""Scriptable fake vLLM server, only for failures a real engine can't produce on demand."""
