"""MNIST from its idx files. The data root holds the `.gz` files and may be read-only, so the checked,
decompressed copies go to the cache (a load then reads them without decompressing 55 MB again). The idx format
is a few header bytes and the raw array: reading it here spares krubench a dependency on torchvision."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import torch

from ..runtime.files import atomic_write
from .fetch import ensure, read_gzip, sha256_of
from .roots import derived_dir
from .sources import mnist_files


def read_idx(path: Path) -> torch.Tensor:
    """An idx file of unsigned bytes: two zero bytes, type 0x08, the number of dimensions, their sizes as
    big-endian uint32, then the data."""
    data = path.read_bytes()
    zero, kind, ndim = struct.unpack_from(">HBB", data)
    if zero != 0 or kind != 0x08:
        raise ValueError(f"{path} is not an idx file of unsigned bytes: delete it to have it decompressed again")
    shape = struct.unpack_from(f">{ndim}I", data, 4)
    return torch.from_numpy(np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape).copy())


def load_mnist(root: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{"train": (images, labels), "test": (images, labels)}: images uint8 (N, 28, 28), labels int64 (N,)."""
    files = mnist_files()
    ensure("pixel_mnist", files, root)
    raw = derived_dir("mnist") / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for f in files:
        dest = raw / Path(f.path).stem  # without .gz
        if not dest.is_file() or sha256_of(dest) != f.sha256:
            content = read_gzip(Path(root) / f.path)  # verified by `ensure`
            atomic_write(dest, lambda out, content=content: out.write(content))
    return {split: (read_idx(raw / f"{prefix}-images-idx3-ubyte"), read_idx(raw / f"{prefix}-labels-idx1-ubyte").long())
            for split, prefix in (("train", "train"), ("test", "t10k"))}
