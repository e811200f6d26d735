"""Summarise the order control for ``predator_prey_drift-v4`` quick (QMIX).

On v4 (task order A0, B0, A-0.1, B-0.1, four times) the kept network (``none``) re-learns prey
kind A on every later visit and never learns kind B. ``predator_prey_drift_bfirst.yaml`` is v4 with
the kinds' places swapped (B0, A0, B-0.1, A-0.1). Per run: the mean task AUC over the visits of
the kind learned first (its visits after the very first task) and over every visit of the kind
learned second, and how many of the second kind's visits reach task AUC >= 0.5; per row the mean
over seeds with a 95% bootstrap interval (``ctmarl.stats.mean_ci``). The scratch row
(``reset_all`` on v4) gives what a fresh network reaches on each kind; a fresh network does not
depend on the order, so it is not re-run here. Run from the repository root::

    python validity/ablations/predator_prey_drift-v4_order/summarise.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from ctmarl.record import load_record
from ctmarl.stats import mean_ci

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
BOARD = ROOT / "leaderboard" / "records"

ROWS = (
    ("v4 `none` (A first)", "A", BOARD, "predator_prey_drift-v4_quick_qmix_none_seed*.yaml"),
    ("B-first `none`", "B", HERE / "records", "predator_prey_drift_bfirst-v1_quick_qmix_none_seed*.yaml"),
    ("v4 `reset_all` (scratch)", "A", BOARD, "predator_prey_drift-v4_quick_qmix_reset_all_seed*.yaml"),
)


def by_kind(record: dict, first: str) -> tuple[float, float, int, int]:
    """Mean task AUC over the later visits of the kind learned first and over every visit of the
    other kind; how many of the other kind's visits reach AUC >= 0.5, out of how many."""
    auc = np.asarray(record["metrics"]["auc_per_task"], dtype=float)
    first_kind = np.array([name.startswith(first) for name in record["tasks"]])
    later_first = first_kind.copy()
    later_first[0] = False  # the very first task is learned by every method from the same start
    second = auc[~first_kind]
    return float(auc[later_first].mean()), float(second.mean()), int((second >= 0.5).sum()), int(second.size)


def summarise() -> list[dict]:
    rows = []
    for name, first, folder, pattern in ROWS:
        records = sorted((load_record(p) for p in folder.glob(pattern)), key=lambda r: r["seed"])
        if not records:
            print(f"{name}: no records ({folder.relative_to(ROOT)}/{pattern})")
            continue
        per_run = [by_kind(r, first) for r in records]
        values = np.array([run[:2] for run in per_run])
        counts = [run[2:] for run in per_run]
        row = {"row": name, "seeds": [int(r["seed"]) for r in records]}
        for column, label in ((0, "first_kind_later_visits"), (1, "second_kind_visits")):
            ci = mean_ci(values[:, column]) if len(records) > 1 else None
            row[label] = {"mean": round(float(values[:, column].mean()), 3),
                          "ci95": [round(ci.low, 3), round(ci.high, 3)] if ci else None,
                          "per_seed": [round(float(v), 3) for v in values[:, column]]}
        row["second_kind_visits_auc_ge_0.5"] = f"{sum(c[0] for c in counts)} of {sum(c[1] for c in counts)}"
        rows.append(row)
    return rows


def main() -> None:
    rows = summarise()
    print("| run | seeds | kind learned first: later visits | kind learned second: every visit | second-kind visits with AUC >= 0.5 |")
    print("| --- | ---: | --- | --- | --- |")
    for row in rows:
        cells = []
        for label in ("first_kind_later_visits", "second_kind_visits"):
            cell = row[label]
            interval = f" [{cell['ci95'][0]:.3f}, {cell['ci95'][1]:.3f}]" if cell["ci95"] else ""
            cells.append(f"{cell['mean']:.3f}{interval}")
        print(f"| {row['row']} | {len(row['seeds'])} | {cells[0]} | {cells[1]} | {row['second_kind_visits_auc_ge_0.5']} |")
    (HERE / "summary.yaml").write_text(yaml.safe_dump({"rows": rows}, sort_keys=False))


if __name__ == "__main__":
    main()
