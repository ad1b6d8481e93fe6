"""Search-space dimensions: small classes that read themselves from YAML and suggest
themselves to an Optuna trial (compare Optuna's distributions).

A YAML value becomes one dimension: a scalar is `Fixed`, a list is `Choice`,
`{low, high[, log]}` is `FloatRange` or `IntRange`. Each class checks its own
shape in `from_yaml`; `dimension()` only picks the class. Values are checked
one by one by the caller's `check` (a `TrainConfig` field's rules), so every
error names the key. A new kind of dimension is one class here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from leukoml.errors import LeukomlError

Check = Callable[[object], object]  # one value -> the value as kept (or LeukomlError)


def _values(key: str, kind: str, check: Callable[[object], None]) -> Check:
    """One YAML value of `kind` (int, float, or any `value`), checked by `check`."""
    def one(value):
        if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
            raise LeukomlError(f"{key}: expected an int, got {value!r}")
        if kind == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise LeukomlError(f"{key}: expected a number, got {value!r}")
            value = float(value)
        check(value)
        return value

    return one


@dataclass(frozen=True)
class Fixed:
    value: object

    @classmethod
    def from_yaml(cls, key: str, raw, one: Check) -> "Fixed":
        return cls(one(raw))

    def suggest(self, trial, name: str):
        return self.value

    def contains(self, value) -> bool:
        return value == self.value

    def describe(self) -> str:
        return f"fixed at {self.value!r}"


@dataclass(frozen=True)
class Choice:
    values: tuple

    @classmethod
    def from_yaml(cls, key: str, raw: list, one: Check) -> "Choice | Fixed":
        if not raw:
            raise LeukomlError(f"{key}: empty list")
        values = tuple(dict.fromkeys(one(v) for v in raw))
        return Fixed(values[0]) if len(values) == 1 else cls(values)

    def suggest(self, trial, name: str):
        return trial.suggest_categorical(name, list(self.values))

    def contains(self, value) -> bool:
        return value in self.values

    def describe(self) -> str:
        return f"one of {list(self.values)}"


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _bounds(key: str, raw: dict, allowed: set[str], one: Check) -> tuple:
    extra = sorted(set(raw) - allowed)
    if extra:
        raise LeukomlError(f"{key}: unknown key(s) {extra}; known keys: {sorted(allowed)}")
    if "low" not in raw or "high" not in raw:
        raise LeukomlError(f"{key}: a range needs both 'low' and 'high'")
    low, high = one(raw["low"]), one(raw["high"])
    if low > high:
        raise LeukomlError(f"{key}: low ({low}) > high ({high})")
    return low, high


@dataclass(frozen=True)
class FloatRange:
    low: float
    high: float
    log: bool = False

    @classmethod
    def from_yaml(cls, key: str, raw: dict, one: Check) -> "FloatRange":
        low, high = _bounds(key, raw, {"low", "high", "log"}, one)
        log = raw.get("log", False)
        if not isinstance(log, bool):
            raise LeukomlError(f"{key}: log expects true or false, got {log!r}")
        if log and low <= 0:
            raise LeukomlError(f"{key}: a log range needs low > 0")
        return cls(low, high, log)

    def suggest(self, trial, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high, log=self.log)

    def contains(self, value) -> bool:
        return _number(value) and self.low <= value <= self.high

    def describe(self) -> str:
        return f"in [{self.low:g}, {self.high:g}]"


@dataclass(frozen=True)
class IntRange:
    low: int
    high: int

    @classmethod
    def from_yaml(cls, key: str, raw: dict, one: Check) -> "IntRange":
        return cls(*_bounds(key, raw, {"low", "high"}, one))

    def suggest(self, trial, name: str) -> int:
        return trial.suggest_int(name, self.low, self.high)

    def contains(self, value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and (
            self.low <= value <= self.high)

    def describe(self) -> str:
        return f"an int in [{self.low}, {self.high}]"


RANGES = {"float": FloatRange, "int": IntRange}


def dimension(key: str, raw, kind: str, check: Callable[[object], None] = lambda value: None,
              searchable: bool = True):
    """The dimension a YAML value declares: `kind` is int, float or value (anything
    `check` accepts); a non-`searchable` key takes one value only."""
    one = _values(key, kind, check)
    if isinstance(raw, (list, dict)) and not searchable:
        raise LeukomlError(f"{key}: takes one value, not a list or a range")
    if isinstance(raw, list):
        return Choice.from_yaml(key, raw, one)
    if isinstance(raw, dict):
        if kind not in RANGES:
            raise LeukomlError(f"{key}: a range needs a number; give a value or a list")
        return RANGES[kind].from_yaml(key, raw, one)
    return Fixed.from_yaml(key, raw, one)
