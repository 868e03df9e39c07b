"""A rough memory estimate made before anything is allocated: a run whose training states cannot fit is
refused with the keys that size it, instead of dying later with the allocator's message."""
from __future__ import annotations

from pathlib import Path

import torch

from ..models import MODELS
from ..tasks import TASKS

#: working copies of the hidden state kept per time step for backpropagation (pre-activations, activations,
#: Kronecker stages, gates, gradients): deliberately generous, the estimate only refuses what cannot fit
COPIES_PER_STEP = 8


def training_bytes(config: dict) -> tuple[int, str] | None:
    """Bytes of the states one training step keeps, plus the validation set a synthetic task draws up front, and
    the keys it depends on (None where unknown). The task and model classes supply the facts: sequence length,
    state width, complex state, validation bytes."""
    task, model = config["task"], config["model"]
    task_cls, model_cls = TASKS[task["name"]], MODELS[model["name"]]
    length = task_cls.sequence_length(task)
    if length is None:
        return None
    steps, length_key = length
    width = model_cls.state_width(model)
    element = 8 if model_cls.complex_state(model) else 4  # complex64 or float32
    batch = task["batch_size"]
    need = batch * steps * width * element * COPIES_PER_STEP
    keys = f"model.hidden_size={model['hidden_size']}, {length_key} ({steps} steps), task.batch_size={batch}"
    if per_step := task_cls.validation_bytes_per_step:
        need += task["val_size"] * steps * per_step
        keys += f", task.val_size={task['val_size']}"
    return need, keys


def available_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:  # Linux: what can be allocated without swapping
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(config: dict, device: torch.device) -> None:
    """Raise ValueError if the training states alone cannot fit in the device's available memory."""
    estimate, available = training_bytes(config), available_bytes(device)
    if estimate is None or available is None or estimate[0] <= available:
        return
    need, keys = estimate
    raise ValueError(f"{keys} need about {need / 2**30:.1f} GiB for the states training keeps (and the validation "
                     f"set), more than the {available / 2**30:.1f} GiB available on {device}: lower "
                     "model.hidden_size, the sequence length, task.batch_size or task.val_size")
