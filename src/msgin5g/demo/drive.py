"""The UEs of the demo: each runs the real configuration procedure of its kind (SPEC §3).

* through the Relay UE — a constrained UE establishes its PC5 one-to-one link, sends the §3.1 GET
  with the SCM-S as recipient (OSCORE-protected end to end with the recipient in ``Proxy-Scheme``
  + ``Uri-Host`` + ``Uri-Port``; in the insecure lab mode in ``Proxy-Uri``), handles the answer
  addressed to itself, releases the link (TS 24.538 6.2.2.2; :mod:`msgin5g.ue.via_relay`);
* through the Gateway UE — :func:`msgin5g.ue.via_gateway.get_config_via_gateway`;
* directly — the SCM-C of :mod:`msgin5g.scmc`.

A constrained UE whose exchange is lost (``--loss``) asks again at once with a new exchange, on
the same PC5 link (:mod:`msgin5g.ue.reask`, SPEC D13); a UE whose procedure ends without an
answer (no PC5 link, a full link table) starts it again after a short pause, as a device would,
until its deadline; 2.05, 4.03 and 4.04 are final (4.03: "do not retry blindly", SPEC §3.1).
:class:`UeRun` records the outcome, the latency from the first attempt to the final answer (the
moment the answer arrived; the PC5 link release after it is not waited for), and the attempts.

Each UE uses its own credentials (:mod:`.keys`; SPEC D12) — with the SCM-S directly and through
the relay, with the Gateway UE through the gateway — or, in the insecure lab mode, claims its
identity with the lab option.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiocoap.optiontypes import OpaqueOption

from ..authz import LAB_IDENTITY_OPTION
from ..outcome import ConfigResult, Outcome
from ..scmc import ScmClient
from ..security.credentials import KeyCredentials as ClientCredentials
from ..security.endpoint import ClientProtection, UnprotectedResponse, forward_proxy_request
from ..ue.direct import DirectClient
from ..ue.reask import ReaskPolicy
from ..ue.via_gateway import get_config_via_gateway
from ..ue.via_relay import (
    CoapError,
    ConstrainedUe,
    LinkRejected,
    config_query_uri,
    get_request,
    result_from_response,
    result_from_unprotected,
)
from .keys import done_with
from .oracle import Expectation
from .plan import SERVICE_ID, PlannedUe
from .plan import Path as UePath
from .topology import RELAY_LINKS

RETRY_PAUSE = 0.5  # s before a UE starts its procedure again
#: s for one procedure: every CON retransmission (MAX_TRANSMIT_SPAN 45 s, RFC 7252 §4.8.2) and its answer
ATTEMPT_TIMEOUT = 48.0
LINK_TIMEOUT = 8.0  # s for the PC5 link establishment and release exchanges
#: the constrained UEs' transmission parameters and re-ask cycle (RFC 7252 §4.8 defaults; SPEC D13)
REASK = ReaskPolicy()


def reask_policy(ack_timeout: float) -> ReaskPolicy:
    """RFC 7252's defaults with another ACK_TIMEOUT (§4.8.1: configurable for the environment);
    after the last copy the UE waits the longest first timeout, ACK_TIMEOUT x ACK_RANDOM_FACTOR."""
    return ReaskPolicy(ack_timeout=ack_timeout, give_up_wait=ack_timeout * REASK.ack_random_factor)


@dataclass
class UeRun:
    """What one UE got, against what its provisioning implies."""

    ue: PlannedUe
    expected: Expectation
    outcome: Outcome
    code: str  # "2.05", "4.03", ... or "-" when no answer came
    ue_service_id: str | None
    latency: float  # s, first attempt → final answer
    attempts: int
    detail: str = ""

    @property
    def ok(self) -> bool:
        """Exactly the outcome the provisioning implies (and, on 2.05, the right UE Service ID)."""
        if self.outcome is not self.expected.outcome:
            return False
        return self.outcome is not Outcome.CONFIGURED or self.ue_service_id == self.expected.ue_service_id


def _code_text(code: int | None) -> str:
    return "-" if code is None else f"{code >> 5}.{code & 31:02d}"


async def run_procedure(
    ue: PlannedUe,
    expectation: Expectation,
    attempt: Callable[[], Awaitable[ConfigResult]],
    deadline: float,
) -> UeRun:
    """Run ``attempt`` until it gives a final outcome or ``deadline`` (loop clock) passes."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    attempts = 0
    while True:
        attempts += 1
        try:
            result = await attempt()
        except (OSError, CoapError, TimeoutError) as e:
            result = ConfigResult(Outcome.ERROR, detail=f"{type(e).__name__}: {e}")
        if result.outcome is not Outcome.ERROR or loop.time() + RETRY_PAUSE >= deadline:
            break
        await asyncio.sleep(RETRY_PAUSE)
    detail = result.detail or (str(result.problem) if result.problem else "")
    answered_at = result.extra.get("answered_at", loop.time())
    return UeRun(
        ue,
        expectation,
        result.outcome,
        _code_text(result.code),
        result.config.ue_service_id if result.config else None,
        answered_at - t0,
        attempts,
        detail,
    )


