"""Runs last (file order): the post-run verifier over all the e2e traffic."""

import pytest

from tests.e2e.conftest import Service


def test_the_books_balance_after_everything_above(
    service: Service, capsys: pytest.CaptureFixture[str]
) -> None:
    """The post-run verifier over all the e2e traffic (races, replays, crashes, bad input)."""
    from loadtests.verify import main as verify_main

    assert verify_main(["--database-url", service.database_url]) == 0, capsys.readouterr().out
