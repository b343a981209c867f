"""Document stores (SQLite embedded default, PostgreSQL) behind one interface."""

from __future__ import annotations

import os
from pathlib import Path

from .base import DocNotFound, Store, StoredDoc, StoreError, VersionMismatch

__all__ = [
    "DocNotFound",
    "Store",
    "StoreError",
    "StoredDoc",
    "VersionMismatch",
    "default_db_url",
    "open_store",
    "sqlite_path",
]


def default_db_url() -> str:
    """sqlite file under the user's data dir (XDG_DATA_HOME or ~/.local/share)."""
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "msgin5g"
    base.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{base / 'scm-s.db'}"


def sqlite_path(url: str) -> str | None:
    """The file of a ``sqlite:///path.db`` URL (or a bare path); None for ``postgresql://...``."""
    if url.startswith(("postgresql://", "postgres://")):
        return None
    if url.startswith("sqlite:///"):
        return url[len("sqlite:///") - 1 :] if url.startswith("sqlite:////") else url[len("sqlite:///") :]
    if url.startswith("sqlite://"):
        return url[len("sqlite://") :]
    if "://" in url:
        raise ValueError(f"unsupported database URL {url!r} (use sqlite:///path.db or postgresql://...)")
    return url


def open_store(url: str) -> Store:
    """Open a store from a URL: ``sqlite:///path.db`` (or a bare path) or ``postgresql://...``."""
    path = sqlite_path(url)
    if path is None:
        from .postgres import PostgresStore

        return PostgresStore(url)
    from .sqlite import SqliteStore

    return SqliteStore(path)
