"""One top-k table from several ``warmstart coldstart topk`` runs (e.g. seeds run apart, or a
run of every method on one seed beside a run of fewer methods on other seeds).

Only the methods present in every run are kept (in the first run's order); the table, the
paired bootstrap and the rating table are those ``topk`` prints for one multi-seed run
(``warmstart.cli.coldstart_topk.topk_tables``).

Usage: python experiments/merge_topk.py OUT_A/topk.json OUT_B/topk.json ...
"""

import json
import sys
from pathlib import Path

import numpy as np

from warmstart.cli.coldstart_topk import topk_tables

reports = [json.loads(Path(path).read_text()) for path in sys.argv[1:]]
if not reports:
    sys.exit(__doc__)
if len({(r["dataset"], r["protocol"], tuple(r["per_user_columns"])) for r in reports}) != 1:
    sys.exit("the runs differ in dataset, protocol or columns")
names = [n for n in reports[0]["per_user"] if all(n in r["per_user"] for r in reports)]
rating_names = [n for n in reports[0]["per_seed"][0]["rating"] if n in names]
runs = []
for r in reports:
    for i, seed_run in enumerate(r["per_seed"]):
        runs.append(
            {
                "topk": {n: seed_run["topk"][n] for n in names},
                "rating": {n: seed_run["rating"][n] for n in rating_names},
                "per_user": {n: np.array(r["per_user"][n][i]) for n in names},
                "users": r["test_users"][i],
            }
        )
table, rating, paired_text, _ = topk_tables(runs, tuple(reports[0]["per_user_columns"]))
seeds = [s for r in reports for s in r["seeds"]]
print(f"{reports[0]['dataset']} ({reports[0]['protocol']}), full-catalogue top-k, seeds {seeds}")
print(table)
print(paired_text)
print("\nRating metrics of the same models (compare protocol):")
print(rating)
