"""One table from several ``warmstart coldstart compare`` runs (e.g. one process per seed).

Each ``compare.json`` holds its seeds' metrics and per-user test metrics; this prints the same
mean ± std table and paired bootstrap of ColdNAS against every method that ``compare`` prints for
a single multi-seed run (``warmstart.coldstart.compare.compare_tables``).

Usage: python experiments/merge_compare.py OUT_A/compare.json OUT_B/compare.json ...
"""

import json
import sys
from pathlib import Path

import numpy as np

from warmstart.coldstart.compare import compare_tables

reports = [json.loads(Path(path).read_text()) for path in sys.argv[1:]]
if not reports:
    sys.exit(__doc__)
if len({(r["dataset"], r["protocol"]) for r in reports}) != 1:
    sys.exit("the runs differ in dataset or protocol")
per_seed = [row for r in reports for row in r["per_seed"]]
names = list(per_seed[0])
per_user = {n: [np.array(a) for r in reports for a in r["per_user"][n]] for n in names}
test_users = [u for r in reports for u in r["test_users"]]
table, paired_text, _ = compare_tables(per_seed, per_user, test_users)
seeds = [s for r in reports for s in r["seeds"]]
print(f"{reports[0]['dataset']} ({reports[0]['protocol']}), test users, seeds {seeds}")
print(table)
for r in reports:
    for s in r["structures"]:
        print(f"ColdNAS structure seed {s['seed']}: K={s['k']} {s['structure']}")
print(paired_text)
