"""Files shipped beside the code: `sql/` and `deploy/` inside the wheel (`listener/sql`,
`listener/deploy`), or the checkout's top-level folders when running from a clone.

Why one lookup: an operator who installed a wheel has no checkout, so `migrate` and
`install-files` must find their files in the installed package first.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


class ShippedFilesMissing(Exception):
    """Neither the installed package nor a checkout holds the folder: a broken install."""


def shipped_directory(name: str) -> Path:
    """`listener/<name>` in the installed package, else `<checkout>/<name>`."""
    packaged = resources.files("listener") / name
    if packaged.is_dir():
        return Path(str(packaged))
    checkout = Path(__file__).resolve().parents[1] / name
    if checkout.is_dir():
        return checkout
    raise ShippedFilesMissing(
        f"no {name}/ directory found next to the package: broken installation"
    )
