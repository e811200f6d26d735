"""Summarise the replay ablation on ``predator_prey_drift-v3`` quick (QMIX).

A 2x2 design over what is renewed at each task start after the first: the network (kept /
re-initialised) and the replay (kept / emptied), plus ``reset`` (mixer and agents' output layer)
with and without emptying the replay. Cells and where their records live:

- ``none``: network kept, replay kept (``leaderboard/records``)
- ``reset_all``: network renewed, replay emptied (``leaderboard/records``)
- ``reset_all`` with ``clear_replay: false``: network renewed, replay kept (``records/``)
- ``KeepNetClearReplay`` (``ablmethods.py``): network kept, replay emptied (``records/``)
- ``reset``: mixer + agent.fc2 renewed, replay kept (``leaderboard/records``)
- ``reset`` with ``clear_replay: true``: mixer + agent.fc2 renewed, replay emptied (``records/``)

Per run: the mean task AUC over the 15 visits after the first, and how many of them reach task
AUC >= 0.5, and the means over the later visits of each prey kind; per cell the mean over seeds with a 95% bootstrap interval (``ctmarl.stats.mean_ci``).
Run from the repository root::

    python validity/ablations/predator_prey_drift-v3_replay/summarise.py
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
STEM = "predator_prey_drift-v3_quick_qmix_"

CELLS = (
    ("none", "kept", "kept", BOARD, "none_seed*.yaml"),
    ("KeepNetClearReplay", "kept", "emptied", HERE / "records", "ablmethods-KeepNetClearReplay_seed*.yaml"),
    ("reset", "mixer + fc2", "kept", BOARD, "reset_seed*.yaml"),
    ("reset, clear_replay: true", "mixer + fc2", "emptied", HERE / "records", "reset-*_seed*.yaml"),
    ("reset_all, clear_replay: false", "all", "kept", HERE / "records", "reset_all-*_seed*.yaml"),
    ("reset_all", "all", "emptied", BOARD, "reset_all_seed*.yaml"),
)


def later_visits(record: dict) -> tuple[float, int, float, float]:
    """Mean task AUC over the visits after the first, how many reach AUC >= 0.5, and the mean
    over the later visits of each prey kind (tasks named A... pay kind A, B... kind B)."""
    auc = np.asarray(record["metrics"]["auc_per_task"][1:], dtype=float)
    names = list(record["tasks"][1:])
    kind_a = np.array([name.startswith("A") for name in names])
    return float(auc.mean()), int((auc >= 0.5).sum()), float(auc[kind_a].mean()), float(auc[~kind_a].mean())


def summarise() -> list[dict]:
    rows = []
    for name, network, replay, folder, pattern in CELLS:
        runs = sorted(folder.glob(STEM + pattern), key=lambda p: load_record(p)["seed"])
        per_seed = {}
        for path in runs:
            record = load_record(path)
            per_seed[record["seed"]] = later_visits(record)
        means = [v[0] for v in per_seed.values()]
        row = {
            "cell": name, "network renewed": network, "replay": replay,
            "seeds": sorted(per_seed),
            "later-visit mean AUC per seed": [round(v[0], 3) for v in per_seed.values()],
            "visits with AUC >= 0.5 per seed": [v[1] for v in per_seed.values()],
            "mean": round(float(np.mean(means)), 3) if means else None,
            "mean on later A visits (the kind learned first)": (
                round(float(np.mean([v[2] for v in per_seed.values()])), 3) if means else None),
            "mean on B visits": round(float(np.mean([v[3] for v in per_seed.values()])), 3) if means else None,
        }
        if len(means) >= 2:
            low, high = mean_ci(means)
            row["95% CI"] = [round(low, 3), round(high, 3)]
        rows.append(row)
    return rows


def _num(value) -> str:
    return f"{value:6.3f}" if value is not None else f"{'-':>6}"


def main() -> None:
    rows = summarise()
    print(f"{'cell':32} {'network':12} {'replay':8} {'seeds':>5} {'mean AUC':>9} {'95% CI':>16} {'A':>6} {'B':>6}  >=0.5 per seed")
    for row in rows:
        ci = row.get("95% CI")
        ci_text = f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "-"
        mean = f"{row['mean']:.3f}" if row["mean"] is not None else "-"
        print(f"{row['cell']:32} {row['network renewed']:12} {row['replay']:8} {len(row['seeds']):>5} "
              f"{mean:>9} {ci_text:>16} {_num(row['mean on later A visits (the kind learned first)'])} "
              f"{_num(row['mean on B visits'])}  {row['visits with AUC >= 0.5 per seed']}")
    (HERE / "summary.yaml").write_text(yaml.safe_dump({"generated_by": "summarise.py", "cells": rows}, sort_keys=False))


if __name__ == "__main__":
    main()
