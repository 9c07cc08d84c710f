"""How long the deployed processes get to start and to stop: one set of numbers for compose.gpu.yml
and the Kubernetes manifests, so the two deployments drain and wait alike.
"""

from __future__ import annotations

from gateway.config.settings import Settings

# After SIGTERM the gateway lets open requests, streams included, finish for this long, then
# ends each that is left with an error (GATEWAY_DRAIN_TIMEOUT, set to this in both deployments).
GATEWAY_DRAIN_SECONDS = int(Settings.model_fields["drain_timeout"].default)
# The drain, plus time for the last responses to flush and the processes to exit, before SIGKILL.
GATEWAY_STOP_GRACE_SECONDS = GATEWAY_DRAIN_SECONDS + 10
# /health answers 200 only once the weights are downloaded and loaded and the engine has warmed
# up; for a large model from the hub that can take many minutes. Failures before it don't count.
WORKER_START_SECONDS = 1800
# vLLM frees GPU memory and ends its engine processes on SIGTERM; give it time before SIGKILL.
WORKER_STOP_GRACE_SECONDS = 60
