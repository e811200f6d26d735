"""Fuzz the input loaders with mutated copies of the shipped scenarios and of a run record (#21).

    python benchmarks/fuzz_inputs.py --count 2000 --seed 1 [--records 400] [--time-limit 2]

Each mutant is written to a file and loaded in this process the way ctmarl loads it: a scenario as
``ctmarl evaluate --scenario FILE`` does (:func:`ctmarl.scenario.load_scenario_file`, which checks
every task under every tier and every tier's learner overrides against every registered learner,
then each tier's learner configs once more), a record as the leaderboard does
(:func:`ctmarl.leaderboard.admit`, which starts with :func:`ctmarl.record.load_record`). Each case
runs under a time limit (``SIGALRM``). Outcomes:

================  ===========================================================================
rejected          a :class:`ctmarl.errors.CtmarlError`: the clean one-line ``error:`` of the CLI
crashed           any other exception (a traceback for the user)
hung              the time limit passed
accepted-invalid  loaded, although the mutator put in something that must be refused
accepted-valid    loaded, and nothing the mutator did had to be refused
================  ===========================================================================

The mutator knows when a mutation must be refused: a NaN, infinite or huge number (1e308, 10**39)
anywhere; 0 or -1 in a field whose range excludes it (the shipped scenarios' fields where 0 or a
negative value is valid are listed in ``ZERO_OK`` / ``NEGATIVE_OK``); an unknown key, a value of
the wrong type, a duplicate or non-string key, deep nesting, an alias bomb, a ``!!python`` tag,
non-UTF-8 bytes, a 10**6-character string or an ``env.family`` naming a module. Deleting a key,
prepending a UTF-8 byte-order mark or a huge number where no rule bounds it may be valid.
``tests/test_fuzz_inputs.py`` runs the same mutator on a few hundred cases.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import math
import os
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
SCENARIO_FILES = tuple(sorted((REPO / "scenarios").glob("*.yaml")))
#: The smallest committed record (a smoke run): mutants of it go through leaderboard admission.
RECORD_FILE = REPO / "leaderboard" / "records" / "matrix_drift-v1_smoke_qmix_none_seed0.yaml"

REJECTED, CRASHED, HUNG, ACCEPTED_INVALID, ACCEPTED_VALID = (
    "rejected", "crashed", "hung", "accepted-invalid", "accepted-valid")
OUTCOMES = (REJECTED, CRASHED, HUNG, ACCEPTED_INVALID, ACCEPTED_VALID)

#: Numbers put in place of a number. 0 and -1 may be valid (see ZERO_OK, NEGATIVE_OK); the others
#: are outside every range (not finite, beyond float32, or beyond 2**53).
BAD_NUMBERS = (0, -1, 1e308, math.nan, math.inf, -math.inf, 10**39, -(10**39))
#: Keys of the shipped scenarios whose range includes 0 / negative numbers (unit weights: a unit
#: type's weight may be 0; payoff entries are any finite number within +-1e6).
ZERO_OK = {"payoff", "miscapture_punishment", "td_lambda", "sight_range", "reflect_probability",
           "epsilon_anneal_steps", "gamma", "epsilon_start", "epsilon_finish", "seed", "paying_kind",
           "decoy_reward", "stalker", "zealot", "marine", "marauder", "zergling", "hydralisk"}
NEGATIVE_OK = {"payoff", "miscapture_punishment", "decoy_reward", "seed"}
#: Record fields whose type the leaderboard relies on (key paths; "*" is any key or index).
RECORD_TYPED = {
    "schema_version": int, "seed": int, "config_hash": str, "content_hash": str,
    "scenario": dict, "scenario.name": str, "scenario.version": int, "scenario.tier": str,
    "scenario.definition_hash": str, "learner": dict, "learner.name": str, "learner.entry_point": str,
    "learner.config": dict, "method": dict, "method.name": str, "method.entry_point": str, "method.config": dict,
    "provenance": dict, "timing": dict, "timing.env_steps": int, "timing.updates": int,
    "timing.wall_time_s": float, "tasks": list, "tasks.*": str, "curves": dict, "curves.*": list,
    "curves.*.*": float, "R": list, "R.*": list, "R.*.*": float, "metrics": dict, "metrics.performance": float,
    "metrics.auc": float, "metrics.auc_per_task": list, "metrics.auc_per_task.*": float,
    "metrics.forgetting": float,
}


@dataclass(frozen=True)
class Mutant:
    """One mutated file: what it was made from, how, and whether loading it must fail."""

    source: str
    kind: str
    data: bytes
    must_reject: bool
    detail: str = ""


# --- the tree: paths of keys and indices into plain YAML data ------------------------------------

Path_ = tuple[Any, ...]


def nodes(tree: Any, prefix: Path_ = ()) -> Iterator[tuple[Path_, Any]]:
    """Every (path, value) below the root, parents before children."""
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else ()
    for key, value in items:
        yield (*prefix, key), value
        yield from nodes(value, (*prefix, key))


def get(tree: Any, path: Path_) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def put(tree: Any, path: Path_, value: Any) -> None:
    get(tree, path[:-1])[path[-1]] = value


def last_key(path: Path_) -> str:
    """The nearest mapping key on ``path`` (a payoff entry's is "payoff")."""
    return next((str(k) for k in reversed(path) if isinstance(k, str)), "")


def dotted(path: Path_) -> str:
    return ".".join(str(k) for k in path)


#: libyaml's emitter and parser when PyYAML has them: the mutator's own speed only.
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def dump(tree: Any) -> str:
    """Block-style YAML, one key per line and every scalar on its line (so text edits are safe)."""
    return yaml.dump(tree, Dumper=_DUMPER, sort_keys=False, default_flow_style=False, width=10**9,
                     allow_unicode=True)


@functools.lru_cache(maxsize=None)
def parsed(source: Path) -> Any:
    return yaml.load(source.read_text(), Loader=_LOADER)


# --- what must be refused -------------------------------------------------------------------------

class Judge:
    """Whether a value put at a path must be refused, for one kind of input."""

    def open(self, path: Path_) -> bool:
        """Whether the mutator may change ``path``."""
        return True

    def number(self, path: Path_, value: Any) -> bool:
        raise NotImplementedError

    def wrong_type(self, path: Path_, value: Any) -> bool:
        raise NotImplementedError

    def changed(self, must_reject: bool) -> bool:
        """The verdict for a changed document (a record also fails its content hash)."""
        return must_reject


class ScenarioJudge(Judge):
    def number(self, path: Path_, value: Any) -> bool:
        if not (isinstance(value, (int, float)) and math.isfinite(value) and abs(value) < 1e30):
            return True
        key = last_key(path)
        if value == 0:
            return key not in ZERO_OK
        if value < 0:
            return key not in NEGATIVE_OK
        return False

    def wrong_type(self, path: Path_, value: Any) -> bool:
        return True  # every scenario field is typed; none of the shipped ones is optional (null)


class RecordJudge(Judge):
    """Records are sealed by hashes: a mutant is re-sealed (hashes recomputed) half of the time, so
    that the checks behind the hashes are reached; one that is not must fail its content hash."""

    #: Number fields that may hold null.
    NULLABLE = {"metrics.forgetting", "metrics.auc_per_task.*", "R.*.*", "curves.*.*"}

    def __init__(self, resealed: bool) -> None:
        self.resealed = resealed

    def open(self, path: Path_) -> bool:
        return not (self.resealed and path[0] in ("config_hash", "content_hash"))  # sealing rewrites them

    @staticmethod
    def pattern(path: Path_) -> str:
        """``path`` as a RECORD_TYPED key: indices and curve column names are "*"."""
        return ".".join("*" if isinstance(k, int) or (path[0] == "curves" and i == 1) else str(k)
                        for i, k in enumerate(path))

    def expected(self, path: Path_) -> type | None:
        return RECORD_TYPED.get(self.pattern(path))

    def number(self, path: Path_, value: Any) -> bool:
        if self.expected(path) is int and not isinstance(value, int):
            return True
        finite = isinstance(value, (int, float)) and math.isfinite(value)
        return not finite and path[0] == "metrics"

    def wrong_type(self, path: Path_, value: Any) -> bool:
        expected = self.expected(path)
        if expected is None:
            return False
        if expected is float:
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            return not (number or value is None and self.pattern(path) in self.NULLABLE)
        return isinstance(value, bool) or not isinstance(value, expected)

    def required(self, path: Path_) -> bool:
        return self.expected(path) is not None and path[0] != "curves"

    def changed(self, must_reject: bool) -> bool:
        return must_reject or not self.resealed


# --- mutations ---------------------------------------------------------------------------------------

Mutation = Callable[[random.Random, Any, Judge], tuple[Any, bool, str]]
"""(rng, tree, judge) -> (tree or text, must_reject, detail); the tree is a private copy."""


def _pick(rng: random.Random, tree: Any, want: Callable[[Any], bool], judge: Judge) -> tuple[Path_, Any] | None:
    found = [(p, v) for p, v in nodes(tree) if want(v) and judge.open(p)]
    return rng.choice(found) if found else None


def _kind(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return repr(value)
    return "number" if isinstance(value, (int, float)) else type(value).__name__


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_leaf(value: Any) -> bool:
    return not isinstance(value, (dict, list))


def delete_key(rng, tree, judge):
    path = rng.choice([p for p, _ in nodes(tree) if isinstance(p[-1], str) and judge.open(p)])
    del get(tree, path[:-1])[path[-1]]
    return tree, judge.changed(isinstance(judge, RecordJudge) and judge.required(path)), dotted(path)


def unknown_key(rng, tree, judge):
    found = _pick(rng, tree, lambda v: isinstance(v, dict), judge)
    mapping, where = (get(tree, found[0]), dotted(found[0])) if found and rng.random() < 0.8 else (tree, "(top)")
    mapping["zz_unknown_key"] = rng.choice([1, "x", [1], {"a": 1}])
    return tree, judge.changed(isinstance(judge, ScenarioJudge)), where


def wrong_type(rng, tree, judge):
    path, current = _pick(rng, tree, lambda v: True, judge)
    value = rng.choice([v for v in ("abc", [1, 2], {"a": 1}, True, None, 3) if _kind(v) != _kind(current)])
    put(tree, path, value)
    return tree, judge.changed(judge.wrong_type(path, value)), f"{dotted(path)} = {value!r}"


def bad_number(rng, tree, judge):
    found = _pick(rng, tree, _is_number, judge)
    if found is None:
        return wrong_type(rng, tree, judge)
    path, _ = found
    value = rng.choice(BAD_NUMBERS)
    put(tree, path, value)
    return tree, judge.changed(judge.number(path, value)), f"{dotted(path)} = {value!r}"


def deep_nesting(rng, tree, judge):
    depth = rng.choice([40, 1000, 100_000])
    if rng.random() < 0.5:  # flow style: [[[...]]]
        return _text_leaf(rng, tree, "[" * depth + "1" + "]" * depth, judge), True, f"{depth} deep, flow"
    lines = "".join(f"{'  ' * (i + 1)}-\n" for i in range(min(depth, 200)))  # block style
    return _text_leaf(rng, tree, "\n" + lines.rstrip("\n") + " 1", judge, block=True), True, f"{min(depth, 200)} deep, block"


def huge_string(rng, tree, judge):
    path, _ = _pick(rng, tree, _is_leaf, judge)
    length = rng.choice([10**6, 2 * 10**6])  # 2 * 10**6 is also over a config file's 1 MiB
    put(tree, path, "x" * length)
    # every scenario string is at most 10,000 characters; a record's are free where no type rules
    return tree, judge.changed(isinstance(judge, ScenarioJudge) or judge.wrong_type(path, "x")), dotted(path)


def non_string_key(rng, tree, judge):
    found = _pick(rng, tree, lambda v: isinstance(v, dict), judge)
    mapping = get(tree, found[0]) if found else tree
    mapping[rng.choice([1, 2.5, True, None])] = "x"
    return tree, True, dotted(found[0]) if found else "(top)"


def _text_leaf(rng, tree, text: str, judge: Judge, block: bool = False) -> str:
    """``tree`` dumped, with one leaf (a mapping value, when ``block``) replaced by raw YAML ``text``."""
    if block:  # a block sequence must follow a key and be indented deeper: a new top-level key
        tree["zz_deep"] = "__SENTINEL__"
    else:
        path, _ = _pick(rng, tree, _is_leaf, judge)
        put(tree, path, "__SENTINEL__")
    return dump(tree).replace("__SENTINEL__", text, 1)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _complete(line: str) -> bool:
    """Whether ``line`` is a whole "key: scalar" on its own (not the start of a quoted scalar)."""
    try:
        data = yaml.load(line.strip(), Loader=_LOADER)
    except yaml.YAMLError:
        return False
    return isinstance(data, dict) and len(data) == 1 and not isinstance(next(iter(data.values())), (dict, list))


def duplicate_key(rng, tree, judge):
    lines = dump(tree).splitlines(keepends=True)
    # "key: value" lines that hold the whole value (a complete line, the next not indented deeper)
    candidates = [i for i, line in enumerate(lines)
                  if ": " in line and not line.lstrip().startswith("- ") and not line.rstrip().endswith(":")
                  and (i + 1 == len(lines) or _indent(lines[i + 1]) <= _indent(line)) and _complete(line)]
    i = rng.choice(candidates)
    key = lines[i].split(": ", 1)[0]
    copy_line = f"{key}: {rng.choice(['7', 'abc', '0.5', lines[i].split(': ', 1)[1].strip()])}\n"
    lines.insert(i + 1, copy_line)
    return "".join(lines), True, key.strip()


def alias_bomb(rng, tree, judge):
    levels = rng.choice([6, 10, 20])
    head = ["zz_bomb:\n", "- &b0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"]
    for level in range(1, levels):
        head.append(f"- &b{level} [" + ", ".join([f"*b{level - 1}"] * 9) + "]\n")
    body = _text_leaf(rng, tree, f"*b{levels - 1}", judge)
    # the anchors must come first: put the bomb key at the top of the mapping
    return "".join(head) + body, True, f"{levels} levels"


def python_tag(rng, tree, judge):
    tag = rng.choice(["!!python/object/apply:os.system ['echo fuzz-tag-executed']",
                      "!!python/name:os.system", "!!binary aGVsbG8=", "!!set {a: null}",
                      "!!timestamp 2024-01-01", "!custom x"])
    return _text_leaf(rng, tree, tag, judge), True, tag


def huge_integer_text(rng, tree, judge):
    digits = rng.choice([40, 5000, 100000])
    return _text_leaf(rng, tree, "9" * digits, judge), True, f"{digits} digits"


def binary_garbage(rng, tree, judge):
    garbage = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))) + b"\xff"
    text = dump(tree).encode()
    at = rng.randrange(len(text)) if rng.random() < 0.7 else 0
    return text[:at] + garbage + text[at:], True, f"{len(garbage)} bytes at {at}"


