"""The demo's fleet and what its provisioning implies for every UE (SPEC §3, D3–D6, D12).

Pure: a seed and a size in, plain values out. :func:`make_plan` lays out a realistic fleet —

* **sensors**: constrained UEs of one device model (TAC :data:`SENSOR_TAC`), serial numbers
  ``0 … N-1``; one IMEI-range document with placeholders configures most of them (SPEC D5);
* **meters**: every 25th serial number also has a document of its own (a CSV row), which is
  more specific than the range document and wins (SPEC D4);
* **unprovisioned**: the newest few serial numbers are beyond the range document: no
  configuration exists for them (4.04);
* **outside the gateway**: a block of serial numbers in the middle is not in the Gateway UE's
  registry entry, so a bulk GET withholds them (per-UE 4.03, SPEC D12) — the same UEs asking
  through the relay are configured;
* **impostors**: a few constrained UEs behind the relay ask, under their own identity, for
  another UE's configuration (4.03, TS 24.546 6.2.1.2);
* **phones**: unconstrained UEs asking the SCM-S directly — own documents, a TAC-wide document,
  one without any, and one asking for somebody else's — and one UE that observes its document.

The constrained UEs are split between the relay and the gateway per category, so that at any
size every outcome of SPEC §3.1 (2.05, 4.03, 4.04) appears on every path.

:func:`FleetPlan.all_documents` is what the provisioning files say, as documents; the oracle
(:mod:`.oracle`) reads them and the gateway registry entry — never the plan's categories.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..model import imei_urn

SENSOR_TAC = "35209900"
PHONE_TAC = "86000000"
DOMAIN = "msgin5g.example"
SERVICE_ID = "msgin5g"
MSGIN5G_SERVER = "coap://msgin5g-server.example"
GATEWAY_ID = "demo-gw"
METER_EVERY, METER_OFFSET = 25, 7
SHARE_UNPROVISIONED = 0.03  # of the sensors: beyond the range document
SHARE_OUTSIDE_GATEWAY = 0.03  # of the sensors: not in the gateway's registry entry
SHARE_IMPOSTORS = 0.02  # of the relay's UEs
MIN_UES = 20  # below this some category would be empty
#: Relay UEs ``--relays auto`` starts at most: each is a process of its own (≈ 30 MiB, a fraction of
#: a CPU second to start), so a very large fleet shares them rather than starting thousands
MAX_AUTO_RELAYS = 32


class Path(enum.Enum):
    """How a UE reaches the SCM-S."""

    RELAY = "relay"  # constrained UE → PC5 → Relay UE → Uu (SPEC §3.2)
    GATEWAY = "gateway"  # constrained UE → MSGin5G-6 → Gateway UE → Uu (SPEC §3.4)
    DIRECT = "direct"  # unconstrained UE → Uu (SPEC §3.1)
    OBSERVER = "observer"  # unconstrained UE that observes its document (RFC 7641)


@dataclass(frozen=True, slots=True)
class PlannedUe:
    """One UE of the demo and the request it makes.

    ``identity`` is the lab identity claimed end to end (``ue:<device>``; through the relay it
    travels untouched, as OSCORE would) — None on the gateway path, where the Gateway UE asks
    under its own identity.
    """

    device: str  # the UE's MSGin5G UE ID
    path: Path
    role: str  # sensor | meter | unprovisioned | outside-gateway | impostor | phone
    asks_for: str  # ue-uri of its request: its own ID, except for an impostor
    identity: str | None = None


@dataclass
class FleetPlan:
    """The UEs to drive and the provisioning that decides what each of them gets."""

    n: int
    seed: int
    ues: list[PlannedUe]
    documents: list[dict]  # → fleet.yaml (range document, phones)
    meter_rows: list[tuple[str, str, str, int]]  # → meters.csv (one UE per row)
    gateway_coverage: dict  # the Gateway UE's registry entry
    range_high: int
    outside_gateway: range
    notes: dict[str, int] = field(default_factory=dict)

    def on(self, path: Path) -> list[PlannedUe]:
        return [u for u in self.ues if u.path is path]

    @property
    def observer(self) -> PlannedUe:
        return next(u for u in self.ues if u.path is Path.OBSERVER)

    def all_documents(self) -> list[dict]:
        """Every document the provisioning files describe: ``fleet.yaml``'s, and one per row of
        ``meters.csv`` (a row is one UE's ON_NETWORK configuration, keyed by its URI)."""
        rows = [
            {
                "configName": f"meter-{uri}",
                "valServiceDomain": DOMAIN,
                "valServiceId": SERVICE_ID,
                "valUeIds": {"uris": [uri]},
                "ueConfigs": [on_network(sid, segment)],
            }
            for uri, sid, _server, segment in self.meter_rows
        ]
        return [*self.documents, *rows]

    def gateway_set_args(self) -> list[str]:
        """``msgin5g config gateway set`` arguments for :attr:`gateway_coverage`."""
        args = []
        for rng in self.gateway_coverage.get("imeiRanges", ()):
            sr = rng.get("snrRange")
            args += ["--tac", rng["tac"] + (f":{sr['low']}-{sr['high']}" if sr else "")]
        for uri in self.gateway_coverage.get("uris", ()):
            args += ["--uri", uri]
        return args


def on_network(ue_service_id: str, segment_size: int | None = None) -> dict:
    """An ``ON_NETWORK`` UeConfig (SPEC D2); configData as an object, as the YAML files have it."""
    data: dict = {"msgin5gServerAddress": MSGIN5G_SERVER, "ueServiceId": ue_service_id}
    if segment_size is not None:
        data["segmentSize"] = segment_size
    return {"configType": "ON_NETWORK", "configData": data}


def phone_doc(name: str, uris: Sequence[str], ue_service_id: str, segment_size: int | None = None) -> dict:
    return {
        "configName": name,
        "valServiceDomain": DOMAIN,
        "valServiceId": SERVICE_ID,
        "valUeIds": {"uris": list(uris)},
        "ueConfigs": [on_network(ue_service_id, segment_size)],
    }


ALICE = "sip:alice@operator.example"
BOB = "sip:bob@operator.example"
CAROL = "sip:carol@operator.example"
MALLORY = "sip:mallory@operator.example"
DAVE = "sip:dave@operator.example"


def _phones() -> tuple[list[PlannedUe], list[dict]]:
    """Unconstrained UEs asking directly, with their documents (SPEC §3.1, D4, D12)."""
    handset = imei_urn(PHONE_TAC, 1)
    ues = [
        PlannedUe(ALICE, Path.DIRECT, "phone", ALICE, f"ue:{ALICE}"),
        PlannedUe(BOB, Path.DIRECT, "phone", BOB, f"ue:{BOB}"),
        PlannedUe(handset, Path.DIRECT, "phone", handset, f"ue:{handset}"),
        PlannedUe(CAROL, Path.DIRECT, "phone", CAROL, f"ue:{CAROL}"),  # no document: 4.04
        PlannedUe(MALLORY, Path.DIRECT, "impostor", ALICE, f"ue:{MALLORY}"),  # Alice's: 4.03
        PlannedUe(DAVE, Path.OBSERVER, "phone", DAVE, f"ue:{DAVE}"),
    ]
    alice = phone_doc("phone-alice", [ALICE], "alice@msgin5g.example")
    alice["ueConfigs"].append({"configType": "COMMON", "configData": "opaque VAL-service settings"})
    docs = [
        alice,
        phone_doc("phone-bob", [BOB], "bob@msgin5g.example", 4096),
        phone_doc("phone-dave", [DAVE], "dave@msgin5g.example", 1024),
        {
            "configName": f"handsets-{PHONE_TAC}",
            "valServiceDomain": DOMAIN,
            "valServiceId": SERVICE_ID,
            "valUeIds": {"imeiRanges": [{"tac": PHONE_TAC}]},  # every UE of the TAC (rank "tac")
            "ueConfigs": [on_network("handset-{snr}@msgin5g.example", 2048)],
        },
    ]
    return ues, docs


def _split(members: list[int], share: float, rng: random.Random) -> tuple[list[int], list[int]]:
    """(relay, gateway): about ``share`` of ``members`` to the relay, at least one on each side
    when there are two or more and the share is neither 0 nor 1."""
    members = list(members)
    rng.shuffle(members)
    k = round(share * len(members))
    if 0 < share < 1 and len(members) >= 2:
        k = min(max(k, 1), len(members) - 1)
    return sorted(members[:k]), sorted(members[k:])


def make_plan(n: int, relay_share: float = 0.2, seed: int = 1) -> FleetPlan:
    """The fleet for ``n`` constrained UEs, ``relay_share`` of them behind the relay."""
    if n < MIN_UES:
        raise ValueError(f"at least {MIN_UES} UEs are needed so that every outcome appears")
    if not 0.0 <= relay_share <= 1.0:
        raise ValueError("the relay share must be between 0 and 1")
    rng = random.Random(seed)
    n_unprovisioned = max(2, math.ceil(SHARE_UNPROVISIONED * n))
    n_outside = max(2, math.ceil(SHARE_OUTSIDE_GATEWAY * n))
    range_high = n - n_unprovisioned - 1
    outside = range(n // 2, n // 2 + n_outside)
    meters = [s for s in range(METER_OFFSET, range_high + 1, METER_EVERY) if s not in outside]

    categories: dict[str, list[int]] = {"outside-gateway": list(outside), "meter": meters}
    categories["unprovisioned"] = list(range(range_high + 1, n))
    taken = set(outside) | set(meters) | set(categories["unprovisioned"])
    categories["sensor"] = [s for s in range(n) if s not in taken]

    ues: list[PlannedUe] = []
    relay_sensors: list[int] = []
    for role, members in categories.items():
        to_relay, to_gateway = _split(members, relay_share, rng)
        if role == "sensor":
            relay_sensors = to_relay
        else:
            ues += [
                PlannedUe(imei_urn(SENSOR_TAC, s), Path.RELAY, role, imei_urn(SENSOR_TAC, s))
                for s in to_relay
            ]
        ues += [
            PlannedUe(imei_urn(SENSOR_TAC, s), Path.GATEWAY, role, imei_urn(SENSOR_TAC, s))
            for s in to_gateway
        ]
    n_relay = len(relay_sensors) + sum(1 for u in ues if u.path is Path.RELAY)
    n_impostors = min(len(relay_sensors), max(1, round(SHARE_IMPOSTORS * n_relay))) if n_relay >= 3 else 0
    impostors = set(rng.sample(relay_sensors, n_impostors))
    for s in relay_sensors:
        me = imei_urn(SENSOR_TAC, s)
        if s in impostors:  # asks for its neighbour's configuration under its own identity
            ues.append(PlannedUe(me, Path.RELAY, "impostor", imei_urn(SENSOR_TAC, (s + 1) % n)))
        else:
            ues.append(PlannedUe(me, Path.RELAY, "sensor", me))
    # every UE behind the relay claims its own identity end to end (as OSCORE would give it)
    ues = [
        PlannedUe(u.device, u.path, u.role, u.asks_for, f"ue:{u.device}") if u.path is Path.RELAY else u
        for u in ues
    ]
    rng.shuffle(ues)
    phones, phone_docs = _phones()
    ues += phones

    range_doc = {
        "configName": f"sensors-{SENSOR_TAC}",
        "valServiceDomain": DOMAIN,
        "valServiceId": SERVICE_ID,
        "valUeIds": {"imeiRanges": [{"tac": SENSOR_TAC, "snrRange": {"low": "0", "high": str(range_high)}}]},
        "ueConfigs": [on_network("sensor-{tac}-{snr}@msgin5g.example", 512)],
    }
    meter_rows = [
        (imei_urn(SENSOR_TAC, s), f"meter-{s:06d}@msgin5g.example", MSGIN5G_SERVER, 1024) for s in meters
    ]
    covered = [{"tac": SENSOR_TAC, "snrRange": {"low": "0", "high": str(outside.start - 1)}}]
    covered.append({"tac": SENSOR_TAC, "snrRange": {"low": str(outside.stop), "high": "999999"}})
    return FleetPlan(
        n=n,
        seed=seed,
        ues=ues,
        documents=[range_doc, *phone_docs],
        meter_rows=meter_rows,
        gateway_coverage={"imeiRanges": covered},
        range_high=range_high,
        outside_gateway=outside,
        notes={"impostors": n_impostors, "meters": len(meters), "unprovisioned": n_unprovisioned},
    )


def relay_count(requested: int | None, relay_ues: int, links: int) -> int:
    """How many Relay UEs serve the fleet's remote UEs: ``requested``, or (None, ``--relays
    auto``) enough for each remote UE to have a PC5 link at once — ceil(remote UEs / links per
    relay), as a relay serves a handful of remote UEs in the field (a UE-to-Network Relay serves the
    remote UEs near it, TS 23.304; 8 links by default, SPEC D8) — at least 1, at most
    :data:`MAX_AUTO_RELAYS`."""
    if requested is not None:
        if requested < 1:
            raise ValueError("at least one Relay UE is needed")
        return requested
    return min(MAX_AUTO_RELAYS, max(1, math.ceil(relay_ues / links)))


def assign_relays(ues: Sequence[PlannedUe], relays: int) -> dict[PlannedUe, int]:
    """The Relay UE (0 … ``relays``-1) each remote UE selects (TS 23.304's relay discovery and
    selection: in the field, the relay nearest to it), by its place in the layout: the relay UEs
    in the plan's (seeded) order, dealt in turn, so every relay serves ⌊n/relays⌋ or ⌈n/relays⌉
    of them and the same seed gives the same choice."""
    remote = [u for u in ues if u.path is Path.RELAY]
    return {u: i % relays for i, u in enumerate(remote)}


def write_provisioning(plan: FleetPlan, directory) -> list:
    """Write the provisioning files ``msgin5g config import`` reads: ``fleet.yaml`` (the range
    document with placeholders, the phones) and ``meters.csv`` (one UE per row)."""
    import csv
    from pathlib import Path as FsPath

    import yaml

    from ..provisioning.files import CSV_COLUMNS

    directory = FsPath(directory)
    fleet = directory / "fleet.yaml"
    header = (
        f"# msgin5g demo fleet: {plan.n} constrained UEs (seed {plan.seed}); generated by 'msgin5g demo'.\n"
        "# The range document's placeholders give every sensor its own UE Service ID (SPEC D5).\n"
    )
    fleet.write_text(header + yaml.safe_dump(plan.documents, sort_keys=False), encoding="utf-8")
    meters = directory / "meters.csv"
    with meters.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        w.writerows(plan.meter_rows)
    return [fleet, meters]
