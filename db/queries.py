"""Named SQL blocks kept in .sql files beside the module that owns them.

A file holds blocks like::

    -- name: claim_due
    -- $1 = limit, $2 = worker id
    SELECT ...;

`load(__file__)` in the owning module reads `queries.sql` next to it once, at import.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

_NAME = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*-*\s*$", re.MULTILINE)

_registry: dict[str, Mapping[str, str]] = {}


class Queries:
    """Attribute access to a file's named queries: `Q.claim_due`."""

    def __init__(self, path: Path, blocks: Mapping[str, str]) -> None:
        self._path = path
        self._blocks = blocks

    def __getattr__(self, name: str) -> str:
        try:
            return self._blocks[name]
        except KeyError:
            raise AttributeError(f"no query named {name!r} in {self._path}") from None


def parse(text: str) -> dict[str, str]:
    blocks: dict[str, str] = {}
    matches = list(_NAME.finditer(text))
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        sql = text[m.end():end].strip().rstrip(";").strip()
        if m.group(1) in blocks:
            raise ValueError(f"duplicate query name {m.group(1)!r}")
        blocks[m.group(1)] = sql
    return blocks


def load(owner_file: str, filename: str = "queries.sql") -> Queries:
    path = Path(owner_file).with_name(filename)
    blocks = MappingProxyType(parse(path.read_text(encoding="utf-8")))
    _registry[str(path)] = blocks
    return Queries(path, blocks)


def registered() -> dict[str, Mapping[str, str]]:
    """Every loaded query file, so a test can prepare() each query against the real schema."""
    return dict(_registry)
