"""Where data lives. The data root holds the files as published (it may be read-only); the cache
holds anything derived from them (decompressed files), so nothing is ever written next to the sources.

data root: the `data_dir` config key, else $KRUBENCH_DATA, else <cache>/data
cache:     $KRUBENCH_CACHE, else $XDG_CACHE_HOME/krubench, else ~/.cache/krubench
"""
from __future__ import annotations

import os
from pathlib import Path

DATA_ENV, CACHE_ENV, OFFLINE_ENV = "KRUBENCH_DATA", "KRUBENCH_CACHE", "KRUBENCH_OFFLINE"


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "krubench"


def data_dir(configured: str | None = None) -> Path:
    """The data root: the configured value (config key `data_dir`), else $KRUBENCH_DATA, else the cache."""
    if configured:
        return Path(configured).expanduser().resolve()
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser().resolve()
    return cache_dir() / "data"


def derived_dir(name: str) -> Path:
    """A writable folder for files derived from data set `name`."""
    path = cache_dir() / "derived" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def offline() -> bool:
    """True when $KRUBENCH_OFFLINE is set to a true value: missing files are an error, never downloaded."""
    return os.environ.get(OFFLINE_ENV, "").lower() in ("1", "true", "yes")
