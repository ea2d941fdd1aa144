"""Which database errors mean "out of reach" (503, or the spool) and which are a real failure."""

from __future__ import annotations

import asyncpg
import pytest

from db import errors


@pytest.mark.parametrize("exc", [
    asyncpg.AdminShutdownError("terminating connection due to administrator command"),  # 57P01
    asyncpg.CrashShutdownError("crash"),  # 57P02
    asyncpg.CannotConnectNowError("the database system is starting up"),  # 57P03
    asyncpg.ConnectionFailureError("08006"),
    asyncpg.ClientCannotConnectError("08001"),
    asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
    asyncpg.ProtocolViolationError("08P01"),
    asyncpg.TooManyConnectionsError("53300"),
    asyncpg.InterfaceError("connection is closed"),
    asyncpg.InternalClientError("cannot switch to state 11; another operation (2) is in progress"),
    ConnectionRefusedError(111, "refused"),
    TimeoutError(),
    errors.Unavailable("x"),
])
def test_connection_failures_shutdowns_and_timeouts_are_unavailable(exc):
    assert errors.unavailable(exc)
    assert isinstance(errors.translate(exc), errors.Unavailable)


@pytest.mark.parametrize("exc", [
    asyncpg.QueryCanceledError("57014"),  # a statement cancelled, not the server going away
    asyncpg.UniqueViolationError("23505"),
    asyncpg.RaiseError("refused"),
    asyncpg.exceptions._base.DataError("invalid input for query argument $1"),  # our bug, not an outage
    ValueError("x"),
])
def test_other_errors_are_not_unavailable(exc):
    assert not errors.unavailable(exc)
    assert errors.translate(exc) is exc


def test_the_queue_opt_out_guard_becomes_our_opted_out():
    exc = asyncpg.CheckViolationError("user 7 opted out")
    exc.constraint_name = "message_queue_opted_out"
    translated = errors.translate(exc)
    assert isinstance(translated, errors.OptedOut) and translated.__cause__ is exc


def test_another_check_violation_is_left_as_it_is():
    exc = asyncpg.CheckViolationError("new row violates check constraint")
    exc.constraint_name = "message_queue_body_check"
    assert errors.translate(exc) is exc
    with pytest.raises(asyncpg.CheckViolationError), errors.translating():
        raise exc
