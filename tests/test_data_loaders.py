"""Loaders on tiny files written in the real formats (idx, PTB text, .mat, pickle), and on the real
files in ../shared/data when that folder exists: split sizes, value ranges, formats agreeing."""
from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import re
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from krubench.data import mnist, music, ptb, roots
from krubench.data.fetch import DataError
from krubench.data.sources import DataFile

from conftest import SHARED_DATA

needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"real data folder {SHARED_DATA} is absent")


@pytest.fixture(autouse=True)
def private_cache(monkeypatch, tmp_path):
    monkeypatch.setenv(roots.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(roots.OFFLINE_ENV, "1")  # a loader must never reach for the network here


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_only(path: Path) -> None:
    for p in [path, *path.rglob("*")]:
        p.chmod(0o555 if p.is_dir() else 0o444)


# ---- MNIST ----
def idx(array: np.ndarray) -> bytes:
    """An idx file (unsigned bytes): magic 0x08, number of dims, big-endian sizes, data."""
    return struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def test_mnist_loader_on_tiny_idx_files(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (6, 28, 28), dtype=np.uint8),
              "train-labels-idx1-ubyte": np.array([0, 1, 2, 3, 4, 9], dtype=np.uint8),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (2, 28, 28), dtype=np.uint8),
              "t10k-labels-idx1-ubyte": np.array([7, 8], dtype=np.uint8)}
    root = tmp_path / "root"
    (root / "mnist").mkdir(parents=True)
    files = []
    for name, array in arrays.items():
        (root / f"mnist/{name}.gz").write_bytes(gzip.compress(idx(array)))
        files.append(DataFile(f"mnist/{name}.gz", sha(idx(array)), (), gzipped=True))
    monkeypatch.setattr(mnist, "mnist_files", lambda: files)
    monkeypatch.setitem(sys.modules, "torchvision", None)  # not a dependency: krubench reads idx files itself
    read_only(root)
    try:
        data = mnist.load_mnist(root)
        assert torch.equal(data["train"][0], torch.from_numpy(arrays["train-images-idx3-ubyte"]))
        assert data["train"][1].tolist() == [0, 1, 2, 3, 4, 9] and data["test"][1].tolist() == [7, 8]
        assert data["test"][0].dtype == torch.uint8 and data["train"][1].dtype == torch.int64
        assert (tmp_path / "cache/derived/mnist/MNIST/raw/t10k-labels-idx1-ubyte").is_file()  # derived: in the cache
        assert sorted(p.name for p in (root / "mnist").iterdir()) == sorted(f"{n}.gz" for n in arrays)
        mnist.load_mnist(root)  # second load reuses the cache
    finally:
        (root / "mnist").chmod(0o755)


@needs_shared
def test_mnist_real_sizes_and_ranges():
    data = mnist.load_mnist(SHARED_DATA)
    (train_x, train_y), (test_x, test_y) = data["train"], data["test"]
    assert train_x.shape == (60000, 28, 28) and test_x.shape == (10000, 28, 28)
    assert train_y.shape == (60000,) and test_y.shape == (10000,)
    assert train_x.dtype == torch.uint8 and int(train_x.max()) == 255 and int(train_x.min()) == 0
    assert sorted(train_y.unique().tolist()) == list(range(10))
    assert torch.bincount(test_y).tolist()[:3] == [980, 1135, 1032]  # the canonical test label counts


# ---- PTB ----
def write_ptb(root: Path, texts: dict[str, str]) -> list[DataFile]:
    (root / "ptb_char").mkdir(parents=True, exist_ok=True)
    files = []
    for split, text in texts.items():
        (root / f"ptb_char/ptb.char.{split}.txt").write_text(text)
        files.append(DataFile(f"ptb_char/ptb.char.{split}.txt", sha(text.encode()), ()))
    return files


def test_ptb_loader_on_tiny_text(tmp_path, monkeypatch):
    texts = {"train": "a b _ c\n b a \n", "valid": "c _ a\n", "test": "a\n"}
    files = write_ptb(tmp_path, texts)
    monkeypatch.setattr(ptb, "ptb_files", lambda: files)
    ids, vocab = ptb.load_ptb(tmp_path)
    assert vocab == ["<eol>", "_", "a", "b", "c"]
    decode = lambda t: "".join("|" if vocab[i] == "<eol>" else vocab[i] for i in t.tolist())  # noqa: E731
    assert decode(ids["train"]) == "ab_c|ba|" and decode(ids["valid"]) == "c_a|" and decode(ids["test"]) == "a|"


