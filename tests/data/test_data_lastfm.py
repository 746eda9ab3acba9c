"""Last.fm loaders: the official ColdNAS/TaNP episodes and HetRec 2011, with bad inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from warmstart.data import coldstart_split, load_dataset
from warmstart.data.episodes import load_official_lastfm


def test_official_tasks(tiny_data_dir: Path, tiny_counts: dict) -> None:
    split = load_official_lastfm(tiny_data_dir)
    expected = tiny_counts["lastfm-coldnas"]
    assert (len(split.train), len(split.valid), len(split.test)) == (
        expected["train"],
        expected["valid"],
        expected["test"],
    )
    ds = split.dataset
    assert ds.rating_range == (0.0, 1.0) and ds.n_users == expected["users"]
    inter = ds.interactions
    known = set(zip(inter["user"], inter["item"], inter["label"].astype(float), strict=True))
    for name, tasks, users in (
        ("train", split.train, split.train_users),
        ("test", split.test, split.test_users),
    ):
        for t in tasks:
            assert t.user in users, name
            assert len(t.support_items) == 20
            for item, label in zip(t.support_items, t.support_labels, strict=True):
                assert (t.user, int(item), float(label)) in known
    assert (
        coldstart_split("lastfm-coldnas", tiny_data_dir, seed=5).meta["protocol"]
        == "official-lastfm"
    )


def _copy(tiny_data_dir: Path, tmp_path: Path) -> Path:
    root = tmp_path / "lastfm-coldnas"
    shutil.copytree(tiny_data_dir / "lastfm-coldnas", root)
    return root


def _edit_task(root: Path, line: int, edit) -> None:
    lines = (root / "tasks.jsonl").read_text().splitlines()
    obj = json.loads(lines[line - 1])
    edit(obj)
    lines[line - 1] = json.dumps(obj)
    (root / "tasks.jsonl").write_text("\n".join(lines) + "\n")


def _set_item(obj: dict) -> None:
    obj["query"][1][0] = 99999


def _flip_label(obj: dict) -> None:
    obj["support"][0][1] = 1 - obj["support"][0][1]


def _wrong_split(obj: dict) -> None:
    obj["split"] = "test" if obj["split"] != "test" else "train"


@pytest.mark.parametrize(
    ("edit", "pattern"),
    [
        (
            _set_item,
            r"tasks\.jsonl: line 2: field 'query'\[1\]: item 99999 .* not in interactions\.tsv",
        ),
        (_flip_label, r"tasks\.jsonl: line 2: field 'support'\[0\]: label .* differs"),
        (_wrong_split, r"tasks\.jsonl: line 2: field 'user': user \d+ is not a"),
        (lambda o: o.pop("user"), r"tasks\.jsonl: line 2: missing field 'user'"),
        (lambda o: o.update(query=[]), r"tasks\.jsonl: line 2: field 'query' is empty"),
        (lambda o: o.update(user="7"), r"tasks\.jsonl: line 2: field 'user' must be int"),
    ],
)
def test_bad_tasks(tiny_data_dir: Path, tmp_path: Path, edit, pattern: str) -> None:
    root = _copy(tiny_data_dir, tmp_path)
    _edit_task(root, 2, edit)
    with pytest.raises(ValueError, match=pattern):
        load_official_lastfm(tmp_path)


def test_bad_interaction_label(tiny_data_dir: Path, tmp_path: Path) -> None:
    root = _copy(tiny_data_dir, tmp_path)
    lines = (root / "interactions.tsv").read_text().splitlines()
    lines[6] = lines[6].rsplit("\t", 1)[0] + "\t2"
    (root / "interactions.tsv").write_text("\n".join(lines) + "\n")
    with pytest.raises(
        ValueError, match=r"interactions\.tsv: line 7: field 'label' must be 0 or 1"
    ):
        load_official_lastfm(tmp_path)


def test_overlapping_user_split(tiny_data_dir: Path, tmp_path: Path) -> None:
    root = _copy(tiny_data_dir, tmp_path)
    split = json.loads((root / "user_split.json").read_text())
    split["test"].append(split["train"][0])
    (root / "user_split.json").write_text(json.dumps(split))
    with pytest.raises(
        ValueError, match=r"user_split\.json: user \d+ is in both 'train' and 'test'"
    ):
        load_official_lastfm(tmp_path)


def test_missing_tasks_file(tiny_data_dir: Path, tmp_path: Path) -> None:
    root = _copy(tiny_data_dir, tmp_path)
    (root / "tasks.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match=r"tasks\.jsonl"):
        load_official_lastfm(tmp_path)


def test_hetrec(tiny_data_dir: Path, tiny_counts: dict) -> None:
    ds = load_dataset("lastfm-2k", tiny_data_dir)
    expected = tiny_counts["lastfm-2k"]
    assert (len(ds.interactions), ds.n_users, ds.n_items) == (
        expected["ratings"],
        expected["users"],
        expected["items"],
    )
    weights = np.loadtxt(tiny_data_dir / "lastfm-2k" / "user_artists.dat", skiprows=1)[:, 2]
    assert np.allclose(ds.interactions["label"], np.log10(1 + weights), atol=1e-5)
    assert ds.rating_range[1] == pytest.approx(ds.interactions["label"].max())


def test_hetrec_negative_weight(tiny_data_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "lastfm-2k"
    shutil.copytree(tiny_data_dir / "lastfm-2k", root)
    lines = (root / "user_artists.dat").read_text().splitlines()
    lines[3] = lines[3].rsplit("\t", 1)[0] + "\t-5"
    (root / "user_artists.dat").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"user_artists\.dat: line 4: field 'weight' must be >= 0"):
        load_dataset("lastfm-2k", tmp_path)


@pytest.mark.parametrize("protocol", ["melu", "tanp"])
def test_coldstart_split_protocols(tiny_data_dir: Path, protocol: str) -> None:
    if protocol == "tanp":  # tiny MovieLens users have < 30 ratings: no TaNP task
        with pytest.raises(ValueError, match="min_interactions"):
            coldstart_split("movielens-1m", tiny_data_dir, protocol=protocol)
        return
    split = coldstart_split("movielens-1m", tiny_data_dir, seed=1, protocol=protocol)
    assert split.test and all(len(t.query_items) == 10 for t in split.test)
    with pytest.raises(ValueError, match="protocol must be one of"):
        coldstart_split("movielens-1m", tiny_data_dir, protocol="maml")
