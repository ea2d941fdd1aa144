"""asyncpg errors translated in one place: nothing above the db layer imports asyncpg's exceptions."""

from __future__ import annotations

import asyncpg


class DatabaseError(Exception):
    pass


class UniqueViolation(DatabaseError):
    def __init__(self, constraint: str | None) -> None:
        super().__init__(f"unique violation on {constraint}")
        self.constraint = constraint


class Retryable(DatabaseError):
    """Serialization failure or deadlock: run the transaction again."""


class Unavailable(DatabaseError):
    """The database could not be reached."""


RETRYABLE = (asyncpg.SerializationError, asyncpg.DeadlockDetectedError)
UNAVAILABLE = (OSError, asyncpg.CannotConnectNowError, asyncpg.ConnectionDoesNotExistError,
               asyncpg.TooManyConnectionsError, asyncpg.InterfaceError)


def translate(exc: BaseException) -> BaseException:
    if isinstance(exc, asyncpg.UniqueViolationError):
        return UniqueViolation(exc.constraint_name)
    if isinstance(exc, RETRYABLE):
        return Retryable(str(exc))
    if isinstance(exc, UNAVAILABLE):
        return Unavailable(type(exc).__name__)
    return exc