async def relay_attempt(
    relay: tuple[str, int],
    server_uri: str,
    ue: PlannedUe,
    timeout: float,
    security=None,
    reask: ReaskPolicy | None = REASK,
) -> ConfigResult:
    """One configuration procedure of a constrained UE through the Relay UE (TS 24.538 6.2.2.2).

    As :func:`msgin5g.ue.via_relay.get_config_via_relay`: protected end to end with the UE's own
    OSCORE context (``security``), or, in the lab mode, with the UE's identity claim (option
    65000), which the relay forwards untouched like any end-to-end option (SPEC D8, D12). Either
    way a UE asking for another UE's configuration is refused by the SCM-S, and the relay relays
    that 4.03 downlink (seed 6.2.2.1). A lost exchange is asked again on the same link
    (``reask``) until ``timeout``.
    """
    uri = config_query_uri(server_uri, SERVICE_ID, ue.asks_for)
    protection = None
    if security is not None:
        msg, outer = forward_proxy_request(uri)
        protection = ClientProtection(security, outer)
    else:
        msg = get_request(uri, via_proxy=True)
        if ue.identity is not None:
            msg.opt.add_option(OpaqueOption(LAB_IDENTITY_OPTION, ue.identity.encode()))
    cue = ConstrainedUe(relay[0], relay[1], user_info=ue.device, protection=protection, reask=reask)
    await cue.open()
    maybe_linked = False  # the relay may hold a link for us even if no accept came back
    try:
        try:
            maybe_linked = True
            await cue.establish_link(timeout=LINK_TIMEOUT)
        except LinkRejected as e:
            maybe_linked = False
            return ConfigResult(Outcome.ERROR, detail=str(e))
        except TimeoutError:
            # the relay may have set the link up and only its accepts were lost: released below,
            # or it would hold a place in the relay's link table until its link timeout (60 s)
            return ConfigResult(Outcome.ERROR, detail="no answer to the PC5 link establishment")
        try:
            response = await cue.fetch(msg, timeout=timeout)
        except UnprotectedResponse as e:
            return result_from_unprotected(e)
        except CoapError as e:
            return ConfigResult(Outcome.ERROR, detail=f"no configuration answer through the relay: {e}")
        result = result_from_response(response)
        result.extra["answered_at"] = asyncio.get_running_loop().time()
        return result
    finally:
        task = asyncio.current_task()
        if (cue.linked or maybe_linked) and not (task and task.cancelling()):  # stopped: no goodbyes
            try:
                await cue.release_link(timeout=LINK_TIMEOUT)
            except (TimeoutError, CoapError, OSError):
                pass  # the relay releases it on its link timeout
        await cue.close(release=False)


async def configure_via_relay(
    relay: tuple[str, int],
    server_uri: str,
    ue: PlannedUe,
    expectation: Expectation,
    deadline: float,
    creds: ClientCredentials | None = None,
    reask: ReaskPolicy = REASK,
) -> UeRun:
    """A constrained UE through the Relay UE (TS 24.538 6.2.2.2; SPEC §3.3, D8), retried as needed."""
    security = creds.security_context() if creds is not None else None
    loop = asyncio.get_running_loop()

    def attempt():
        timeout = max(ATTEMPT_TIMEOUT, deadline - loop.time())
        return relay_attempt(relay, server_uri, ue, timeout, security, reask)

    try:
        return await run_procedure(ue, expectation, attempt, deadline)
    finally:
        done_with(creds)


async def configure_via_gateway(
    gateway: tuple[str, int],
    ue: PlannedUe,
    expectation: Expectation,
    deadline: float,
    timeout: float,
    creds: ClientCredentials | None = None,
    reask: ReaskPolicy = REASK,
) -> UeRun:
    """A constrained UE through the Gateway UE (TS 24.538 6.2.2.2; SPEC §3.3, D9), with its key
    for the MSGin5G-6 leg."""
    security = creds.security_context() if creds is not None else None
    loop = asyncio.get_running_loop()
    try:
        return await run_procedure(
            ue,
            expectation,
            lambda: get_config_via_gateway(
                gateway[0],
                gateway[1],
                service_id=SERVICE_ID,
                ue_uri=ue.asks_for,
                timeout=max(timeout, deadline - loop.time()),  # lost exchanges are asked again
                security=security,
                reask=reask,
            ),
            deadline,
        )
    finally:
        done_with(creds)


