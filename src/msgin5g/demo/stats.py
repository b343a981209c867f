"""What the demo's table says, computed from the per-UE results and the wire counters (pure).

One row per path: UEs driven, how many got 2.05 / 4.03 / 4.04 / no answer, how many got
anything but what their provisioning implies, configuration latency percentiles, and what the
path's Uu leg carried (SPEC D7: bulk is judged by Uu messages and bytes).

"Saved by bulk" compares the gateway's Uu messages with per-UE configuration at its lossless
floor — one GET and one piggybacked answer per UE (RFC 7252 §5.2.1), :data:`PER_UE_FLOOR` —
which is what ``--no-bulk`` measures on the same wire.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

from ..outcome import Outcome
from .drivers import UeRun
from .plan import Path

PER_UE_FLOOR = 2  # Uu messages of one per-UE configuration: a GET and its piggybacked answer


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of ``values``; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class UuCount:
    """One leg's traffic, both directions together: messages (UDP datagrams or CoAP-over-TCP
    messages), bytes, and datagrams lost on the way."""

    messages: int = 0
    bytes: int = 0
    lost: int = 0

    @classmethod
    def from_leg(cls, leg: dict | None) -> UuCount:
        if not leg:
            return cls()
        up, down = leg["up"], leg["down"]
        return cls(up[0] + down[0], up[1] + down[1], up[2] + down[2])


@dataclass
class PathSummary:
    path: str
    label: str
    ues: int
    configured: int
    forbidden: int
    not_found: int
    errors: int
    unexpected: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    uu_messages: int
    uu_bytes: int
    uu_lost: int
    uu_per_configured: float | None
    saved_by_bulk: int | None  # gateway path only
    ue_side_messages: int  # PC5 / MSGin5G-6 leg

    def as_dict(self) -> dict:
        return asdict(self)


def summarize_path(
    path: Path,
    label: str,
    runs: Iterable[UeRun],
    uu: UuCount,
    ue_side: UuCount | None = None,
    latencies: Sequence[float] | None = None,
) -> PathSummary:
    """One row of the table. ``latencies`` (s) overrides the runs' own (the observer's row
    reports change → notification)."""
    runs = list(runs)
    count = {o: sum(1 for r in runs if r.outcome is o) for o in Outcome}
    lat_ms = [1000 * t for t in (latencies if latencies is not None else [r.latency for r in runs])]
    answered = count[Outcome.CONFIGURED] + count[Outcome.FORBIDDEN] + count[Outcome.NOT_FOUND]
    saved = PER_UE_FLOOR * answered - uu.messages if path is Path.GATEWAY else None
    configured = count[Outcome.CONFIGURED]
    return PathSummary(
        path=path.value,
        label=label,
        ues=len(runs),
        configured=configured,
        forbidden=count[Outcome.FORBIDDEN],
        not_found=count[Outcome.NOT_FOUND],
        errors=count[Outcome.ERROR],
        unexpected=sum(1 for r in runs if not r.ok),
        p50_ms=percentile(lat_ms, 50),
        p95_ms=percentile(lat_ms, 95),
        p99_ms=percentile(lat_ms, 99),
        uu_messages=uu.messages,
        uu_bytes=uu.bytes,
        uu_lost=uu.lost,
        uu_per_configured=uu.messages / configured if configured else None,
        saved_by_bulk=saved,
        ue_side_messages=ue_side.messages if ue_side else 0,
    )


@dataclass
class Verdict:
    ok: bool
    text: str


def verdict(rows: Sequence[PathSummary], observer_ok: bool, observer_note: str = "") -> Verdict:
    """One line: did every UE get exactly what its provisioning implies, and did every outcome of
    SPEC §3.1 (2.05, 4.03, 4.04) appear end to end?"""
    total = sum(r.ues for r in rows)
    bad = sum(r.unexpected for r in rows)
    errors = sum(r.errors for r in rows)
    missing = [
        f"{r.label}: no {code}"
        for r in rows
        if r.path in (Path.RELAY.value, Path.GATEWAY.value, Path.DIRECT.value)
        for code, n in (("2.05", r.configured), ("4.03", r.forbidden), ("4.04", r.not_found))
        if n == 0
    ]
    if bad or not observer_ok:
        parts = []
        if bad:
            parts.append(
                f"{bad:,} of {total:,} UEs did not get what their provisioning implies "
                f"({errors:,} without answer)"
            )
        if not observer_ok:
            parts.append(
                f"the observing UE did not see every change{': ' + observer_note if observer_note else ''}"
            )
        return Verdict(False, "FAILED: " + "; ".join(parts))
    text = f"OK: all {total:,} UEs got exactly the outcome their provisioning implies"
    text += "; 2.05, 4.03 and 4.04 on every path" if not missing else f" ({'; '.join(missing)})"
    text += "; the observing UE saw every change"
    return Verdict(True, text)
