"""Trials' best weights on their way to the tracking store (``train.save_weights``).

Only the driver writes the store (trial workers import no MLflow and never talk to it), so a trial hands
its best weights (a torch.save'd state dict of CPU tensors) to the sweep's inbox, a small Ray actor, before
its final report; when the driver records the trial's outcome it takes them from the inbox and logs them on
the trial's run (``StudyRecord.log_weights``). Ray carries the bytes between machines as it carries results,
so this works the same on a cluster with an MLflow server, and Tune's result files never hold them.
Whatever goes wrong on the way is recorded on the trial (tag ``moetune.weights_error``), never dropped.
"""

from __future__ import annotations

import io

import ray
import torch
from torch import nn

from moetune.errors import first_line


@ray.remote(num_cpus=0)  # takes no trial slot
class WeightsInbox:
    """Holds each finished trial's weights until the driver takes them."""

    def __init__(self) -> None:
        self._held: dict[str, bytes] = {}

    def put(self, key: str, data: bytes) -> None:
        self._held[key] = data

    def pop(self, key: str) -> bytes | None:
        return self._held.pop(key, None)


def weights_key(study: str, number: int) -> str:
    return f"{study}/{number}"


def state_bytes(model: nn.Module) -> bytes:
    """The model's state dict, CPU tensors, as torch.save writes it."""
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buffer)
    return buffer.getvalue()


def send_weights(inbox, key: str, model: nn.Module) -> str | None:
    """In the trial: hand the model's weights to the inbox; returns why that failed, or None."""
    try:
        ray.get(inbox.put.remote(key, state_bytes(model)))
    except Exception as exc:  # recorded on the trial's run by the driver
        return first_line(exc, with_type=True)
    return None


def take_weights(inbox, key: str) -> tuple[bytes | None, str | None]:
    """On the driver: a trial's weights from the inbox, or None and why they are not there."""
    try:
        data = ray.get(inbox.pop.remote(key))
    except Exception as exc:
        return None, first_line(exc, with_type=True)
    return data, None if data is not None else "the trial's weights never reached the driver"
