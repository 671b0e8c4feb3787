"""Durations in config files: a number of seconds, or a string such as "90s", "5m", "1h"."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|h|d)?\s*$")


def parse_duration(value: Any) -> Any:
    """Turn "5m" into 300.0; leave numbers (and anything else) to pydantic."""
    if isinstance(value, str):
        match = _PATTERN.match(value)
        if not match:
            raise ValueError(f"not a duration: {value!r} (use seconds, or e.g. '90s', '5m', '1h')")
        return float(match.group(1)) * _UNITS[match.group(2) or "s"]
    return value


Seconds = Annotated[float, BeforeValidator(parse_duration)]
