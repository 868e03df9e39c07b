"""MNIST through torchvision's `MNIST` dataset. torchvision wants the uncompressed idx files in
`<root>/MNIST/raw/`; the data root holds the `.gz` files and may be read-only, so the checked,
decompressed copies go to the cache."""
from __future__ import annotations

from pathlib import Path

import torch

from ..files import atomic_write
from .fetch import ensure, read_gzip, sha256_of
from .roots import derived_dir
from .sources import mnist_files


def load_mnist(root: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{"train": (images, labels), "test": (images, labels)}: images uint8 (N, 28, 28), labels int64 (N,)."""
    from torchvision.datasets import MNIST  # imported here: torchvision is slow to import

    files = mnist_files()
    ensure("pixel_mnist", files, root)
    cache = derived_dir("mnist")
    raw = cache / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for f in files:
        dest = raw / Path(f.path).stem  # without .gz
        if not dest.is_file() or sha256_of(dest) != f.sha256:
            content = read_gzip(Path(root) / f.path)  # verified by `ensure`
            atomic_write(dest, lambda out, content=content: out.write(content))
    out = {}
    for split, train in (("train", True), ("test", False)):
        ds = MNIST(str(cache), train=train, download=False)
        out[split] = (ds.data, ds.targets.long())
    return out
