"""argparse value types with bounds, shared by the dev commands (demo, simulator)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

__all__ = ["number"]


def number(
    kind: Callable[[str], float] = float,
    *,
    at_least: float | None = None,
    above: float | None = None,
    at_most: float | None = None,
) -> Callable[[str], float]:
    """An argparse `type=` that parses with `kind` and rejects values out of bounds (and NaN),
    with a message naming the bound."""

    def parse(text: str) -> float:
        value = kind(text)
        if math.isnan(value):
            raise argparse.ArgumentTypeError("must be a number")
        if at_least is not None and value < at_least:
            raise argparse.ArgumentTypeError(f"must be >= {at_least:g}")
        if above is not None and value <= above:
            raise argparse.ArgumentTypeError(f"must be > {above:g}")
        if at_most is not None and value > at_most:
            raise argparse.ArgumentTypeError(f"must be <= {at_most:g}")
        return value

    return parse
