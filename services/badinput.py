"""The one error for input we refuse: a field and what is wrong with it.

Raised by the provider parsers, the operator API and the agents alike (this module imports nothing,
so any layer can), and rendered in one place, `services.httperrors`, as
`{"error": "<field> <problem>", "field": "<field>"}` with `status`.
"""

from __future__ import annotations


class BadInput(ValueError):
    """`field` (as the client named it: a form field, a query parameter, a header, a body path) is
    refused because of `problem`, a phrase that reads after the field's name ("is required")."""

    def __init__(self, field: str, problem: str, status: int = 400) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem
        self.status = status

    @property
    def message(self) -> str:
        return f"{self.field} {self.problem}"


NUL = "\x00"


def storable(field: str, value: str) -> str:
    """`value`, if PostgreSQL text can hold it: no NUL and no lone surrogate (which asyncpg cannot
    encode); otherwise BadInput naming `field`. For values we refuse; webhook text we must keep is
    repaired instead (channels.base.without_nul)."""
    if NUL in value:
        raise BadInput(field, "must not contain NUL characters")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise BadInput(field, "must be valid UTF-8 text") from None
    return value
