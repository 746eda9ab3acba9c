"""``fetch``: shared-folder links, and downloads from a local HTTP server (no network)."""

from __future__ import annotations

import hashlib
import http.server
import shutil
import threading
import zipfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from fixtures import official
from warmstart.cli import main
from warmstart.data import load_dataset
from warmstart.data.fetch import Source, fetch_dataset, is_fetched, link_shared

ML100K_FILES = ("u.data", "u.user", "u.item")


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A local HTTP server in a thread serving ``tmp_path / "www"``; yields (base url, folder)."""
    www = tmp_path / "www"
    www.mkdir()
    handler = partial(_QuietHandler, directory=str(www))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", www
    finally:
        httpd.shutdown()
        thread.join()
        httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _ml100k_zip(tmp_path: Path, www: Path) -> tuple[Path, dict[str, str]]:
    """A tiny ml-100k.zip in the official layout, and the SHA-256 of its files."""
    src = tmp_path / "src"
    official.write_movielens_100k(src)
    archive = www / "ml-100k.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name in ML100K_FILES:
            zf.write(src / name, f"ml-100k/{name}")
    return archive, {name: _sha(src / name) for name in ML100K_FILES}


def _source(
    url: str, sha: str | None = None, file_sha: dict[str, str] | None = None
) -> dict[str, Source]:
    src = Source(url, "ml-100k/", ML100K_FILES, ML100K_FILES, sha, file_sha256=file_sha or {})
    return {"movielens-100k": src}


def test_fetch_verified_archive_is_idempotent(tmp_path: Path, server: tuple[str, Path]) -> None:
    base, www = server
    archive, _ = _ml100k_zip(tmp_path, www)
    data = tmp_path / "data"
    sources = _source(f"{base}/ml-100k.zip", sha=_sha(archive))
    assert fetch_dataset("movielens-100k", data, sources=sources, progress=False)
    assert is_fetched("movielens-100k", data, sources)
    assert load_dataset("movielens-100k", data).n_users > 0
    before = {p: p.stat().st_mtime_ns for p in data.rglob("*")}
    assert not fetch_dataset("movielens-100k", data, sources=sources, progress=False)
    assert {p: p.stat().st_mtime_ns for p in data.rglob("*")} == before


def test_file_checksums_verify_when_archive_checksum_unknown(
    tmp_path: Path, server: tuple[str, Path]
) -> None:
    base, www = server
    _, file_sha = _ml100k_zip(tmp_path, www)
    data = tmp_path / "data"
    assert fetch_dataset(
        "movielens-100k",
        data,
        sources=_source(f"{base}/ml-100k.zip", file_sha=file_sha),
        progress=False,
    )


def _assert_nothing_left(data: Path) -> None:
    assert not data.exists() or list(data.iterdir()) == []


def test_unverified_archive_is_refused(tmp_path: Path, server: tuple[str, Path]) -> None:
    base, www = server
    _ml100k_zip(tmp_path, www)
    data = tmp_path / "data"
    log: list[str] = []
    with pytest.raises(ValueError, match="refusing unverified data"):
        fetch_dataset(
            "movielens-100k", data, sources=_source(f"{base}/ml-100k.zip"), progress=False, log=log
        )
    assert "sha256" in log[0]  # the digest to record is reported
    _assert_nothing_left(data)
    assert fetch_dataset(
        "movielens-100k",
        data,
        sources=_source(f"{base}/ml-100k.zip"),
        progress=False,
        allow_unverified=True,
    )


def test_checksum_mismatch(tmp_path: Path, server: tuple[str, Path]) -> None:
    base, www = server
    _ml100k_zip(tmp_path, www)
    data = tmp_path / "data"
    with pytest.raises(ValueError, match=r"has SHA-256 .* expected"):
        fetch_dataset(
            "movielens-100k",
            data,
            sources=_source(f"{base}/ml-100k.zip", sha="0" * 64),
            progress=False,
        )
    _assert_nothing_left(data)


def test_file_checksum_mismatch(tmp_path: Path, server: tuple[str, Path]) -> None:
    base, www = server
    _, file_sha = _ml100k_zip(tmp_path, www)
    file_sha["u.user"] = "f" * 64
    data = tmp_path / "data"
    with pytest.raises(ValueError, match=r"u\.user from the archive has the wrong SHA-256"):
        fetch_dataset(
            "movielens-100k",
            data,
            sources=_source(f"{base}/ml-100k.zip", file_sha=file_sha),
            progress=False,
        )
    _assert_nothing_left(data)


def test_corrupted_archive_fails_clearly(tmp_path: Path, server: tuple[str, Path]) -> None:
    base, www = server
    archive, _ = _ml100k_zip(tmp_path, www)
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    data = tmp_path / "data"
    with pytest.raises(ValueError, match="corrupted or truncated"):
        fetch_dataset(
            "movielens-100k",
            data,
            sources=_source(f"{base}/ml-100k.zip"),
            progress=False,
            allow_unverified=True,
        )
    _assert_nothing_left(data)


def test_archive_missing_member(tmp_path: Path, server: tuple[str, Path]) -> None:
    base, www = server
    with zipfile.ZipFile(www / "ml-100k.zip", "w") as zf:
        zf.writestr("ml-100k/u.data", "1\t1\t5\t0\n")
    data = tmp_path / "data"
    with pytest.raises(ValueError, match=r"lacks 'ml-100k/u\.user'"):
        fetch_dataset(
            "movielens-100k",
            data,
            sources=_source(f"{base}/ml-100k.zip"),
            progress=False,
            allow_unverified=True,
        )
    _assert_nothing_left(data)


def test_no_official_url(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"lastfm-coldnas: .*no stable official download"):
        fetch_dataset("lastfm-coldnas", tmp_path)


def test_link_shared_is_idempotent(tiny_data_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    linked = link_shared(tiny_data_dir, data)
    assert set(linked) == {
        "movielens-1m",
        "movielens-100k",
        "lastfm-2k",
        "lastfm-coldnas",
        "scifact",
    }
    assert (data / "scifact" / "qrels" / "test.tsv").is_symlink()
    assert all(count > 0 for count in linked.values())
    assert set(link_shared(tiny_data_dir, data).values()) == {0}
    assert load_dataset("lastfm-2k", data).n_users > 0


def test_cli_fetch_from_shared_then_summary(
    tiny_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    assert main(["data", "fetch", "--data-dir", str(data), "--shared", str(tiny_data_dir)]) == 0
    assert (
        main(["data", "summary", "--data-dir", str(data), "--cache-dir", str(tmp_path / "c")]) == 0
    )
    out = capsys.readouterr().out
    assert all(name in out for name in ("movielens-1m:", "lastfm-coldnas:", "scifact:"))


def test_cli_summary_reports_missing_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(
            [
                "data",
                "summary",
                "--data-dir",
                str(tmp_path),
                "--dataset",
                "movielens-1m",
                "--no-cache",
            ]
        )
        == 2
    )
    assert "warmstart data fetch" in capsys.readouterr().err


def test_cli_fetch_already_present(
    tiny_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_data_dir / "movielens-100k", data / "movielens-100k")
    assert main(["data", "fetch", "--data-dir", str(data), "--dataset", "movielens-100k"]) == 0
    assert "present" in capsys.readouterr().out
