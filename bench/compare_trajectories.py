"""Compare two `ldae trajectory` outputs row by row (e.g. the same scale before and after a
refactor): status, top-1, top-5, FID, final loss, d, model, epochs of every row both ran.

    python bench/compare_trajectories.py runs/trajectory-debug-before runs/trajectory-debug-after

Exits 1 when a compared row differs (rows one side has not run yet are left out and counted).
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

KEYS = ("status", "top1", "top5", "fid", "final_loss", "d", "full_dim", "model", "epochs",
        "tokenizer", "probe_mode")


def rows(out: Path) -> dict[str, dict]:
    with open(Path(out) / "results.csv") as f:
        return {r["row"]: r for r in csv.DictReader(f)}


def main(a_dir: str, b_dir: str) -> int:
    a, b = rows(Path(a_dir)), rows(Path(b_dir))
    same = diff = left = 0
    for name, ra in a.items():
        rb = b.get(name)
        if rb is None or "not run" in (ra["status"], rb["status"]):
            left += 1
            continue
        changed = [k for k in KEYS if ra.get(k) != rb.get(k)]
        print(f"{name:28s} {ra['status']:8s} top-1 {ra['top1'] or '-':>18s} {rb['top1'] or '-':>18s}  "
              f"{'same' if not changed else 'DIFF ' + ', '.join(changed)}")
        same, diff = same + (not changed), diff + bool(changed)
    print(f"rows compared: {same + diff}, identical: {same}, different: {diff}; not run on one side: {left}")
    return 1 if diff else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2]))
