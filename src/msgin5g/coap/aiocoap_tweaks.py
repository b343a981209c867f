"""Where the project relies on aiocoap 0.4.17 beyond its documented surface (SPEC D12).

Each reliance is one named piece here, with a test in ``tests/unit/test_aiocoap_tweaks.py`` that
fails if aiocoap's internals change under it:

* :class:`LeasedSecurityContext` — an OSCORE security context (RFC 8613) whose persistence is the
  caller's, not a directory of files: it composes aiocoap's ``CanProtect`` / ``CanUnprotect`` /
  ``SecurityContextUtils`` (protection, verification, HKDF) and keeps the two pieces of mutable
  state where the caller says. Sender sequence numbers come from leases (RFC 8613 App. B.1.1: a
  block ``[start, end)`` persisted by the caller before any of it is used; a lease that runs out
  is renewed before the next number is handed out); the replay window is aiocoap's
  ``ReplayWindow``, loaded from and read back into ``(index, bits)``.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

from aiocoap import oscore

#: RFC 8613 §7.4 replay window size (aiocoap's default)
WINDOW_SIZE = oscore.DEFAULT_WINDOWSIZE
HASH = "sha256"  # RFC 8613 §3.2.1 HKDF SHA-256


def _no_persist() -> None:
    """The replay window is persisted by whoever owns the context, after each accepted request."""


def window_accepts(state: tuple[int, int], seqno: int) -> tuple[int, int] | None:
    """RFC 8613 §7.4 on a persisted replay window ``(index, bits)``: the window after accepting
    ``seqno``, or None when ``seqno`` was seen already or fell behind the window. Pure; the rule
    is aiocoap's ``ReplayWindow``."""
    w = oscore.ReplayWindow(WINDOW_SIZE, _no_persist)
    w.initialize_from_persisted({"index": state[0], "bitfield": state[1]})
    if not w.is_valid(seqno):
        return None
    w.strike_out(seqno)
    p = w.persist()
    return p["index"], p["bitfield"]


class LeasedSecurityContext(oscore.CanProtect, oscore.CanUnprotect, oscore.SecurityContextUtils):
    """An OSCORE context between a sender and a recipient ID, keys derived from a master secret
    and salt (RFC 8613 §3.2), with leased sender sequence numbers and a caller-owned replay window.

    ``lease(count)`` returns a persisted block ``[start, end)`` of at least ``count`` numbers;
    ``window`` is the replay window to start from (None: unknown — a server then answers the first
    request with an Echo challenge, RFC 8613 App. B.1.2; a client never checks responses' numbers).
    """

    LEASE_START = 16
    LEASE_LIMIT = 4096

    def __init__(
        self,
        *,
        sender_id: bytes,
        recipient_id: bytes,
        secret: bytes,
        salt: bytes,
        algorithm: str,
        lease: Callable[[int], tuple[int, int]],
        window: tuple[int, int] | None = None,
        claims: list[str] | None = None,
    ):
        self.sender_id = sender_id
        self.recipient_id = recipient_id
        self.id_context = None
        self.alg_aead = oscore.algorithms[algorithm]
        self.hashfun = oscore.hashfunctions[HASH]
        self.derive_keys(salt, secret)
        self.recipient_replay_window = oscore.ReplayWindow(WINDOW_SIZE, _no_persist)
        if window is None:
            self.echo_recovery = secrets.token_bytes(8)
        else:
            self.echo_recovery = None
            self.set_window(window)
        self._lease = lease
        self._chunk = self.LEASE_START
        self.sender_sequence_number = 0
        self.lease_end = 0  # nothing leased yet
        if claims is not None:
            self.authenticated_claims = claims

    # -- replay window -----------------------------------------------------------------------------
    def set_window(self, window: tuple[int, int]) -> None:
        self.recipient_replay_window.initialize_from_persisted({"index": window[0], "bitfield": window[1]})

    # -- sender sequence numbers (RFC 8613 App. B.1.1) ---------------------------------------------
    def new_sequence_number(self):
        if self.sender_sequence_number >= self.lease_end:
            start, end = self._lease(self._chunk)
            self._chunk = min(self._chunk * 2, self.LEASE_LIMIT)
            if end <= start:
                raise oscore.ContextUnavailable("no sequence numbers could be leased")
            self.sender_sequence_number, self.lease_end = start, end
        return super().new_sequence_number()

    def post_seqnoincrease(self):
        if self.sender_sequence_number > self.lease_end:  # never: new_sequence_number leased first
            raise oscore.ContextUnavailable("sequence number outside the lease")
