"""Data files: checksums, downloads (from file:// URLs only: the network is never touched), atomic
storage, clear errors for missing and corrupt files, the data root and cache, `krubench-data`."""
from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
import urllib.request
from pathlib import Path

import pytest

from krubench.data import fetch, manage, roots, sources
from krubench.data.fetch import ChecksumError, MissingDataError, ensure, verify
from krubench.data.sources import DataFile

from conftest import SHARED_DATA

needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"real data folder {SHARED_DATA} is absent")


@pytest.fixture(autouse=True)
def no_network(monkeypatch, tmp_path):
    """Only file:// URLs may be opened; the cache is private to the test."""
    real = urllib.request.urlopen

    def local_only(url, *args, **kwargs):
        assert str(url).startswith("file://"), f"a test tried the network: {url}"
        return real(url, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", local_only)
    monkeypatch.setenv(roots.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(roots.OFFLINE_ENV, raising=False)
    monkeypatch.delenv(roots.DATA_ENV, raising=False)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def served(tmp_path: Path, name: str, data: bytes) -> str:
    """Put `data` in a local 'server' folder and return its file:// URL."""
    path = tmp_path / "server" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path.as_uri()


def test_download_tries_mirrors_verifies_and_stores(tmp_path):
    data = b"0123456789" * 1000
    f = DataFile("set/a.bin", sha(data), ((tmp_path / "nowhere.bin").as_uri(), served(tmp_path, "a.bin", data)))
    root = tmp_path / "root"
    ensure("set", [f], root)
    assert (root / "set/a.bin").read_bytes() == data
    assert sorted(p.name for p in (root / "set").iterdir()) == ["a.bin"]  # no temporary file left
    ensure("set", [f], root)  # present: verified, not downloaded again


def test_download_with_bad_checksum_leaves_nothing(tmp_path):
    f = DataFile("set/a.bin", sha(b"good"), (served(tmp_path, "a.bin", b"evil"),))
    root = tmp_path / "root"
    with pytest.raises(MissingDataError, match="fails its checksum") as err:
        ensure("set", [f], root)
    assert sha(b"good") in str(err.value) and sha(b"evil") in str(err.value)
    assert not (root / "set").exists() or list((root / "set").iterdir()) == []


def test_gzipped_files_are_checked_on_their_content(tmp_path):
    content = b"idx content" * 100
    root = tmp_path / "root"
    (root / "m").mkdir(parents=True)
    # two gzip files that differ in their headers (name, mtime) but not in content
    with gzip.GzipFile(root / "m/x.gz", "wb", mtime=1) as g:
        g.write(content)
    f = DataFile("m/x.gz", sha(content), (), gzipped=True)
    assert verify(root, f) == root / "m/x.gz"
    url = served(tmp_path, "x.gz", gzip.compress(content, mtime=12345))
    ensure("m", [DataFile("m2/x.gz", sha(content), (url,), gzipped=True)], root)
    assert gzip.decompress((root / "m2/x.gz").read_bytes()) == content


def test_archive_members_are_extracted_and_checked(tmp_path):
    members = {"simple-examples/data/a.txt": b"a b c\n", "simple-examples/data/b.txt": b"d e\n"}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo("./" + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    url = served(tmp_path, "simple-examples.tgz", buf.getvalue())
    files = [DataFile(f"ptb/{Path(n).name}", sha(d), (url,), member=n) for n, d in members.items()]
    root = tmp_path / "root"
    ensure("ptb", files, root)
    for n, d in members.items():
        assert (root / "ptb" / Path(n).name).read_bytes() == d
    assert list((tmp_path / "cache").glob("download-*")) == []  # the archive is not kept


def test_offline_missing_files_error_says_what_where_and_how(tmp_path, monkeypatch):
    monkeypatch.setenv(roots.OFFLINE_ENV, "1")
    root = tmp_path / "root"
    with pytest.raises(MissingDataError) as err:
        ensure("ptb_char", sources.ptb_files(), root)
    msg = str(err.value)
    for expected in (str(root / "ptb_char/ptb.char.train.txt"), str(root / "ptb_char/ptb.char.test.txt"),
                     sources.PTB_URL, "KRUBENCH_OFFLINE", "krubench-data download ptb_char", "KRUBENCH_DATA"):
        assert expected in msg
    assert not root.exists()


def test_failed_download_is_a_missing_data_error(tmp_path):
    f = DataFile("x/a.bin", sha(b"a"), ((tmp_path / "absent.bin").as_uri(),))
    with pytest.raises(MissingDataError, match="downloading them failed.*absent.bin"):
        ensure("x", [f], tmp_path / "root")


def test_corrupt_file_names_file_expected_and_actual(tmp_path):
    root = tmp_path / "root"
    (root / "music").mkdir(parents=True)
    (root / "music/JSB_Chorales.mat").write_bytes(b"not the data")
    with pytest.raises(ChecksumError) as err:
        ensure("music/jsb", sources.music_files("jsb"), root)
    msg = str(err.value)
    assert str(root / "music/JSB_Chorales.mat") in msg and sources.MUSIC["jsb"][2] in msg and sha(b"not the data") in msg


def test_corrupt_gzip_is_a_checksum_error(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m/x.gz").write_bytes(b"this is not gzip")
    with pytest.raises(ChecksumError, match="not a valid gzip file"):
        verify(tmp_path, DataFile("m/x.gz", sha(b""), (), gzipped=True))


def test_data_dir_precedence(tmp_path, monkeypatch):
    assert roots.data_dir() == tmp_path / "cache" / "data"
    monkeypatch.setenv(roots.DATA_ENV, str(tmp_path / "env"))
    assert roots.data_dir() == (tmp_path / "env").resolve()
    assert roots.data_dir(str(tmp_path / "cfg")) == (tmp_path / "cfg").resolve()


def test_files_for_names():
    assert len(sources.files_for("all")) == 4 + 3 + 4
    assert sources.files_for("mnist") == sources.files_for("pixel_mnist")
    assert sources.files_for("jsb") == sources.files_for("music/jsb") == sources.music_files("jsb")
    with pytest.raises(ValueError, match="unknown data set 'cifar'.*ptb_char"):
        sources.files_for("cifar")


@needs_shared
def test_manifest_matches_the_shared_checksums():
    published = dict(line.split()[::-1] for line in (SHARED_DATA / "SHA256SUMS").read_text().splitlines())
    for f in sources.files_for("all"):
        if not f.gzipped:  # the shared .gz files are re-gzipped: their content is checked instead
            assert published[f"./{f.path}"] == f.sha256, f.path


@needs_shared
def test_cli_verify_real_data(capsys):
    assert manage.main(["verify", "all", "--data-dir", str(SHARED_DATA)]) == 0
    assert capsys.readouterr().out.count("ok  ") == 11
    assert manage.main(["download", "jsb", "--data-dir", str(SHARED_DATA)]) == 0  # present: nothing to fetch


def test_cli_verify_all_names_a_corrupt_file_beside_the_missing_ones(tmp_path, capsys):
    for f in sources.files_for("ptb_char"):
        (tmp_path / f.path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f.path).write_text("a b c\n")
    assert manage.main(["verify", "all", "--data-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "all: missing from" in err and f"{tmp_path / 'ptb_char/ptb.char.train.txt'} fails its checksum" in err


def test_cli_errors_are_one_clear_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(roots.OFFLINE_ENV, "1")
    assert manage.main(["download", "jsb", "--data-dir", str(tmp_path)]) == 1
    assert "krubench-data: data for jsb is missing" in capsys.readouterr().err
    assert manage.main(["verify", "nonsense", "--data-dir", str(tmp_path)]) == 1
    assert "unknown data set 'nonsense'" in capsys.readouterr().err
    assert manage.main(["where"]) == 0
    assert str(tmp_path / "cache") in capsys.readouterr().out


def test_cli_download_from_local_mirror(tmp_path, monkeypatch, capsys):
    data = b"\x00\x01" * 50
    monkeypatch.setattr(sources, "MUSIC_URL", served(tmp_path, "JSB_Chorales.mat", data).removesuffix("JSB_Chorales.mat"))
    monkeypatch.setitem(sources.MUSIC, "jsb", ("JSB_Chorales.mat", "JSB Chorales.pickle", sha(data)))
    assert manage.main(["download", "jsb", "--data-dir", str(tmp_path / "root")]) == 0
    assert (tmp_path / "root/music/JSB_Chorales.mat").read_bytes() == data
    assert fetch.sha256_of(tmp_path / "root/music/JSB_Chorales.mat") == sha(data)
