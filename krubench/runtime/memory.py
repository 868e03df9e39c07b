"""A rough memory estimate made before anything is allocated: a run whose training states cannot fit is
refused with the keys that size it, instead of dying later with the allocator's message."""
from __future__ import annotations

from pathlib import Path

import torch

#: working copies of the hidden state kept per time step for backpropagation (pre-activations, activations,
#: Kronecker stages, gates, gradients): deliberately generous, the estimate only refuses what cannot fit
COPIES_PER_STEP = 8


def sequence_length(task: dict) -> tuple[int, str] | None:
    """Time steps of one training sequence and the key that sets them; None where the data decides (music)."""
    name = task["name"]
    if name == "copy":
        return task["T"] + 20, "task.T"
    if name == "adding":
        return task["T"], "task.T"
    if name == "pixel_mnist":
        return 784, "task (pixel_mnist: 784 steps)"
    if name == "ptb_char":
        return task["bptt"], "task.bptt"
    return None


#: bytes per time step of one validation sequence of the synthetic tasks while they build their validation set
#: (held for the whole run): copy's int64 ids, targets and one-hot (10 classes), then the float32 one-hot;
#: adding's float32 values, markers and their stacked copy, and uniform placement's random keys and order
VALIDATION_BYTES_PER_STEP = {"copy": 8 + 8 + 10 * 8 + 10 * 4, "adding": 4 + 4 + 8 + 4 + 8}


def training_bytes(config: dict) -> tuple[int, str] | None:
    """Bytes of the states one training step keeps, plus the validation set a synthetic task draws up front, and
    the keys it depends on (None where unknown)."""
    length = sequence_length(config["task"])
    if length is None:
        return None
    steps, length_key = length
    model = config["model"]
    width = model["hidden_size"] * (4 if model["name"].startswith("lstm") else 1)  # LSTMs: four gates
    complex_state = model.get("complex", model["name"] in ("urnn", "fcurnn"))  # the uRNNs have no option: always complex
    element = 8 if complex_state else 4  # complex64 or float32
    batch = config["task"]["batch_size"]
    need = batch * steps * width * element * COPIES_PER_STEP
    keys = f"model.hidden_size={model['hidden_size']}, {length_key} ({steps} steps), task.batch_size={batch}"
    if per_step := VALIDATION_BYTES_PER_STEP.get(config["task"]["name"]):
        need += config["task"]["val_size"] * steps * per_step
        keys += f", task.val_size={config['task']['val_size']}"
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
