from dataclasses import dataclass

import pytest

from ctmarl.config import from_mapping, stable_hash
from ctmarl.errors import ConfigError


@dataclass(frozen=True)
class Inner:
    width: int


@dataclass(frozen=True)
class Outer:
    name: str
    rate: float
    flag: bool = False
    sizes: tuple[int, ...] = ()
    inner: Inner | None = None

    def __post_init__(self):
        if self.rate < 0:
            raise ValueError(f"rate: must be >= 0, got {self.rate}")


def test_builds_nested_and_converts():
    out = from_mapping(Outer, {"name": "a", "rate": 1, "sizes": [1, 2], "inner": {"width": 3}}, "f.yaml")
    assert out == Outer("a", 1.0, False, (1, 2), Inner(3))
    assert isinstance(out.rate, float)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"name": "a", "rate": 1, "colour": 2}, "f.yaml: unknown key 'colour'; allowed keys: flag, inner, name, rate, sizes"),
        ({"rate": 1}, "f.yaml: missing required key 'name'"),
        ({"name": "a", "rate": "fast"}, "f.yaml.rate: expected a number, got str 'fast'"),
        ({"name": "a", "rate": 1, "flag": 1}, "f.yaml.flag: expected true or false, got int 1"),
        ({"name": "a", "rate": 1, "inner": {"width": True}}, "f.yaml.inner.width: expected an integer, got bool True"),
        ({"name": "a", "rate": -1}, "f.yaml: rate: must be >= 0, got -1.0"),
        ([1, 2], "f.yaml: expected a mapping, got list [1, 2]"),
    ],
)
def test_errors_name_file_and_key(data, message):
    with pytest.raises(ConfigError) as info:
        from_mapping(Outer, data, "f.yaml")
    assert str(info.value) == message


def test_stable_hash_ignores_key_order():
    assert stable_hash({"a": 1, "b": [1, 2]}) == stable_hash({"b": [1, 2], "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})
