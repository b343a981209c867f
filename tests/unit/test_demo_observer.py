"""The demo's observing UE when the SCM-S has dropped its observation (RFC 7641 §4.5: a CON
notification never acknowledged removes the observer), without processes or sockets: the driver
registers it again (§3.3.1) and checks the change with a value the observer has not seen."""

from __future__ import annotations

import json

import pytest

from msgin5g.demo import drive
from msgin5g.demo.oracle import Expectation
from msgin5g.demo.plan import Path, PlannedUe
from msgin5g.outcome import Outcome

DOC_ID = "d1"


def doc(segment: int) -> dict:
    data = json.dumps({"segmentSize": segment})
    return {"ueConfigDocId": DOC_ID, "ueConfigs": [{"configType": "ON_NETWORK", "configData": data}]}


class World:
    """The SCM-S's document and its observers: a child registered while ``dropped`` is false
    hears every later change; the first ``drop`` registrations are dropped by the server."""

    def __init__(self, drop: int):
        self.segment, self.drop, self.children, self.puts = 512, drop, [], []

    def notify(self) -> None:
        for child in self.children:
            if not child.dropped and not child.stopped:
                child.lines.append({"config": {"segmentSize": self.segment}})


class Child:
    def __init__(self, world: World, name: str):
        self.name, self.stopped = name, False
        self.dropped = len(world.children) < world.drop
        first = {"outcome": "configured", "code": "2.05", "ueConfigDocId": DOC_ID}
        self.ready = {**first, "config": {"ueServiceId": "dave@x", "segmentSize": world.segment}}
        self.lines = [self.ready]

    def json_lines(self) -> list[dict]:
        return list(self.lines)


class Sup:
    def __init__(self, world: World):
        self.world = world

    async def start(self, name, *args, **kw):
        child = Child(self.world, name)
        self.world.children.append(child)
        return child

    async def stop(self, child):
        child.stopped = True


def admin_for(world: World):
    class Admin:
        def __init__(self, *a, **kw):
            pass

        async def __aenter__(self):
            return self

        async def __aexit__(self, *exc):
            return None

        async def get_doc(self, doc_id):
            return doc(world.segment)

        async def replace(self, doc_id, new):
            world.segment = json.loads(new["ueConfigs"][0]["configData"])["segmentSize"]
            world.puts.append(world.segment)
            world.notify()

    return Admin


async def run_observer(monkeypatch, drop: int):
    world = World(drop)
    monkeypatch.setattr(drive, "ScmClient", admin_for(world))
    monkeypatch.setattr(drive, "OBSERVER_WAIT", 0.05)
    ue = PlannedUe("sip:dave@x", Path.OBSERVER, "phone", "sip:dave@x", "ue:sip:dave@x")
    ep = {"uu-observer": ("127.0.0.1", 1), "scm": ("127.0.0.1", 2)}
    result = await drive.observe(
        Sup(world), ue, Expectation(Outcome.CONFIGURED, "dave@x"), ep, None, lambda r: None
    )
    return world, result


async def test_every_change_seen_without_registering_again(monkeypatch):
    world, result = await run_observer(monkeypatch, drop=0)
    assert result.ok and result.seen == 2 and result.note == ""
    assert [c.name for c in world.children] == ["observer"] and world.puts == [1280, 1536]


async def test_a_dropped_observation_is_registered_again_and_the_change_seen(monkeypatch):
    world, result = await run_observer(monkeypatch, drop=1)
    assert result.ok and result.seen == 2
    assert [c.name for c in world.children] == ["observer", "observer-again-1"]
    # five PUTs of 1280 unheard, then 1280 + 64 heard by the new registration, then change 2
    assert world.puts == [1280] * 5 + [1344, 1600]
    assert result.note == "registered again 1x (a change did not arrive)"


@pytest.mark.parametrize("drop", [3, 5])
async def test_registering_again_is_bounded_and_reported(monkeypatch, drop):
    world, result = await run_observer(monkeypatch, drop=drop)
    assert not result.ok and result.seen == 0
    assert len(world.children) == 1 + drive.OBSERVER_REREGISTRATIONS
    assert result.note == "change 1 never arrived; registered again 2x (a change did not arrive)"
