"""Put the datasets into a data directory: link them from a shared folder, or download them.

Downloads come from the official archives below, are checked against SHA-256 checksums, and are
extracted into a staging folder that is moved into place only when everything checked out, so a
failed or interrupted fetch never leaves partial files. A dataset whose files are all present is
skipped, so running fetch twice does nothing the second time.

Checksums. The archive checksums could not be computed offline when this table was written, so
``ARCHIVE_SHA256`` entries are None: fill each one in from the ``sha256`` that ``fetch`` prints on
the first download you have verified by other means. Until then an archive counts as verified
when every file kept from it has a known checksum in ``FILE_SHA256`` (taken from the project's
reference copies of these verbatim original files) and matches it; an archive with unverifiable
files is refused unless ``allow_unverified`` is set. A file whose known checksum does not match is
always an error.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm


@dataclass(frozen=True)
class Source:
    """Where one dataset comes from and which files it keeps.

    Attributes:
        url: official archive URL; None when the dataset has no stable official download.
        prefix: folder inside the archive that holds the files (``"ml-1m/"``), or ``""``.
        files: files kept, relative to ``prefix``; they become ``<data_dir>/<name>/<file>``.
        required: files that must be present for the dataset to count as fetched.
        sha256: expected archive checksum; None = not known yet (see module docstring).
        note: shown when there is no URL.
    """

    url: str | None
    prefix: str
    files: tuple[str, ...]
    required: tuple[str, ...]
    sha256: str | None = None
    note: str = ""
    file_sha256: Mapping[str, str] = field(default_factory=dict)


# SHA-256 of verbatim original files, from the reference copies' SHA256SUMS.
FILE_SHA256: dict[str, dict[str, str]] = {
    "movielens-1m": {
        "README": "2d5ddce86ccbd247207456165827b4b9ddf27282bca93807d4c763e28414f133",
        "users.dat": "1dc3a95300cb19f7c10e027daf29b8cdf1d908dab65b5edfb45950aa389a10a3",
        "movies.dat": "0140fc2356357c1a851d0f52e893a1e4d3696df632c4141cea8d5bc3d621f0b9",
    },
    "movielens-100k": {
        "README": "4883b8cf340ed0059971b33f56ad3adc88a40792108ebca3d24aafc4c82e8b52",
        "u.data": "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490",
        "u.genre": "9757e0d3e6b298159a80dd48eaf938114690e911e39af97a76949ef1663610bb",
        "u.info": "5b0a40b2e47a729ee6203063f6dcf8790c2e63f5a18663e6ee318a72c5f3c27b",
        "u.item": "553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701",
        "u.occupation": "cd5fbec9afe345d993a62fc7817df1a4a9079c4feb267b3118763b8fd942137d",
        "u.user": "f120e114da2e8cf314fd28f99417c94ae9ddf1cb6db8ce0e4b5995d40e90e62c",
    },
    "lastfm-2k": {
        "artists.dat": "c173881362c6b28551368fecb3c0be5a6a30a6cd859e1f5775413dfe46d48648",
        "readme.txt": "6fe5d1e6f67b025fc50cd70883dd1a1ff16c5ff37b5b7abfb33644b83468b209",
        "tags.dat": "e95175f259be4c0c47644ae23d66131cd6d5767142a1405000e79f5584691d70",
        "user_artists.dat": "001400dc3c7d2667fca6e4ea6dc6acc31a9dd28ad5cd0f74cea988c019934d3b",
        "user_friends.dat": "9a3a8f7fa5f5ec832335e5b58ed69a4cf27c6f6f6afcde62134810eea46445a7",
    },
    "scifact": {
        "corpus.jsonl": "d289bf5d711d1d6b0c9fba52b90e45a76e0b0e9f173fd3ff49cd098588de2581",
        "queries.jsonl": "4816ec1e0b1e4a3beed2b701eee2ece822626128c17564f315279af1ad25cd23",
        "qrels/train.tsv": "4da2bae808e23316834044eb14db1674f9496190e49a57693f6f13b23d428272",
        "qrels/test.tsv": "18a49075af697c9bcdb3cf7b3618a12b32be0697a7e15f10a07de09d914d59b2",
    },
}

# ---- URL table (official sources) ---------------------------------------------------------
SOURCES: dict[str, Source] = {
    "movielens-1m": Source(
        url="https://files.grouplens.org/datasets/movielens/ml-1m.zip",
        prefix="ml-1m/",
        files=("ratings.dat", "users.dat", "movies.dat", "README"),
        required=("ratings.dat", "users.dat", "movies.dat"),
        file_sha256=FILE_SHA256["movielens-1m"],
    ),
    "movielens-100k": Source(
        url="https://files.grouplens.org/datasets/movielens/ml-100k.zip",
        prefix="ml-100k/",
        files=("u.data", "u.user", "u.item", "u.genre", "u.occupation", "u.info", "README"),
        required=("u.data", "u.user", "u.item"),
        file_sha256=FILE_SHA256["movielens-100k"],
    ),
    "lastfm-2k": Source(
        url="https://files.grouplens.org/datasets/hetrec2011/hetrec2011-lastfm-2k.zip",
        prefix="",
        files=("user_artists.dat", "artists.dat", "user_friends.dat", "tags.dat", "readme.txt"),
        required=("user_artists.dat",),
        file_sha256=FILE_SHA256["lastfm-2k"],
    ),
    "scifact": Source(
        url="https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/scifact.zip",
        prefix="scifact/",
        files=("corpus.jsonl", "queries.jsonl", "qrels/train.tsv", "qrels/test.tsv"),
        required=("corpus.jsonl", "queries.jsonl", "qrels/test.tsv"),
        file_sha256=FILE_SHA256["scifact"],
    ),
    "lastfm-coldnas": Source(
        url=None,
        prefix="",
        files=("interactions.tsv", "user_split.json", "tasks.jsonl"),
        required=("interactions.tsv", "user_split.json", "tasks.jsonl"),
        note=(
            "the TaNP/ColdNAS Last.fm benchmark has no stable official download (it is only "
            "distributed with the papers' code, in their own layout); copy a prepared "
            "lastfm-coldnas/ folder with --shared, or put interactions.tsv, user_split.json and "
            "tasks.jsonl into it yourself (format: docs/data.md)"
        ),
    ),
}
# --------------------------------------------------------------------------------------------


def is_fetched(name: str, data_dir: Path, sources: Mapping[str, Source] = SOURCES) -> bool:
    """True when every required file of ``name`` is in ``<data_dir>/<name>/``."""
    root = data_dir / name
    return all((root / f).is_file() for f in sources[name].required)


def link_shared(shared: Path, data_dir: Path) -> dict[str, int]:
    """Symlink every file of every dataset folder of ``shared`` into ``data_dir`` (idempotent).

    Returns:
        Dataset folder → number of links made now (files already present are left alone).
    """
    made: dict[str, int] = {}
    for folder in sorted(p for p in shared.iterdir() if p.is_dir()):
        made[folder.name] = 0
        for src in sorted(p for p in folder.rglob("*") if p.is_file()):
            dst = data_dir / src.relative_to(shared)
            if dst.exists() or dst.is_symlink():
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to(src.resolve())
            made[folder.name] += 1
    return made


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, dest: Path, progress: bool = True, timeout: float = 60.0) -> None:
    """Stream ``url`` to ``dest`` with a progress bar."""
    with urllib.request.urlopen(url, timeout=timeout) as response, dest.open("wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        bar = tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress)
        with bar:
            for chunk in iter(lambda: response.read(1 << 16), b""):
                out.write(chunk)
                bar.update(len(chunk))


def _extract(name: str, archive: Path, source: Source, staging: Path) -> None:
    """Extract the kept files of ``archive`` into ``staging``; errors name the archive."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = set(zf.namelist())
            for rel in source.files:
                member = source.prefix + rel
                if member not in members:
                    if rel in source.required:
                        raise ValueError(f"{name}: archive {archive.name} lacks {member!r}")
                    continue
                target = staging / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(member) as src, target.open("wb") as dst:
                    shutil.copyfileobj(src, dst)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as err:
        raise ValueError(
            f"{name}: archive {archive.name} is corrupted or truncated ({err})"
        ) from None


