"""Checking what a reader parsed: a small schema per file kind, one clear error per bad field.

A reader parses its file (``io_utils.read_json`` and the like) and checks the result here,
once, so that code past the reader can trust every type and range instead of failing
later with a TypeError or, worse, drawing a wrong figure. The first bad field raises one
``ArchbenchError`` naming the place ("run/history.jsonl line 3"), the field, the value
found, what was expected, and the fix.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from archbench.errors import ArchbenchError

INT_LIMIT = 2**63  # integers beyond int64 are never written by archbench (and overflow numpy and torch)


@dataclass(frozen=True)
class Kind:
    """What a field must hold: ``ok`` decides, ``expected`` says it to the user."""

    expected: str
    ok: Callable[[Any], bool]


def _finite(v: Any) -> bool:
    """A JSON number (bool is not one) that a float holds: not NaN, not infinite, not 10**400."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:
        return False


def _range_text(lo: float | None, hi: float | None) -> str:
    if lo is not None and hi is not None:
        return f" in [{lo:g}, {hi:g}]"
    if lo is not None:
        return f" >= {lo:g}"
    return "" if hi is None else f" <= {hi:g}"


def number(lo: float | None = None, hi: float | None = None, positive: bool = False, nonfinite: bool = False) -> Kind:
    """A finite number within [lo, hi] (> 0 if ``positive``); with ``nonfinite``, NaN or +inf too."""
    text = " > 0" if positive else _range_text(lo, hi)
    return Kind(
        f"a finite number{text}" + (" (or NaN)" if nonfinite else ""),
        lambda v: (
            (_finite(v) and not (positive and v <= 0) and (lo is None or v >= lo) and (hi is None or v <= hi))
            or (nonfinite and isinstance(v, float) and (math.isnan(v) or v == math.inf))
        ),
    )


def integer(lo: int | None = None, hi: int | None = None) -> Kind:
    """A JSON integer (not 2.0, not true) within [lo, hi] and within int64."""
    return Kind(
        f"an integer{_range_text(lo, hi)}",
        lambda v: (
            isinstance(v, int)
            and not isinstance(v, bool)
            and -INT_LIMIT < v < INT_LIMIT
            and (lo is None or v >= lo)
            and (hi is None or v <= hi)
        ),
    )


def one_of(*choices: str) -> Kind:
    return Kind("one of " + ", ".join(map(repr, choices)), lambda v: isinstance(v, str) and v in choices)


def or_null(kind: Kind) -> Kind:
    return Kind(f"{kind.expected} or null", lambda v: v is None or kind.ok(v))


STRING = Kind("a string", lambda v: isinstance(v, str))
NON_EMPTY_LIST = Kind("a non-empty list", lambda v: isinstance(v, list) and len(v) > 0)
OBJECT = Kind("an object", lambda v: isinstance(v, dict))
TEXT = Kind("a non-empty string", lambda v: isinstance(v, str) and v != "")
PERCENT = number(0, 100)


def show(value: Any) -> str:
    """A short, one-line description of a parsed value, in JSON's terms."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, int) and abs(value) >= INT_LIMIT:
        return "a number beyond int64"  # (and str() refuses one of over 4300 digits)
    text = repr(value)  # escapes newlines, so the message stays one line
    return text if len(text) <= 40 else text[:37] + "..."


class Fields:
    """The fields of one parsed JSON object (a file, a line of one, or an object inside one).

    ``where`` names the place for the user, ``fix`` says what to do about a bad field;
    ``prefix`` is the path of a nested object ("best.").
    """

    def __init__(self, data: Any, where: str, fix: str, prefix: str = "", noun: str = "field"):
        self.where, self.fix, self.prefix, self.noun = where, fix, prefix, noun
        if not isinstance(data, dict):
            what = f"{noun} {prefix[:-1]!r}" if prefix else "it"
            raise self.error(f"{what} is {show(data)}, expected an object")
        self.data = data

    def error(self, problem: str) -> ArchbenchError:
        return ArchbenchError(f"{self.where}: {problem}; {self.fix}")

    def get(self, key: str, kind: Kind) -> Any:
        name = f"{self.noun} {self.prefix + key!r}"
        if key not in self.data:
            raise self.error(f"{name} is missing")
        value = self.data[key]
        if not kind.ok(value):
            raise self.error(f"{name} is {show(value)}, expected {kind.expected}")
        return value

    def sub(self, key: str, nullable: bool = False) -> Fields | None:
        """A nested object (None where ``nullable`` and the field is null)."""
        value = self.get(key, or_null(OBJECT) if nullable else OBJECT)
        return None if value is None else Fields(value, self.where, self.fix, f"{self.prefix}{key}.", self.noun)

    def each(self, key: str, kind: Kind) -> list[Any]:
        """A non-empty list field, each item of ``kind``."""
        items = self.get(key, NON_EMPTY_LIST)
        for i, value in enumerate(items):
            if not kind.ok(value):
                raise self.error(f"{self.noun} '{self.prefix}{key}[{i}]' is {show(value)}, expected {kind.expected}")
        return list(items)

    def objects(self, key: str) -> list[Fields]:
        """A non-empty list field of objects."""
        return [
            Fields(v, self.where, self.fix, f"{self.prefix}{key}[{i}].", self.noun)
            for i, v in enumerate(self.get(key, NON_EMPTY_LIST))
        ]

    def require(self, ok: bool, problem: str) -> None:
        """A rule between fields (``problem`` says what is wrong when ``ok`` is false)."""
        if not ok:
            raise self.error(problem)


def parse_cell(text: str) -> Any:
    """A CSV cell as the JSON value it stands for: "" is null, then an integer, a float, else the
    text itself (which a number's ``Kind`` then refuses by name)."""
    if text == "":
        return None
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    return text
