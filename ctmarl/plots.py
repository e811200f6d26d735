"""Plots of run records (matplotlib, PNG) and the CSV data behind each of them.

Uses matplotlib's object API (``Figure`` + Agg canvas), so importing or calling this module never
changes global matplotlib state.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ctmarl.report import RATIO_KEYS

PROBE_PARTS = ("agent", "q_tot", "total")
#: Above this many tasks, plots drop per-task labels, legends and cell numbers.
LONG_TRACK = 12


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _task_boundaries(record: Mapping[str, Any]) -> list[float]:
    """Global env step at which each task after the first starts."""
    curves = record["curves"]
    ends = {}
    for step, task in zip(curves["env_step"], curves["task"]):
        ends[task] = step
    return [ends[k] for k in sorted(ends)[:-1]]


def _mark_tasks(ax, record: Mapping[str, Any]) -> None:
    for boundary in _task_boundaries(record):
        ax.axvline(boundary, color="grey", linestyle=":", linewidth=1)


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def learning_curves(record: Mapping[str, Any], out: Path) -> list[Path]:
    curves = record["curves"]
    figure = _figure(9, 3.5)
    ax = figure.add_subplot()
    steps, tasks, scores = (np.asarray(curves[k]) for k in ("env_step", "task", "score"))
    long_track = len(record["tasks"]) > LONG_TRACK
    for k, name in enumerate(record["tasks"]):
        pick = tasks == k
        ax.plot(steps[pick], scores[pick], marker="" if long_track else ".", label=name,
                color=f"C{k % 2}" if long_track else None, linewidth=0.8 if long_track else None)
    if not long_track:  # a long track's boundaries and legend would hide the curves
        _mark_tasks(ax, record)
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set(xlabel="env steps", ylabel="greedy normalised score", ylim=(-0.05, 1.05), title=_title(record))
    png = out.with_name(out.name + "_curves.png")
    figure.savefig(png, dpi=110)
    data = _write_csv(out.with_name(out.name + "_curves.csv"), list(curves),
                      [list(row) for row in zip(*curves.values())])
    return [png, data]


def neuron_ratios(record: Mapping[str, Any], out: Path) -> list[Path]:
    log = record.get("neurons") or {}
    groups = log.get("groups") or {}
    if not groups:
        return []
    figure = _figure(4 * len(RATIO_KEYS), 3 * 1)
    axes = figure.subplots(1, len(RATIO_KEYS), sharey=True)
    steps = log["env_step"]
    for ax, key in zip(axes, RATIO_KEYS):
        for name, columns in groups.items():
            ax.plot(steps, columns[key], label=name, linestyle="-" if columns["part"] == "mixer" else "--")
        _mark_tasks(ax, record)
        ax.set(title=key.replace("_", " "), xlabel="env steps", ylim=(-0.02, 1.02))
    axes[0].set_ylabel("fraction of the group's neurons")
    axes[-1].legend(fontsize="x-small")
    figure.suptitle(_title(record) + "  (dashed: agent, solid: mixer)", fontsize="small")
    png = out.with_name(out.name + "_neurons.png")
    figure.savefig(png, dpi=110)
    header = ["update", "env_step", "task", "group", "part", *[k for k in next(iter(groups.values())) if k != "part"]]
    rows = []
    for name, columns in groups.items():
        keys = [k for k in columns if k != "part"]
        for i, update in enumerate(log["update"]):
            rows.append([update, log["env_step"][i], log["task"][i], name, columns["part"],
                         *[columns[k][i] for k in keys]])
    data = _write_csv(out.with_name(out.name + "_neurons.csv"), header, rows)
    return [png, data]


def r_matrix(record: Mapping[str, Any], out: Path) -> list[Path]:
    R = np.asarray(record["R"], dtype=float)
    names = record["tasks"]
    long_track = len(names) > LONG_TRACK
    side = min(len(names), LONG_TRACK)
    figure = _figure(1.2 + 0.8 * side, 1.0 + 0.7 * side)
    ax = figure.add_subplot()
    image = ax.imshow(R, vmin=0, vmax=1, cmap="viridis")
    if not long_track:  # numbers and names for every cell and task only where they fit
        for k in range(R.shape[0]):
            for j in range(R.shape[1]):
                ax.text(j, k, f"{R[k, j]:.2f}", ha="center", va="center",
                        color="white" if R[k, j] < 0.5 else "black", fontsize="small")
        ax.set_xticks(range(len(names)), names, rotation=45)
        ax.set_yticks(range(len(names)), names)
    ax.set(xlabel="evaluated on task j", ylabel="after training task k", title="R[k][j]")
    figure.colorbar(image, ax=ax, shrink=0.8)
    png = out.with_name(out.name + "_R.png")
    figure.savefig(png, dpi=110)
    data = _write_csv(out.with_name(out.name + "_R.csv"), ["after_task", *names],
                      [[names[k], *R[k].tolist()] for k in range(len(names))])
    return [png, data]


def plasticity_probe(record: Mapping[str, Any], out: Path) -> list[Path]:
    """Share of the probe loss removed at each task end (solid) against a fresh network's (dashed)."""
    result = record.get("plasticity_probe")
    if not result:
        return []
    figure = _figure(7, 3.2)
    ax = figure.add_subplot()
    per_task, fresh = result["per_task"], result["fresh"]
    tasks = np.arange(1, len(per_task["total"]) + 1)
    for i, part in enumerate(PROBE_PARTS):
        ax.plot(tasks, per_task[part], marker="." if len(tasks) <= LONG_TRACK else "", color=f"C{i}", label=part)
        ax.axhline(fresh[part], color=f"C{i}", linestyle="--", linewidth=1)
    ax.set(xlabel="end of task", ylabel="share of probe loss removed",
           title=_title(record) + f"  (probe: {result['steps']} steps; dashed: fresh network)")
    ax.title.set_fontsize("small")
    ax.legend(fontsize="small")
    png = out.with_name(out.name + "_probe.png")
    figure.savefig(png, dpi=110)
    rows = [[k, record["tasks"][k - 1], *[per_task[p][k - 1] for p in PROBE_PARTS]] for k in tasks]
    rows.append(["fresh", "", *[fresh[p] for p in PROBE_PARTS]])
    data = _write_csv(out.with_name(out.name + "_probe.csv"), ["task", "name", *PROBE_PARTS], rows)
    return [png, data]


def plot_record(record: Mapping[str, Any], folder: Path, stem: str) -> list[Path]:
    """All plots of one record into ``folder``; returns the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / stem
    return (learning_curves(record, out) + neuron_ratios(record, out) + r_matrix(record, out)
            + plasticity_probe(record, out))


def _title(record: Mapping[str, Any]) -> str:
    s = record["scenario"]
    return (f"{s['name']}-v{s['version']} {s['tier']} · {record['learner']['name']}+"
            f"{record['method']['name']} · seed {record['seed']}")
