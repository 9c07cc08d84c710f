"""OpenAI-compatible gateway in front of vLLM workers."""
