"""One table from several ``warmstart coldstart compare`` runs (e.g. one process per seed).

Each ``compare.json`` holds its seeds' metrics and per-user test metrics; this prints the same
mean ± std table and the paired bootstrap of ColdNAS against every method that ``compare``
prints for a single multi-seed run, computed by the same library functions.

Usage: python experiments/merge_compare.py OUT_A/compare.json OUT_B/compare.json ...
"""

import json
import sys
from pathlib import Path

import numpy as np

from warmstart.coldstart.evaluate import aggregate_seeds, format_table, paired_table

reports = [json.loads(Path(path).read_text()) for path in sys.argv[1:]]
if not reports:
    sys.exit(__doc__)
if len({(r["dataset"], r["protocol"]) for r in reports}) != 1:
    sys.exit("the runs differ in dataset or protocol")
per_seed = [row for r in reports for row in r["per_seed"]]
seeds = [s for r in reports for s in r["seeds"]]
test_users = [u for r in reports for u in r["test_users"]]
names = list(per_seed[0])
rows = {
    n: aggregate_seeds([{k: v for k, v in run[n].items() if k != "fit_s"} for run in per_seed])
    for n in names
}
print(f"{reports[0]['dataset']} ({reports[0]['protocol']}), test users, seeds {seeds}")
print(format_table(rows))
for r in reports:
    for s in r["structures"]:
        print(f"ColdNAS structure seed {s['seed']}: K={s['k']} {s['structure']}")
per_user = {n: [np.array(a) for r in reports for a in r["per_user"][n]] for n in names}
shared = all(u == test_users[0] for u in test_users)
text, _ = paired_table(per_user, "ColdNAS", shared_users=shared)
print(f"\nPaired differences (users resampled {'jointly' if shared else 'within each seed'}):")
print(text)
