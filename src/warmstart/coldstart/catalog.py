"""What a dense row stands for: raw dataset ids and item display metadata.

A trained model indexes users and items by dense rows ``0..N-1``; a dataset names them by its own
ids (MovieLens ``MovieID`` 1193, an artist id, a string id from one's own CSV). ``IdMap`` maps
both ways and names unknown ids in its errors; ``ItemInfo`` holds what a person would read
(title, year, genres) for each item row. Both are stored as JSON in the model directory (see
``warmstart.coldstart.artifacts``), so a server needs neither the dataset nor pickle.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

ID_KINDS = ("int", "str")
_SHOWN = 5  # unknown ids quoted in an error message


def _raw_scalar(value: Any, what: str) -> int | str:
    """One raw id as a plain Python ``int`` or ``str`` (numpy scalars unwrapped)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(
            f"{what}: raw ids must be int or str, got {value!r} ({type(value).__name__})"
        )
    return value


class IdMap:
    """Raw ids <-> dense rows for one entity type; row ``i`` is ``ids[i]``.

    Args:
        ids: the raw ids in row order, unique, all ``int`` or all ``str`` (numpy scalars are
            accepted and stored as Python values).
        entity: ``"item"`` or ``"user"``, named in error messages.

    Immutable and safe to share between threads.
    """

    def __init__(self, ids: Iterable[Any], entity: str = "item") -> None:
        values = tuple(_raw_scalar(v, f"IdMap({entity})") for v in ids)
        kinds = {type(v).__name__ for v in values}
        if len(kinds) > 1:
            raise ValueError(
                f"IdMap({entity}): ids mix types {sorted(kinds)}; use one of {ID_KINDS}"
            )
        index = {v: row for row, v in enumerate(values)}
        if len(index) != len(values):
            dup = next(v for v, n in Counter(values).items() if n > 1)
            raise ValueError(f"IdMap({entity}): duplicate id {dup!r}")
        self._ids = values
        self._index = index
        self.entity = entity
        self.kind = kinds.pop() if kinds else "int"

    def __len__(self) -> int:
        return len(self._ids)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IdMap) and self._ids == other._ids

    def __hash__(self) -> int:
        return hash(self._ids)

    def __repr__(self) -> str:
        return f"IdMap({self.entity}, {len(self)} {self.kind} ids)"

    @property
    def ids(self) -> tuple[int | str, ...]:
        """The raw ids in row order."""
        return self._ids

    def __contains__(self, raw: object) -> bool:
        try:
            return _raw_scalar(raw, "") in self._index
        except ValueError:
            return False

    @property
    def row_of(self) -> Callable[[Any, int], int]:
        """``row_of(raw, default)``: the row of a plain ``int`` or ``str`` id, else ``default``
        (the index's own ``dict.get``: for hot paths that check the id's type themselves; a
        ``bool`` or ``float`` must not be passed, ``True == 1`` would match)."""
        return self._index.get

    def to_rows(self, raw_ids: Iterable[Any], arg: str = "ids") -> np.ndarray:
        """``(n,)`` int64 dense rows of ``raw_ids``.

        Raises:
            ValueError: naming ``arg`` and the first unknown ids (a ``str`` id is unknown to an
                ``int`` map and vice versa: ``"1193"`` is not ``1193``).
        """
        if isinstance(raw_ids, (str, bytes)):
            raise ValueError(
                f"{arg}: expected a list of {self.entity} ids, got the string {raw_ids!r}"
            )
        # plain ints and strs (what a parsed request holds) as they are, anything else checked
        values = [v if type(v) is int or type(v) is str else _raw_scalar(v, arg) for v in raw_ids]
        get = self._index.get
        rows = [get(v, -1) for v in values]
        if -1 in rows:
            unknown = [v for v, r in zip(values, rows, strict=True) if r < 0]
            shown = ", ".join(repr(v) for v in unknown[:_SHOWN])
            more = f" and {len(unknown) - _SHOWN} more" if len(unknown) > _SHOWN else ""
            raise ValueError(
                f"{arg}: unknown {self.entity} id(s) {shown}{more}; this model knows "
                f"{len(self)} {self.kind} {self.entity} ids (e.g. {self._example()})"
            )
        return np.asarray(rows, dtype=np.int64)

    def to_raw(self, rows: Iterable[Any], arg: str = "rows") -> list[int | str]:
        """The raw ids of dense ``rows`` (each an integer in ``[0, len(self))``)."""
        out = []
        for i, r in enumerate(rows):
            if isinstance(r, np.generic):
                r = r.item()
            if isinstance(r, bool) or not isinstance(r, int) or not 0 <= r < len(self):
                raise ValueError(
                    f"{arg}[{i}] = {r!r}: {self.entity} rows must be integers in [0, {len(self)})"
                )
            out.append(self._ids[r])
        return out

    def _example(self) -> str:
        return ", ".join(repr(v) for v in self._ids[:3]) + (", ..." if len(self) > 3 else "")

    def to_json(self) -> dict[str, Any]:
        return {"entity": self.entity, "kind": self.kind, "ids": list(self._ids)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> IdMap:
        ids = data["ids"]
        if data.get("kind", "int") not in ID_KINDS:
            raise ValueError(f"IdMap: kind={data.get('kind')!r}, allowed {ID_KINDS}")
        return cls(ids, str(data.get("entity", "item")))


DISPLAY_COLUMNS = ("title", "year", "genres")
"""Columns a dataset may have for display (any subset, in this order)."""


@dataclass(frozen=True)
class ItemInfo:
    """Display metadata of every item row (what a person reads, never a model input).

    Attributes:
        columns: names, a subset of ``DISPLAY_COLUMNS`` (``title``: str, ``year``: int or None,
            ``genres``: list of str).
        rows: one tuple per item row, values in ``columns`` order.
    """

    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]

    def __post_init__(self) -> None:
        bad = [c for c in self.columns if c not in DISPLAY_COLUMNS]
        if bad:
            raise ValueError(f"ItemInfo: columns {bad} not among {DISPLAY_COLUMNS}")
        short = next((i for i, r in enumerate(self.rows) if len(r) != len(self.columns)), None)
        if short is not None:
            raise ValueError(
                f"ItemInfo: row {short} has {len(self.rows[short])} values, expected {len(self.columns)}"
            )

    def __len__(self) -> int:
        return len(self.rows)

    def record(self, row: int) -> dict[str, Any]:
        """``{column: value}`` of item ``row``."""
        return dict(zip(self.columns, self.rows[row], strict=True))

    @classmethod
    def aligned(
        cls, ids: Sequence[Any], by_id: Mapping[Any, Mapping[str, Any]], columns: Sequence[str]
    ) -> ItemInfo:
        """Rows for ``ids`` (row order) from per-raw-id records; a missing id gets empty values."""
        empty: dict[str, Any] = {"title": "", "year": None, "genres": []}
        rows = []
        for raw in ids:
            record = by_id.get(_raw_scalar(raw, "ItemInfo"), {})
            rows.append(tuple(record.get(c, empty[c]) for c in columns))
        return cls(tuple(columns), tuple(rows))

    def to_json(self) -> dict[str, Any]:
        return {"columns": list(self.columns), "rows": [list(r) for r in self.rows]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ItemInfo:
        return cls(tuple(data["columns"]), tuple(tuple(r) for r in data["rows"]))


def support_rows(
    i: int, rows: Any, labels: Any, n_items: int, what: str = "fit_users"
) -> tuple[np.ndarray, np.ndarray]:
    """Support set ``i`` of a ``*_many`` call as ``(S,)`` int64 rows and float32 labels,
    checked before any compute (equal lengths, rows in ``[0, n_items)``, finite labels).

    Raises:
        ValueError: naming ``what``, the support's index and the bad value.
    """
    items = np.asarray(rows, dtype=np.int64).reshape(-1)
    values = np.asarray(labels, dtype=np.float32).reshape(-1)
    if items.shape != values.shape:
        raise ValueError(f"{what}: support {i} has {items.size} items but {values.size} labels")
    if items.size and (items.min() < 0 or items.max() >= n_items):
        raise ValueError(
            f"{what}: support {i} item rows must lie in [0, {n_items}), "
            f"got [{items.min()}, {items.max()}]"
        )
    if not np.isfinite(values).all():
        raise ValueError(f"{what}: support {i} has non-finite labels")
    return items, values
