"""Key registry directories and credentials files (TS 24.546 6.2.1.2; SPEC D12; format in docs/security.md).

A **registry** is the server side of a Gateway UE's keys for its constrained UEs (``msgin5g
gateway --security DIR``, the MSGin5G-6 side; the SCM-S's keys are in its store,
:mod:`msgin5g.store.keys`)::

    DIR/registry.json         entries: kid, identity, created, revoked (see :mod:`.keys`)
    DIR/contexts/<kid>/       the server's OSCORE context for that kid (aiocoap
                              FilesystemSecurityContext: secret.json, sequence.json)
    DIR/registry.lock         held while ``msgin5g keys`` edits registry.json
    DIR/server.lock           held by the one server process that uses the registry

A **credentials file** (``--credentials FILE``) is the client side of one key: a small JSON
document naming the identity and kid, and the directory of the client's own OSCORE context
(next to the file). Each side's context directory keeps its own sequence number and replay
window, so neither is ever shared between processes (aiocoap locks it while in use).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import filelock
from aiocoap.credentials import CredentialsMap

from ..authz import Identity, parse_identity
from ..model import ModelError
from .keys import (
    CREDENTIALS_FORMAT,
    DEFAULT_ALGORITHM,
    FORMAT_VERSION,
    MASTER_SALT_BYTES,
    MASTER_SECRET_BYTES,
    SERVER_SENDER_ID,
    KeyEntry,
    RegistryError,
    RegistryState,
    add_keys,
    parse_kid,
    revoke_keys,
)

REGISTRY_FILE = "registry.json"
CONTEXTS_DIR = "contexts"
EDIT_LOCK = "registry.lock"
SERVER_LOCK = "server.lock"
CONTEXT_SUFFIX = ".oscore"


class CredentialsError(RuntimeError):
    """Credentials that cannot be used (missing, malformed, or in use by another process)."""


def utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _write_atomic(path: Path, data: bytes, mode: int = 0o600, durable: bool = True) -> None:
    """Write ``path`` so that readers see the old or the new content, never a mix (and, when
    ``durable``, so that it survives a power failure once this returns). A file that is new and
    need not be durable is simply created (nobody reads it before the registry names it)."""
    if not durable:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def write_context(
    directory: Path,
    sender_id: bytes,
    recipient_id: bytes,
    secret: bytes,
    salt: bytes,
    algorithm: str = DEFAULT_ALGORITHM,
    durable: bool = True,
) -> None:
    """A new aiocoap FilesystemSecurityContext directory (RFC 8613 §3.2 parameters; HKDF SHA-256).
    Its sequence file appears on first use."""
    directory.mkdir(mode=0o700, parents=True)
    data = {
        "sender-id_hex": sender_id.hex(),
        "recipient-id_hex": recipient_id.hex(),
        "secret_hex": secret.hex(),
        "salt_hex": salt.hex(),
        "algorithm": algorithm,
    }
    text = json.dumps(data, indent=1) if durable else json.dumps(data)
    _write_atomic(directory / "secret.json", text.encode(), durable=durable)


@dataclass(frozen=True)
class ClientCredentials:
    """The client side of one key, read from a credentials file."""

    path: Path
    identity: Identity
    kid: bytes
    context_dir: Path

    def to_json(self) -> dict:
        return {
            "format": CREDENTIALS_FORMAT,
            "version": FORMAT_VERSION,
            "identity": str(self.identity),
            "kid": self.kid.hex(),
            "context": os.path.relpath(self.context_dir, self.path.parent),
        }

    def security_context(self):
        """This process's one OSCORE context for these credentials (see :func:`open_context`)."""
        return open_context(self.context_dir)


