"""Per method, what ``predator_prey_drift`` quick (QMIX) learns on the visits after the first.

The README's v4 table: for each method with records in ``leaderboard/records``, the mean task AUC
over the visits after the first (per seed, and over seeds with a 95% bootstrap interval,
``ctmarl.stats.mean_ci``), the means over the later visits of each prey kind (A and B, from the
task names), and the leaderboard's IQM AUC. Run from the repository root after
``ctmarl leaderboard build``::

    python validity/predator_prey_drift_visits.py            # v4
    python validity/predator_prey_drift_visits.py --version 3
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import yaml

from ctmarl.record import load_record
from ctmarl.stats import mean_ci

ROOT = Path(__file__).resolve().parents[1]
# The replay ablation's summary defines the later-visit numbers; one definition for both tables.
sys.path.insert(0, str(ROOT / "validity" / "ablations" / "predator_prey_drift-v3_replay"))
from summarise import later_visits  # noqa: E402  (mean AUC, count >= 0.5, A visits, B visits)


def rows(version: int) -> list[tuple]:
    board = yaml.safe_load((ROOT / "leaderboard" / "leaderboard.yaml").read_text())
    out = []
    for entry in board["entries"]:
        if (entry["scenario"], entry["version"], entry["tier"], entry["learner"]) != (
                "predator_prey_drift", version, "quick", "qmix"):
            continue
        method = entry["method"]
        records = sorted((load_record(p) for p in (ROOT / "leaderboard" / "records").glob(
            f"predator_prey_drift-v{version}_quick_qmix_{method}_seed*.yaml")), key=lambda r: r["seed"])
        visits = np.array([later_visits(r) for r in records])[:, [0, 2, 3]]  # [seeds, (all, A, B)]
        ci = mean_ci(visits[:, 0]) if len(records) > 1 else None
        out.append((method, [r["seed"] for r in records], visits, ci, entry["auc_iqm"], entry["auc_iqm_ci95"]))
    return sorted(out, key=lambda row: -row[2][:, 0].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--version", type=int, default=4)
    args = parser.parse_args()
    print("| method | seeds | later visits, mean [95% CI] | per seed | A visits | B visits | IQM AUC [95% CI] (leaderboard) |")
    print("| --- | ---: | --- | --- | --- | --- | --- |")
    for method, seeds, visits, ci, iqm, iqm_ci in rows(args.version):
        interval = f" [{ci.low:.3f}, {ci.high:.3f}]" if ci is not None else ""
        per_seed = " / ".join(f"{v:.3f}" for v in visits[:, 0])
        print(f"| `{method}` | {len(seeds)} | {visits[:, 0].mean():.3f}{interval} | {per_seed} | "
              f"{visits[:, 1].mean():.3f} | {visits[:, 2].mean():.3f} | {iqm:.3f} [{iqm_ci[0]:.3f}, {iqm_ci[1]:.3f}] |")


if __name__ == "__main__":
    main()
