"""Comparing decoded records bit for bit."""

from __future__ import annotations

import math
import struct
from typing import Any


def bits(value: Any, canonical_nan: bool = False) -> Any:
    """``value`` with every float as its IEEE bit pattern, so -0.0 != 0.0 and NaN == NaN.

    JSON has one NaN: ``canonical_nan`` folds NaN payloads and signs into one value.
    """
    if isinstance(value, float):
        return b"nan" if canonical_nan and math.isnan(value) else struct.pack("<d", value)
    if isinstance(value, dict):
        return {k: bits(v, canonical_nan) for k, v in value.items()}
    if isinstance(value, list):
        return [bits(v, canonical_nan) for v in value]
    return value
