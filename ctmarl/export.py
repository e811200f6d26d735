"""Run records -> marl-eval's raw experiment data (``ctmarl export --format marl-eval``).

marl-eval (instadeepai/marl-eval) reads one JSON file nested as environment -> task ->
algorithm -> run, where a run holds ``step_1`` ... ``step_k`` dicts (an int ``step_count`` and one
list of numbers per metric) followed by ``absolute_metrics``. A ctmarl record maps onto it as:

=====================  ===========================================================================
marl-eval level        from the record
=====================  ===========================================================================
environment            scenario id, version and tier: ``<name>-v<version>_<tier>``
                       (``matrix_drift-v1_quick``)
task                   each task of the sequence, keyed ``<position>_<name>`` with the position
                       zero-padded to the sequence's length (``0_M1`` ... ``5_M1-return``;
                       ``00_M1`` ... ``24_M5#5``), so a task name visited twice stays two tasks
algorithm              ``<learner>+<method>``, plus ``-<variant>`` when the method block has one
                       (``qmix+knife``, ``qmix+knife-1a2b3c4d``)
run                    ``seed_<seed>``
``step_<i>``           the i-th (from 1) greedy evaluation made while training that task
                       (``curves`` rows whose ``task`` is its position), in order
``step_count``         that evaluation's ``curves.env_step``: env steps since the run began, so
                       task k's counts start where task k-1's training ended; they never decrease
                       and may repeat (one collection that crosses two evaluation points, as in
                       the smoke tier, evaluates twice at the same step)
``score``/``return``   ``curves.score`` / ``curves.return`` as a one-element list: the record holds
                       the mean over the evaluation episodes, not each episode
``absolute_metrics``   ``score``: the task's final score (``metrics.final_score_per_task``),
                       ``return``: its last evaluation's return (= ``R_return[k][k]``),
                       ``retained_score``: its score after the last task (``R[-1][k]``)
=====================  ===========================================================================

Each run also gets a task ``_sequence`` (unless ``sequence=False``) whose only entry is
``absolute_metrics`` with the sequence-level continual metrics ``auc``, ``performance`` and
``forgetting`` (left out when the record's is null: one task has nothing to forget). marl-eval's
own processing expects every task of an environment to have the same steps and metrics, which
``_sequence`` has not: export with ``--no-sequence`` for its ``data_process_pipeline``.

Every number is copied as recorded (records round to 6 decimals). Records of one environment
must share the scenario definition (``definition_hash``), and two records with the same
environment, algorithm and run are an error naming both files.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import click

from ctmarl.errors import CtmarlError, RecordError, shorten

FORMATS = ("marl-eval",)
SEQUENCE_TASK = "_sequence"
#: Sequence-level metrics exported under ``_sequence`` (record key ``metrics.<name>``).
SEQUENCE_METRICS = ("auc", "performance", "forgetting")
CURVE_COLUMNS = ("env_step", "task", "score", "return")


class ExportError(CtmarlError):
    """Records that cannot be exported together (a duplicate run, disagreeing scenarios, none)."""


def environment_name(record: Mapping[str, Any]) -> str:
    scenario = record["scenario"]
    return f"{scenario['name']}-v{scenario['version']}_{scenario['tier']}"


def algorithm_name(record: Mapping[str, Any]) -> str:
    method = record["method"]
    variant = f"-{method['variant']}" if method.get("variant") else ""
    return f"{record['learner']['name']}+{method['name']}{variant}"


def run_name(record: Mapping[str, Any]) -> str:
    return f"seed_{record['seed']}"


def task_names(record: Mapping[str, Any]) -> list[str]:
    """``<position>_<name>`` per task, the position zero-padded to the sequence's length."""
    tasks = record["tasks"]
    width = len(str(len(tasks) - 1))
    return [f"{position:0{width}d}_{name}" for position, name in enumerate(tasks)]


def marl_eval_data(records: Sequence[Mapping[str, Any]], sources: Sequence[str],
                   *, sequence: bool = True) -> dict[str, Any]:
    """marl-eval's raw data dict for validated ``records`` (see the module docstring);
    ``sources[i]`` names ``records[i]`` in errors. ``sequence``: add the ``_sequence`` task."""
    if len(records) != len(sources):
        raise ValueError(f"{len(records)} records but {len(sources)} sources")
    data: dict[str, Any] = {}
    seen_run: dict[tuple[str, str, str], str] = {}
    seen_definition: dict[str, tuple[str, str]] = {}
    for record, source in zip(records, sources):
        environment, algorithm, run = environment_name(record), algorithm_name(record), run_name(record)
        definition = record["scenario"]["definition_hash"]
        first = seen_definition.setdefault(environment, (definition, source))
        if first[0] != definition:
            raise ExportError(f"{first[1]} and {source}: both are {environment} but their scenario "
                              f"definitions differ (definition_hash); export them separately")
        key = (environment, algorithm, run)
        if key in seen_run:
            raise ExportError(f"{seen_run[key]} and {source}: both are run {run} of {algorithm} on "
                              f"{environment}; marl-eval holds one run per seed, export one of them")
        seen_run[key] = source
        tasks = data.setdefault(environment, {})
        for task, run_data in _run_per_task(record, source, sequence).items():
            tasks.setdefault(task, {}).setdefault(algorithm, {})[run] = run_data
    return data


