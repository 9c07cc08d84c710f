"""Turn configs/models.yaml into running vLLM OpenAI servers: flags, CPU launcher, stand-in models.

Kept import-free on purpose: `workers.tinymodel` runs under the vLLM venv, which lacks gateway deps.
"""