async def configure_direct(
    server_uri: str,
    ue: PlannedUe,
    expectation: Expectation,
    deadline: float,
    creds: ClientCredentials | None = None,
) -> UeRun:
    """An unconstrained UE's SCM-C asking the SCM-S directly (TS 24.538 6.2.1.2; SPEC §3.1): the
    client of ``msgin5g ue get-config --server coap://`` (the message layer: asking again, the
    adaptive RTO, Q-Block2)."""
    identity = None if creds is not None else ue.identity

    async def attempt() -> ConfigResult:
        async with DirectClient(
            server_uri, SERVICE_ID, identity=identity, credentials=creds, timeout=ATTEMPT_TIMEOUT
        ) as client:
            return await client.get_config(ue.asks_for)

    try:
        return await run_procedure(ue, expectation, attempt, deadline)
    finally:
        done_with(creds)


# --------------------------------------------------------------------------------------------
# The whole fleet

GATEWAY_CONCURRENCY = 1000  # constrained UEs asking the gateway at the same time (fewer if files are scarce)
UE_DEADLINE = 240.0  # s a UE keeps trying before it counts as an error
OBSERVER_CHANGES = 2  # document changes the observing UE must see
OBSERVER_STARTS = 3  # an observer whose first request got no answer is started again
#: an observation the SCM-S dropped is registered again (at most this often), see :func:`observe`
OBSERVER_REREGISTRATIONS = 2
OBSERVER_WAIT = 5.0  # s for a notification before the document is changed once more


