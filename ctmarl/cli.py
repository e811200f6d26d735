"""The ``ctmarl`` command line.

Every user error (unknown name, bad YAML, unwritable output) is one ``error: ...`` line on stderr
and exit status 2; nothing half-written is left behind.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ctmarl.errors import CtmarlError
from ctmarl.registry import LEARNERS, METHODS
from ctmarl.scenario import TIER_NAMES, make_scenario, scenario_names


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except CtmarlError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=_Group)
@click.version_option(package_name="ctmarl")
def main() -> None:
    """ctmarl: continual-learning benchmark for cooperative MARL value factorisation."""


@main.command("list")
def list_command() -> None:
    """Scenarios (with tiers and tasks), learners and methods from the registries."""
    click.echo("scenarios:")
    for name in scenario_names():
        scenario = make_scenario(name)
        tasks = ", ".join(t.name for t in scenario.spec.tasks)
        click.echo(f"  {scenario.id:<28} family={scenario.spec.env.family:<14} tasks: {tasks}")
        for tier in TIER_NAMES:
            t = scenario.tier(tier)
            click.echo(f"    {tier:<9} {t.env_steps_per_task:>10} env steps/task, {t.num_envs} envs")
    click.echo("learners:")
    for name in LEARNERS.names():
        click.echo(f"  {name:<16} {LEARNERS.entry_point(name)}")
    click.echo("methods:")
    for name in METHODS.names():
        click.echo(f"  {name:<16} {METHODS.entry_point(name)}")


@main.command()
@click.option("--algo", default="none", show_default=True,
              help="Plasticity method: a registered name (see `ctmarl list`) or package.module:Class.")
@click.option("--scenario", required=True, help="Scenario id (matrix_drift, matrix_drift-v1) or a YAML path.")
@click.option("--tier", default="quick", show_default=True, help=f"One of {', '.join(TIER_NAMES)}.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--learner", default="qmix", show_default=True, help="Learner name (see `ctmarl list`).")
@click.option("--out", default="runs", show_default=True, type=click.Path(path_type=Path),
              help="Folder the run record is written to.")
@click.option("--device", default="cpu", show_default=True, help="torch device: cpu, cuda, cuda:1 ...")
@click.option("--neuron-every", default=50, show_default=True, type=click.IntRange(min=0),
              help="Log stagnant/dormant/GraMa neuron metrics every N updates (0 = off).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def evaluate(algo, scenario, tier, seed, learner, out, device, neuron_every, quiet) -> None:
    """Run one method on one scenario tier and write its run record."""
    from ctmarl.evaluate import RunSpec, execute, prepare

    spec = RunSpec(scenario=scenario, algo=algo, tier=tier, learner=learner, seed=seed, device=device,
                   neuron_every_updates=neuron_every)
    prepared = prepare(spec, out)  # every bad input fails here, before anything is printed
    if quiet:
        record, path = execute(prepared)
    else:
        n_tasks = len(prepared.scenario.spec.tasks)
        label = f"{prepared.scenario.id} {tier} {learner}+{algo} seed {seed}"
        with click.progressbar(length=prepared.total_env_steps, label=label, file=sys.stderr,
                               item_show_func=lambda text: text, show_pos=True) as bar:
            def progress(steps: int, task_index: int, task_name: str, score: float) -> None:
                bar.update(steps, f"task {task_index + 1}/{n_tasks} {task_name} score {score:.2f}")

            record, path = execute(prepared, progress=progress)
    _print_summary(record, path)


@main.command()
@click.argument("records", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", default="plots", show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the PNGs and the CSV data behind them.")
def plot(records, out) -> None:
    """Plot run records: learning curves, neuron ratios per group, R matrix; print their metrics.

    The plasticity ratio and forward transfer use the reset_all record of the same scenario,
    tier, learner and seed, looked for among RECORDS and beside each record.
    """
    import yaml

    from ctmarl.plots import plot_record
    from ctmarl.evaluate import rounded as _rounded
    from ctmarl.record import ensure_writable, load_record, write_yaml_atomic
    from ctmarl.report import continual_summary, find_scratch, neuron_ratios_by_task

    ensure_writable(out)
    loaded = {path: load_record(path) for path in records}
    for path, record in loaded.items():
        neighbours = [load_record(p) for p in path.parent.glob("*reset_all*.yaml") if p not in loaded]
        scratch = find_scratch(record, [*loaded.values(), *neighbours])
        files = plot_record(record, out, path.stem)
        summary = _rounded({"record": str(path), **continual_summary(record, scratch),
                            "neuron_ratios_by_task": neuron_ratios_by_task(record)}, 4)
        files.append(write_yaml_atomic(summary, out / f"{path.stem}_summary.yaml"))
        click.echo(yaml.safe_dump(summary, sort_keys=False, default_flow_style=None, width=110).rstrip())
        click.echo("wrote " + ", ".join(str(f) for f in files))


def _print_summary(record: dict, path: Path | None) -> None:
    m, timing = record["metrics"], record["timing"]
    click.echo(f"{'task':<14} {'final score':>11} {'AUC':>7}")
    for name, final, auc in zip(record["tasks"], m["final_score_per_task"], m["auc_per_task"]):
        click.echo(f"{name:<14} {final:>11.3f} {auc:>7.3f}")
    forgetting = "n/a" if m["forgetting"] is None else f"{m['forgetting']:.3f}"
    click.echo(f"performance {m['performance']:.3f}  AUC {m['auc']:.3f}  forgetting {forgetting}")
    click.echo(f"{timing['env_steps']} env steps, {timing['updates']} updates in {timing['wall_time_s']:.1f}s "
               f"({timing['env_steps_per_s']:.0f} env steps/s)")
    if path is not None:
        click.echo(f"record: {path}")


if __name__ == "__main__":
    main()
