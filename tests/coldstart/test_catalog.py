"""Item display metadata read from the datasets' own files (tiny files in the official layouts)."""

from __future__ import annotations

from pathlib import Path

from warmstart.coldstart.catalog import ItemInfo
from warmstart.data.display import item_display, split_title


def test_split_title() -> None:
    assert split_title("Toy Story (1995)") == ("Toy Story", 1995)
    assert split_title("City of Lost Children, The (Cité des enfants perdus) (1995)") == (
        "City of Lost Children, The (Cité des enfants perdus)",
        1995,
    )
    assert split_title("Untitled") == ("Untitled", None)


def test_display_of_each_layout(tmp_path: Path) -> None:
    ml1m = tmp_path / "movielens-1m"
    ml1m.mkdir()
    (ml1m / "movies.dat").write_bytes(
        "1::Toy Story (1995)::Animation|Children's|Comedy\n2::Café (2001)::Drama\n".encode(
            "latin-1"
        )
    )
    ml100k = tmp_path / "movielens-100k"
    ml100k.mkdir()
    flags = ["0"] * 19
    flags[1] = flags[16] = "1"  # Action, Thriller
    (ml100k / "u.item").write_text(
        "2|GoldenEye (1995)|01-Jan-1995||http://x|" + "|".join(flags) + "\n"
    )
    hetrec = tmp_path / "lastfm-2k"
    hetrec.mkdir()
    (hetrec / "artists.dat").write_text(
        "id\tname\turl\tpictureURL\n51\tDuran Duran\thttp://a\thttp://b\n"
    )

    columns, by_id = item_display("movielens-1m", tmp_path)  # type: ignore[misc]
    assert columns == ("title", "year", "genres")
    assert by_id[2] == {"title": "Café", "year": 2001, "genres": ["Drama"]}
    _, by_id = item_display("movielens-100k", tmp_path)  # type: ignore[misc]
    assert by_id[2] == {"title": "GoldenEye", "year": 1995, "genres": ["Action", "Thriller"]}
    columns, by_id = item_display("lastfm-2k", tmp_path)  # type: ignore[misc]
    assert columns == ("title",) and by_id[51] == {"title": "Duran Duran"}
    assert item_display("lastfm-coldnas", tmp_path) is None  # renumbered items, no names
    assert item_display("movielens-1m", tmp_path / "absent") is None

    info = ItemInfo.aligned([51, 7], by_id, columns)
    assert info.record(0) == {"title": "Duran Duran"} and info.record(1) == {"title": ""}
    assert ItemInfo.from_json(info.to_json()) == info
