"""The demo's OSCORE keys: every identity of the fleet gets its credentials (SPEC D12; docs/security.md).

Generated into the demo's temporary directory with the same registry code ``msgin5g keys add``
uses, in one batch:

* the **SCM-S registry** (``msgin5g server --security``): the administrator that provisions and
  changes documents, the Gateway UE (``gateway:demo-gw``), and every UE that talks to the SCM-S
  end to end — the constrained UEs behind the Relay UE (OSCORE passes through it), the phones and
  the observing UE;
* the **Gateway UE's registry** (``msgin5g gateway --security``): every constrained UE behind the
  gateway, for the MSGin5G-6 leg (standing in for PC5 unicast security, TS 33.503).

A UE's key is its identity (``ue:<MSGin5G UE ID>``); an impostor asks, with its own key, for
another UE's configuration and is refused by the SCM-S (4.03).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..authz import Identity, Role, parse_identity
from ..security.registry import ClientCredentials, Registry, release_credentials
from .plan import GATEWAY_ID, FleetPlan
from .plan import Path as UePath

ADMIN = "admin:demo"


@dataclass
class DemoKeys:
    scm_registry: Path
    gateway_registry: Path
    admin: ClientCredentials
    gateway: ClientCredentials
    at_scm: dict[str, ClientCredentials]  # MSGin5G UE ID → its key with the SCM-S
    at_gateway: dict[str, ClientCredentials]  # MSGin5G UE ID → its key with the Gateway UE

    @property
    def count(self) -> int:
        return 2 + len(self.at_scm) + len(self.at_gateway)


def make_keys(plan: FleetPlan, directory: Path) -> DemoKeys:
    """Credentials for every identity of ``plan`` (see the module docstring)."""
    scm = Registry(directory / "scm-keys")
    gw = Registry(directory / "gateway-keys")
    creds = directory / "credentials"
    scm_ues = sorted({u.device for u in plan.ues if u.path is not UePath.GATEWAY})
    gw_ues = sorted({u.device for u in plan.ues if u.path is UePath.GATEWAY})
    wanted: list[tuple[Identity, Path]] = [
        (parse_identity(ADMIN), creds / "admin.json"),
        (Identity(Role.GATEWAY, GATEWAY_ID), creds / "gateway.json"),
        *((Identity(Role.UE, d), creds / "scm" / f"ue{i}.json") for i, d in enumerate(scm_ues)),
    ]
    made = scm.add_many(wanted, durable=False)
    gw_made = gw.add_many(
        [(Identity(Role.UE, d), creds / "gateway" / f"ue{i}.json") for i, d in enumerate(gw_ues)],
        durable=False,
    )
    return DemoKeys(
        scm.path,
        gw.path,
        made[0][1],
        made[1][1],
        {c.identity.name: c for _, c in made[2:]},
        {c.identity.name: c for _, c in gw_made},
    )


def done_with(creds: ClientCredentials | None) -> None:
    """Write a UE's context back and close it once its procedure is over: a fleet of thousands
    would otherwise hold a lock file open per UE."""
    if creds is not None:
        release_credentials(creds)