def other_encoding(rng, tree, judge):
    text = dump(tree)
    encoding = rng.choice(["utf-16", "utf-16-le", "utf-32", "latin-1"])
    if encoding == "latin-1":  # a non-ASCII character, so the bytes are not UTF-8
        text = text.replace(": ", ": café ", 1) if rng.random() < 0.5 else "# é\n" + text
    return text.encode(encoding), True, encoding


def byte_order_mark(rng, tree, judge):
    return b"\xef\xbb\xbf" + dump(tree).encode(), False, "UTF-8 BOM"  # the same data


def family_import(rng, tree, judge):
    if not isinstance(tree.get("env"), dict):
        return wrong_type(rng, tree, judge)
    tree["env"]["family"] = rng.choice(["this:s", "os:system", "ctmarl.envs.matrix:MatrixGameEnv",
                                        "nowhere.module:Env", "x" * 10**5])
    return tree, True, shorten_text(tree["env"]["family"])


def shorten_text(text: str) -> str:
    return text if len(text) < 60 else text[:57] + "..."


SCENARIO_MUTATIONS: dict[str, Mutation] = {
    "delete_key": delete_key, "unknown_key": unknown_key, "wrong_type": wrong_type, "bad_number": bad_number,
    "duplicate_key": duplicate_key, "deep_nesting": deep_nesting, "alias_bomb": alias_bomb,
    "binary_garbage": binary_garbage, "other_encoding": other_encoding, "byte_order_mark": byte_order_mark,
    "python_tag": python_tag, "non_string_key": non_string_key, "huge_string": huge_string,
    "huge_integer_text": huge_integer_text, "family_import": family_import,
}
#: Numbers are what most scenario bugs are about: they get a larger share of the mutants.
SCENARIO_WEIGHTS = {name: 4 if name == "bad_number" else 2 if name in ("wrong_type", "delete_key") else 1
                    for name in SCENARIO_MUTATIONS}