def load_credentials(path: str | os.PathLike):
    """Read ``--credentials FILE``: a key file or a bundle (:mod:`.credentials`; a bundle of several
    keys comes back as a :class:`~.credentials.KeyBundle` to choose from), or a credentials file of
    a gateway's registry. Raises CredentialsError with the reason."""
    from . import credentials as _keyfiles
    from . import dtls as _psk

    if _psk.is_psk_file(path):  # coaps: {psk_identity, psk} (keys add --psk)
        try:
            return _psk.load_psk_credentials(path)
        except _psk.PskFileError as e:
            raise CredentialsError(str(e)) from None
    if _keyfiles.is_key_file(path):
        try:
            if _keyfiles.bundle_size(path) > 1:
                return _keyfiles.KeyBundle(Path(path).resolve())
            return _keyfiles.load_key(path)
        except (_keyfiles.CredentialsError, OSError) as e:
            raise CredentialsError(str(e)) from None
    p = Path(path)
    try:
        m = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CredentialsError(f"{p}: no such credentials file") from None
    except (OSError, ValueError) as e:
        raise CredentialsError(f"{p}: not a readable credentials file: {e}") from None
    if not isinstance(m, dict) or m.get("format") != CREDENTIALS_FORMAT:
        raise CredentialsError(f"{p}: not a {CREDENTIALS_FORMAT} file")
    if m.get("version") != FORMAT_VERSION:
        raise CredentialsError(f"{p}: unsupported credentials version {m.get('version')!r}")
    try:
        identity = parse_identity(str(m["identity"]))
        kid = parse_kid(str(m["kid"]))
        ctx = m["context"]
        if not isinstance(ctx, str) or not ctx:
            raise CredentialsError(f"{p}: context must name a directory")
    except KeyError as e:
        raise CredentialsError(f"{p}: missing {e.args[0]!r}") from None
    except (ModelError, RegistryError) as e:
        raise CredentialsError(f"{p}: {e}") from None
    context_dir = (p.parent / ctx).resolve()
    if not (context_dir / "secret.json").is_file():
        raise CredentialsError(f"{p}: its OSCORE context directory {context_dir} has no secret.json")
    return ClientCredentials(p.resolve(), identity, kid, context_dir)


_open: dict[Path, object] = {}


def open_context(directory: Path):
    """Load an OSCORE context directory once per process and keep it.

    aiocoap's FilesystemSecurityContext locks its directory while loaded, persists the sender
    sequence number ahead of use and the replay window on release (RFC 8613 Appendix B.1): a
    second process cannot use the same context, and a crash never leads to a reused number.
    """
    from aiocoap.oscore import FilesystemSecurityContext

    key = Path(directory).resolve()
    ctx = _open.get(key)
    if ctx is not None:
        return ctx
    try:
        ctx = FilesystemSecurityContext(str(key))
    except filelock.Timeout:
        raise CredentialsError(f"the OSCORE context {key} is in use by another process") from None
    except (FilesystemSecurityContext.LoadError, OSError, ValueError) as e:
        raise CredentialsError(f"the OSCORE context {key} cannot be loaded: {e}") from None
    _open[key] = ctx
    return ctx


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


def release_context(ctx) -> None:
    """Write back a context's exact sequence number and replay window and unlock its directory
    (aiocoap does this when the object is collected; doing it explicitly makes a clean shutdown
    deterministic, so the next start needs no Echo round trip)."""
    for key, value in list(_open.items()):
        if value is ctx:
            del _open[key]
    if getattr(ctx, "lockfile", None) is not None:
        ctx._destroy()


def release_credentials(credentials: ClientCredentials) -> None:
    """Release the context of ``credentials`` if this process has it loaded (:func:`release_context`)."""
    release = getattr(credentials, "release", None)
    if release is not None:  # a key file's context: nothing to write back
        release()
        return
    ctx = _open.get(credentials.context_dir)
    if ctx is not None:
        release_context(ctx)


