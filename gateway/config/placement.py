"""Placement rules for configs/models.yaml that span workers: unique names and ports, each GPU
used once, one GPU per parallel rank, GPU ids on the host. models_config.py checks entries alone.

The gateway applies them at start; `python -m workers check` and `render` before deploying.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from gateway.config.models import ModelConfig, ModelsConfig, WorkerConfig


@dataclass(frozen=True, slots=True)
class _Slot:
    """Where a worker sits in the file: each message names the model, the worker and the field."""

    model_index: int
    model: ModelConfig
    worker_index: int
    worker: WorkerConfig

    def field(self, name: str) -> str:
        return (
            f"models[{self.model_index}] (name={self.model.name})"
            f".workers[{self.worker_index}] (name={self.worker.name}).{name}"
        )

    @property
    def who(self) -> str:
        return f"worker {self.worker.name!r} of model {self.model.name!r}"


def _slots(config: ModelsConfig) -> list[_Slot]:
    return [
        _Slot(m_index, model, w_index, worker)
        for m_index, model in enumerate(config.models)
        for w_index, worker in enumerate(model.workers)
    ]


def _unique_names(slots: list[_Slot]) -> list[str]:
    # Names label metrics and logs, and in compose they are host names: one name, one worker.
    first: dict[str, _Slot] = {}
    errors = []
    for slot in slots:
        earlier = first.setdefault(slot.worker.name, slot)
        if earlier is not slot:
            errors.append(f"{slot.field('name')}: name already used by {earlier.who}")
    return errors


def _unique_ports(slots: list[_Slot]) -> list[str]:
    first: dict[int, _Slot] = {}
    errors = []
    for slot in slots:
        if slot.worker.port is None:
            continue
        earlier = first.setdefault(slot.worker.port, slot)
        if earlier is not slot:
            errors.append(
                f"{slot.field('port')}: port {slot.worker.port} is already used by {earlier.who}"
            )
    return errors


def _gpus_per_worker(slots: list[_Slot]) -> list[str]:
    errors = []
    for slot in slots:
        gpus = slot.worker.gpus
        if gpus is None:
            continue
        tp = slot.model.tensor_parallel_size
        pp = slot.model.pipeline_parallel_size
        if len(gpus) != tp * pp:
            errors.append(
                f"{slot.field('gpus')}: {len(gpus)} GPU(s) {gpus}, but the model needs "
                f"tensor_parallel_size {tp} x pipeline_parallel_size {pp} = {tp * pp}"
            )
        repeated = sorted(gpu for gpu, count in Counter(gpus).items() if count > 1)
        if repeated:
            errors.append(f"{slot.field('gpus')}: GPU(s) {repeated} listed more than once")
    return errors


def _gpus_used_once(slots: list[_Slot]) -> list[str]:
    # Two vLLM servers on one GPU each reserve gpu_memory_utilization of it: the second fails to
    # start, or both run out of KV cache. One GPU, one worker.
    first: dict[int, _Slot] = {}
    errors = []
    for slot in slots:
        for gpu in dict.fromkeys(slot.worker.gpus or []):
            earlier = first.setdefault(gpu, slot)
            if earlier is not slot:
                errors.append(
                    f"{slot.field('gpus')}: GPU {gpu} is already assigned to {earlier.who}"
                )
    return errors


def _gpus_on_host(slots: list[_Slot], host_gpus: int) -> list[str]:
    ids = f"ids 0-{host_gpus - 1}" if host_gpus > 0 else "none"
    errors = []
    for slot in slots:
        missing = sorted({gpu for gpu in slot.worker.gpus or [] if gpu >= host_gpus})
        if missing:
            errors.append(
                f"{slot.field('gpus')}: GPU(s) {missing} do not exist on a host with "
                f"{host_gpus} GPU(s) ({ids})"
            )
    return errors


def placement_errors(config: ModelsConfig, gpus: int | None = None) -> list[str]:
    """Every placement problem in `config`, one message each; empty when it can be deployed.

    `gpus` is the host's GPU count; when given, every GPU id must be below it.
    """
    slots = _slots(config)
    errors = _unique_names(slots) + _unique_ports(slots)
    errors += _gpus_per_worker(slots) + _gpus_used_once(slots)
    if gpus is not None:
        errors += _gpus_on_host(slots, gpus)
    return errors
