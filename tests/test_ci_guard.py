"""The guard every skip of a missing part goes through: a skip outside CI, a failure in
CI (which has every part), so CI's output cannot hide one."""

from __future__ import annotations

import pytest
from helpers import postgres_server, skip_outside_ci, skip_unless_shared


@pytest.mark.parametrize(("ci", "outcome"), [("true", pytest.fail.Exception),
                                             ("", pytest.skip.Exception)])
def test_a_missing_part_skips_outside_ci_and_fails_in_ci(monkeypatch, ci, outcome):
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="the thing not present"):
        skip_unless_shared(False, "the thing")
    monkeypatch.setattr("helpers.postgres_bin", lambda: None)  # no initdb on this machine
    with pytest.raises(outcome, match="PostgreSQL binaries"):
        with postgres_server():
            pass
    skip_unless_shared(True, "the thing")  # present: nothing happens
    with pytest.raises(outcome):
        skip_outside_ci("flock not installed")
