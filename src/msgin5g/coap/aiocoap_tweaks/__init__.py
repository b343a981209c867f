"""Every adjustment of aiocoap internals, in one place (SPEC D12; STYLE "aiocoap_tweaks").

Two modules: :mod:`.core` (speed, memory, OSCORE contexts, TLS) and :mod:`.hardening` (what the
SCM-S does with datagrams aiocoap cannot parse or hold; its own docstring lists those).

Nothing here happens on import: a process that wants a tweak installs it explicitly at start-up
(the SCM-S in :func:`msgin5g.server.app.start_server`, the clients in their command-line entry
points). Each tweak first checks that aiocoap has the shape it relies on and otherwise leaves
aiocoap alone (with a warning) — so a newer aiocoap costs speed or memory, never correctness —
and ``tests/unit/test_aiocoap_tweaks.py`` fails as soon as that shape changes, which is what
lets ``pyproject.toml`` accept aiocoap releases of the same minor series instead of one exact
version.

The tweaks:

* :func:`install_option_copy` — ``aiocoap.Message.copy`` copies the options with
  ``copy.deepcopy``: about 100 µs for a small response and milliseconds for a bulk GET with
  hundreds of ``ue-uri`` options. OSCORE copies every message it protects (RFC 8613 §4: the inner
  message is split from the outer), so on a secured server that call costs about as much as
  rendering the answer (``bench/bench_security.py``). Option objects hold a number and an
  immutable value, so copying each option object shallowly yields exactly what ``deepcopy``
  makes. Process-wide (a class attribute).
* :func:`install_compact_duplicate_cache` — aiocoap keeps every answered confirmable request's
  response for EXCHANGE_LIFETIME (247 s, RFC 7252 §4.5) so that a retransmitted request gets the
  same message; it keeps the whole Message (options, remote, the request it answers): about
  4 KiB per exchange, gigabytes at a few thousand requests per second. Resending needs only the
  encoded bytes and the remote: :class:`EncodedResponse`. Per server context.
* :func:`tls_peer_certificate` — aiocoap's TLS server verifies the client certificate but
  exposes it only through private attributes of its connection objects (``TcpConnection.
  _transport``; the WebSocket remote's ``_connection``): read here, nowhere else. And its TLS
  server keeps a connection object in its pool for every rejected handshake (it never learns of
  it), which then also breaks its shutdown: :func:`prune_failed_tls_connections`.
* :mod:`.secure_transports` — coaps and coaps+ws. aiocoap's DTLS server (``tinydtls_server``)
  keeps a tinydtls session for every source address that ever sent it a datagram and never ends
  one (its ``_maybe_purge_sockets`` is never called): :func:`bound_dtls_sessions` caps them (least
  recently used ended first) and ends idle ones; the PSK identity a session authenticated is
  only in private attributes (:func:`dtls_psk_claim`). aiocoap starts a TLS WebSocket server
  only beside a plain one on the port before it: :func:`serve_coaps_ws` starts it alone on a
  chosen port, the way aiocoap does; and an aiocoap client can present a client certificate
  only through :func:`present_client_certificate`. Guarded by
  ``tests/unit/test_aiocoap_secure_transports.py``.
* :mod:`.hardening` — malformed and oversize datagrams answered (4.02, 4.13 + Size1, RST)
  instead of a traceback per datagram, a bounded duplicate-detection cache, a guard for CoAP over
  TCP/WebSockets; installed by the server on its contexts (``hardening.install``,
  ``hardening.install_stream_guard``); guarded by ``tests/unit/test_aiocoap_hardening.py``.
* :class:`LeasedSecurityContext` — not a patch but a reliance: an OSCORE security context
  (RFC 8613) composed of aiocoap's ``CanProtect`` / ``CanUnprotect`` / ``SecurityContextUtils``
  (protection, verification, HKDF) whose mutable state is the caller's, not a directory of files
  (SPEC D12: keys in the store). Sender sequence numbers come from leases (App. B.1.1: a block
  ``[start, end)`` persisted by the caller before any of it is used, renewed when used up); the
  replay window is aiocoap's ``ReplayWindow``, loaded from and read back into ``(index, bits)``
  (:func:`window_accepts`).
"""

from . import hardening
from .core import (
    HASH,
    WINDOW_SIZE,
    EncodedResponse,
    LeasedSecurityContext,
    duplicate_cache_shape_problem,
    install_compact_duplicate_cache,
    install_option_copy,
    install_process_tweaks,
    option_copy_installed,
    option_copy_shape_problem,
    prune_failed_tls_connections,
    tls_peer_certificate,
    window_accepts,
)
from .secure_transports import (
    DtlsSessions,
    bound_dtls_sessions,
    coaps_ws_shape_problem,
    dtls_available,
    dtls_psk_claim,
    dtls_shape_problem,
    present_client_certificate,
    serve_coaps_ws,
)

__all__ = [
    "HASH",
    "WINDOW_SIZE",
    "DtlsSessions",
    "EncodedResponse",
    "LeasedSecurityContext",
    "bound_dtls_sessions",
    "coaps_ws_shape_problem",
    "dtls_available",
    "dtls_psk_claim",
    "dtls_shape_problem",
    "duplicate_cache_shape_problem",
    "hardening",
    "install_compact_duplicate_cache",
    "install_option_copy",
    "install_process_tweaks",
    "option_copy_installed",
    "option_copy_shape_problem",
    "present_client_certificate",
    "prune_failed_tls_connections",
    "serve_coaps_ws",
    "tls_peer_certificate",
    "window_accepts",
]
