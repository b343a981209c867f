"""Client credentials: one small file per device, or one JSON Lines bundle for many (SPEC D12;
RFC 8613; format in docs/security.md).

A **key file** (``msgin5g keys add --out FILE``) is one JSON object::

    {"format": "msgin5g-oscore-key", "version": 1, "identity": "ue:urn:gsma:imei:...",
     "kid": "2a", "secret": "<hex>", "salt": "<hex>", "algorithm": "AES-CCM-16-64-128"}

A **bundle** (``msgin5g keys import --out BUNDLE.jsonl``) is one such object per line. The client
keeps its sender sequence numbers next to the file, in ``FILE.state`` (a small SQLite file shared
by every key of a bundle), leased in blocks before use (RFC 8613 App. B.1.1). Keep the two
together: a key used without its state would start its numbers again (the SCM-S refuses those as
replays, but the reused nonces are the client's mistake).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from aiocoap.credentials import CredentialsMap

from ..authz import Identity, parse_identity
from ..coap.aiocoap_tweaks import LeasedSecurityContext
from ..model import ModelError
from .keys import ALGORITHMS, SERVER_SENDER_ID, RegistryError, parse_kid


class CredentialsError(RuntimeError):
    """Credentials that cannot be used (missing or malformed)."""


KEY_FORMAT = "msgin5g-oscore-key"
KEY_VERSION = 1
STATE_SUFFIX = ".state"


def key_json(identity: str, kid: bytes, secret: bytes, salt: bytes, algorithm: str) -> str:
    """One key file / bundle line."""
    return json.dumps(
        {
            "format": KEY_FORMAT,
            "version": KEY_VERSION,
            "identity": identity,
            "kid": kid.hex(),
            "secret": secret.hex(),
            "salt": salt.hex(),
            "algorithm": algorithm,
        },
        separators=(",", ":"),
    )


class _SequenceState:
    """``FILE.state``: the client's leased sender sequence numbers per kid (RFC 8613 App. B.1.1)."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._ready: dict[bytes, tuple[int, int]] = {}
        self._db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS leases (kid TEXT PRIMARY KEY, mark INTEGER NOT NULL)")
        os.chmod(path, 0o600)

    def prefetch(self, kids: list[bytes], count: int) -> None:
        """Lease a first block for each of ``kids`` in one transaction (one durable write for a
        whole bundle instead of one per key: a simulator acting as thousands of devices)."""
        hexes = [k.hex() for k in kids if k not in self._ready]
        if not hexes:
            return
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(
                    "INSERT OR IGNORE INTO leases (kid, mark) VALUES (?, 0)", [(h,) for h in hexes]
                )
                marks = {}
                for i in range(0, len(hexes), 500):
                    chunk = hexes[i : i + 500]
                    q = ", ".join("?" * len(chunk))
                    marks.update(
                        db.execute(f"SELECT kid, mark FROM leases WHERE kid IN ({q})", chunk).fetchall()
                    )
                db.executemany("UPDATE leases SET mark = mark + ? WHERE kid = ?", [(count, h) for h in hexes])
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        for h in hexes:
            self._ready[bytes.fromhex(h)] = (marks[h], marks[h] + count)

    def lease(self, kid: bytes, count: int) -> tuple[int, int]:
        ready = self._ready.pop(kid, None)
        if ready is not None:  # leased ahead by prefetch, already persisted
            return ready
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("INSERT OR IGNORE INTO leases (kid, mark) VALUES (?, 0)", (kid.hex(),))
                (mark,) = db.execute(
                    "UPDATE leases SET mark = mark + ? WHERE kid = ? RETURNING mark", (count, kid.hex())
                ).fetchone()
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return mark - count, mark


_states: dict[Path, _SequenceState] = {}
_contexts: dict[tuple[Path, bytes], LeasedSecurityContext] = {}


def _state_for(path: Path) -> _SequenceState:
    sp = path.with_name(path.name + STATE_SUFFIX)
    st = _states.get(sp)
    if st is None:
        try:
            st = _states[sp] = _SequenceState(sp)
        except sqlite3.Error as e:
            raise CredentialsError(f"{sp}: cannot keep sequence numbers there: {e}") from None
    return st


@dataclass(frozen=True)
class KeyCredentials:
    """The client side of one key (from a key file or one line of a bundle)."""

    path: Path
    identity: Identity
    kid: bytes
    secret: bytes
    salt: bytes
    algorithm: str

    def security_context(self) -> LeasedSecurityContext:
        """This process's one OSCORE context for the key (client: Sender ID = kid)."""
        key = (self.path, self.kid)
        ctx = _contexts.get(key)
        if ctx is None:
            state = _state_for(self.path)
            ctx = _contexts[key] = LeasedSecurityContext(
                sender_id=self.kid,
                recipient_id=SERVER_SENDER_ID,
                secret=self.secret,
                salt=self.salt,
                algorithm=self.algorithm,
                lease=lambda n, kid=self.kid: state.lease(kid, n),
            )
        return ctx

    def release(self) -> None:
        """Forget this process's context (the unused rest of its lease is skipped, never reused)."""
        _contexts.pop((self.path, self.kid), None)


