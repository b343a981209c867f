"""Keys in a real store for the secured-server tests (SPEC D12): the same provisioning code as
``msgin5g keys add``, client key files read back as a device would."""

from __future__ import annotations

from pathlib import Path

from msgin5g.authz import parse_identity
from msgin5g.security.credentials import KeyCredentials, load_key
from msgin5g.security.storekeys import add_keys
from msgin5g.store import open_store


def store_keys(
    db: Path, identities: dict[str, str], out: Path, *, revoke=(), algorithm: str = "AES-CCM-16-64-128"
) -> dict[str, KeyCredentials]:
    """One key per ``name → identity`` in the SQLite store ``db`` (a path) or the store URL
    ``db``; key files ``out/<name>.json``; the keys of ``revoke`` (names) revoked at once."""
    url = db if isinstance(db, str) else f"sqlite:///{db}"
    store = open_store(url)
    try:
        creds = {}
        for name, identity in identities.items():
            path = Path(out) / f"{name}.json"
            add_keys(store, [parse_identity(identity)], path, algorithm)
            creds[name] = load_key(path)
        for name in revoke:
            assert store.revoke_keys("2026-01-01T00:00:00Z", identity=identities[name])
    finally:
        store.close()
    return creds


def revoke(db, identity: str) -> None:
    """What ``msgin5g keys revoke`` does, from another connection (another process's view)."""
    url = db if isinstance(db, str) else f"sqlite:///{db}"
    store = open_store(url)
    try:
        assert store.revoke_keys("2026-01-01T00:00:01Z", identity=identity)
    finally:
        store.close()
