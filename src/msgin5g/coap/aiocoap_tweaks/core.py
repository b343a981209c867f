"""The performance, OSCORE-context and TLS adjustments of aiocoap (see the package docstring)."""

from __future__ import annotations

import hmac
import inspect
import logging
import re
import secrets
from collections.abc import Callable

import cbor2
from aiocoap import messagemanager as _messagemanager
from aiocoap import options as _options
from aiocoap import oscore
from aiocoap.numbers.types import CON
from aiocoap.transports import udp6 as _udp6

log = logging.getLogger("msgin5g.coap")


# -- Options.__deepcopy__ ------------------------------------------------------------------------------
def _deepcopy_options(self, memo):
    new = _options.Options.__new__(_options.Options)
    copied = {}
    for number, items in self._options.items():
        fresh = []
        for o in items:
            c = object.__new__(type(o))
            c.__dict__.update(o.__dict__)
            fresh.append(c)
        copied[number] = fresh
    new._options = copied
    return new


def option_copy_shape_problem() -> str | None:
    """Why :func:`install_option_copy` cannot rely on aiocoap's ``Options``, or None."""
    cls = _options.Options
    if getattr(cls, "__deepcopy__", None) is _deepcopy_options:
        return None
    if "__deepcopy__" in vars(cls):
        return "aiocoap.options.Options has its own __deepcopy__ now"
    if list(getattr(cls, "__slots__", ())) != ["_options"]:
        return "aiocoap.options.Options.__slots__ is no longer ('_options',)"
    probe = cls()
    if not isinstance(getattr(probe, "_options", None), dict):
        return "aiocoap.options.Options._options is no longer a dict"
    return None


def install_option_copy() -> bool:
    """Give ``aiocoap.options.Options`` the shallow-per-option ``__deepcopy__``; returns whether
    it is in place (False, with a warning, when aiocoap's shape is not the expected one)."""
    problem = option_copy_shape_problem()
    if problem is not None:
        log.warning("%s; keeping aiocoap's deep copy of options", problem)
        return False
    _options.Options.__deepcopy__ = _deepcopy_options
    return True


def option_copy_installed() -> bool:
    return getattr(_options.Options, "__deepcopy__", None) is _deepcopy_options


# -- the duplicate cache of the UDP message layer ------------------------------------------------------
class EncodedResponse:
    """A sent response kept only as its bytes, for aiocoap's duplicate detection (RFC 7252 §4.5)."""

    __slots__ = ("_bytes", "mid", "mtype", "remote")

    def __init__(self, message):
        self._bytes = message.encode()
        self.mtype, self.mid, self.remote = message.mtype, message.mid, message.remote

    def encode(self) -> bytes:
        return self._bytes

    def __repr__(self) -> str:
        return f"<EncodedResponse MID {self.mid} to {self.remote}, {len(self._bytes)} bytes>"


def duplicate_cache_shape_problem() -> str | None:
    """Why :func:`install_compact_duplicate_cache` cannot rely on aiocoap's MessageManager, or None.

    It relies on: ``MessageManager._store_response_for_duplicates(message)`` being what
    ``_send_initially`` calls for every sent message; duplicates being resent with
    ``_send_initially(self._recent_messages[key])``, whose only use of that object is
    ``message_interface.send(message)`` → ``message.encode()`` and ``.remote``/``.mtype``."""
    mm = _messagemanager.MessageManager
    store = getattr(mm, "_store_response_for_duplicates", None)
    if store is None or list(inspect.signature(store).parameters) != ["self", "message"]:
        return "MessageManager._store_response_for_duplicates(message) is gone or changed"
    try:
        initially = inspect.getsource(mm._send_initially)
        incoming = inspect.getsource(mm._deduplicate_message)
    except (AttributeError, OSError, TypeError):
        return "MessageManager._send_initially / _deduplicate_message are gone"
    if "self._store_response_for_duplicates(message)" not in initially:
        return "MessageManager._send_initially no longer stores responses for duplicates"
    if "self._send_initially(self._recent_messages[key])" not in incoming:
        return "MessageManager no longer resends a kept response on a duplicate"
    try:
        send = inspect.getsource(_udp6.MessageInterfaceUDP6.send)
    except (AttributeError, OSError, TypeError):
        return "aiocoap.transports.udp6.MessageInterfaceUDP6.send is gone"
    if set(re.findall(r"\bmessage\.(\w+)", send)) != {"remote", "encode"}:
        return "the UDP transport's send uses more of a message than .remote and .encode()"
    return None


