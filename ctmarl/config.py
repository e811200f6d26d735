"""Plain YAML data -> frozen, typed dataclasses, with errors that name the file and key.

Every configuration in ctmarl (scenario, tier, protocol, env settings, learner and method
configs) is a frozen dataclass built by :func:`from_mapping`. It rejects unknown keys, reports
missing ones, checks each value against the field's annotation, and then lets the dataclass's
``__post_init__`` check ranges (raising ``ValueError``). We do this with dataclass introspection
rather than pydantic because the annotations we need are few (scalars, tuples, nested
dataclasses, plain mappings) and pydantic is not in the field's usual dependency set.

Every field gets default limits before its class's own checks (:func:`check_range` in each
``__post_init__`` adds the per-field ranges): a ``float`` must be finite and within float32
(|x| <= 3.4e38: every number ends up in a float32 tensor or beside one); an ``int`` within
+-2**53 (exact as a float, safe in JSON); a ``str`` at most 10,000 characters. Values that come
through as ``Any`` (a tier's ``env`` or ``learner`` overrides, a task's settings) are checked when
they are merged into the typed config they belong to.

:func:`read_yaml` is the one YAML reader (scenarios, method configs, sweeps, records) and reads
plain data only; see its docstring for what it refuses and why.
"""

from __future__ import annotations

import codecs
import dataclasses
import hashlib
import json
import math
import os
import re
import stat
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

import yaml

from ctmarl.errors import ConfigError, shorten

T = TypeVar("T")

#: Default limits of every config field (see the module docstring).
FLOAT32_MAX = 3.4028234663852886e38
MAX_INT = 2**53
MAX_STRING_CHARS = 10_000

#: What :func:`read_yaml` reads at most. A config (scenario, method config, sweep) is a few KiB
#: written by hand: 1 MiB is generous. A record holds curves and neuron logs: a quick-tier record
#: is under 100 KiB, a paper-scale one a few MiB, so 64 MiB leaves ample room.
MAX_CONFIG_BYTES = 2**20
MAX_RECORD_BYTES = 64 * 2**20
#: Deepest nesting of lists and mappings, counted after expanding aliases (scenarios and records
#: nest 5 deep).
MAX_DEPTH = 32
#: Nodes that aliases may add to a document beyond those written in it. The shipped scenarios
#: reuse a payoff table (``&M1`` / ``*M1``: 13 nodes); an alias bomb ("billion laughs") needs
#: billions, and is refused as soon as its expansion passes this, in milliseconds.
MAX_ALIAS_NODES = 10_000


