"""The SCM-S's OSCORE keys in its store: provisioning and the server-side keyring (RFC 8613;
TS 24.546 6.2.1.2; SPEC D12).

Provisioning (:func:`add_keys`, used by ``msgin5g keys``) draws a master secret and salt per
identity, inserts every key in one transaction (:mod:`msgin5g.store.keys`) and writes the client
side as key files or one JSON Lines bundle (:mod:`.credentials`).

:class:`StoreKeyring` is what the secured site asks for a request's security context. A context is
built from its row on the first request of its kid (at most ``max_open`` stay in memory, least
recently used dropped first — dropping costs nothing, all state is in the store). Every process
serving the key set shares the state in the store:

* the server's sender sequence numbers are leased in blocks (RFC 8613 App. B.1.1);
* a request is accepted only after it decrypted *and* a compare-and-set of the shared replay
  window succeeded (:meth:`StoreKeyring.claim`): at most once across all processes, and a
  restarted process starts from the shared window (no Echo round trip, App. B.1.2, is needed);
* the same compare-and-set fails on a revoked key, so revocation takes effect at the next request.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import enum
import logging
import os
import secrets
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path

from ..authz import ANONYMOUS, LAB_IDENTITY_OPTION, Identity, Role, parse_identity
from ..coap.aiocoap_tweaks import LeasedSecurityContext, window_accepts
from ..model import ModelError
from ..problem import ProblemError
from ..store.keys import KeyStoreError, NewKey
from .credentials import key_json
from .keys import (
    ALGORITHMS,
    DEFAULT_ALGORITHM,
    MASTER_SALT_BYTES,
    MASTER_SECRET_BYTES,
    SERVER_SENDER_ID,
    RegistryError,
    claims_for,
    kid_for,
)

log = logging.getLogger("msgin5g.security")

#: Compare-and-set attempts on a replay window contended by sibling processes
CAS_ATTEMPTS = 64
#: Claims decided in one transaction at most (group commit of concurrent requests)
CLAIM_BATCH = 256


def utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def kid_number(kid: bytes) -> int:
    return int.from_bytes(kid, "big")


def new_keys(identities: Iterable[Identity], algorithm: str = DEFAULT_ALGORITHM) -> list[NewKey]:
    """Fresh key material (RFC 8613 §3.3: a master secret per pair, 32 random bytes; salt 8)."""
    if algorithm not in ALGORITHMS:
        raise RegistryError(f"unknown algorithm {algorithm!r}; one of {', '.join(ALGORITHMS)}")
    out = []
    token = secrets.token_bytes
    for identity in identities:
        if identity.role is Role.ANONYMOUS:
            raise RegistryError("keys are for UEs, gateways and administrators")
        out.append(NewKey(str(identity), algorithm, token(MASTER_SECRET_BYTES), token(MASTER_SALT_BYTES)))
    return out


def add_keys(
    store, identities: list[Identity], out: str | Path, algorithm: str = DEFAULT_ALGORITHM, psk: bool = False
) -> list[int]:
    """Keys for ``identities`` in the store, their client side written to ``out`` (a key file for
    one identity, a JSON Lines bundle for several; never overwritten — a reused key file would
    repeat sequence numbers). With ``psk`` the client side is the coaps PSK instead (a PSK file,
    ``{psk_identity, psk}``, derived from the key: :mod:`msgin5g.security.dtls`). Returns the key
    numbers. Raises RegistryError."""
    from .dtls import derive_psk, psk_json

    out = Path(out)
    if out.exists():
        raise RegistryError(
            f"{out} exists; credentials are never overwritten — remove it or choose another --out"
        )
    keys = new_keys(identities, algorithm)
    try:
        numbers = store.add_keys(keys, utc_now())
    except KeyStoreError as e:
        raise RegistryError(str(e)) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.writelines(
            (
                psk_json(k.identity, derive_psk(k.secret, k.salt))
                if psk
                else key_json(k.identity, kid_for(n, algorithm), k.secret, k.salt, algorithm)
            )
            + "\n"
            for n, k in zip(numbers, keys, strict=True)
        )
    tmp.rename(out)
    return numbers


class Verdict(enum.Enum):
    """The shared replay check of one decrypted request (RFC 8613 §7.4)."""

    ACCEPTED = "accepted"
    REPLAY = "replay"
    REVOKED = "revoked"


class StoreKeyring:
    """The store's keys as the secured site's server credentials (see the module docstring)."""

    def __init__(self, store, *, max_open: int = 65536):
        self.store = store
        self.max_open = max(1, max_open)
        self.counters: Counter = Counter()
        self._contexts: OrderedDict[int, LeasedSecurityContext] = OrderedDict()
        self._identities: dict[int, Identity] = {}
        self._listeners: list[Callable[[], None]] = []
        self._revoked_identities: set[Identity] = set()
        self._wanted: dict[int, list[asyncio.Future]] = {}  # keys being read, and who waits
        self._loading = False
        self._loader: asyncio.Future | None = None
        self._claims: list[tuple[LeasedSecurityContext, int, asyncio.Future]] = []
        self._claiming = False
        self._drainer: asyncio.Future | None = None

    def open(self) -> StoreKeyring:
        return self

    def close(self) -> None:
        self._contexts.clear()  # nothing to write back: every state change is already in the store

    def on_change(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` after a loaded key was revoked (to end its identity's observations)."""
        self._listeners.append(callback)

    # -- contexts ------------------------------------------------------------------------------------
    def find(self, kid: object) -> LeasedSecurityContext | None:
        """The context of an active key ``kid``, or None (unknown or revoked on this server)."""
        number = self._number(kid)
        if number is None:
            return None
        ctx = self._cached(number)
        return ctx if ctx is not None else self._install(kid, number, self.store.get_key(number))

    async def find_async(self, kid: object) -> LeasedSecurityContext | None:
        """:meth:`find`, reading a key not yet in memory off the event loop (SPEC D14)."""
        number = self._number(kid)
        if number is None:
            return None
        ctx = self._cached(number)
        if ctx is not None:
            return ctx
        waiting = self._wanted.get(number)
        if waiting is None:
            waiting = self._wanted[number] = []
        future = asyncio.get_running_loop().create_future()
        waiting.append(future)
        if not self._loading:  # keys asked for while a read runs are read together next
            self._loading = True
            self._loader = asyncio.ensure_future(self._load_wanted())
        return self._install(kid, number, await future)

    async def _load_wanted(self) -> None:
        try:
            while self._wanted:
                wanted, self._wanted = self._wanted, {}
                try:
                    rows = await asyncio.to_thread(self.store.get_keys, list(wanted))
                except Exception as e:
                    log.error("cannot read keys: %s", e)
                    rows = {}
                for number, futures in wanted.items():
                    for f in futures:
                        if not f.done():
                            f.set_result(rows.get(number))
        finally:
            self._loading = False

    @staticmethod
    def _number(kid: object) -> int | None:
        if not isinstance(kid, bytes) or not kid or len(kid) > 7:
            return None
        return kid_number(kid)

    def _cached(self, number: int) -> LeasedSecurityContext | None:
        ctx = self._contexts.get(number)
        if ctx is not None:
            self._contexts.move_to_end(number)
        return ctx

    def _install(self, kid: bytes, number: int, row) -> LeasedSecurityContext | None:
        if row is None or not row.active or kid_for(number, row.algorithm) != kid:
            self.counters["unknown-or-revoked"] += 1
            return None
        if number in self._contexts:  # built meanwhile by a concurrent request
            return self._contexts[number]
        try:
            identity = parse_identity(row.identity)
        except ModelError:
            log.error("key %s names an unreadable identity %r", kid.hex(), row.identity)
            return None
        ctx = LeasedSecurityContext(
            sender_id=SERVER_SENDER_ID,
            recipient_id=kid,
            secret=row.secret,
            salt=row.salt,
            algorithm=row.algorithm,
            lease=lambda n: self.store.lease_sequence_numbers(number, n),
            window=(row.rw_index, row.rw_bits),
            claims=claims_for(kid),
        )
        self._revoked_identities.discard(identity)  # a new key of an identity revoked before
        ctx.store_window = (row.rw_index, row.rw_bits)
        ctx.key_identity = identity  # read by identify(), even after the context left the cache
        ctx.key_revoked = False
        self._contexts[number] = ctx
        self._identities[number] = identity
        self.counters["contexts-loaded"] += 1
        while len(self._contexts) > self.max_open:
            old, _ = self._contexts.popitem(last=False)
            self._identities.pop(old, None)
        return ctx

    def _forget(self, number: int) -> None:
        self._contexts.pop(number, None)
        self._identities.pop(number, None)

    def claim_now(self, ctx: LeasedSecurityContext, seqno: int) -> Verdict:
        """Accept request number ``seqno`` of ``ctx``'s key in the shared replay window (compare-
        and-set in the store). Run after the request decrypted; blocking (see :meth:`claim`)."""
        return self.claim_many_now([(ctx, seqno)])[0]

    def claim_many_now(self, items: list[tuple[LeasedSecurityContext, int]]) -> list[Verdict]:
        """:meth:`claim_now` for the requests of several keys (or several of one key), their
        compare-and-sets in one transaction per attempt. Blocking.

        The first guess of a key's window is what this process last saw in the store — right
        whenever no sibling process took a request of that key since, which saves reading it
        back. Windows only move forward, so a sequence number an older window refuses, every
        later one refuses too: such a request is a replay without asking the store."""
        verdicts: list[Verdict | None] = [None] * len(items)
        numbers = [kid_number(ctx.recipient_id) for ctx, _ in items]
        known: dict[int, tuple[int, int]] = {}
        for (ctx, _), number in zip(items, numbers, strict=True):
            guess = getattr(ctx, "store_window", None)
            if guess is not None and number not in known:
                known[number] = guess
        todo = list(range(len(items)))
        for _ in range(CAS_ATTEMPTS):
            missing = {numbers[i] for i in todo if numbers[i] not in known}
            if missing:
                rows = self.store.replay_windows(missing)
                for number in missing:
                    row = rows.get(number)
                    if row is not None and row[2]:
                        known[number] = (row[0], row[1])
                for i in todo:
                    if numbers[i] in missing and numbers[i] not in known:
                        verdicts[i] = Verdict.REVOKED
                for number in missing - known.keys():
                    self._revoked(number)
            working = dict(known)
            swaps: list[tuple[int, int, tuple[int, int], tuple[int, int]]] = []
            for i in todo:
                if verdicts[i] is not None:
                    continue
                ctx, seqno = items[i]
                old = working[numbers[i]]
                new = window_accepts(old, seqno)
                if new is None:
                    ctx.set_window(old)
                    verdicts[i] = Verdict.REPLAY
                    continue
                swaps.append((i, numbers[i], old, new))
                working[numbers[i]] = new
            if not swaps:
                break
            done = self.store.swap_replay_windows([(n, old, new) for _, n, old, new in swaps])
            todo = []
            for (i, number, _old, new), ok in zip(swaps, done, strict=True):
                if ok:
                    ctx = items[i][0]
                    ctx.set_window(new)
                    ctx.store_window = new
                    known[number] = new
                    verdicts[i] = Verdict.ACCEPTED
                else:  # a sibling process moved the window (or the key was revoked): read it again
                    todo.append(i)
                    known.pop(number, None)
            if not todo:
                break
            self.counters["replay-window-retries"] += len(todo)
        for i, v in enumerate(verdicts):
            if v is None:
                log.error(
                    "replay window of key %s: no compare-and-set succeeded", items[i][0].recipient_id.hex()
                )
                verdicts[i] = Verdict.REPLAY
        return verdicts  # type: ignore[return-value]

    async def claim(self, ctx: LeasedSecurityContext, seqno: int) -> Verdict:
        """:meth:`claim_now` off the event loop (SPEC D14: the loop never waits on the database).
        Claims arriving while a transaction runs wait for the next one and share it (group
        commit): one write transaction per batch of concurrent requests, not per request."""
        future = asyncio.get_running_loop().create_future()
        self._claims.append((ctx, seqno, future))
        if not self._claiming:
            self._claiming = True
            self._drainer = asyncio.ensure_future(self._drain_claims())
        return await future

    async def _drain_claims(self) -> None:
        try:
            while self._claims:
                batch, self._claims = self._claims[:CLAIM_BATCH], self._claims[CLAIM_BATCH:]
                try:
                    verdicts = await asyncio.to_thread(self.claim_many_now, [(c, n) for c, n, _ in batch])
                except Exception as e:  # the store failed: these requests are not accepted
                    log.error("replay window claims failed: %s", e)
                    for _, _, f in batch:
                        if not f.done():
                            f.set_exception(e)
                    continue
                self.counters["claim-batches"] += 1
                for (_, _, f), v in zip(batch, verdicts, strict=True):
                    if not f.done():
                        f.set_result(v)
        finally:
            self._claiming = False

    def _revoked(self, number: int) -> None:
        ctx = self._contexts.get(number)
        if ctx is not None:
            ctx.key_revoked = True
        if number in self._identities:
            self._revoked_identities.add(self._identities[number])
            self._forget(number)
            self.counters["revoked-seen"] += 1
            for cb in self._listeners:
                try:
                    cb()
                except Exception:
                    log.exception("key change listener failed")

    # -- identity ------------------------------------------------------------------------------------
    def identify(self, request) -> Identity:
        """The authenticated identity of an inner request, for the SCM-S resources. The lab
        identity option is refused on a secured server."""
        from .server import LAB_IDENTITY_REFUSED

        if request.opt.get_option(LAB_IDENTITY_OPTION):
            raise ProblemError(LAB_IDENTITY_REFUSED)
        ctx = getattr(request.remote, "security_context", None)
        identity = getattr(ctx, "key_identity", None)
        if identity is None or getattr(ctx, "key_revoked", True):
            return ANONYMOUS
        return identity

    def is_active(self, identity: Identity) -> bool:
        """False once a key of ``identity`` was seen revoked by this process (ends observations)."""
        return identity not in self._revoked_identities

    async def watch(self, interval: float = 1.0) -> None:
        """Notice revocations of loaded keys that send nothing new (ends their observations)."""
        while True:
            await asyncio.sleep(interval)
            numbers = list(self._identities)
            try:
                gone = await asyncio.to_thread(self.store.revoked_among, numbers)
            except Exception:
                log.exception("cannot read the keys' status")
                continue
            for n in gone:
                self._revoked(n)

    @property
    def loaded(self) -> int:
        return len(self._contexts)