def test_ptb_unknown_symbol_is_an_error(tmp_path, monkeypatch):
    files = write_ptb(tmp_path, {"train": "a b\n", "valid": "a z\n", "test": "b\n"})
    monkeypatch.setattr(ptb, "ptb_files", lambda: files)
    with pytest.raises(DataError, match=r"valid holds symbols absent from the training file: \['z'\]"):
        ptb.load_ptb(tmp_path)


@needs_shared
def test_ptb_real_sizes():
    ids, vocab = ptb.load_ptb(SHARED_DATA)
    assert {k: len(v) for k, v in ids.items()} == {"train": 5_017_482, "valid": 393_042, "test": 442_423}
    assert len(vocab) == 50 and vocab[0] == "<eol>" and "_" in vocab
    lines = (SHARED_DATA / "ptb_char/ptb.char.train.txt").read_bytes().count(b"\n")
    assert int((ids["train"] == 0).sum()) == lines  # one end-of-line per line
    assert all(int(v.min()) >= 0 and int(v.max()) < 50 for v in ids.values())


# ---- music ----
def tiny_rolls(seed=0):
    rng = np.random.default_rng(seed)
    return {s: [(rng.random((t, 88)) < 0.1).astype(np.uint8) for t in lengths]
            for s, lengths in {"train": (5, 3), "valid": (4,), "test": (2, 6)}.items()}


def as_cells(rolls):
    cells = np.empty((1, len(rolls)), dtype=object)
    for i, r in enumerate(rolls):
        cells[0, i] = r
    return cells


def test_mat_reader_on_tiny_file(tmp_path):
    from scipy.io import savemat
    rolls = tiny_rolls()
    savemat(tmp_path / "x.mat", {f"{s}data": as_cells(r) for s, r in rolls.items()})
    data = music.read_mat(tmp_path / "x.mat")
    for s in music.SPLITS:
        assert [r.tolist() for r in data[s]] == [r.tolist() for r in rolls[s]]


def test_mat_reader_refuses_non_binary_rolls(tmp_path):
    from scipy.io import savemat
    rolls = tiny_rolls()
    rolls["valid"][0][1, 3] = 2
    savemat(tmp_path / "x.mat", {f"{s}data": as_cells(r) for s, r in rolls.items()})
    with pytest.raises(DataError, match=r"valid\[0\] is not a binary"):
        music.read_mat(tmp_path / "x.mat")


def test_pickle_reader_on_tiny_file(tmp_path):
    notes = {"train": [[[60, 64], [], [21, 108]]], "valid": [[(60,), (61,)]], "test": [[[100.0]]]}
    (tmp_path / "x.pickle").write_bytes(pickle.dumps(notes, protocol=2))
    data = music.read_pickle(tmp_path / "x.pickle")
    roll = data["train"][0]
    assert roll.shape == (3, 88) and roll.dtype == torch.uint8
    assert roll[0].nonzero().flatten().tolist() == [39, 43] and roll[1].sum() == 0
    assert roll[2].nonzero().flatten().tolist() == [0, 87] and data["test"][0][0, 79] == 1


def test_pickle_reader_refuses_notes_off_the_piano(tmp_path):
    (tmp_path / "x.pickle").write_bytes(pickle.dumps({"train": [[[20]]], "valid": [], "test": []}))
    with pytest.raises(DataError, match="outside the piano range 21..108"):
        music.read_pickle(tmp_path / "x.pickle")


@pytest.mark.parametrize("note", [float("nan"), "C4", 60.5, None])
def test_pickle_reader_refuses_a_note_that_is_not_a_number_naming_the_file(tmp_path, note):
    (tmp_path / "x.pickle").write_bytes(pickle.dumps({"train": [[[60, note]]], "valid": [], "test": []}))
    with pytest.raises(DataError, match=f"{re.escape(str(tmp_path / 'x.pickle'))} train\\[0\\], step 0: notes .* "
                                        "are not all MIDI note numbers"):
        music.read_pickle(tmp_path / "x.pickle")


class Exploit:
    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path, protocol):
    Exploit.marker = tmp_path / "pwned"
    (tmp_path / "evil.pickle").write_bytes(pickle.dumps({"train": [Exploit()], "valid": [], "test": []}, protocol))
    with pytest.raises(DataError, match="refusing to load .*system"):
        music.read_pickle(tmp_path / "evil.pickle")
    assert not Exploit.marker.exists()


def test_pickle_with_numpy_or_garbage_is_refused(tmp_path):
    (tmp_path / "np.pickle").write_bytes(pickle.dumps({"train": [np.zeros(3)], "valid": [], "test": []}))
    with pytest.raises(DataError, match="refusing to load numpy"):
        music.read_pickle(tmp_path / "np.pickle")
    (tmp_path / "junk.pickle").write_bytes(b"\x80\x02}q\x00")  # truncated
    with pytest.raises(DataError, match="not a plain-data music pickle"):
        music.read_pickle(tmp_path / "junk.pickle")
    (tmp_path / "list.pickle").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(DataError, match="should hold a dict"):
        music.read_pickle(tmp_path / "list.pickle")


