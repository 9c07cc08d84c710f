"""How long the deployed processes get to start and to stop: one set of numbers for compose.gpu.yml
and the Kubernetes manifests, so the two deployments drain and wait alike.
"""

from __future__ import annotations

# uvicorn finishes open requests, streams included, for up to this long after SIGTERM
# (gateway/__main__.py: timeout_graceful_shutdown).
GATEWAY_DRAIN_SECONDS = 30
# The drain, plus time for the last responses to flush and the processes to exit, before SIGKILL.
GATEWAY_STOP_GRACE_SECONDS = GATEWAY_DRAIN_SECONDS + 10
# /health answers 200 only once the weights are downloaded and loaded and the engine has warmed
# up; for a large model from the hub that can take many minutes. Failures before it don't count.
WORKER_START_SECONDS = 1800
# vLLM frees GPU memory and ends its engine processes on SIGTERM; give it time before SIGKILL.
WORKER_STOP_GRACE_SECONDS = 60
