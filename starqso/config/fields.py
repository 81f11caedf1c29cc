"""The validator library of the run configuration: each check maps (dotted key,
value) to the value to store, or raises InputError with one line."""

from __future__ import annotations

import dataclasses
import math
import re
import reprlib
import typing
from collections.abc import Callable
from dataclasses import field
from typing import Any

from starqso.errors import InputError


def source_suffix(source: str) -> str:
    """Message suffix naming where values came from; ``<dict>``-style names are not files."""
    return f" in {source}" if source.startswith("<") else f" in file {source}"


# Error messages show values through this: a bounded repr, however large the value (a repr
# of a whole value before truncating it could take minutes and gigabytes).
_REPR = reprlib.Repr()

_REPR.maxstring = _REPR.maxother = 60

_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = 12


def shown_value(value: Any) -> str:
    """``repr(value)`` in at most 80 characters."""
    try:
        text = _REPR.repr(value)
    except ValueError:  # an int of more than 4300 digits has no repr
        text = f"<int of {value.bit_length()} bits>"
    return text if len(text) <= 80 else text[:77] + "..."


def fail(key: str, expected: str, value: Any, where: str = "") -> typing.NoReturn:
    raise InputError(f"{key} must be {expected}. Received: {shown_value(value)}{where}")


# --- Field checks: each maps (dotted key, value) to the value to store, or raises InputError ---

Check = Callable[[str, Any], Any]

# PyYAML follows YAML 1.1, where a float needs a dot: `1e-3` loads as the string "1e-3". Accept
# exactly that spelling in number fields, since that is how people write learning rates.
_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def setting(default: Any, check: Check) -> Any:
    """A dataclass field with ``default`` whose values ``check`` validates and converts."""
    return field(default=default, metadata={"check": check})


def _check(expected: str, accept: Callable[[Any], bool], convert: Callable = lambda v: v) -> Check:
    def check(key: str, value: Any) -> Any:
        if not accept(value):
            fail(key, expected, value)
        return convert(value)
    return check


def _is_int(value: Any) -> bool:  # bool is an int subclass, and 3.0 would hide a typo
    return isinstance(value, int) and not isinstance(value, bool)


def integer(*, minimum: int) -> Check:
    return _check(f"an integer >= {minimum}", lambda v: _is_int(v) and v >= minimum)


def optional_integer(*, minimum: int) -> Check:  # or None (YAML null)
    return _check(f"an integer >= {minimum} or null",
                  lambda v: v is None or (_is_int(v) and v >= minimum))


def fwhm_tuple() -> Check:  # stored as a tuple of floats; empty allowed
    return _check("a list of FWHMs in (0, 6] arcsec (may be empty)",
                  lambda v: isinstance(v, (list, tuple)) and all(
                      (_is_int(item) or isinstance(item, float)) and 0 < item <= 6
                      for item in v), lambda v: tuple(float(item) for item in v))


def int_tuple() -> Check:  # stored as a tuple
    return _check("a non-empty list of integers >= 1", lambda v: isinstance(v, (list, tuple))
                  and len(v) > 0 and all(_is_int(item) and item >= 1 for item in v), tuple)


def class_names() -> Check:  # stored as a tuple; one of the class lists models may tell apart
    from starqso.schema import SUPPORTED_CLASSES

    known = [list(classes.names) for classes in SUPPORTED_CLASSES]
    return _check(f"one of {' or '.join(map(str, known))}",
                  lambda v: isinstance(v, (list, tuple)) and list(v) in known, tuple)


def flag() -> Check:
    return _check("true or false", lambda v: isinstance(v, bool))


def choice(options: tuple[str, ...]) -> Check:
    return _check(f"one of {', '.join(options)}", lambda v: isinstance(v, str) and v in options)


def optional_text() -> Check:
    return _check("a non-empty string or null",
                  lambda v: v is None or (isinstance(v, str) and v != ""))


def text() -> Check:
    return _check("a non-empty string", lambda v: isinstance(v, str) and v != "")


def _as_float(value: Any) -> float:
    """An int, a float or an exponent string as a float; NaN for anything else."""
    if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value.strip()):
        return float(value)
    if not (_is_int(value) or isinstance(value, float)):
        return math.nan
    try:
        return float(value)
    except OverflowError:  # an int too large for a float
        return math.inf


def number(*, minimum: float, maximum: float | None = None, open_min: bool = False,
           open_max: bool = False, optional: bool = False) -> Check:
    """A finite number in a range (``open_*``: that end excluded), stored as a float."""
    if maximum is None:
        limits = f"{'>' if open_min else '>='} {minimum}"
    else:
        limits = f"in {'(' if open_min else '['}{minimum}, {maximum}{')' if open_max else ']'}"

    def accept(value: Any) -> bool:
        if value is None:
            return optional
        result = _as_float(value)
        low = result > minimum if open_min else result >= minimum
        high = maximum is None or (result < maximum if open_max else result <= maximum)
        return math.isfinite(result) and low and high

    return _check(f"a number {limits}" + (" or null" if optional else ""), accept,
                  lambda v: None if v is None else _as_float(v))


def optional_number(**limits: Any) -> Check:  # or None (YAML null)
    return number(**limits, optional=True)


def check_fields(config: Any, section: str) -> None:
    """Apply each field's check to frozen dataclass ``config`` and store the converted value."""
    for item in dataclasses.fields(config):
        if "check" in item.metadata:
            key = f"{section}.{item.name}" if section else item.name
            value = item.metadata["check"](key, getattr(config, item.name))
            object.__setattr__(config, item.name, value)  # frozen: bypass __setattr__ once
