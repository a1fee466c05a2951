"""Configuration values: the error type and the scalar parsers every section uses.

Every problem is a ``ConfigError`` whose message starts with the dotted key it concerns.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from typing import Any

from ..errors import ArrowportError
from ..names import InvalidNameError, validate_name


class ConfigError(ArrowportError, ValueError):
    """The configuration is invalid; the message names the key."""

    error = "invalid_config"


_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)\s*\Z", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4}


def parse_size(value: object, key: str) -> int:
    """Parse ``123``, ``"64MiB"``, ``"16MB"`` or ``"1.5GiB"`` into bytes."""
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a size, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"{key}: must not be negative")
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ConfigError(
            f"{key}: expected a size such as 1048576, '64MiB' or '16MB', got {value!r}"
        )
    number, unit = float(match.group(1)), match.group(2).upper()
    binary = "I" in unit
    letter = unit.replace("I", "").replace("B", "")
    scale = 1024 ** " KMGT".index(letter or " ") if binary else _UNITS[letter]
    return int(number * scale)


def _check_keys(raw: Mapping[str, Any], allowed: set[str], where: str) -> None:
    for key in raw:
        if key not in allowed:
            hint = difflib.get_close_matches(str(key), sorted(allowed), n=1)
            suffix = f" (did you mean {hint[0]!r}?)" if hint else ""
            valid = ", ".join(sorted(allowed))
            raise ConfigError(f"{where}{key}: unknown key{suffix}; valid keys: {valid}")


def _mapping(value: object, key: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
    return value


def _int(value: object, key: str, minimum: int = 0, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
    if number < minimum or (maximum is not None and number > maximum):
        upper = f" and {maximum}" if maximum is not None else ""
        raise ConfigError(f"{key}: must be at least {minimum}{upper}, got {number}")
    return number


def _float(value: object, key: str) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if not math.isfinite(number) or number < 0:
        raise ConfigError(f"{key}: must be a finite, non-negative number, got {value!r}")
    return number


def _interval(seconds: float, key: str) -> float:
    if 0 < seconds < 0.05:
        raise ConfigError(f"{key}: must be 0 (off) or at least 0.05 seconds, got {seconds:g}")
    return seconds


def _bool(value: object, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in (
        "true",
        "yes",
        "1",
        "on",
        "false",
        "no",
        "0",
        "off",
    ):
        return value.lower() in ("true", "yes", "1", "on")
    raise ConfigError(f"{key}: expected true or false, got {value!r}")


def _choice(value: object, key: str, choices: tuple[str, ...]) -> str:
    text = str(value).lower() if value is not None else ""
    if text not in choices:
        raise ConfigError(f"{key}: must be one of {', '.join(choices)}; got {value!r}")
    return text


def _str(value: object, key: str) -> str:
    if not isinstance(value, str | int | float) or isinstance(value, bool) or value == "":
        raise ConfigError(f"{key}: expected a non-empty string, got {value!r}")
    return str(value)


def _names(value: object, key: str) -> tuple[str, ...]:
    """A column list: ``[a, b]`` or ``"a,b"``."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise ConfigError(f"{key}: expected a list of column names, got {value!r}")
    names = []
    for item in items:
        name = str(item).strip() if isinstance(item, str) else item
        if not isinstance(name, str):
            raise ConfigError(f"{key}: expected a list of column names, got {value!r}")
        try:
            validate_name(name, "column")
        except InvalidNameError as exc:
            raise ConfigError(f"{key}: {exc.detail}") from None
        names.append(name)
    if len({n.lower() for n in names}) != len(names):
        raise ConfigError(f"{key}: a column is listed twice")
    return tuple(names)


def _str_map(value: object, key: str) -> dict[str, str]:
    """A mapping of option names to scalar values, as strings (booleans as true/false)."""
    out = {}
    for name, item in _mapping(value, key).items():
        if isinstance(item, Mapping | list) or item is None:
            raise ConfigError(f"{key}.{name}: expected a string, number or boolean")
        out[str(name)] = str(item).lower() if isinstance(item, bool) else str(item)
    return out