RECORD_MUTATIONS = {name: m for name, m in SCENARIO_MUTATIONS.items() if name != "family_import"}


def seal_record(tree: Any) -> None:
    """Recompute a mutated record's hashes, where its structure still allows it."""
    from ctmarl.record import seal

    with contextlib.suppress(Exception):
        seal(tree)


def mutate(rng: random.Random, source: Path, kind: str) -> Mutant:
    """One mutant of ``source`` by mutation ``kind`` (a record's may be re-sealed)."""
    tree = parsed(source)
    is_record = source == RECORD_FILE
    judge: Judge = RecordJudge(resealed=rng.random() < 0.5) if is_record else ScenarioJudge()
    mutation = (RECORD_MUTATIONS if is_record else SCENARIO_MUTATIONS)[kind]
    result, must_reject, detail = mutation(rng, copy.deepcopy(tree), judge)
    if is_record and isinstance(result, dict) and judge.resealed:
        seal_record(result)
    if isinstance(result, (dict, list)):
        result = dump(result)
    data = result.encode() if isinstance(result, str) else result
    return Mutant(source.name, kind, data, must_reject, detail)


def mutants(count: int, seed: int, records: int = 0) -> Iterator[Mutant]:
    """``count`` scenario mutants (round-robin over the shipped files) and ``records`` record ones."""
    rng = random.Random(seed)
    names, weights = zip(*SCENARIO_WEIGHTS.items())
    for i in range(count):
        yield mutate(rng, SCENARIO_FILES[i % len(SCENARIO_FILES)], rng.choices(names, weights)[0])
    for _ in range(records):
        yield mutate(rng, RECORD_FILE, rng.choice(sorted(RECORD_MUTATIONS)))


