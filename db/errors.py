"""asyncpg errors translated in one place: nothing above the db layer imports asyncpg's exceptions."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import asyncpg


class DatabaseError(Exception):
    pass


class Unavailable(DatabaseError):
    """The database could not be reached, or is shutting down, or did not answer in time.

    Nothing about the request itself is wrong: the same request can succeed later (HTTP 503)."""


# Server shutting down (57P01 admin, 57P02 crash), or not accepting connections yet (57P03: starting
# up, recovering, shutting down). Not the rest of class 57: 57014 is a cancelled statement.
_OPERATOR_SQLSTATES = frozenset({"57P01", "57P02", "57P03"})

UNAVAILABLE = (
    OSError,  # refused, reset, unreachable, name resolution (socket.gaierror)
    TimeoutError,  # acquire timeout, connect timeout, command_timeout (asyncio.TimeoutError is TimeoutError)
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08, and asyncpg's ConnectionDoesNotExistError
    asyncpg.TooManyConnectionsError,  # 53300: the server is full, not our request wrong
)


class OptedOut(DatabaseError):
    """The queue's opt-out guard (migration 0013, constraint message_queue_opted_out) refused a row for
    a user who opted out: only the opt-out confirmation may be queued or put back in line for them."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


# Constraints whose violation is a refusal of the request, not a bug: translated to our own classes.
_CONSTRAINTS: dict[str, type[OptedOut]] = {"message_queue_opted_out": OptedOut}


def unavailable(exc: BaseException) -> bool:
    """Whether `exc` says the database is out of reach rather than that the statement was wrong."""
    if isinstance(exc, (Unavailable, *UNAVAILABLE)):
        return True
    if isinstance(exc, asyncpg.InternalClientError):
        # "cannot switch to state ...; another operation is in progress": a connection left mid-operation
        # by an outage (db/pool.py terminates it). The request was fine; another connection will do.
        return True
    if type(exc) is asyncpg.InterfaceError:
        # "connection is closed", "pool is closing". Its subclasses are our mistakes, not an outage: a
        # value the driver cannot encode (DataError), a bad setting, an unsupported feature.
        return True
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = getattr(exc, "sqlstate", None) or ""
        return sqlstate.startswith("08") or sqlstate in _OPERATOR_SQLSTATES
    return False


def translate(exc: BaseException) -> BaseException:
    """Our own class for `exc` when we have one (Unavailable, OptedOut), else `exc` itself."""
    if isinstance(exc, DatabaseError):
        return exc
    if isinstance(exc, asyncpg.IntegrityConstraintViolationError):
        ours = _CONSTRAINTS.get(getattr(exc, "constraint_name", None) or "")
        if ours is not None:
            translated: BaseException = ours(str(exc))
            translated.__cause__ = exc
            return translated
    if unavailable(exc):
        translated = Unavailable(type(exc).__name__)
        translated.__cause__ = exc
        return translated
    return exc


@contextlib.contextmanager
def translating() -> Iterator[None]:
    """Raise our own class (see `translate`) for what the statements inside raise."""
    try:
        yield
    except Exception as exc:
        translated = translate(exc)
        if translated is exc:
            raise
        raise translated from exc
