"""The deployment files shipped in the wheel (`listener/deploy`): the systemd unit, the env
example, the Grafana dashboard, the Prometheus rules, the operator's README.

Why from the package: an operator installs a wheel, not a checkout; `install-files` prints or
writes the files of exactly the installed version.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from listener.shipped import shipped_directory

# Short name -> path under deploy/.
DEPLOY_FILES: Final[dict[str, str]] = {
    "unit": "evolution-listener.service",
    "env": "evolution-listener.env.example",
    "grafana": "grafana/evolution-listener.json",
    "rules": "prometheus/evolution-listener.rules.yml",
    "readme": "README-ops.md",
}


def read_deploy_file(name: str) -> str:
    """The text of one shipped file by its short name (a key of DEPLOY_FILES)."""
    return (shipped_directory("deploy") / DEPLOY_FILES[name]).read_text("utf-8")


def write_deploy_files(directory: Path, *, force: bool = False) -> tuple[list[Path], list[Path]]:
    """Write every shipped file into `directory` (flat, their own names). An existing file
    with other content is kept unless `force`: it may be an operator's edited copy.
    Returns (written, kept)."""
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    kept: list[Path] = []
    for name, relative in DEPLOY_FILES.items():
        text = read_deploy_file(name)
        target = directory / Path(relative).name
        if target.exists() and target.read_text("utf-8") != text and not force:
            kept.append(target)
            continue
        target.write_text(text, "utf-8")
        written.append(target)
    return written, kept