def test_music_pickle_with_wrong_split_sizes_is_refused(tmp_path):
    (tmp_path / "music").mkdir()
    (tmp_path / "music/JSB Chorales.pickle").write_bytes(pickle.dumps({"train": [[[60]]], "valid": [], "test": []}))
    with pytest.raises(DataError, match=r"has \(1, 0, 0\) train/valid/test sequences, but jsb has \(229, 76, 77\)"):
        music.load_music(tmp_path, "jsb")


def test_music_unknown_dataset(tmp_path):
    with pytest.raises(ValueError, match="task.dataset='bach' .*jsb"):
        music.load_music(tmp_path, "bach")


FRAMES = {"jsb": 13_807, "piano": 75_911, "nottingham": 176_561, "musedata": 245_202}  # train split


@needs_shared
@pytest.mark.parametrize("dataset", list(FRAMES))
def test_music_real_sizes_and_ranges(dataset):
    data = music.load_music(SHARED_DATA, dataset)
    assert tuple(len(data[s]) for s in music.SPLITS) == music.SPLIT_SIZES[dataset]
    assert sum(len(r) for r in data["train"]) == FRAMES[dataset]
    for rolls in data.values():
        assert all(r.dtype == torch.uint8 and r.shape[1] == 88 and int(r.max()) <= 1 for r in rolls)


@needs_shared
def test_music_original_pickle_agrees_with_mat(tmp_path):
    (tmp_path / "music").mkdir()
    shutil.copy(SHARED_DATA / "music_pickles/JSB_Chorales.notes.pickle", tmp_path / "music/JSB Chorales.pickle")
    from_pickle = music.load_music(tmp_path, "jsb")
    from_mat = music.load_music(SHARED_DATA, "jsb")
    for s in music.SPLITS:
        assert all(torch.equal(a, b) for a, b in zip(from_pickle[s], from_mat[s]))


# ---- the tasks on tiny files (so they are tested without ../shared/data too) ----
def test_ptb_task_on_tiny_text(tmp_path, monkeypatch):
    from krubench.models import build_model
    from krubench.tasks import PTBCharTask

    text = "".join(" ".join("abc_d"[(i * 7 + j) % 5] for j in range(1 + i % 9)) + "\n" for i in range(200))
    files = write_ptb(tmp_path, {"train": text, "valid": text[:400], "test": text[:300]})
    monkeypatch.setattr(ptb, "ptb_files", lambda: files)
    task = PTBCharTask(bptt=5, batch_size=3, eval_batch_size=2, data_dir=str(tmp_path))
    assert task.input_size == 6 and task.segments == (len(task.train[0]) - 1) // 5
    torch.manual_seed(0)
    m = build_model({"name": "lstm", "hidden_size": 4}, 6, 6)
    for step in range(task.segments + 1):  # into the second epoch, where the state starts again from zero
        assert torch.isfinite(task.train_loss(m, step, "cpu"))
    assert task.next_step == task.segments + 1
    out = task.evaluate(m, "cpu", "test")
    assert out["bpc"] == pytest.approx(out["loss"] / np.log(2)) and 0 < out["bpc"] < 10


def test_music_task_on_tiny_mat(tmp_path, monkeypatch):
    from scipy.io import savemat

    from krubench.data.sources import MUSIC
    from krubench.tasks import MusicTask

    rolls = tiny_rolls()
    (tmp_path / "music").mkdir()
    savemat(tmp_path / "music/JSB_Chorales.mat", {f"{s}data": as_cells(r) for s, r in rolls.items()})
    digest = sha((tmp_path / "music/JSB_Chorales.mat").read_bytes())
    monkeypatch.setitem(MUSIC, "jsb", ("JSB_Chorales.mat", "JSB Chorales.pickle", digest))
    monkeypatch.setitem(music.SPLIT_SIZES, "jsb", (2, 1, 2))
    task = MusicTask(dataset="jsb", batch_size=2, eval_batch_size=2, data_dir=str(tmp_path))
    frames = np.concatenate(rolls["train"]).astype(float)  # (8, 88)
    p = frames.mean(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.nansum(p * np.log(p) + (1 - p) * np.log(1 - p))
    assert task.baselines()["loss"] == pytest.approx(entropy)
    x, target, mask = task.train_batch(0)
    assert x.shape == (2, 4, 88) and mask.sum() == 4 + 2
