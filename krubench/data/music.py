"""The four polyphonic music sets of Boulanger-Lewandowski et al. (2012) as 88-key piano rolls.

Read from the TCN repository's `.mat` files (checked against their sha256), or, when only those are
absent, from the original `*.pickle` files: {'train','valid','test'} -> sequences -> time steps ->
MIDI note numbers 21..108. Those pickles have no published checksum; they are read with an unpickler
that admits only plain containers, numbers and strings (no class, no function: no code runs), and their
split sizes are checked.
"""
from __future__ import annotations

import logging
import pickle
from pathlib import Path

import numpy as np
import torch

from .fetch import DataError, ensure
from .sources import MUSIC, music_files

log = logging.getLogger("krubench.data")
KEYS, LOWEST_NOTE = 88, 21
SPLITS = ("train", "valid", "test")
#: published split sizes (sequences): train, valid, test
SPLIT_SIZES = {"jsb": (229, 76, 77), "piano": (87, 12, 25), "nottingham": (694, 173, 170), "musedata": (524, 135, 124)}


class PlainUnpickler(pickle.Unpickler):
    """Refuses every global: what it can build is lists, tuples, dicts, sets, numbers, strings, bytes."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: a music pickle may hold only plain containers and numbers")


def load_plain_pickle(path: Path):
    with open(path, "rb") as fh:
        try:
            return PlainUnpickler(fh, encoding="latin1").load()
        except (pickle.UnpicklingError, EOFError, ValueError) as e:
            raise DataError(f"{path} is not a plain-data music pickle: {e}. Use the .mat files instead "
                            "(`krubench-data download music`).") from e


def roll_from_notes(steps, where: str) -> torch.Tensor:
    """A list of time steps, each an iterable of MIDI notes, -> binary piano roll uint8 (T, 88)."""
    roll = torch.zeros(len(steps), KEYS, dtype=torch.uint8)
    for t, notes in enumerate(steps):
        if not all(isinstance(n, (int, float)) and float(n).is_integer() for n in notes):
            raise DataError(f"{where}, step {t}: notes {list(notes)!r:.80} are not all MIDI note numbers (whole "
                            "numbers): the file is damaged; fetch it again (krubench-data download music)")
        keys = [int(n) - LOWEST_NOTE for n in notes]
        if any(k < 0 or k >= KEYS for k in keys):
            raise DataError(f"{where}, step {t}: notes {sorted(notes)} outside the piano range "
                            f"{LOWEST_NOTE}..{LOWEST_NOTE + KEYS - 1}")
        roll[t, keys] = 1
    return roll


def read_pickle(path: Path) -> dict[str, list[torch.Tensor]]:
    data = load_plain_pickle(path)
    if not isinstance(data, dict) or not set(SPLITS) <= set(data):
        raise DataError(f"{path} should hold a dict with keys {list(SPLITS)}, not {type(data).__name__}")
    return {split: [roll_from_notes(seq, f"{path} {split}[{i}]") for i, seq in enumerate(data[split])]
            for split in SPLITS}


def read_mat(path: Path) -> dict[str, list[torch.Tensor]]:
    from scipy.io import loadmat  # imported here: scipy is slow to import

    mat = loadmat(str(path))
    out = {}
    for split in SPLITS:
        rolls = [np.ascontiguousarray(a, dtype=np.uint8) for a in mat[f"{split}data"][0]]
        for i, roll in enumerate(rolls):
            if roll.ndim != 2 or roll.shape[1] != KEYS or roll.max() > 1:
                raise DataError(f"{path} {split}[{i}] is not a binary T×{KEYS} piano roll (shape {roll.shape})")
        out[split] = [torch.from_numpy(roll) for roll in rolls]
    return out


def pickle_candidates(root: Path, dataset: str) -> list[Path]:
    mat, original, _ = MUSIC[dataset]
    stem = mat.removesuffix(".mat")
    return [Path(root) / "music" / name for name in (original, f"{stem}.pickle", f"{stem}.notes.pickle")]


def load_music(root: Path, dataset: str) -> dict[str, list[torch.Tensor]]:
    """{split: [piano roll uint8 (T_i, 88)]} for split in train/valid/test."""
    if dataset not in MUSIC:
        raise ValueError(f"task.dataset={dataset!r} is not a music set: use one of {list(MUSIC)}")
    files = music_files(dataset)
    pickles = [p for p in pickle_candidates(root, dataset) if p.is_file()]
    if (Path(root) / files[0].path).is_file() or not pickles:
        ensure(f"music/{dataset}", files, root)
        path, data = Path(root) / files[0].path, read_mat(Path(root) / files[0].path)
    else:
        path, data = pickles[0], read_pickle(pickles[0])
        log.info(f"read {path} (original pickle: no published checksum; its split sizes are checked)")
    sizes = tuple(len(data[s]) for s in SPLITS)
    if sizes != SPLIT_SIZES[dataset]:
        raise DataError(f"{path} has {sizes} train/valid/test sequences, but {dataset} has {SPLIT_SIZES[dataset]}: "
                        "it is not the published data set")
    return data
