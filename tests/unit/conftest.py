"""Unit tests are pure: they refuse to start Ray or open a database connection."""

import pytest


@pytest.fixture(autouse=True)
def _no_ray_no_database(monkeypatch: pytest.MonkeyPatch) -> None:
    import psycopg
    import ray

    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("unit tests must not start Ray or connect to a database")

    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.setattr(psycopg.Connection, "connect", refuse)
    monkeypatch.setattr(psycopg.AsyncConnection, "connect", refuse)
