"""One way to turn an error (or any text) into one log-safe line.

A newline in a log line, a readiness reason or an sd_notify STATUS would split it (or start
a new assignment in the datagram), and a multi-kilobyte driver message would drown the rest;
so every place that shows an error to an operator goes through `one_line`.
"""

from __future__ import annotations

import re

DEFAULT_LIMIT = 500

_WS = re.compile(r"\s+")


def one_line(value: BaseException | str, limit: int | None = DEFAULT_LIMIT) -> str:
    """Whitespace collapsed to single spaces; an exception with no text is named by its
    type. Longer than `limit` (None: no limit): a multi-line text keeps its first and last
    line (where the cause usually is), and the result ends in `…`."""
    text = str(value)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    collapsed = _WS.sub(" ", text).strip()
    if not collapsed and isinstance(value, BaseException):
        collapsed = type(value).__name__
    if limit is None or len(collapsed) <= limit:
        return collapsed
    if len(lines) > 2:
        collapsed = _WS.sub(" ", f"{lines[0]} … {lines[-1]}")
    if len(collapsed) > limit:
        collapsed = collapsed[: limit - 1].rstrip() + "…"
    return collapsed
