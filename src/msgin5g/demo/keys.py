"""The demo's OSCORE keys: every identity of the fleet gets its credentials (SPEC D12; docs/security.md).

Generated into the demo's store and temporary directory with the same code ``msgin5g keys import``
uses:

* the **SCM-S's keys**, rows in its store, made in one batch: the administrator that provisions
  and changes documents and the Gateway UE (one key file each), and every UE that talks to the
  SCM-S end to end — the constrained UEs behind the Relay UE (OSCORE passes through it), the phones
  and the observing UE — in one JSON Lines bundle;
* the **Gateway UE's keys**, rows in its state database (``msgin5g gateway --oscore``), made in one
  batch: every constrained UE behind the gateway, for the MSGin5G-6 leg (standing in for PC5
  unicast security, TS 33.503), their client side in a second bundle.

A UE's key is its identity (``ue:<MSGin5G UE ID>``); an impostor asks, with its own key, for
another UE's configuration and is refused by the SCM-S (4.03).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..authz import Identity, Role, parse_identity
from ..security.credentials import KeyCredentials, load_bundle, load_key, release_credentials
from ..security.storekeys import add_keys
from ..store import open_store
from ..store.keysqlite import SqliteKeyStore
from .plan import GATEWAY_ID, FleetPlan
from .plan import Path as UePath

ADMIN = "admin:demo"


@dataclass
class DemoKeys:
    gateway_state: Path  # the Gateway UE's state database, with its UEs' keys
    admin: KeyCredentials
    gateway: KeyCredentials
    at_scm: dict[str, KeyCredentials]  # MSGin5G UE ID → its key with the SCM-S (one bundle)
    at_gateway: dict[str, KeyCredentials]  # MSGin5G UE ID → its key with the Gateway UE (one bundle)
    bundle: Path  # the UEs' keys with the SCM-S

    @property
    def count(self) -> int:
        return 2 + len(self.at_scm) + len(self.at_gateway)


def make_keys(plan: FleetPlan, directory: Path, db_url: str) -> DemoKeys:
    """Credentials for every identity of ``plan`` (see the module docstring)."""
    creds = directory / "credentials"
    gateway_state = directory / "gateway-state.db"
    scm_ues = sorted({u.device for u in plan.ues if u.path is not UePath.GATEWAY})
    gw_ues = sorted({u.device for u in plan.ues if u.path is UePath.GATEWAY})
    store = open_store(db_url)
    try:
        add_keys(store, [parse_identity(ADMIN)], creds / "admin.json")
        add_keys(store, [Identity(Role.GATEWAY, GATEWAY_ID)], creds / "gateway.json")
        bundle = creds / "ues.jsonl"
        if scm_ues:
            add_keys(store, [Identity(Role.UE, d) for d in scm_ues], bundle)
    finally:
        store.close()
    gw_bundle = creds / "gateway-ues.jsonl"
    gw_store = SqliteKeyStore(gateway_state)
    try:
        if gw_ues:
            add_keys(gw_store, [Identity(Role.UE, d) for d in gw_ues], gw_bundle)
    finally:
        gw_store.close()
    at_scm = {k.identity.name: k for k in load_bundle(bundle, prefetch=16).values()} if scm_ues else {}
    at_gw = {k.identity.name: k for k in load_bundle(gw_bundle, prefetch=16).values()} if gw_ues else {}
    return DemoKeys(
        gateway_state, load_key(creds / "admin.json"), load_key(creds / "gateway.json"), at_scm, at_gw, bundle
    )


def done_with(creds: KeyCredentials | None) -> None:
    """Forget a UE's context once its procedure is over (a fleet of thousands)."""
    if creds is not None:
        release_credentials(creds)
