"""Metrics adapters of the relay, the gateway and the separate CM client (SPEC D15).

These actors keep their own counters (the relay's ``RelayCounters``, the gateway's and the CM
client's ``stats``); the adapters below read them at scrape time, so that ``/metrics`` and the
shutdown summary can never disagree, and the actors need no change beyond starting the HTTP side.
Each function takes the running actor and returns a registry for :func:`msgin5g.ops.http.serve_ops`.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from .metrics import EventCounters, GaugeCallbacks, SnapshotCollector, register_callback

#: the label each of the relay's per-key counters is broken down by
RELAY_LABELS = {"answered": "code", "discarded": "reason", "links_released": "reason", "errors": "kind"}


def relay_registry(relay) -> CollectorRegistry:
    """Relay UE (TS 24.538 6.2.2.1): ``msgin5g_relay_<counter>_total`` and the PC5 link gauges."""
    reg = CollectorRegistry()
    core = relay.core
    register_callback(
        reg,
        SnapshotCollector(
            "relay", lambda: core.counters.to_map(), labels=RELAY_LABELS, what="Relay UE counter"
        ),
    )
    register_callback(
        reg,
        GaugeCallbacks(
            "relay",
            {
                "pc5_links": ("PC5 links established now.", lambda: len(core.links)),
                "pc5_links_max": ("Size of the PC5 link table (--max-links).", lambda: core.config.max_links),
                "uplink_outstanding": (
                    "Requests relayed to the SCM-S and not answered yet.",
                    lambda: sum(u["outstanding"] for u in core.uplink_stats().values()),
                ),
            },
        ),
    )
    return reg


def gateway_registry(gw, cm=None) -> CollectorRegistry:
    """Gateway UE (SPEC D6, D9): its events, its stored requests, and its collocated CM client's."""
    reg = CollectorRegistry()
    register_callback(
        reg,
        EventCounters(
            "gateway_events_total",
            "What the Gateway UE did (requests, stored, merged, flush-<reason>, bulk-operations, ...).",
            lambda: gw.stats,
        ),
    )
    register_callback(
        reg,
        GaugeCallbacks(
            "gateway",
            {"stored_requests": ("Requests stored and not answered yet (SPEC D9).", lambda: gw.unanswered)},
        ),
    )
    if cm is not None and isinstance(getattr(cm, "stats", None), dict):
        register_callback(reg, cm_events(cm))
    return reg


def cm_events(cm) -> EventCounters:
    return EventCounters(
        "cmclient_events_total",
        "What the CM client did towards the SCM-S (bulk-gets, block2-followups, single-gets, ...).",
        lambda: cm.stats,
    )


def cmclient_registry(scm) -> CollectorRegistry:
    """The separate CM client process (SPEC D10)."""
    reg = CollectorRegistry()
    register_callback(reg, cm_events(scm))
    return reg