async def drive_fleet(
    ues: list[PlannedUe],
    ep: dict[str, tuple[str, int]],
    exp: dict[PlannedUe, Expectation],
    *,
    keys,
    fd_limit: int,
    max_wait_ms: int,
    record: Callable[[UeRun], None],
    relay_links: int = RELAY_LINKS,
    reask: ReaskPolicy = REASK,
    relays: list[tuple[str, int]] | None = None,
    relay_of: dict[PlannedUe, int] | None = None,
) -> list[UeRun]:
    """Every UE at once, each on its path through the wire: relay (each remote UE through the
    Relay UE it selected, ``relay_of`` an index into ``relays`` — the PC5 legs of the Relay UEs,
    default ``ep["pc5"]`` only — each relay its link table's worth at a time), gateway, direct.
    ``record`` sees each UE's run as it ends."""
    loop = asyncio.get_running_loop()
    relays = relays or [ep["pc5"]]
    relay_of = relay_of or {}
    relay_slots = [asyncio.Semaphore(relay_links) for _ in relays]
    # each UE waiting on the gateway holds a socket here and one in the wire process
    gateway_slots = asyncio.Semaphore(max(16, min(GATEWAY_CONCURRENCY, fd_limit // 3)))
    gw_timeout = max(ATTEMPT_TIMEOUT, 3 * max_wait_ms / 1000 + 30)
    scm_via_relay = f"coap://{ep['uu-relay'][0]}:{ep['uu-relay'][1]}"
    scm_direct = f"coap://{ep['uu-direct'][0]}:{ep['uu-direct'][1]}"

    def creds(ue: PlannedUe):
        if keys is None:
            return None
        return (keys.at_gateway if ue.path is UePath.GATEWAY else keys.at_scm)[ue.device]

    async def one(ue: PlannedUe) -> UeRun:
        deadline = loop.time() + UE_DEADLINE
        if ue.path is UePath.RELAY:
            k = relay_of.get(ue, 0)
            async with relay_slots[k]:  # the UE's patience starts when its relay has room for its link
                deadline = loop.time() + UE_DEADLINE
                run = await configure_via_relay(
                    relays[k], scm_via_relay, ue, exp[ue], deadline, creds(ue), reask
                )
        elif ue.path is UePath.GATEWAY:
            async with gateway_slots:
                run = await configure_via_gateway(
                    ep["msgin5g-6"], ue, exp[ue], deadline, gw_timeout, creds(ue), reask
                )
        else:
            run = await configure_direct(scm_direct, ue, exp[ue], deadline, creds(ue))
        record(run)
        return run

    return list(await asyncio.gather(*(one(u) for u in ues)))


@dataclass
class ObserverResult:
    run: UeRun
    latencies: list[float]  # change (PUT) → notification seen, s
    seen: int
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.run.ok and self.seen == OBSERVER_CHANGES


async def observe(
    sup, ue: PlannedUe, exp: Expectation, ep: dict[str, tuple[str, int]], keys, record
) -> ObserverResult:
    """An ``msgin5g ue get-config --observe`` process watches its document (RFC 7641) while the
    administrator changes it (PUT, TS 24.546 C.3.1.2.3.3.2); every change must reach it.

    A notification lost on the wire is made good by the next change; an observer whose own
    first request got no answer (``--loss``) is started again, as a device would retry. The SCM-S
    notifies with CON messages and removes an observer whose notification is never acknowledged
    (all five copies or their ACKs lost: 3.5 % per notification at 30 % loss; RFC 7641 §4.5): the
    device registers again (§3.3.1) — at Max-Age (300 s) in the field, here as soon as a change has
    not arrived, with a value it has not seen; the re-registrations are reported."""
    t0 = time.monotonic()
    child, first = None, {}
    identity = (
        ["--credentials", str(keys.bundle), "--key-identity", f"ue:{ue.device}"]
        if keys
        else ["--identity", ue.identity]
    )
    server = f"coap://{ep['uu-observer'][0]}:{ep['uu-observer'][1]}"
    argv = ["ue", "get-config", "--server", server, "--ue-uri", ue.asks_for, *identity, "--observe", "--json"]

    async def start(name: str):
        return await sup.start(
            name,
            "the observing UE",
            [*argv, "--timeout", str(ATTEMPT_TIMEOUT)],
            lambda line: "outcome" in line,
            timeout=2 * ATTEMPT_TIMEOUT,
            may_exit=True,
        )

    for attempt in range(1, OBSERVER_STARTS + 1):
        child = await start("observer" if attempt == 1 else f"observer-{attempt}")
        first = child.ready
        if first.get("outcome") != Outcome.ERROR.value:
            break
        await sup.stop(child)
    outcome = Outcome(first["outcome"])
    cfg = first.get("config") or {}
    run = UeRun(
        ue, exp, outcome, first.get("code") or "-", cfg.get("ueServiceId"), time.monotonic() - t0, attempt
    )
    record(run)
    doc_id = first.get("ueConfigDocId")
    latencies: list[float] = []
    note = ""
    if outcome is Outcome.CONFIGURED and doc_id:
        admin_creds = keys.admin if keys else None
        try:
            scm = f"coap://{ep['scm'][0]}:{ep['scm'][1]}"
            async with ScmClient(scm, SERVICE_ID, credentials=admin_creds) as admin:  # not on a radio leg
                change, again = 1, 0
                while change <= OBSERVER_CHANGES:
                    segment = 1024 + 256 * change + 64 * again  # a value the observer has not seen
                    latency = await _change_and_wait(admin, child, doc_id, segment)
                    if latency is None and again < OBSERVER_REREGISTRATIONS:
                        again += 1
                        await sup.stop(child)
                        child = await start(f"observer-again-{again}")
                        if child.ready.get("outcome") == Outcome.CONFIGURED.value:
                            continue
                    if latency is None:
                        note = f"change {change} never arrived"
                        break
                    latencies.append(latency)
                    change += 1
                if again:
                    again_note = f"registered again {again}x (a change did not arrive)"
                    note = f"{note}; {again_note}" if note else again_note
        finally:
            done_with(admin_creds)
    else:
        note = f"its first answer was {first.get('code')} {first.get('outcome')}"
    await sup.stop(child)
    return ObserverResult(run, latencies, len(latencies), note)


async def _change_and_wait(admin: ScmClient, child, doc_id: str, segment: int) -> float | None:
    """PUT the document with a new segment size until the observer prints it (5 tries);
    the time from the PUT to the notification, or None."""
    for _ in range(5):
        doc = await admin.get_doc(doc_id)
        for c in doc["ueConfigs"]:
            if c["configType"] == "ON_NETWORK":
                data = json.loads(c["configData"])
                data["segmentSize"] = segment
                c["configData"] = json.dumps(data)
        t_put = time.monotonic()
        await admin.replace(doc_id, doc)
        while time.monotonic() - t_put < OBSERVER_WAIT:
            if any((ln.get("config") or {}).get("segmentSize") == segment for ln in child.json_lines()):
                return time.monotonic() - t_put
            await asyncio.sleep(0.02)
    return None