# --- loading under a time limit ----------------------------------------------------------------------

class Timeout(BaseException):
    """The per-case time limit passed (a BaseException: code under test cannot swallow it)."""


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise :class:`Timeout` in this (main) thread after ``seconds``."""
    def expire(signum, frame):
        raise Timeout()

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def load_scenario(path: Path) -> None:
    """As ``ctmarl evaluate --scenario FILE`` loads it, and every tier's learner configs."""
    from ctmarl.scenario import TIER_NAMES, load_scenario_file

    scenario = load_scenario_file(path)
    for tier in TIER_NAMES:
        scenario.learner_configs(tier)


def load_record(path: Path) -> None:
    """As ``ctmarl leaderboard build`` admits it."""
    from ctmarl.leaderboard import admit

    admit(path, path.parent)


@dataclass(frozen=True)
class Result:
    mutant: Mutant
    outcome: str
    error: str
    seconds: float


def run_case(mutant: Mutant, folder: Path, time_limit: float) -> Result:
    """Write ``mutant`` under its source's name in ``folder`` and load it."""
    from ctmarl.errors import CtmarlError

    path = folder / mutant.source
    path.write_bytes(mutant.data)
    load = load_record if mutant.source == RECORD_FILE.name else load_scenario
    start = time.perf_counter()
    outcome, error = (ACCEPTED_INVALID if mutant.must_reject else ACCEPTED_VALID), ""
    try:
        with deadline(time_limit):
            load(path)
    except Timeout:
        outcome = HUNG
    except CtmarlError as exc:
        outcome, error = REJECTED, str(exc)
    except Exception as exc:  # noqa: BLE001 -- counting them is the point
        outcome, error = CRASHED, f"{type(exc).__name__}: {exc}"
    return Result(mutant, outcome, error, time.perf_counter() - start)


