"""The ``ctmarl`` command line.

Every user error (unknown name, bad YAML, unwritable output) is one ``error: ...`` line on stderr
and exit status 2; nothing half-written is left behind. Ctrl-C exits with status 130 (after
``evaluate`` wrote a checkpoint to resume from).

One guard covers every command: an exception that is not a :class:`~ctmarl.errors.CtmarlError`
(a bug, or input no check caught) is also one line, ``error: internal error (<type>): <message>;
traceback in <file>``, exit status 2, with the traceback written beside ``--out``
(``<out>.ctmarl-error.log``) or, without a writable place there, to a temporary file. A plug-in's
failure (:class:`~ctmarl.errors.PluginError`: it raised in a hook or at import) is one line naming
the method and its distribution, with the plug-in's traceback written the same way. A command
that fails removes the ``--out`` folders it created if they are still empty.
"""

from __future__ import annotations

import os
import sys
import tempfile
import traceback
from pathlib import Path

import click

from ctmarl.errors import CtmarlError, PluginError, RunInterrupted, shorten
from ctmarl.progress import DEFAULT_EVERY_SECONDS as DEFAULT_PROGRESS_SECONDS
from ctmarl.progress import ProgressLines
from ctmarl.runlog import parse_loggers, require_loggers
from ctmarl.registry import ENVS, LEARNERS, METHODS
from ctmarl.scenario import TIER_NAMES, make_scenario, scenario_ids, scenario_names
from ctmarl.sweep import EXECUTORS

#: Seconds between the progress lines of each run of a sweep.
SWEEP_PROGRESS_SECONDS = 60.0


#: Click's own ways of ending a command (usage errors, --help, exit codes): not ours to report.
_CLICK_EXITS = (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort)


class _Command(click.Command):
    """A command that removes the ``--out`` folders it created when it fails and they are empty
    (``evaluate`` makes its folder before the last checks of a run; a failed run leaves nothing)."""

    def invoke(self, ctx: click.Context):
        out = ctx.params.get("out")
        created = _missing_folders(Path(out)) if out is not None else []
        ctx.meta["ctmarl.out"] = out
        try:
            return super().invoke(ctx)
        except BaseException:
            _remove_if_empty(created)
            raise


