"""The UEs of the demo: each runs the real configuration procedure of its kind (SPEC §3).

* through the Relay UE — a constrained UE establishes its PC5 one-to-one link, sends the §3.1 GET
  with the SCM-S as recipient (OSCORE-protected end to end with the recipient in ``Proxy-Scheme``
  + ``Uri-Host`` + ``Uri-Port``; in the insecure lab mode in ``Proxy-Uri``), handles the answer
  addressed to itself, releases the link (TS 24.538 6.2.2.2; :mod:`msgin5g.ue.via_relay`);
* through the Gateway UE — :func:`msgin5g.ue.via_gateway.get_config_via_gateway`;
* directly — the SCM-C of :mod:`msgin5g.scmc`.

A UE whose procedure ends without an answer (lost datagrams with ``--loss``, a full PC5 link
table) starts it again after a short pause, as a device would, until its deadline; 2.05, 4.03
and 4.04 are final (4.03: "do not retry blindly", SPEC §3.1). :class:`UeRun` records the
outcome, the latency from the first attempt to the final answer, and the attempts it took.

Each UE uses its own credentials (:mod:`.keys`; SPEC D12) — with the SCM-S directly and through
the relay, with the Gateway UE through the gateway — or, in the insecure lab mode, claims its
identity with the lab option.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiocoap.optiontypes import OpaqueOption

from ..authz import LAB_IDENTITY_OPTION
from ..outcome import ConfigResult, Outcome
from ..scmc import ScmClient
from ..security.endpoint import ClientProtection, UnprotectedResponse, forward_proxy_request
from ..security.registry import ClientCredentials
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
from .plan import SERVICE_ID, Expectation, PlannedUe

RETRY_PAUSE = 0.5  # s before a UE starts its procedure again
#: s for one procedure: every CON retransmission (MAX_TRANSMIT_SPAN 45 s, RFC 7252 §4.8.2) and its answer
ATTEMPT_TIMEOUT = 48.0
LINK_TIMEOUT = 8.0  # s for the PC5 link establishment and release exchanges


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
    return UeRun(
        ue,
        expectation,
        result.outcome,
        _code_text(result.code),
        result.config.ue_service_id if result.config else None,
        loop.time() - t0,
        attempts,
        detail,
    )


async def relay_attempt(
    relay: tuple[str, int], server_uri: str, ue: PlannedUe, timeout: float, security=None
) -> ConfigResult:
    """One configuration procedure of a constrained UE through the Relay UE (TS 24.538 6.2.2.2).

    As :func:`msgin5g.ue.via_relay.get_config_via_relay`: protected end to end with the UE's own
    OSCORE context (``security``), or, in the lab mode, with the UE's identity claim (option
    65000), which the relay forwards untouched like any end-to-end option (SPEC D8, D12). Either
    way a UE asking for another UE's configuration is refused by the SCM-S, and the relay relays
    that 4.03 downlink (seed 6.2.2.1).
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
    cue = ConstrainedUe(relay[0], relay[1], user_info=ue.device, protection=protection)
    await cue.open()
    try:
        try:
            await cue.establish_link(timeout=LINK_TIMEOUT)
        except LinkRejected as e:
            return ConfigResult(Outcome.ERROR, detail=str(e))
        except TimeoutError:
            return ConfigResult(Outcome.ERROR, detail="no answer to the PC5 link establishment")
        try:
            response = await cue.fetch(msg, timeout=timeout)
        except UnprotectedResponse as e:
            return result_from_unprotected(e)
        except CoapError as e:
            return ConfigResult(Outcome.ERROR, detail=f"no configuration answer through the relay: {e}")
        return result_from_response(response)
    finally:
        task = asyncio.current_task()
        if cue.linked and not (task and task.cancelling()):  # being stopped: no goodbyes
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
) -> UeRun:
    """A constrained UE through the Relay UE (TS 24.538 6.2.2.2; SPEC §3.3, D8), retried as needed."""
    security = creds.security_context() if creds is not None else None
    try:
        return await run_procedure(
            ue, expectation, lambda: relay_attempt(relay, server_uri, ue, ATTEMPT_TIMEOUT, security), deadline
        )
    finally:
        done_with(creds)


async def configure_via_gateway(
    gateway: tuple[str, int],
    ue: PlannedUe,
    expectation: Expectation,
    deadline: float,
    timeout: float,
    creds: ClientCredentials | None = None,
) -> UeRun:
    """A constrained UE through the Gateway UE (TS 24.538 6.2.2.2; SPEC §3.3, D9), with its key
    for the MSGin5G-6 leg."""
    security = creds.security_context() if creds is not None else None
    try:
        return await run_procedure(
            ue,
            expectation,
            lambda: get_config_via_gateway(
                gateway[0],
                gateway[1],
                service_id=SERVICE_ID,
                ue_uri=ue.asks_for,
                timeout=timeout,
                security=security,
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
    """An unconstrained UE's SCM-C asking the SCM-S directly (TS 24.538 6.2.1.2; SPEC §3.1)."""
    identity = None if creds is not None else ue.identity

    async def attempt() -> ConfigResult:
        async with ScmClient(
            server_uri, SERVICE_ID, identity=identity, credentials=creds, timeout=ATTEMPT_TIMEOUT
        ) as client:
            return await client.get_config(ue.asks_for)

    try:
        return await run_procedure(ue, expectation, attempt, deadline)
    finally:
        done_with(creds)
