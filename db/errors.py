"""asyncpg errors translated in one place: nothing above the db layer imports asyncpg's exceptions."""

from __future__ import annotations

import asyncpg


class DatabaseError(Exception):
    pass


class Unavailable(DatabaseError):
    """The database could not be reached."""


UNAVAILABLE = (OSError, asyncpg.CannotConnectNowError, asyncpg.ConnectionDoesNotExistError,
               asyncpg.TooManyConnectionsError, asyncpg.InterfaceError)


def translate(exc: BaseException) -> BaseException:
    if isinstance(exc, UNAVAILABLE):
        return Unavailable(type(exc).__name__)
    return exc
