"""Mikolov's character-level Penn Treebank: `ptb.char.{train,valid,test}.txt`, one sentence per line,
characters separated by spaces, `_` between words. Tokens: the 49 symbols and an end-of-line token
(one per line), 50 in all, numbered in byte order."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .fetch import DataError, ensure
from .sources import ptb_files

EOL = ord("\n")
SEPARATORS = b" \t\r"
SPLITS = ("train", "valid", "test")


def token_bytes(text: bytes) -> np.ndarray:
    """The tokens of a PTB char file as bytes (uint8), the newline standing for end-of-line."""
    data = np.frombuffer(text, dtype=np.uint8)
    return data[~np.isin(data, np.frombuffer(SEPARATORS, dtype=np.uint8))]


def load_ptb(root: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """({split: token ids int64 (n,)}, vocabulary); the vocabulary is that of the training file."""
    files = ptb_files()
    ensure("ptb_char", files, root)
    tokens = {split: token_bytes((Path(root) / f.path).read_bytes()) for split, f in zip(SPLITS, files)}
    symbols = np.unique(tokens["train"])  # sorted bytes
    lookup = np.full(256, -1, dtype=np.int64)
    lookup[symbols] = np.arange(len(symbols))
    ids = {}
    for split, tok in tokens.items():
        mapped = lookup[tok]
        if (mapped < 0).any():
            unknown = sorted({chr(b) for b in tok[mapped < 0]})
            raise DataError(f"ptb_char/{split} holds symbols absent from the training file: {unknown}; "
                            "the files are not Mikolov's PTB char files")
        ids[split] = torch.from_numpy(mapped)
    vocab = ["<eol>" if b == EOL else chr(b) for b in symbols]
    return ids, vocab
