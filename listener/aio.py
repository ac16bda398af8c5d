"""One way to run the event loop: uvloop where it is installed (Linux, macOS), else asyncio.

uvloop's loop is a drop-in for asyncio's and markedly cheaper per socket operation, which
is most of this service's CPU (HTTP calls, PostgreSQL round trips, NOTIFY wake-ups).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:  # not installed (e.g. Windows): the standard loop
        return asyncio.run(main)
    return uvloop.run(main)