def _run_per_task(record: Mapping[str, Any], source: str, sequence: bool) -> dict[str, dict[str, Any]]:
    """{task key: marl-eval run dict} for one record."""
    names = task_names(record)
    curves, R = record["curves"], record["R"]
    missing = [column for column in CURVE_COLUMNS if column not in curves]
    if missing:
        raise RecordError(f"{source}: curves has no {missing[0]!r} column")
    final_scores = record["metrics"].get("final_score_per_task")
    steps: list[dict[str, dict[str, Any]]] = [{} for _ in names]
    last_return: list[float | None] = [None] * len(names)
    for row, (env_step, task, score, episode_return) in enumerate(
            zip(curves["env_step"], curves["task"], curves["score"], curves["return"])):
        where = f"{source}: curves row {row}"
        if not isinstance(task, int) or isinstance(task, bool) or not 0 <= task < len(names):
            raise RecordError(f"{where}: task {shorten(repr(task), 40)} is not a task position 0..{len(names) - 1}")
        if not isinstance(env_step, int) or isinstance(env_step, bool):
            raise RecordError(f"{where}: env_step {shorten(repr(env_step), 40)} is not an integer")
        task_steps = steps[task]
        previous = next(reversed(task_steps.values()), None)
        if previous is not None and env_step < previous["step_count"]:
            raise RecordError(f"{where}: env_step {env_step} goes back within task {names[task]}")
        last_return[task] = _number(episode_return, f"{where}: return")
        task_steps[f"step_{len(task_steps) + 1}"] = {
            "step_count": env_step,
            "score": [_number(score, f"{where}: score")],
            "return": [last_return[task]],
        }
    result: dict[str, dict[str, Any]] = {}
    for k, name in enumerate(names):
        if not steps[k]:
            raise RecordError(f"{source}: task {name} has no evaluations in curves")
        final = final_scores[k] if isinstance(final_scores, list) and len(final_scores) == len(names) \
            else steps[k][f"step_{len(steps[k])}"]["score"][0]
        result[name] = {**steps[k], "absolute_metrics": {
            "score": [_number(final, f"{source}: metrics.final_score_per_task[{k}]")],
            "return": [last_return[k]],
            "retained_score": [_number(R[-1][k], f"{source}: R[-1][{k}]")],
        }}
    if sequence:
        metrics = record["metrics"]
        result[SEQUENCE_TASK] = {"absolute_metrics": {
            name: [_number(metrics[name], f"{source}: metrics.{name}")]
            for name in SEQUENCE_METRICS if metrics.get(name) is not None}}
    return result


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RecordError(f"{where} is {shorten(repr(value), 40)}, not a finite number")
    return float(value)


def record_paths(paths: Iterable[Path]) -> list[Path]:
    """``paths`` with each folder replaced by the ``*.yaml`` files under it (sorted, recursive);
    a file reached twice is kept once, where first reached."""
    found: dict[Path, Path] = {}
    for path in paths:
        for file in sorted(path.rglob("*.yaml")) if path.is_dir() else [path]:
            found.setdefault(file.resolve(), file)
    return list(found.values())


@click.command("export")
@click.option("--format", "format_name", type=click.Choice(FORMATS), default="marl-eval", show_default=True,
              help="Output format: marl-eval's raw experiment data (JSON).")
@click.argument("records", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--out", default="marl_eval.json", show_default=True,
              type=click.Path(dir_okay=False, path_type=Path), help="The JSON file to write.")
@click.option("--sequence/--no-sequence", default=True, show_default=True,
              help="Add the _sequence task (auc, performance, forgetting) to every run; leave it out "
                   "for marl-eval's data_process_pipeline, which wants the same metrics in every task.")
def export_command(format_name: str, records: tuple[Path, ...], out: Path, sequence: bool) -> None:
    """Convert run records (files, or folders searched for *.yaml) into another tool's format."""
    from ctmarl.record import load_record, write_text_atomic

    paths = record_paths(records)
    if not paths:
        raise ExportError(f"no *.yaml records in {', '.join(str(p) for p in records)}")
    data = marl_eval_data([load_record(p) for p in paths], [str(p) for p in paths], sequence=sequence)
    write_text_atomic(json.dumps(data, indent=1, allow_nan=False) + "\n", out)
    tasks = sum(len(by_task) - (SEQUENCE_TASK in by_task) for by_task in data.values())
    algorithms = {algo for by_task in data.values() for by_algo in by_task.values() for algo in by_algo}
    click.echo(f"wrote {out} ({format_name}): {len(data)} environment(s), {tasks} task(s), "
               f"{len(algorithms)} algorithm(s), {len(paths)} run(s)")