def from_mapping(cls: type[T], data: Any, where: str) -> T:
    """Build dataclass ``cls`` from ``data``; ``where`` names the source ("file.yaml: tiers.quick")."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {_describe(data)}")
    for key in data:
        if not isinstance(key, str):
            raise ConfigError(f"{where}: keys must be strings, got {_describe(key)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {shorten(repr(unknown[0]))}; allowed keys: {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(cls)
    values = {}
    for name, field in fields.items():
        if name not in data:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{where}: missing required key {name!r}")
            continue
        values[name] = _convert(hints[name], data[name], f"{where}.{name}")
    try:
        return cls(**values)
    except (ValueError, TypeError, ArithmeticError) as exc:  # a range check, or a value of the wrong kind
        raise ConfigError(f"{where}: {exc}") from None


def check_range(owner: Any, name: str, low: float | None = None, high: float | None = None, *,
                low_open: bool = False, high_open: bool = False) -> None:
    """Raise ``ValueError("<name>: must be >= <low> (allowed: [low, high]), got <value>")`` unless
    ``owner.<name>`` is a finite number in the range; for ``__post_init__`` range checks (the
    caller's ``from_mapping`` adds the file and key path in front)."""
    value = getattr(owner, name)
    allowed = (f"{'(' if low_open else '['}{_number(low) if low is not None else '-inf'}, "
               f"{_number(high) if high is not None else 'inf'}{')' if high_open else ']'}")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not _within_float32(value):
        raise ValueError(f"{name}: must be a finite number in {allowed}, got {_big(value) if isinstance(value, int) else shorten(repr(value))}")
    if low is not None and (value <= low if low_open else value < low):
        bound = f"> {_number(low)}" if low_open else f">= {_number(low)}"
    elif high is not None and (value >= high if high_open else value > high):
        bound = f"< {_number(high)}" if high_open else f"<= {_number(high)}"
    else:
        return
    raise ValueError(f"{name}: must be {bound} (allowed: {allowed}), got {value}")


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def to_plain(obj: Any) -> Any:
    """A dataclass (or nested structure of them) as plain YAML/JSON data."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj


def stable_hash(data: Any) -> str:
    """sha256 of plain data in a canonical JSON form (sorted keys, no whitespace)."""
    text = json.dumps(to_plain(data), sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {shorten(repr(value))}" if not isinstance(value, Mapping) else "a mapping"


def _convert(annotation: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _convert(option, value, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0])
    if annotation is Any:
        return value
    if dataclasses.is_dataclass(annotation):
        return from_mapping(annotation, value, where)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {_describe(value)}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {_describe(value)}")
        if abs(value) > MAX_INT:
            raise ConfigError(f"{where}: must be an integer in [-2**53, 2**53], got {_big(value)}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {_describe(value)}{_exponent_hint(value)}")
        if not _within_float32(value):
            raise ConfigError(f"{where}: must be a finite number within float32 (|x| <= 3.4e38), "
                              f"got {_big(value)}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {_describe(value)}")
        if len(value) > MAX_STRING_CHARS:
            raise ConfigError(f"{where}: must be a string of at most {MAX_STRING_CHARS} characters, "
                              f"got {len(value)}: {shorten(repr(value))}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {_describe(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected a list of {len(args)} items, got {len(value)}")
        return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin in (Mapping, dict) or annotation in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {_describe(value)}")
        return types.MappingProxyType(dict(value))
    raise TypeError(f"config annotation {annotation!r} at {where} is not supported")


def _within_float32(value: int | float) -> bool:
    """Finite and |value| <= float32's largest (ints of any size compare exactly, no overflow)."""
    return abs(value) <= FLOAT32_MAX if isinstance(value, int) else math.isfinite(value) and abs(value) <= FLOAT32_MAX


def _big(value: int | float) -> str:
    """A number for an error message: huge integers by their size, not their 10^4 digits."""
    if isinstance(value, int) and abs(value) > 10**20:
        return f"an integer of about {int(abs(value).bit_length() * math.log10(2)) + 1} digits"
    return shorten(repr(value))


def _exponent_hint(value: Any) -> str:
    """PyYAML (YAML 1.1) reads ``1e-3`` as a string; say how to write it as a number."""
    if isinstance(value, str) and re.fullmatch(r"[-+]?[0-9]+(\.[0-9]*)?[eE][-+]?[0-9]+", value):
        return " (YAML 1.1 needs a dot and a signed exponent for a number: write 1.0e-3, not 1e-3)"
    return ""


def read_yaml(source: Any, where: str, error: type[Exception] = ConfigError, what: str = "",
              max_bytes: int = MAX_CONFIG_BYTES) -> Any:
    """Parse the YAML of ``source`` (a path or a ``Traversable``) as plain data.

    Every YAML file ctmarl reads comes through here. Anything that is not plain data, or that
    plain data does not need, raises ``error`` with one line naming ``where`` (``what`` says which
    kind of file, e.g. "scenario file"):

    - before reading: a path that is not a regular file (a FIFO, a device, a folder: opened
      non-blocking, so a FIFO never hangs the reader), or one over ``max_bytes``
      (:data:`MAX_CONFIG_BYTES`; records pass :data:`MAX_RECORD_BYTES`);
    - text that is not UTF-8 (UTF-16/32, Latin-1, NUL bytes); a UTF-8 byte-order mark is dropped;
    - through PyYAML's own loader hooks (:class:`PlainDataLoader`, built like ``yaml.SafeLoader``), not checks
      after the fact: a duplicate key, a key that is not a string, a tag other than the standard
      scalar and collection ones (``!!python/...``, ``!!binary``, ``!!set``, timestamps), nesting
      deeper than :data:`MAX_DEPTH`, aliases that add more than :data:`MAX_ALIAS_NODES` nodes (an
      alias bomb is refused while it is composed, in milliseconds) or refer to themselves.
    """
    data = _read_bytes(source, where, error, what, max_bytes)
    try:
        return yaml.load(_decode(data, where, error), Loader=PlainDataLoader)  # noqa: S506 (a SafeLoader)
    except _Refused as exc:
        raise error(f"{where}: {_yaml_message(exc)}") from None
    except yaml.YAMLError as exc:
        raise error(f"{where}: not valid YAML: {_yaml_message(exc)}") from None


def _read_bytes(source: Any, where: str, error: type[Exception], what: str, max_bytes: int) -> bytes:
    """The bytes of ``source``, refusing non-regular files and files over ``max_bytes``."""
    kind = f" {what}" if what else ""
    if not isinstance(source, (str, os.PathLike)):  # a Traversable of an installed package
        try:
            data = source.read_bytes()
        except OSError as exc:
            raise error(f"{where}: cannot read{kind}: {exc.strerror or exc}") from None
    else:
        try:  # O_NONBLOCK: opening a FIFO for reading must not wait for a writer
            fd = os.open(source, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        except (OSError, ValueError) as exc:  # ValueError: a NUL character in the name
            raise error(f"{where}: cannot read{kind}: {getattr(exc, 'strerror', None) or exc}") from None
        try:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                raise error(f"{where}: cannot read{kind}: not a regular file ({_file_type(mode)})")
            with os.fdopen(fd, "rb", closefd=False) as handle:
                data = handle.read(max_bytes + 1)
        except OSError as exc:
            raise error(f"{where}: cannot read{kind}: {exc.strerror or exc}") from None
        finally:
            os.close(fd)
    if len(data) > max_bytes:
        raise error(f"{where}: larger than the {max_bytes // 2**20} MiB allowed for a{kind or ' YAML'} file")
    return data


def _file_type(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a plain file"


def _decode(data: bytes, where: str, error: type[Exception]) -> str:
    """UTF-8 text of ``data`` (a UTF-8 byte-order mark dropped); anything else is ``error``."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):  # also the UTF-32 marks
        raise error(f"{where}: the file is UTF-16 or UTF-32 text; save it as UTF-8")
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    if b"\x00" in data:
        raise error(f"{where}: the file holds NUL bytes (UTF-16 text or a binary file?); save it as UTF-8 text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{where}: not UTF-8 text (byte {data[exc.start:exc.start + 1]!r} at offset {exc.start}); "
                    "save it as UTF-8") from None


def _yaml_message(exc: yaml.YAMLError) -> str:
    """One line: the problem and where in the file (PyYAML's own text spans several lines)."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem:
        mark = exc.problem_mark
        context = f"{exc.context} " if exc.context else ""
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        return shorten(f"{context}{exc.problem}{at}".replace("\n", " "), 300)
    return shorten(str(exc).replace("\n", " "), 300)


class _Refused(yaml.MarkedYAMLError):
    """Valid YAML that is not plain data, or not data ctmarl needs (see :func:`read_yaml`)."""

    def __init__(self, problem: str, node_or_mark: Any) -> None:
        mark = getattr(node_or_mark, "start_mark", node_or_mark)
        super().__init__(problem=problem, problem_mark=mark)


_TAG = "tag:yaml.org,2002:"
#: The tags plain data needs (``None``: PyYAML's slot for every other tag).
_PLAIN_TAGS = {f"{_TAG}{name}" for name in ("null", "bool", "int", "float", "str", "seq", "map")}


if getattr(yaml, "__with_libyaml__", False):
    from yaml._yaml import CParser as _EventParser  # libyaml's scanner and parser: events 4x faster
else:
    class _EventParser(yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser):
        def __init__(self, stream: str) -> None:
            yaml.reader.Reader.__init__(self, stream)
            yaml.scanner.Scanner.__init__(self)
            yaml.parser.Parser.__init__(self)


class PlainDataLoader(_EventParser, yaml.composer.Composer, yaml.constructor.SafeConstructor, yaml.resolver.Resolver):
    """``yaml.SafeLoader``'s parts (with libyaml's event parser when PyYAML has it, as
    ``yaml.CSafeLoader``), restricted to plain data through PyYAML's hooks:

    - ``compose_node`` counts each node's expanded size and depth (aliases included) as it is
      composed, so nesting beyond :data:`MAX_DEPTH` and alias expansion beyond
      :data:`MAX_ALIAS_NODES` are refused before anything is built;
    - ``construct_mapping`` refuses duplicate and non-string keys (YAML would keep the last
      duplicate silently; ``1:``, ``on:``, ``null:`` are not names);
    - the constructor table holds only the standard scalar and collection tags; any other tag is
      refused by ``construct_undefined``; unquoted dates and ``=`` stay strings (no timestamp or
      value resolver);
    - an integer too long for Python's int() digit limit is a YAML error, not a ``ValueError``.
    """

    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag not in (f"{_TAG}timestamp", f"{_TAG}value")]
        for first, resolvers in yaml.resolver.Resolver.yaml_implicit_resolvers.items()
    }
    yaml_constructors = {tag: c for tag, c in yaml.constructor.SafeConstructor.yaml_constructors.items()
                         if tag in _PLAIN_TAGS}
    # libyaml's CParser also composes nodes, in C; the Python Composer (and so the hook below) does it here.
    get_single_node = yaml.composer.Composer.get_single_node
    get_node = yaml.composer.Composer.get_node
    check_node = yaml.composer.Composer.check_node

    def __init__(self, stream: str) -> None:
        _EventParser.__init__(self, stream)
        yaml.composer.Composer.__init__(self)
        yaml.constructor.SafeConstructor.__init__(self)
        yaml.resolver.Resolver.__init__(self)
        self._depth = 0
        self._written = 0  # nodes composed from the text itself
        self._expanded: dict[int, tuple[int, int]] = {}  # id(node) -> (nodes, depth) with aliases expanded

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            node = yaml.composer.Composer.compose_node(self, parent, index)
            if id(node) not in self._expanded:
                raise _Refused(f"alias *{shorten(event.anchor)} refers to a node that contains it "
                               "(recursive data is not plain data)", event.start_mark)
            return node
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _Refused(f"nested deeper than {MAX_DEPTH} levels", self.peek_event().start_mark)
        node = yaml.composer.Composer.compose_node(self, parent, index)
        self._depth -= 1
        self._written += 1
        self._expanded[id(node)] = self._expansion(node)
        return node

    def _expansion(self, node: Any) -> tuple[int, int]:
        """(nodes, depth) of ``node`` with every alias in it expanded; refuses bombs and depth."""
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [child for pair in node.value for child in pair]
        else:
            return 1, 0
        sizes = [self._expanded[id(child)] for child in children]
        nodes = 1 + sum(n for n, _ in sizes)
        depth = 1 + max((d for _, d in sizes), default=0)
        if nodes > self._written + MAX_ALIAS_NODES:
            raise _Refused(f"aliases expand this to {nodes} nodes, more than {MAX_ALIAS_NODES} beyond the "
                           f"{self._written} written (an alias bomb?)", node)
        if depth > MAX_DEPTH:
            raise _Refused(f"nested deeper than {MAX_DEPTH} levels once aliases are expanded", node)
        return nodes, depth

    def construct_mapping(self, node: Any, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == f"{_TAG}merge":  # "<<: *base" (merged keys may be overridden)
                    continue
                key = self.construct_object(key_node, deep=True)
                if not isinstance(key, str):
                    quoted = f" (quote it: '{key_node.value}')" if isinstance(key_node, yaml.ScalarNode) else ""
                    raise _Refused(f"mapping keys must be strings, got {type(key).__name__} "
                                   f"{shorten(repr(key))}{quoted}", key_node)
                if key in seen:
                    raise _Refused(f"duplicate key {shorten(repr(key))} (first at line "
                                   f"{seen[key].start_mark.line + 1}); YAML would silently keep the last one",
                                   key_node)
                seen[key] = key_node
        mapping = yaml.constructor.SafeConstructor.construct_mapping(self, node, deep=deep)
        for key in mapping:  # keys merged in with "<<"
            if not isinstance(key, str):
                raise _Refused(f"mapping keys must be strings, got {type(key).__name__} {shorten(repr(key))}", node)
        return mapping

    def construct_undefined(self, node: Any) -> Any:
        raise _Refused(f"tag {shorten(node.tag.replace(_TAG, '!!'))} is not allowed: plain data only (strings, numbers, "
                       "booleans, null, lists and mappings)", node)

    def construct_yaml_int(self, node: Any) -> int:
        try:
            return yaml.constructor.SafeConstructor.construct_yaml_int(self, node)
        except ValueError:  # Python's limit on int() digits
            raise _Refused(f"integer of {len(node.value)} characters is too long", node) from None


PlainDataLoader.add_constructor(None, PlainDataLoader.construct_undefined)
PlainDataLoader.add_constructor(f"{_TAG}int", PlainDataLoader.construct_yaml_int)
