"""Check data files against their checksums and download the missing ones.

A file that fails its checksum is never used: `ChecksumError` names it with the expected and actual
sums. Missing files are downloaded (unless $KRUBENCH_OFFLINE is set) into a temporary file next to
their destination, checked, then renamed into place, so an interrupted download leaves nothing behind.
"""
from __future__ import annotations

import gzip
import hashlib
import logging
import tarfile
import tempfile
import urllib.request
import zlib
from pathlib import Path

from ..runtime.files import atomic_write
from .roots import DATA_ENV, OFFLINE_ENV, cache_dir, offline
from .sources import DataFile

log = logging.getLogger("krubench.data")
CHUNK = 1 << 20
TIMEOUT_S = 60


class DataError(RuntimeError):
    """A data file is missing, corrupt or unreadable."""


class MissingDataError(DataError, FileNotFoundError):
    pass


class ChecksumError(DataError):
    pass


class DownloadError(OSError):
    """Every URL of a file failed; the message lists each URL with its error."""


class _Hasher:
    """sha256 of a stream, or of its decompressed content when `gzipped`."""

    def __init__(self, gzipped: bool):
        self.sha = hashlib.sha256()
        self.gunzip = zlib.decompressobj(16 + zlib.MAX_WBITS) if gzipped else None

    def update(self, chunk: bytes) -> None:
        self.sha.update(self.gunzip.decompress(chunk) if self.gunzip else chunk)

    def hexdigest(self) -> str:
        return self.sha.hexdigest()


def checksum_error(path: Path, f: DataFile, actual: str) -> ChecksumError:
    what = "sha256 of the decompressed content" if f.gzipped else "sha256"
    return ChecksumError(
        f"{path} fails its checksum: expected {what} {f.sha256}, got {actual}. It is corrupt or not the "
        f"published file: delete it, then run `krubench-data download` again or place a good copy there by hand.")


def sha256_of(path: Path, gzipped: bool = False) -> str:
    hasher = _Hasher(gzipped)
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            hasher.update(chunk)
    return hasher.hexdigest()


def verify(root: Path, f: DataFile) -> Path:
    """The file's path, after checking its checksum; raises ChecksumError."""
    path = Path(root) / f.path
    try:
        actual = sha256_of(path, f.gzipped)
    except zlib.error as e:
        raise checksum_error(path, f, f"none (not a valid gzip file: {e})") from e
    if actual != f.sha256:
        raise checksum_error(path, f, actual)
    return path


def missing_error(name: str, missing: list[DataFile], root: Path, reason: str) -> MissingDataError:
    by_hand = "\n".join(f"  {root / f.path}  <-  {f.urls[0]}" + (f" (member {f.member})" if f.member else "")
                        for f in missing)
    return MissingDataError(
        f"data for {name} is missing from the data root {root}:\n{by_hand}\n{reason}.\n"
        f"To fix: on a machine with network access run `krubench-data download {name} --data-dir DIR`, or "
        f"download the files above by hand (for a .tgz, extract the member), and place them at those paths; "
        f"then point krubench at the folder with {DATA_ENV}=DIR or data_dir=DIR.")


def ensure(name: str, files: list[DataFile], root: Path) -> None:
    """Make sure every file is in `root` and passes its checksum, downloading the missing ones."""
    root = Path(root)
    missing = [f for f in files if not (root / f.path).is_file()]
    if missing:
        if offline():
            raise missing_error(name, missing, root, f"${OFFLINE_ENV} is set, so nothing was downloaded")
        try:
            download(missing, root)
        except (OSError, tarfile.TarError) as e:
            raise missing_error(name, missing, root, f"downloading them failed: {e}") from e
    for f in files:
        if f not in missing:
            verify(root, f)


def _fetch_url(urls: tuple[str, ...], write_checked) -> None:
    """Try each URL in turn; `write_checked(response)` raises ChecksumError on bad content."""
    errors = []
    for url in urls:
        log.info(f"downloading {url}")
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
                write_checked(response)
            return
        except (OSError, ChecksumError) as e:
            errors.append(f"{url}: {getattr(e, 'reason', e)}")
    raise DownloadError("; ".join(errors))


def _store(dest: Path, f: DataFile, source) -> None:
    """Copy the stream `source` to `dest` atomically, refusing content that fails the checksum."""
    def write(out):
        hasher = _Hasher(f.gzipped)
        while chunk := source.read(CHUNK):
            hasher.update(chunk)
            out.write(chunk)
        if hasher.hexdigest() != f.sha256:
            raise checksum_error(dest, f, hasher.hexdigest())

    dest.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(dest, write)


def download(files: list[DataFile], root: Path) -> None:
    """Download `files` into `root`: plain files directly, archive members through one archive download."""
    archives: dict[tuple[str, ...], list[DataFile]] = {}
    for f in files:
        if f.member:
            archives.setdefault(f.urls, []).append(f)
        else:
            _fetch_url(f.urls, lambda response, f=f: _store(root / f.path, f, response))
            log.info(f"stored {root / f.path}")
    for urls, members in archives.items():
        cache_dir().mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache_dir(), prefix="download-") as tmp:
            archive = Path(tmp) / "archive"
            _fetch_url(urls, lambda response: archive.write_bytes(response.read()))
            with tarfile.open(archive, "r:*") as tar:
                names = {m.name.removeprefix("./"): m for m in tar.getmembers()}
                for f in members:
                    if f.member not in names:
                        raise tarfile.TarError(f"{urls[0]} has no member {f.member}")
                    with tar.extractfile(names[f.member]) as source:
                        _store(root / f.path, f, source)
                    log.info(f"stored {root / f.path}")


def read_gzip(path: Path) -> bytes:
    with gzip.open(path, "rb") as fh:
        return fh.read()