def install_compact_duplicate_cache(ctx) -> bool:
    """Make the UDP message layer of the aiocoap context ``ctx`` keep sent non-confirmable and
    piggybacked responses as :class:`EncodedResponse`; returns whether it was installed."""
    problem = duplicate_cache_shape_problem()
    if problem is not None:
        log.warning("%s; keeping full messages in the duplicate cache", problem)
        return False
    for ri in getattr(ctx, "request_interfaces", ()):
        mm = getattr(ri, "token_interface", None)
        recent = getattr(mm, "_recent_messages", None)
        if not isinstance(mm, _messagemanager.MessageManager) or not isinstance(recent, dict):
            continue

        def store(message, recent=recent):
            key = (message.remote, message.mid)
            if key in recent and message.mtype is not CON:  # separate CON responses keep the Message
                recent[key] = EncodedResponse(message)
            elif key in recent:
                recent[key] = message

        mm._store_response_for_duplicates = store
        return True
    log.warning("no UDP message layer found in %r; keeping full messages in the duplicate cache", ctx)
    return False


# -- what each kind of process installs ----------------------------------------------------------------
def install_process_tweaks() -> dict[str, bool]:
    """The process-wide tweaks every msgin5g process using aiocoap wants (servers and clients
    alike); returns which are in place. Per-context ones are installed where contexts are made."""
    return {"option-copy": install_option_copy()}


# -- OSCORE contexts with caller-owned state (SPEC D12) -------------------------------------------------
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

    def derive_keys(self, master_salt: bytes, master_secret: bytes) -> None:
        """Sender Key, Recipient Key and Common IV (RFC 8613 §3.2.1): HKDF-SHA-256 (RFC 5869) with
        ``info = [id, id_context, alg_aead, type, L]`` — what aiocoap's ``derive_keys`` computes,
        with one HKDF-Extract for the three (they share salt and secret) and one HMAC per Expand
        (every output is at most one SHA-256 block), and without aiocoap's nine debug-log calls
        per derivation: a server builds a context per key of a fleet."""
        alg = self.alg_aead
        prk = hmac.digest(master_salt or bytes(32), master_secret, "sha256")  # Extract (RFC 5869 §2.2)

        def expand(role_id: bytes, out_type: str, length: int) -> bytes:  # RFC 5869 §2.3, L ≤ 32
            info = cbor2.dumps([role_id, self.id_context, alg.value, out_type, length])
            return hmac.digest(prk, info + b"\x01", "sha256")[:length]

        self.sender_key = expand(self.sender_id, "Key", alg.key_bytes)
        self.recipient_key = expand(self.recipient_id, "Key", alg.key_bytes)
        self.common_iv = expand(b"", "IV", alg.iv_bytes)

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


# -- the verified TLS client certificate (coaps+tcp, coaps+ws; SPEC D12) ----------------------------------
def tls_peer_certificate(remote) -> dict | None:
    """The client certificate of the TLS connection a request came on (``ssl`` ``getpeercert()``
    form, verified by the server's context), or None (not TLS, or aiocoap changed shape)."""
    transport = getattr(remote, "_transport", None)  # aiocoap.transports.tcp.TcpConnection
    if transport is None:
        connection = getattr(remote, "_connection", None)  # aiocoap.transports.ws.WSRemote
        transport = getattr(connection, "transport", None)
    get = getattr(transport, "get_extra_info", None)
    if get is None:
        return None
    try:
        return get("peercert") or None
    except Exception:
        return None


def prune_failed_tls_connections(ctx) -> int:
    """Drop from an aiocoap TLS server context's connection pool the connections that never
    completed their handshake (a client without an acceptable certificate): aiocoap keeps them
    forever and fails on them at shutdown. Returns how many were dropped."""
    dropped = 0
    for tman in getattr(ctx, "request_interfaces", ()):
        pool = getattr(getattr(tman, "token_interface", None), "_pool", None)
        if not isinstance(pool, set):
            continue
        for conn in [c for c in pool if getattr(c, "_transport", True) is None]:
            pool.discard(conn)
            dropped += 1
    return dropped
