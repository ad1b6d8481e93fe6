"""`leukoml.errors`: the pieces every one-line error message is made of."""

from __future__ import annotations

from leukoml.errors import did_you_mean, one_line


def test_the_closest_known_name_is_suggested_whatever_the_spelling():
    assert did_you_mean("max_epoch", ["max_epochs", "patience"]) == " (did you mean 'max_epochs'?)"
    assert did_you_mean("Max-Epochs", ["max_epochs"]) == " (did you mean 'max_epochs'?)"
    assert did_you_mean("zzz", ["max_epochs", "patience"]) == ""
    assert did_you_mean("epochs", ["min_epochs", "max_epochs", "patience"]) == (
        " (did you mean 'max_epochs' or 'min_epochs'?)")


def test_a_library_error_becomes_one_line():
    """Before: an unreachable PostgreSQL storage printed psycopg2's and SQLAlchemy's four
    lines under leukoml's one."""
    exc = RuntimeError('(psycopg2.OperationalError) connection to server at "127.0.0.1", port 9 '
                       "failed: Connection refused\n\tIs the server running on that host?\n\n"
                       "(Background on this error at: https://sqlalche.me/e/21/e3q8)")
    assert one_line(exc) == ('(psycopg2.OperationalError) connection to server at "127.0.0.1", '
                             "port 9 failed: Connection refused Is the server running on that "
                             "host?")
    assert len(one_line(RuntimeError("x" * 1000))) == 300