def parse_key(path: Path, line: str) -> KeyCredentials:
    try:
        m = json.loads(line)
    except ValueError as e:
        raise CredentialsError(f"{path}: not a key file or bundle: {e}") from None
    if not isinstance(m, dict) or m.get("format") != KEY_FORMAT:
        raise CredentialsError(f"{path}: not a {KEY_FORMAT} file or bundle")
    if m.get("version") != KEY_VERSION:
        raise CredentialsError(f"{path}: unsupported key version {m.get('version')!r}")
    try:
        algorithm = m.get("algorithm")
        if algorithm not in ALGORITHMS:
            raise CredentialsError(f"{path}: unknown algorithm {algorithm!r}")
        return KeyCredentials(
            path,
            parse_identity(str(m["identity"])),
            parse_kid(str(m["kid"])),
            bytes.fromhex(m["secret"]),
            bytes.fromhex(m["salt"]),
            algorithm,
        )
    except KeyError as e:
        raise CredentialsError(f"{path}: missing {e.args[0]!r}") from None
    except (ModelError, RegistryError, ValueError, TypeError) as e:
        raise CredentialsError(f"{path}: {e}") from None


def is_key_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a key file or bundle of this module (not an older credentials file)."""
    try:
        with open(path, encoding="utf-8") as f:
            head = f.read(256)
    except OSError:
        return False
    return f'"format":"{KEY_FORMAT}"' in head.replace(" ", "")


def load_key(path: str | os.PathLike, identity: str | None = None) -> KeyCredentials:
    """The key of ``identity`` (``ue:<uri>``, ``gateway:<id>``, ``admin:<label>``) from a key file
    or bundle; without ``identity`` the file must hold exactly one key."""
    p = Path(path).resolve()
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CredentialsError(f"{path}: no such credentials file") from None
    except OSError as e:
        raise CredentialsError(f"{path}: not readable: {e}") from None
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise CredentialsError(f"{path}: empty credentials file")
    if identity is None:
        if len(lines) > 1:
            raise CredentialsError(
                f"{path} is a bundle of {len(lines)} keys: choose one with --key-identity (or --ue-uri)"
            )
        return parse_key(p, lines[0])
    needle = json.dumps(identity)[1:-1]
    for ln in lines:
        if needle in ln:
            k = parse_key(p, ln)
            if str(k.identity) == identity:
                return k
    raise CredentialsError(f"{path} holds no key of {identity}")


@dataclass(frozen=True)
class KeyBundle:
    """A bundle of several keys given as ``--credentials``: the command chooses one entry
    (``ue get-config``: ``ue:<--ue-uri>``, or ``--key-identity``)."""

    path: Path

    def select(self, identity: str) -> KeyCredentials:
        return load_key(self.path, identity)


def load_bundle(path: str | os.PathLike, prefetch: int = 0) -> dict[str, KeyCredentials]:
    """Every key of a bundle by identity text (simulators that act as many devices); with
    ``prefetch``, a first block of that many sequence numbers is leased for every key at once."""
    p = Path(path).resolve()
    with open(p, encoding="utf-8") as f:
        keys = [parse_key(p, ln) for ln in f if ln.strip()]
    if prefetch and keys:
        _state_for(p).prefetch([k.kid for k in keys], prefetch)
    return {str(k.identity): k for k in keys}


def bundle_size(path: str | os.PathLike) -> int:
    with open(path, encoding="utf-8") as f:
        return sum(1 for ln in f if ln.strip())


def load_credentials(path: str | os.PathLike):
    """Read ``--credentials FILE``: a key file, or a bundle (a bundle of several keys comes back as
    a :class:`KeyBundle` to choose from), or a coaps PSK file (``keys add --psk``: a
    :class:`~msgin5g.security.dtls.PskCredentials`). Raises CredentialsError with the reason."""
    from . import dtls as _psk

    if _psk.is_psk_file(path):
        try:
            return _psk.load_psk_credentials(path)
        except _psk.PskFileError as e:
            raise CredentialsError(str(e)) from None
    try:
        if bundle_size(path) > 1:
            return KeyBundle(Path(path).resolve())
        return load_key(path)
    except FileNotFoundError:
        raise CredentialsError(f"{path}: no such credentials file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CredentialsError(f"{path}: not a readable credentials file: {e}") from None


def release_credentials(credentials: KeyCredentials) -> None:
    """Forget this process's context of ``credentials`` (a simulator done with one device)."""
    credentials.release()


class SingleContext(CredentialsMap):
    """aiocoap client credentials naming one OSCORE context for every request of a client context
    that talks to one server. aiocoap's own map matches each request's full URI against its
    patterns — for a bulk GET with hundreds of ``ue-uri`` options that costs milliseconds."""

    def __init__(self, context):
        super().__init__()
        self["*"] = context
        self._context = context

    def credentials_from_request(self, msg):
        return self._context
