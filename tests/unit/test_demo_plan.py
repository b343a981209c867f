"""The demo's pure parts: its fleet, the oracle of what each UE must get, the wire's counting and
loss, and the table's arithmetic (SPEC §3, D3–D7, D12)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from msgin5g.demo.drive import UeRun
from msgin5g.demo.lossy import LossModel, TcpFramer
from msgin5g.demo.oracle import Expectation, expected
from msgin5g.demo.plan import (
    ALICE,
    BOB,
    CAROL,
    DAVE,
    MALLORY,
    MAX_AUTO_RELAYS,
    PHONE_TAC,
    SENSOR_TAC,
    Path,
    PlannedUe,
    assign_relays,
    make_plan,
    relay_count,
)
from msgin5g.demo.stats import PER_UE_FLOOR, UuCount, percentile, summarize_path, verdict
from msgin5g.model import imei_urn
from msgin5g.outcome import Outcome

C, F, N = Outcome.CONFIGURED, Outcome.FORBIDDEN, Outcome.NOT_FOUND


def oracle(plan, tmp_path):
    docs = plan.all_documents()
    return {u: expected(u, docs, plan.gateway_coverage) for u in plan.ues}


def sensor(snr: int) -> str:
    return imei_urn(SENSOR_TAC, snr)


# -- the fleet --------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [20, 60, 1000, 10_000])
@pytest.mark.parametrize("share", [0.05, 0.2, 0.5, 0.9])
def test_every_outcome_appears_on_every_path(n, share, tmp_path):
    plan = make_plan(n, share, seed=7)
    exp = oracle(plan, tmp_path)
    for path in (Path.RELAY, Path.GATEWAY, Path.DIRECT):
        outcomes = Counter(exp[u].outcome for u in plan.on(path))
        assert set(outcomes) == {C, F, N}, (path, outcomes)
    assert exp[plan.observer] == Expectation(C, "dave@msgin5g.example")


def test_fleet_shape(tmp_path):
    plan = make_plan(1000, 0.2, seed=1)
    constrained = [u for u in plan.ues if u.path in (Path.RELAY, Path.GATEWAY)]
    assert len(constrained) == 1000
    assert len({u.device for u in constrained}) == 1000
    assert len(plan.on(Path.RELAY)) == pytest.approx(200, abs=4)
    # one range document for most devices, per-UE rows for some, none for a few
    assert sum(1 for d in plan.documents if "imeiRanges" in d.get("valUeIds", {})) == 2  # sensors + handsets
    assert 30 <= len(plan.meter_rows) <= 40
    exp = oracle(plan, tmp_path)
    by_outcome = Counter(exp[u].outcome for u in constrained)
    assert by_outcome[C] > 900 and 0 < by_outcome[N] < 50 and 0 < by_outcome[F] < 50
    # every UE behind the relay claims its own identity; gateway UEs claim none
    assert all(u.identity == f"ue:{u.device}" for u in plan.on(Path.RELAY))
    assert all(u.identity is None for u in plan.on(Path.GATEWAY))
    # the same seed gives the same fleet; another seed another split
    assert make_plan(1000, 0.2, seed=1).ues == plan.ues
    assert {u.device for u in make_plan(1000, 0.2, seed=2).on(Path.RELAY)} != {
        u.device for u in plan.on(Path.RELAY)
    }


def test_extreme_shares_and_bounds():
    assert not make_plan(50, 0.0).on(Path.RELAY)
    assert not make_plan(50, 1.0).on(Path.GATEWAY)
    with pytest.raises(ValueError):
        make_plan(19)
    with pytest.raises(ValueError):
        make_plan(100, 1.5)


def test_gateway_set_args_describe_the_coverage():
    plan = make_plan(100)
    assert plan.gateway_set_args() == [
        "--tac",
        f"{SENSOR_TAC}:0-{plan.outside_gateway.start - 1}",
        "--tac",
        f"{SENSOR_TAC}:{plan.outside_gateway.stop}-999999",
    ]


# -- the oracle ---------------------------------------------------------------------------------------
@pytest.fixture
def docs_and_coverage(tmp_path):
    plan = make_plan(100, 0.2, seed=3)
    return plan, plan.all_documents(), plan.gateway_coverage


def ue(device, path, asks_for=None, identity=None):
    return PlannedUe(device, path, "test", asks_for or device, identity)


def test_oracle_reads_the_documents(docs_and_coverage):
    plan, docs, cov = docs_and_coverage
    meter = plan.meter_rows[0][0]
    # a UE with a document of its own gets it, not the range document (most specific first, D4)
    assert expected(ue(meter, Path.GATEWAY), docs, cov) == Expectation(C, plan.meter_rows[0][1])
    # the range document's placeholders are expanded for the UE (D5)
    assert expected(ue(sensor(3), Path.RELAY), docs, cov) == Expectation(
        C, f"sensor-{SENSOR_TAC}-000003@msgin5g.example"
    )
    # beyond the range: no configuration
    assert expected(ue(sensor(plan.range_high + 1), Path.RELAY), docs, cov).outcome is N
    # a TAC-wide document (rank "tac") serves the handset
    handset = imei_urn(PHONE_TAC, 1)
    assert expected(ue(handset, Path.DIRECT), docs, cov) == Expectation(C, "handset-000001@msgin5g.example")
    assert expected(ue(ALICE, Path.DIRECT, identity=f"ue:{ALICE}"), docs, cov) == Expectation(
        C, "alice@msgin5g.example"
    )
    assert expected(ue(BOB, Path.DIRECT), docs, cov).ue_service_id == "bob@msgin5g.example"
    assert expected(ue(CAROL, Path.DIRECT, identity=f"ue:{CAROL}"), docs, cov).outcome is N
    assert expected(ue(DAVE, Path.OBSERVER), docs, cov).outcome is C


def test_oracle_applies_authorization_first(docs_and_coverage):
    plan, docs, cov = docs_and_coverage
    outside = sensor(plan.outside_gateway.start)
    # outside the gateway's registry entry: withheld through the gateway, configured through the relay
    assert expected(ue(outside, Path.GATEWAY), docs, cov).outcome is F
    assert expected(ue(outside, Path.RELAY, identity=f"ue:{outside}"), docs, cov).outcome is C
    # unprovisioned but covered: 4.04 through the gateway; uncovered and unprovisioned: 4.03 (reveals nothing)
    assert expected(ue(sensor(plan.range_high + 1), Path.GATEWAY), docs, cov).outcome is N
    assert expected(ue(sensor(plan.range_high + 1), Path.GATEWAY), docs, {"uris": [ALICE]}).outcome is F
    # asking under one's own identity for somebody else's configuration (D12)
    assert expected(ue(MALLORY, Path.DIRECT, ALICE, f"ue:{MALLORY}"), docs, cov).outcome is F
    assert expected(ue(sensor(5), Path.RELAY, sensor(6), f"ue:{sensor(5)}"), docs, cov).outcome is F
    # no identity claimed (an administrator in the lab mode) → applicability decides
    assert expected(ue(sensor(5), Path.RELAY, sensor(6)), docs, cov).outcome is C
    # a gateway with every UE
    assert expected(ue(outside, Path.GATEWAY), docs, {"all": True}).outcome is C


# -- the wire -----------------------------------------------------------------------------------------
def datagrams(n: int, seed: int = 0) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(rng.randint(4, 60)) for _ in range(n)]


def test_loss_model_rate_and_bounds():
    assert not any(LossModel(0.0, 1).lost(d) for d in datagrams(1000))
    model = LossModel(0.2, 5)
    lost = sum(model.lost(d) for d in datagrams(20_000))
    assert 3600 < lost < 4400
    with pytest.raises(ValueError):
        LossModel(1.0)


def test_loss_is_seeded_and_independent_of_arrival_order():
    """The fate of a datagram depends on the seed, its bytes and its repetition, not on what
    else crossed the wire in between (the endpoints' traffic interleaves differently each run)."""
    sent = datagrams(2000, seed=1)
    a = LossModel(0.3, "7/pc5/up")
    fate = {d: a.lost(d) for d in sent}
    b = LossModel(0.3, "7/pc5/up")
    shuffled = list(sent)
    random.Random(2).shuffle(shuffled)
    assert {d: b.lost(d) for d in shuffled} == fate
    # another seed (or leg, or direction) draws anew
    c = LossModel(0.3, "7/pc5/down")
    assert {d: c.lost(d) for d in sent} != fate


def test_a_retransmission_gets_a_draw_of_its_own():
    """The same bytes again (a CON retransmitted, RFC 7252 4.2) are lost or not independently:
    a datagram is not doomed for ever, and how often each repeat is lost is still the rate."""
    model = LossModel(0.5, 3)
    first_lost = [d for d in datagrams(400, seed=4) if model.lost(d)]
    again = [model.lost(d) for d in first_lost]
    assert 0 < sum(again) < len(again)
    twin = LossModel(0.5, 3)
    for d in datagrams(400, seed=4):
        twin.lost(d)
    assert [twin.lost(d) for d in first_lost] == again


def tcp_frame(body_len: int, tkl: int = 2, code: int = 0x45) -> bytes:
    """An RFC 8323 §3.2 message whose options+payload are ``body_len`` bytes."""
    if body_len < 13:
        head = bytes([(body_len << 4) | tkl])
    elif body_len < 269:
        head = bytes([(13 << 4) | tkl, body_len - 13])
    elif body_len < 65805:
        head = bytes([(14 << 4) | tkl]) + (body_len - 269).to_bytes(2, "big")
    else:
        head = bytes([(15 << 4) | tkl]) + (body_len - 65805).to_bytes(4, "big")
    return head + bytes([code]) + b"t" * tkl + b"x" * body_len


def test_tcp_framer_counts_messages_across_any_split():
    frames = [tcp_frame(n) for n in (0, 5, 12, 13, 200, 268, 269, 5000, 65805, 70000)]
    stream = b"".join(frames)
    rng = random.Random(1)
    for _ in range(20):
        framer = TcpFramer()
        i = 0
        while i < len(stream):
            step = rng.choice([1, 2, 3, 100, 4096, 70000])
            framer.feed(stream[i : i + step])
            i += step
        assert framer.messages == len(frames)
    framer = TcpFramer()
    assert framer.feed(stream[:-1]) == len(frames) - 1 and framer.feed(stream[-1:]) == 1


# -- the table ----------------------------------------------------------------------------------------
def test_percentile_nearest_rank():
    assert percentile([], 50) is None
    values = list(range(1, 101))
    assert percentile(values, 50) == 50 and percentile(values, 95) == 95 and percentile(values, 99) == 99
    assert percentile([7.0], 99) == 7.0
    assert percentile([3, 1, 2], 50) == 2


def run(outcome, path=Path.GATEWAY, want=None, sid=None, latency=0.1):
    exp = Expectation(want or outcome, sid)
    return UeRun(PlannedUe("urn:x", path, "t", "urn:x"), exp, outcome, "-", sid, latency, 1)


def test_summarize_path_and_saved_by_bulk():
    runs = [run(C, sid="a")] * 8 + [run(F), run(N), run(Outcome.ERROR, want=C)]
    row = summarize_path(Path.GATEWAY, "gateway", runs, UuCount(messages=6, bytes=1000, lost=1))
    assert (row.ues, row.configured, row.forbidden, row.not_found, row.errors, row.unexpected) == (
        11,
        8,
        1,
        1,
        1,
        1,
    )
    assert row.saved_by_bulk == PER_UE_FLOOR * 10 - 6
    assert row.uu_per_configured == 6 / 8
    relay = summarize_path(Path.RELAY, "relay", runs, UuCount(messages=30))
    assert relay.saved_by_bulk is None
    wrong_sid = run(C, want=C, sid="b")
    wrong_sid.expected = Expectation(C, "a")
    assert not wrong_sid.ok


def test_verdict():
    ok_rows = [
        summarize_path(p, p.value, [run(C, p, sid="s"), run(F, p), run(N, p)], UuCount())
        for p in (Path.RELAY, Path.GATEWAY, Path.DIRECT)
    ]
    v = verdict(ok_rows, observer_ok=True)
    assert v.ok and "2.05, 4.03 and 4.04 on every path" in v.text
    assert not verdict(ok_rows, observer_ok=False, observer_note="change 1 never arrived").ok
    bad = [*ok_rows, summarize_path(Path.GATEWAY, "gw", [run(N, want=C)], UuCount())]
    v = verdict(bad, observer_ok=True)
    assert not v.ok and "1 of 10 UEs" in v.text
    partial = [summarize_path(Path.RELAY, "relay", [run(C, Path.RELAY, sid="s")], UuCount())]
    assert "relay: no 4.03" in verdict(partial, observer_ok=True).text


def test_report_formats(tmp_path):
    from msgin5g.demo.report import COLUMNS, duration, markdown_table, write_csv

    assert [duration(v) for v in (None, 5.12, 774.4, 2690.0, 101_414.0)] == [
        "-",
        "5.1 ms",
        "774 ms",
        "2.7 s",
        "101 s",
    ]
    row = summarize_path(Path.GATEWAY, "gateway (bulk, UDP)", [run(C, sid="a"), run(N)], UuCount(3, 900, 0))
    md = markdown_table([row]).splitlines()
    assert len(md) == 3 and md[0].count("|") == len(COLUMNS) + 1
    assert "| gateway (bulk, UDP) | 2 | 1 | 0 | 1 |" in md[2] and "1 (25%)" in md[2]
    write_csv(tmp_path / "r.csv", [run(C, sid="a"), run(N)])
    lines = (tmp_path / "r.csv").read_text().splitlines()
    assert len(lines) == 3 and lines[0].startswith("ue_uri,path,role,asks_for")


def test_chart_curves_start_at_zero_whatever_the_number_of_points():
    """A latency curve of 2–5 UEs starts at 0 at its first latency, not partway up (at 1/n)."""
    from msgin5g.demo.report import cdf_steps

    assert cdf_steps([]) == ([], [])
    assert cdf_steps([30.0, 10.0]) == ([10.0, 10.0, 30.0], [0.0, 0.5, 1.0])
    xs, frac = cdf_steps([5.0, 1.0, 4.0, 2.0, 3.0])
    assert xs == [1.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert frac == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]


# --- several Relay UEs (SPEC D8: 8 links each; each remote UE selects one) ---------------------


@pytest.mark.parametrize(
    ("requested", "remote", "links", "want"),
    [
        (None, 200, 8, 25),  # 1,000 UEs, 20 % behind relays: every remote UE a link at once
        (None, 12, 8, 2),
        (None, 8, 8, 1),
        (None, 0, 8, 1),  # a relay is started even without remote UEs
        (None, 200, 64, 4),
        (None, 200_000, 8, MAX_AUTO_RELAYS),  # a huge fleet shares a bounded number of processes
        (3, 200, 8, 3),  # asked for: as asked
        (1, 200, 8, 1),
    ],
)
def test_relay_count(requested, remote, links, want):
    assert relay_count(requested, remote, links) == want


def test_relay_count_refuses_no_relay():
    with pytest.raises(ValueError):
        relay_count(0, 10, 8)


@pytest.mark.parametrize("relays", [1, 3, 7, 25])
def test_every_remote_ue_selects_one_relay_and_the_relays_share_them_evenly(relays):
    plan = make_plan(1000, 0.2, 1)
    remote = plan.on(Path.RELAY)
    choice = assign_relays(plan.ues, relays)
    assert set(choice) == set(remote)  # every remote UE, and only those
    per_relay = Counter(choice.values())
    assert set(per_relay) == set(range(relays))
    assert max(per_relay.values()) - min(per_relay.values()) <= 1
    assert sum(per_relay.values()) == len(remote) == 200


def test_relay_selection_is_the_same_for_the_same_seed():
    one, two = make_plan(100, 0.3, 9), make_plan(100, 0.3, 9)
    pick = {u.device: k for u, k in assign_relays(one.ues, 4).items()}
    assert pick == {u.device: k for u, k in assign_relays(two.ues, 4).items()}
