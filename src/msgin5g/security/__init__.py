"""Authenticated identities with OSCORE (RFC 8613): TS 24.546 6.2.1.2; TS 33.501 Annex Y; SPEC D12.

Every request to a secured SCM-S is OSCORE-protected end to end. The security context that
verifies it names the requester; the key's row in the store maps that context to an
:class:`~msgin5g.authz.Identity` (UE with its MSGin5G UE ID, gateway, administrator), and the pure
:mod:`msgin5g.authz` core decides what that identity may do.

* :mod:`.keys` — pure: key identifiers, key entries as the command line shows them, identity
  arguments (unit-tested without files or sockets);
* :mod:`.storekeys` — keys in a store (:mod:`msgin5g.store.keys`; the SCM-S's store, or a Gateway
  UE's state database for its constrained UEs, :mod:`msgin5g.store.keysqlite`): provisioning
  (``keys add`` / ``keys import``) and the keyring every server process builds contexts from,
  with leased sequence numbers and the shared replay window (RFC 8613 App. B.1);
* :mod:`.credentials` — the client side: key files and JSON Lines bundles, sequence numbers
  leased from ``FILE.state``;
* :mod:`.server` — the secured site that verifies each request, claims it in the shared replay
  window after decryption, and answers every unprotected or unverifiable request with one 4.01
  problem details;
* :mod:`.endpoint` — protection and verification for the project's own small CoAP clients
  (constrained UE through a relay or a gateway) and the gateway's MSGin5G-6 side, on aiocoap's
  ``protect`` / ``unprotect`` primitives;
* :mod:`.cli` — ``msgin5g keys``.

OSCORE copies every message it protects; the measured speed-up of aiocoap's option copy it leans
on is :func:`msgin5g.coap.aiocoap_tweaks.install_option_copy`, installed by the processes at
start-up (never on import).

Format of the files: ``docs/security.md``.
"""