class Registry:
    """A key registry directory (see the module docstring)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @property
    def file(self) -> Path:
        return self.path / REGISTRY_FILE

    def context_dir(self, kid: bytes) -> Path:
        return self.path / CONTEXTS_DIR / kid.hex()

    def exists(self) -> bool:
        return self.file.is_file()

    def load(self) -> RegistryState:
        """The registry's current state; a directory without registry.json is an empty registry."""
        try:
            raw = self.file.read_bytes()
        except FileNotFoundError:
            if self.path.is_dir():
                return RegistryState()
            raise RegistryError(f"{self.path}: no such key registry directory") from None
        try:
            return RegistryState.from_json(json.loads(raw))
        except ValueError as e:
            raise RegistryError(f"{self.file}: {e}") from None

    def stamp(self) -> tuple[int, int, int] | None:
        """What changes whenever registry.json is rewritten (it is replaced, never edited in place)."""
        try:
            st = os.stat(self.file)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    @contextlib.contextmanager
    def _editing(self) -> Iterator[None]:
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        with filelock.FileLock(str(self.path / EDIT_LOCK), timeout=10):
            yield

    def _save(self, state: RegistryState) -> None:
        _write_atomic(self.file, json.dumps(state.to_json(), indent=1).encode())

    def add(
        self, identity: Identity, out: str | os.PathLike, algorithm: str = DEFAULT_ALGORITHM
    ) -> tuple[KeyEntry, ClientCredentials]:
        """Create a key for ``identity``: the server's context in this registry, the client's
        context next to ``out``, the credentials file ``out``, and the registry entry (last, so an
        interrupted ``add`` leaves no usable half key)."""
        return self.add_many([(identity, out)], algorithm)[0]

    def add_many(
        self,
        keys: list[tuple[Identity, str | os.PathLike]],
        algorithm: str = DEFAULT_ALGORITHM,
        *,
        durable: bool = True,
    ) -> list[tuple[KeyEntry, ClientCredentials]]:
        """:meth:`add` for many identities under one lock, with one registry write (a demo fleet
        of thousands of UEs). ``durable=False`` skips the per-file fsync of the context files; the
        registry entry that makes them usable is still written last and durably."""
        outs = []
        for _, out in keys:
            out_path = Path(out)
            client_dir = out_path.with_name(out_path.name.removesuffix(".json") + CONTEXT_SUFFIX)
            for p in (out_path, client_dir):
                if p.exists():
                    raise RegistryError(
                        f"{p} exists; credentials are never overwritten (a reused OSCORE context "
                        "would repeat sequence numbers) — remove it or choose another --out"
                    )
            outs.append((out_path, client_dir))
        made = []
        parents: dict[Path, Path] = {}  # each directory of credentials files: created and resolved once
        with self._editing():
            state, entries = add_keys(self.load(), [identity for identity, _ in keys], utc_now(), algorithm)
            (self.path / CONTEXTS_DIR).mkdir(mode=0o700, exist_ok=True)
            for entry, (out_path, client_dir) in zip(entries, outs, strict=True):
                identity = entry.identity
                server_dir = self.context_dir(entry.kid)
                if server_dir.exists():  # left over by an interrupted add: no entry uses it
                    shutil.rmtree(server_dir)
                secret = secrets.token_bytes(MASTER_SECRET_BYTES)
                salt = secrets.token_bytes(MASTER_SALT_BYTES)
                write_context(server_dir, SERVER_SENDER_ID, entry.kid, secret, salt, algorithm, durable)
                parent = parents.get(out_path.parent)
                if parent is None:
                    out_path.parent.mkdir(parents=True, exist_ok=True)
                    parent = parents[out_path.parent] = out_path.parent.resolve()
                write_context(client_dir, entry.kid, SERVER_SENDER_ID, secret, salt, algorithm, durable)
                creds = ClientCredentials(
                    parent / out_path.name, identity, entry.kid, parent / client_dir.name
                )
                _write_atomic(
                    out_path, (json.dumps(creds.to_json(), indent=1) + "\n").encode(), durable=durable
                )
                made.append((entry, creds))
            self._save(state)
        return made

    def revoke(self, *, identity: Identity | None = None, kid: bytes | None = None) -> list[KeyEntry]:
        """Revoke keys; a running server answers them 4.01 from its next request on."""
        with self._editing():
            new_state, revoked = revoke_keys(self.load(), utc_now(), identity=identity, kid=kid)
            self._save(new_state)
        return revoked

    def lock_for_serving(self) -> filelock.BaseFileLock:
        """Taken by the one process serving this registry (two would share the contexts' sequence
        numbers): a second one fails at once with a clear message. The caller releases it."""
        if not self.path.is_dir():
            raise RegistryError(
                f"{self.path}: no such key registry directory (create keys with 'msgin5g keys add')"
            )
        self.load()  # fail early on a malformed registry
        lock = filelock.FileLock(str(self.path / SERVER_LOCK), timeout=0.01)
        try:
            lock.acquire()
        except filelock.Timeout:
            raise RegistryError(f"{self.path} is in use by another server process") from None
        return lock