def _verify_files(name: str, source: Source, staging: Path, allow_unverified: bool) -> None:
    unverified = []
    for rel in source.files:
        path = staging / rel
        if not path.is_file():
            continue
        expected = source.file_sha256.get(rel)
        if expected is None:
            unverified.append(rel)
        elif sha256_of(path) != expected:
            raise ValueError(
                f"{name}: {rel} from the archive has the wrong SHA-256 (corrupted download?)"
            )
    if unverified and not allow_unverified:
        raise ValueError(
            f"{name}: no checksum is known for the archive or for {', '.join(unverified)}; "
            "refusing unverified data (pass --allow-unverified to accept it, and record the "
            "archive's sha256 printed above in warmstart/data/fetch.py)"
        )


def fetch_dataset(
    name: str,
    data_dir: Path,
    *,
    sources: Mapping[str, Source] = SOURCES,
    allow_unverified: bool = False,
    progress: bool = True,
    log: list[str] | None = None,
) -> bool:
    """Download, verify and extract one dataset into ``<data_dir>/<name>/``.

    Returns:
        False when the dataset was already there (nothing done), True when it was fetched.

    Raises:
        ValueError: unknown name, no official URL, checksum mismatch, corrupted archive,
            unverifiable archive without ``allow_unverified``. Nothing is left behind on error.
    """
    if name not in sources:
        raise ValueError(f"dataset must be one of {sorted(sources)}, got {name!r}")
    source = sources[name]
    if is_fetched(name, data_dir, sources):
        return False
    if source.url is None:
        raise ValueError(f"{name}: {source.note or 'no download URL'}")
    data_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".fetch-{name}-", dir=data_dir))
    try:
        archive = work / Path(source.url).name
        download(source.url, archive, progress)
        digest = sha256_of(archive)
        (log if log is not None else []).append(f"{name}: {archive.name} sha256 {digest}")
        if source.sha256 is not None and digest != source.sha256:
            raise ValueError(
                f"{name}: {archive.name} has SHA-256 {digest}, expected {source.sha256}"
            )
        staging = work / "staging"
        staging.mkdir()
        _extract(name, archive, source, staging)
        if source.sha256 is None:
            _verify_files(name, source, staging, allow_unverified)
        _move_into_place(staging, data_dir / name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return True


def _move_into_place(staging: Path, root: Path) -> None:
    """Move staged files to ``root`` (files already there are kept)."""
    if not root.exists():
        os.replace(staging, root)
        return
    for src in sorted(p for p in staging.rglob("*") if p.is_file()):
        dst = root / src.relative_to(staging)
        if not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
