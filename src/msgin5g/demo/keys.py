"""The demo's OSCORE keys: every identity of the fleet gets its credentials (SPEC D12; docs/security.md).

Generated into the demo's store and temporary directory with the same code ``msgin5g keys import``
uses:

* the **SCM-S's keys**, rows in its store, made in one batch: the administrator that provisions
  and changes documents and the Gateway UE (one key file each), and every UE that talks to the
  SCM-S end to end — the constrained UEs behind the Relay UE (OSCORE passes through it), the phones
  and the observing UE — in one JSON Lines bundle;
* the **Gateway UE's registry** (``msgin5g gateway --security``): every constrained UE behind the
  gateway, for the MSGin5G-6 leg (standing in for PC5 unicast security, TS 33.503).

A UE's key is its identity (``ue:<MSGin5G UE ID>``); an impostor asks, with its own key, for
another UE's configuration and is refused by the SCM-S (4.03).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..authz import Identity, Role, parse_identity
from ..security.credentials import load_bundle, load_key
from ..security.registry import ClientCredentials, Registry, release_credentials
from ..security.storekeys import add_keys
from ..store import open_store
from .plan import GATEWAY_ID, FleetPlan
from .plan import Path as UePath

ADMIN = "admin:demo"


@dataclass
class DemoKeys:
    gateway_registry: Path
    admin: object  # KeyCredentials
    gateway: object  # KeyCredentials
    at_scm: dict[str, object]  # MSGin5G UE ID → its key with the SCM-S (KeyCredentials, one bundle)
    at_gateway: dict[str, ClientCredentials]  # MSGin5G UE ID → its key with the Gateway UE
    bundle: Path  # the UEs' keys with the SCM-S

    @property
    def count(self) -> int:
        return 2 + len(self.at_scm) + len(self.at_gateway)


def make_keys(plan: FleetPlan, directory: Path, db_url: str) -> DemoKeys:
    """Credentials for every identity of ``plan`` (see the module docstring)."""
    gw = Registry(directory / "gateway-keys")
    creds = directory / "credentials"
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
    gw_made = gw.add_many(
        [(Identity(Role.UE, d), creds / "gateway" / f"ue{i}.json") for i, d in enumerate(gw_ues)],
        durable=False,
    )
    at_scm = {k.identity.name: k for k in load_bundle(bundle, prefetch=16).values()} if scm_ues else {}
    return DemoKeys(
        gw.path,
        load_key(creds / "admin.json"),
        load_key(creds / "gateway.json"),
        at_scm,
        {c.identity.name: c for _, c in gw_made},
        bundle,
    )


def done_with(creds: ClientCredentials | None) -> None:
    """Write a UE's context back and close it once its procedure is over: a fleet of thousands
    would otherwise hold a lock file open per UE."""
    if creds is not None:
        release_credentials(creds)