class _Group(click.Group):
    """The ``ctmarl`` group: every error of every command becomes one ``error:`` line."""

    command_class = _Command
    group_class = type  # sub-groups (leaderboard) are _Groups too, with _Commands

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except RunInterrupted as exc:
            click.echo(str(exc), err=True)
            sys.exit(exc.exit_status)
        except PluginError as exc:  # a plug-in's own exception: its traceback goes to the log
            where = ""
            if exc.__cause__ is not None:
                where = f"; traceback in {_write_traceback(exc.__cause__, ctx.meta.get('ctmarl.out'))}"
            click.echo(f"error: {shorten(exc, 2000)}{where}", err=True)
            sys.exit(2)
        except CtmarlError as exc:
            click.echo(f"error: {shorten(exc, 2000)}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:  # a second Ctrl-C, or one outside a run's safe points
            click.echo("interrupted; checkpoints written before are kept (continue with --resume)", err=True)
            sys.exit(130)
        except _CLICK_EXITS:
            raise
        except BrokenPipeError:  # the reader closed stdout (`ctmarl ... | head`): stop quietly, as
            # Unix tools do on SIGPIPE; stdout goes to /dev/null so the interpreter's flush at exit
            # does not raise again. Files a command wrote before its next line of output stay.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            sys.exit(141)
        except Exception as exc:  # noqa: BLE001 -- the one place that reports what nothing else caught
            log = _write_traceback(exc, ctx.meta.get("ctmarl.out"))
            first_line = shorten((str(exc).strip().splitlines() or [""])[0], 200)
            click.echo(f"error: internal error ({type(exc).__name__}): {first_line}; traceback in {log}", err=True)
            sys.exit(2)


def _missing_folders(out: Path) -> list[Path]:
    """``out`` and its ancestors that do not exist yet, deepest first."""
    missing = []
    try:
        for folder in (out, *out.parents):
            if folder.exists() or folder == folder.parent:
                break
            missing.append(folder)
    except OSError:  # e.g. a name too long: the command reports it; there is nothing to clean up
        return []
    return missing


def _remove_if_empty(folders: list[Path]) -> None:
    """Remove each of ``folders`` (deepest first) that exists and is empty; stop at the first that is not."""
    for folder in folders:
        try:
            folder.rmdir()  # fails, as wanted, when the folder holds anything
        except FileNotFoundError:
            continue
        except OSError:
            return


def _write_traceback(exc: BaseException, out: Path | None) -> str:
    """Write ``exc``'s traceback to ``<out>.ctmarl-error.log`` beside ``out`` when that is
    writable, else to a temporary file; return the path (or why there is none)."""
    text = "".join(traceback.format_exception(exc))
    if out is not None:
        path = Path(out).resolve()
        path = path.parent / f"{path.name or 'out'}.ctmarl-error.log"
        try:
            path.write_text(text)
            return str(path)
        except OSError:
            pass
    try:
        fd, name = tempfile.mkstemp(prefix="ctmarl-error-", suffix=".log")
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        return name
    except OSError as error:
        return f"(nowhere: {error.strerror or error})"


@click.group(cls=_Group)
@click.version_option(package_name="ctmarl")
def main() -> None:
    """ctmarl: continual-learning benchmark for cooperative MARL value factorisation."""


@main.command("list")
def list_command() -> None:
    """Scenarios (with tiers and tasks), learners, methods and env families from the registries;
    a name two distributions register, or whose entry point fails to load, is marked."""
    click.echo("scenarios:")
    for name in scenario_names():
        scenario = make_scenario(name)
        listed = scenario.task_specs()
        tasks = ", ".join(t.name for t in listed[:8]) + (f", ... ({len(listed)} tasks)" if len(listed) > 8 else "")
        if scenario.protocol.repeat > 1:
            tasks += f"; x{scenario.protocol.repeat}"
        click.echo(f"  {scenario.id:<28} family={scenario.spec.env.family:<14} tasks: {tasks}")
        for tier in TIER_NAMES:
            t = scenario.tier(tier)
            click.echo(f"    {tier:<9} {t.env_steps_per_task:>10} env steps/task, {t.num_envs} envs")
    newest = {make_scenario(name).id for name in scenario_names()}
    older = [i for i in scenario_ids() if i not in newest]
    if older:  # kept so that their records stay reproducible; the bare name loads the newest
        click.echo(f"  older versions: {', '.join(older)}")
    for heading, registry in (("learners", LEARNERS), ("methods", METHODS), ("env families", ENVS)):
        click.echo(f"{heading}:")
        for name in registry.names():
            problem = registry.problem(name)  # imports the entry point, so a broken one shows here
            entry_point = "-" if problem and problem.startswith("conflict") else registry.entry_point(name)
            click.echo(f"  {name:<16} {entry_point}" + (f"   [{problem}]" if problem else ""))


@main.command()
@click.option("--algo", multiple=True, default=["none"], show_default=True,
              help="Plasticity method: a registered name (see `ctmarl list`) or package.module:Class. "
                   "Repeat --algo, --scenario, --tier, --learner or --seed for a sweep over their product.")
@click.option("--method-config", type=click.Path(dir_okay=False), default=None,
              help="YAML file of the method's config keys to override (defaults: "
                   "ctmarl_baselines/methods/configs/<algo>.yaml); the record holds the resolved config.")
@click.option("--scenario", multiple=True,
              help="Scenario id (matrix_drift, matrix_drift-v1) or a YAML path; required unless --sweep.")
@click.option("--tier", multiple=True, default=["quick"], show_default=True, help=f"One of {', '.join(TIER_NAMES)}.")
@click.option("--seed", multiple=True, default=[0], show_default=True, type=int)
@click.option("--learner", multiple=True, default=["qmix"], show_default=True, help="Learner name (see `ctmarl list`).")
@click.option("--sweep", "sweep_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Sweep YAML (scenarios, tiers, learners, algos, seeds, ...); options given here override its keys.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Runs at a time: a local process pool (with --executor ray: the local Ray instance's CPUs).")
@click.option("--executor", type=click.Choice(EXECUTORS), default=None,
              help="Where a sweep's runs execute [default: inline, or pool with --workers > 1].")
@click.option("--address", default=None, help="Ray cluster address for --executor ray [default: a local instance].")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch/OpenMP/MKL threads per run [default: 1 in worker processes, torch's own in this one].")
@click.option("--retries", type=click.IntRange(min=0), default=None,
              help="Times a run is retried when its worker process dies [default: pool 1, ray 2].")
@click.option("--out", default="runs", show_default=True, type=click.Path(path_type=Path),
              help="Folder the run record is written to.")
@click.option("--device", default="cpu", show_default=True, help="torch device: cpu, cuda, cuda:1 ...")
@click.option("--neuron-every", default=50, show_default=True, type=click.IntRange(min=0),
              help="Log stagnant/dormant/GraMa neuron metrics every N updates (0 = off).")
@click.option("--checkpoint-every", type=click.IntRange(min=0), default=None,
              help="Write the run's checkpoint (beside its record) every N env steps [default: every "
                   "10 minutes of training; 0 = never]. Ctrl-C also writes one.")
@click.option("--resume", is_flag=True,
              help="Continue the run from its checkpoint in --out (start afresh if there is none).")
@click.option("--log", "log", default="csv", show_default=True,
              help="Live logs beside each record, comma-separated: csv (<stem>.progress.csv), tensorboard "
                   "(<stem>.tb/; pip install tensorboard), wandb (offline unless configured; pip install "
                   "wandb); none for no log.")
@click.option("--progress-every", type=click.FloatRange(min=0), default=None,
              help="Seconds between plain progress lines on stderr [default: a progress bar on a terminal, "
                   f"else a line every {DEFAULT_PROGRESS_SECONDS:.0f} s; sweeps: every {SWEEP_PROGRESS_SECONDS:.0f} s "
                   "per run].")
@click.option("--quiet", is_flag=True, help="Print nothing but errors: no progress, no summary.")
def evaluate(algo, method_config, scenario, tier, seed, learner, sweep_file, workers, executor, address, threads,
             retries, out, device, neuron_every, checkpoint_every, resume, log, progress_every, quiet) -> None:
    """Run one method on one scenario tier and write its run record; or a sweep of several.

    A sweep (several values of an axis, or --sweep FILE) is validated whole before any run
    starts, skips runs whose valid record is in --out and resumes interrupted ones from their
    checkpoints, so an interrupted sweep continues where it stopped when run again. A failed
    run is reported with its error and the others go on; the exit status is then 1.
    """
    from ctmarl.evaluate import RunSpec, execute, prepare
    from ctmarl.sweep import configure_process

    if sweep_file is None and not scenario:
        raise click.UsageError("Missing option '--scenario' (or a sweep file: --sweep FILE).")
    loggers = parse_loggers(log)
    require_loggers(loggers)
    axes = (scenario, algo, tier, learner, seed)
    if sweep_file is not None or any(len(v) > 1 for v in axes) or executor not in (None, "inline") or (workers or 1) > 1:
        ctx = click.get_current_context()
        values = {key: ctx.params[option] for key, option in _SWEEP_OPTIONS.items()}
        if sweep_file is not None:  # the options given on the command line override the file's keys
            values = {key: value for key, value in values.items()
                      if ctx.get_parameter_source(_SWEEP_OPTIONS[key]) is click.core.ParameterSource.COMMANDLINE}
        every = None if quiet else (SWEEP_PROGRESS_SECONDS if progress_every is None else progress_every)
        _sweep(sweep_file, values, out, executor, workers, address, threads, retries, quiet, loggers, every)
        return
    (algo,), (scenario,), (tier,), (seed,), (learner,) = algo, scenario, tier, seed, learner
    configure_process(threads)
    spec = RunSpec(scenario=scenario, algo=algo, tier=tier, learner=learner, seed=seed, device=device,
                   neuron_every_updates=neuron_every, method_config=method_config)
    # every bad input (including a corrupt or foreign checkpoint) fails here, before anything is printed
    prepared = prepare(spec, out, resume=resume, checkpoint_every=checkpoint_every, log=loggers)
    if resume and not prepared.resumed_env_steps:
        click.echo(f"note: no checkpoint at {prepared.checkpoint_path}: starting from the beginning", err=True)
    n_tasks = prepared.scenario.n_tasks
    label = f"{prepared.scenario.id} {tier} {learner}+{algo} seed {seed}"
    if not quiet and prepared.training.log is not None:
        click.echo("logging to " + ", ".join(str(p) for p in prepared.training.log.paths.values()), err=True)
    if quiet:
        record, path = execute(prepared)
    elif progress_every is not None or not _is_terminal(sys.stderr):
        lines = ProgressLines(label, prepared.total_env_steps, n_tasks, done=prepared.resumed_env_steps,
                              every_s=DEFAULT_PROGRESS_SECONDS if progress_every is None else progress_every,
                              echo=lambda text: click.echo(text, err=True))
        record, path = execute(prepared, progress=lines)
    else:
        with click.progressbar(length=prepared.total_env_steps, label=label, file=sys.stderr,
                               item_show_func=lambda text: text, show_pos=True) as bar:
            bar.update(prepared.resumed_env_steps)
            def progress(steps: int, task_index: int, task_name: str, score: float) -> None:
                bar.update(steps, f"task {task_index + 1}/{n_tasks} {task_name} score {score:.2f}")

            record, path = execute(prepared, progress=progress)
    if not quiet:
        _print_summary(record, path)


#: The keys of a sweep (ctmarl.sweep.SweepSpec) and the evaluate options that give them.
_SWEEP_OPTIONS = {"scenarios": "scenario", "algos": "algo", "tiers": "tier", "learners": "learner", "seeds": "seed",
                  "device": "device", "neuron_every": "neuron_every", "checkpoint_every": "checkpoint_every",
                  "method_config": "method_config"}


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _sweep(sweep_file, values, out, executor, workers, address, threads, retries, quiet, loggers,
           progress_every) -> None:
    """The sweep form of ``evaluate``: validate everything, then run what is not done yet."""
    from ctmarl.config import from_mapping
    from ctmarl.sweep import FAILED, INTERRUPTED, SweepSpec, load_sweep_file, make_executor, plan, run_sweep

    if sweep_file is not None:
        sweep = load_sweep_file(sweep_file, values)
    else:
        sweep = from_mapping(SweepSpec, values, "command line")
    runner = make_executor(executor, workers, address, threads, retries, device=sweep.device)
    runs = plan(sweep, out)  # every bad input in any combination fails here, before anything is written
    runner.start()  # Ray: connect (or start a local instance) before anything is written
    width = len(str(len(runs)))
    finished = 0

    def line(status: str, label: str, detail: str) -> None:
        nonlocal finished
        finished += 1
        if not quiet:
            click.echo(f"[{finished:>{width}}/{len(runs)}] {status:<11} {label}  {detail}")

    def done(outcome) -> None:
        if outcome.status in (FAILED, INTERRUPTED):
            line(outcome.status.upper(), outcome.label, outcome.error or "")
        else:
            m = outcome.metrics
            line(outcome.status, outcome.label, f"AUC {m['auc']:.3f}  performance {m['performance']:.3f}  "
                                                f"{outcome.wall_time_s:.1f}s  -> {outcome.record_path}")

    if not quiet:
        click.echo(f"sweep: {len(runs)} runs, executor {runner.name}"
                   + (f", {runner.workers} workers" if getattr(runner, "workers", None) else "") + f", out {out}")
    try:
        report = run_sweep(runs, out, runner, on_done=done,
                           on_skip=lambda run: line("skipped", run.label, f"valid record {run.record_path}"),
                           on_note=lambda run, note: click.echo(f"note: {run.label}: {note}", err=True),
                           log=loggers, progress_every=progress_every)
    except KeyboardInterrupt:
        click.echo("sweep interrupted: run the same command again to continue (finished runs are skipped, "
                   "interrupted ones resume from their checkpoints)", err=True)
        sys.exit(130)
    finally:
        runner.close()
    counts = ", ".join(f"{report.count(s)} {s}" for s in ("done", "skipped", "failed", "interrupted") if report.count(s))
    click.echo(f"sweep finished: {counts}")
    for outcome in report.failed:
        click.echo(f"  {outcome.status}: {outcome.label}: {outcome.error}" + (f" ({outcome.note})" if outcome.note else ""),
                   err=True)
    if not report.ok:
        sys.exit(1)


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


@main.group()
def leaderboard() -> None:
    """Build the leaderboard from run records, or verify the committed one (CI)."""


@leaderboard.command("build")
@click.argument("records_dir", default="leaderboard/records", type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for leaderboard.yaml, LEADERBOARD.md and plots/ [default: RECORDS_DIR's parent].")
def leaderboard_build(records_dir, out) -> None:
    """Admit every record under RECORDS_DIR [default: leaderboard/records] and write the leaderboard.

    A record that fails a check (edited numbers, dirty or unknown code version, non-standard
    scenario or learner config, malformed file) stops the build with an error naming it.
    """
    from ctmarl import leaderboard as board_module

    board = board_module.build(records_dir)
    files = board_module.write(board, out if out is not None else records_dir.parent)
    entries = sum(len(b.entries) for b in board.boards)
    click.echo(f"{board.n_records} records, {entries} entries in {len(board.boards)} tables")
    click.echo("wrote " + ", ".join(str(f) for f in files))


@leaderboard.command("check")
@click.argument("root", default="leaderboard", type=click.Path(file_okay=False, path_type=Path))
@click.option("--reproduce", default=1, show_default=True, type=click.IntRange(min=0),
              help="Smoke-tier records per method to re-run and compare with their records (0: none).")
@click.option("--audit-budget", default=900.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds of the records' own recorded run time to spend re-running non-smoke records drawn "
                   "from a seed derived from the commit (0: none).")
def leaderboard_check(root, reproduce, audit_budget) -> None:
    """Verify ROOT [default: leaderboard]: every record under ROOT/records is admitted, the committed
    leaderboard.yaml and LEADERBOARD.md equal a rebuild, sampled smoke runs reproduce, and so do
    non-smoke records drawn within --audit-budget."""
    from ctmarl import leaderboard as board_module

    board_module.check(root, reproduce, echo=click.echo, audit_budget_s=audit_budget)
    click.echo("leaderboard check passed")


@main.command("validity")
@click.argument("scenario")
@click.option("--tier", required=True, help=f"One of {', '.join(TIER_NAMES)}.")
@click.option("--records", "records_dir", default="leaderboard/records", show_default=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Folder (searched with its sub-folders) of the none and reset_all records; missing ones "
                   "are run into it.")
@click.option("--seed", "seeds", multiple=True, type=int, default=[0, 1, 2, 3, 4], show_default=True)
@click.option("--learner", default="qmix", show_default=True, help="Learner name (see `ctmarl list`).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Missing runs at a time (a local process pool).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch/OpenMP/MKL threads per run.")
@click.option("--out", default="validity", show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for <scenario>-v<version>_<tier>[_<learner>].yaml.")
@click.option("--no-run", is_flag=True,
              help="Analyse the records that exist; run nothing (and say which are missing).")
def validity_command(scenario, tier, records_dir, seeds, learner, workers, threads, out, no_run) -> None:
    """Evidence that SCENARIO measures plasticity loss (DESIGN.md §4.0): interference between
    consecutive tasks, learnability from scratch, the plasticity ratio of none against reset_all
    (and revisit AUC loss, trainability probe), and a verdict. Runs the missing none/reset_all
    records first unless --no-run. See ctmarl/validity.py for the rules."""
    from ctmarl import validity
    from ctmarl.record import ensure_writable
    from ctmarl.sweep import FAILED, INTERRUPTED, make_executor, run_sweep

    spec = make_scenario(scenario)
    if tier not in TIER_NAMES:
        raise CtmarlError(f"unknown tier {tier!r}; known: {', '.join(TIER_NAMES)}")
    seeds = list(dict.fromkeys(seeds))
    ensure_writable(out)

    def find():
        return validity.find_records(records_dir, spec.name, spec.version, tier, learner, seeds)

    found, notes = find()
    for note in notes:
        click.echo(f"note: {note}", err=True)
    missing = validity.missing_seeds(found, seeds)
    if any(missing.values()):
        listing = "; ".join(f"{m} seed(s) {', '.join(map(str, s))}" for m, s in missing.items() if s)
        if no_run:
            click.echo(f"missing (--no-run): {listing}", err=True)
        else:
            runs = validity.plan_missing(scenario, tier, learner, missing, records_dir)
            runner = make_executor(None, workers, None, threads)
            click.echo(f"running {len(runs)} missing run(s) into {records_dir}: {listing}")

            def done(outcome) -> None:
                detail = outcome.error if outcome.status in (FAILED, INTERRUPTED) else outcome.record_path
                click.echo(f"  {outcome.status:<11} {outcome.label}  {detail}")

            try:
                report = run_sweep(runs, records_dir, runner, on_done=done, progress_every=SWEEP_PROGRESS_SECONDS)
            except KeyboardInterrupt:
                click.echo("interrupted: run the same command again to continue", err=True)
                sys.exit(130)
            if not report.ok:
                raise CtmarlError(f"{len(report.failed)} run(s) failed: " + "; ".join(
                    f"{o.label}: {o.error}" for o in report.failed))
            found, _ = find()
    if not any(found.values()):
        raise CtmarlError(f"no {validity.NONE_METHOD} or {validity.SCRATCH_METHOD} records of {spec.id} {tier} "
                          f"{learner} for seed(s) {', '.join(map(str, seeds))} in {records_dir}")
    result = validity.analyse(list(found["none"].values()), list(found["reset_all"].values()))
    path = validity.write(result, out)
    click.echo(validity.render(result))
    click.echo(f"wrote {path}")


@main.command("validate-method")
@click.argument("method")
@click.option("--method-config", type=click.Path(dir_okay=False, exists=True), default=None,
              help="YAML file of config overrides (e.g. a shorter period so the hooks fire in the short run).")
@click.option("--learner", "learners", multiple=True, help="Learner to validate on (repeatable) [default: all registered].")
@click.option("--updates-per-task", default=20, show_default=True, type=click.IntRange(min=2),
              help="Updates in each of the 3 tasks of the validation run.")
def validate_method_command(method, method_config, learners, updates_per_task) -> None:
    """Check that METHOD (a registered name or package.module:Class) keeps the method contract.

    Protocol and config; then on every learner a short continual run whose every hook call is
    checked: nothing outside the declared `touches` scope changes, the output is unchanged if the
    method declares `preserves_output`, trainable parameters stay in the optimizer, the same seed
    gives the same run, and a checkpointed run resumes exactly. See ctmarl/validate_method.py.
    """
    from ctmarl.method import load_method_config
    from ctmarl.validate_method import Setting, validate_method

    overrides = load_method_config(method_config) if method_config else None
    report = validate_method(method, overrides, tuple(learners) or None, Setting(updates_per_task=updates_per_task))
    for line in report.lines():
        click.echo(line)
    if not report.ok:
        first = report.failures[0]
        raise CtmarlError(f"{method}: {len(report.failures)} check(s) failed; first: {first.name}: {first.detail}")


def _register_export() -> None:
    from ctmarl.export import export_command

    main.add_command(export_command)


_register_export()


def _print_summary(record: dict, path: Path | None) -> None:
    m, timing = record["metrics"], record["timing"]
    width = max([14, *(len(name) for name in record["tasks"])])
    click.echo(f"{'task':<{width}} {'final score':>11} {'AUC':>7}")
    for name, final, auc in zip(record["tasks"], m["final_score_per_task"], m["auc_per_task"]):
        click.echo(f"{name:<{width}} {final:>11.3f} {auc:>7.3f}")
    forgetting = "n/a" if m["forgetting"] is None else f"{m['forgetting']:.3f}"
    click.echo(f"performance {m['performance']:.3f}  AUC {m['auc']:.3f}  forgetting {forgetting}")
    click.echo(f"{timing['env_steps']} env steps, {timing['updates']} updates in {timing['wall_time_s']:.1f}s "
               f"({timing['env_steps_per_s']:.0f} env steps/s)")
    if path is not None:
        click.echo(f"record: {path}")


if __name__ == "__main__":
    main()