def baselines(folder: Path) -> list[Result]:
    """Each unmutated source, loaded like its mutants (all must be accepted). This also imports
    what the loaders import, so no case's time limit pays for a first import."""
    originals = [Mutant(source.name, "original", source.read_bytes(), False) for source in (*SCENARIO_FILES, RECORD_FILE)]
    return [run_case(m, folder, 60.0) for m in originals]


def run(count: int, seed: int, records: int, time_limit: float) -> tuple[list[Result], list[Result]]:
    """The baselines, then every mutant, loaded in a scratch folder (with $CTMARL_ALLOW_IMPORT unset)."""
    os.environ.pop("CTMARL_ALLOW_IMPORT", None)
    with tempfile.TemporaryDirectory(prefix="ctmarl-fuzz-") as folder:
        first = baselines(Path(folder))
        return first, [run_case(m, Path(folder), time_limit) for m in mutants(count, seed, records)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000, help="scenario mutants")
    parser.add_argument("--records", type=int, default=None, help="record mutants [default: count / 5]")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--time-limit", type=float, default=2.0, help="seconds per case")
    parser.add_argument("--show", type=int, default=10, help="examples shown per bad outcome")
    args = parser.parse_args(argv)
    records = args.count // 5 if args.records is None else args.records
    start = time.perf_counter()
    originals, results = run(args.count, args.seed, records, args.time_limit)
    wall = time.perf_counter() - start
    for r in originals:
        if r.outcome != ACCEPTED_VALID:
            print(f"note: the unmutated {r.mutant.source} is {r.outcome}: {r.error[:300]}")
    totals = Counter(r.outcome for r in results)
    print(f"{len(results)} mutants ({args.count} scenario, {records} record), seed {args.seed}, "
          f"{wall:.1f} s, slowest case {max(r.seconds for r in results):.2f} s")
    for outcome in OUTCOMES:
        print(f"  {outcome:<17} {totals[outcome]}")
    print("by mutation (rejected / crashed / hung / accepted-invalid / accepted-valid):")
    kinds = sorted({(r.mutant.source == RECORD_FILE.name, r.mutant.kind) for r in results})
    for is_record, kind in kinds:
        counts = Counter(r.outcome for r in results
                         if r.mutant.kind == kind and (r.mutant.source == RECORD_FILE.name) == is_record)
        label = f"{'record' if is_record else 'scenario'} {kind}"
        print(f"  {label:<34} " + " / ".join(str(counts[o]) for o in OUTCOMES))
    for outcome in (CRASHED, HUNG, ACCEPTED_INVALID):
        for r in [r for r in results if r.outcome == outcome][: args.show]:
            print(f"{outcome}: {r.mutant.source} {r.mutant.kind} {r.mutant.detail}: {r.error[:300]}")
    return 0 if not (totals[CRASHED] or totals[HUNG] or totals[ACCEPTED_INVALID]) else 1


if __name__ == "__main__":
    sys.exit(main())
