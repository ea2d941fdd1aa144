"""The embedded default: a PostgreSQL started with the pgserver package, data under $PARLEY_HOME/pg."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("parley.db")


class EmbeddedPostgres:
    """Starts (or reattaches to) a PostgreSQL whose data persists in `data_dir`; stops it on close."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._server: Any = None

    def start(self) -> str:
        import warnings

        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI): harmless here.
            warnings.simplefilter("ignore")
            import pgserver  # imported lazily: only the embedded default needs it

        self.data_dir.mkdir(parents=True, exist_ok=True)
        # cleanup_mode="stop": the server stops when the last process using it lets go, data stays.
        self._server = pgserver.get_server(self.data_dir, cleanup_mode="stop")
        uri: str = self._server.get_uri()
        log.info("embedded postgres started", extra={"data_dir": str(self.data_dir)})
        return uri

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None
            log.info("embedded postgres stopped")
