"""Shared fixtures: a real PostgreSQL (see tests/pg.py) and a fresh migrated database per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.pg import (
    PgServer,
    Template,
    TestDatabase,
    clone_database,
    create_template,
    drop_database,
    start_server,
)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    with start_server() as server:
        yield server


@pytest.fixture(scope="session")
def pg_template(pg_server: PgServer) -> Iterator[Template]:
    template = create_template(pg_server)
    yield template
    drop_database(pg_server.admin_dsn, template.name)


@pytest.fixture
def db(pg_template: Template) -> Iterator[TestDatabase]:
    database = clone_database(pg_template)
    yield database
    drop_database(pg_template.server.admin_dsn, database.name)


def pytest_report_header(config: pytest.Config) -> str:
    import os

    source = "TEST_DATABASE_URL" if os.environ.get("TEST_DATABASE_URL") else "auto"
    return f"evolution-listener tests: PostgreSQL source = {source}"
