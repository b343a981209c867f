"""The UE's SCM-C over CoAP/UDP on the project's message layer (TS 24.538 6.2.1.2; SPEC §3.1, D13).

``msgin5g ue get-config --server coap://...`` asks the SCM-S directly. Over UDP it uses the same
endpoint as the constrained UE (:class:`~msgin5g.ue.constrained.ConstrainedUe`, on
:mod:`msgin5g.coap`), without a PC5 link and without Proxy-Uri, so that a UE on a lossy link gets
what the message layer gives:

* **RFC 9177 Q-Block2** offered in every request (TS 24.546 clause 5; SPEC D13): a large answer
  comes as a burst and only missing blocks are asked for; a server without it is fallen back from
  (4.02: asked again without the option; Block2: RFC 7959 follow-ups);
* **OSCORE** (RFC 8613; SPEC D12), as the constrained UE does it: the message layer protects each
  request of an exchange and verifies each (block) response on its own
  (:class:`~msgin5g.security.endpoint.LayerProtection`), so Q-Block2 runs on the plain messages
  (inner options, RFC 8613 §4.1.3.4) with the first request sent NON;
* **asking again** with a new exchange when one is lost (:mod:`.reask`);
* **Observe** (RFC 7641) of the UE's document.

The interface is that of :class:`msgin5g.scmc.ScmClient` for the UE procedure (``get_config``,
``observe_doc``), whose rules it shares (:func:`~msgin5g.scmc.interpret`,
:func:`~msgin5g.scmc.apply_fallback`). ``coap+tcp``/``coap+ws``/``coaps`` stay with aiocoap.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import AsyncIterator
from urllib.parse import quote

from aiocoap import Message
from aiocoap.optiontypes import OpaqueOption

from ..authz import LAB_IDENTITY_OPTION
from ..coap.actions import UNREACHABLE
from ..coap.qblock_client import QBlockOffer
from ..outcome import ConfigResult, Msgin5gConfig, Outcome
from ..problem import Problem
from ..scmc import (
    CredentialsMissing,
    UnprotectedAnswer,
    apply_fallback,
    coaps_psk,
    doc_or_problem,
    interpret,
    no_response,
    problem_of,
    query_options,
)
from ..security.endpoint import ClientProtection, UnprotectedResponse
from .constrained import DEFAULT_TIMEOUT, CoapError, ConstrainedUe, get_request
from .reask import LOST, ReaskPolicy, ask_again, exchange_timeout

UNAUTHORIZED = 0x81
DEFAULT_MAX_AGE = 60  # s, RFC 7252 §5.10.5
#: s past a representation's Max-Age before the UE registers again (RFC 7641 §3.3.1): a notification
#: sent as it expires still arrives first
REREGISTER_MARGIN = 2.0
REREGISTER_PAUSE_MAX = 60.0  # s: the longest pause between two tries of a re-registration


def freshness(response: Message) -> float:
    """How long a response's representation is fresh: its Max-Age (RFC 7252 §5.10.5)."""
    age = response.opt.max_age
    return float(DEFAULT_MAX_AGE if age is None else age)


def uses_message_layer(api_root: str) -> bool:
    """``coap://`` (CoAP over UDP) goes over the message layer; other schemes over aiocoap."""
    return urllib.parse.urlsplit(api_root).scheme.lower() == "coap"


class DirectClient:
    """A UE's SCM-C talking to the SCM-S over CoAP/UDP (see the module docstring)."""

    def __init__(
        self,
        api_root: str,
        service_id: str = "msgin5g",
        *,
        identity: str | None = None,
        credentials=None,
        timeout: float = DEFAULT_TIMEOUT,
        reask: ReaskPolicy | None = None,
        qblock: QBlockOffer | None = None,
    ):
        if identity is not None and credentials is not None:
            raise ValueError("a lab identity and OSCORE credentials exclude each other")
        parts = urllib.parse.urlsplit(api_root.rstrip("/"))
        if parts.scheme.lower() != "coap" or not parts.hostname:
            raise ValueError(f"{api_root!r} is not a coap:// apiRoot")
        self.api_root = api_root.rstrip("/")
        self.host, self.port = parts.hostname, parts.port or 5683
        self.service_id = service_id
        self.identity = identity
        self.credentials = credentials
        self.timeout = timeout
        coaps_psk(self.api_root, credentials)  # a coaps PSK file here is one line, not a traceback
        security = credentials.security_context() if credentials is not None else None
        self.ue = ConstrainedUe(
            self.host,
            self.port,
            protection=ClientProtection(security) if security is not None else None,
            reask=reask or ReaskPolicy(),
            qblock=qblock or QBlockOffer(),
        )

    async def __aenter__(self) -> DirectClient:
        await self.ue.open()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.ue.close(release=False)

    @property
    def collection_uri(self) -> str:
        return f"{self.api_root}/su-uc/v1/val-services/{quote(self.service_id, safe='')}/ue-configurations"

    def _get(self, uri: str, query: list[str] | None = None) -> Message:
        m = get_request(uri, via_proxy=False)
        if query:
            m.opt.uri_query = tuple(query)
        if self.identity is not None:
            m.opt.add_option(OpaqueOption(LAB_IDENTITY_OPTION, self.identity.encode()))
        return m

    def _checked(self, response: Message) -> Message:
        if int(response.code) == UNAUTHORIZED and self.credentials is None and self.identity is None:
            raise CredentialsMissing(int(response.code), problem_of(response))
        return response

    async def get_config(
        self,
        ue_uri: str,
        ue_type: str | None = None,
        ue_snr: str | None = None,
        ue_vendor: str | None = None,
        preconfigured: Msgin5gConfig | None = None,
    ) -> ConfigResult:
        """The §3.1 procedure (TS 24.538 6.2.1.2), as :meth:`msgin5g.scmc.ScmClient.get_config`."""
        q = query_options(ue_uri, ue_type, ue_snr, ue_vendor)
        try:
            request = self._get(self.collection_uri, q)
            response = self._checked(await self.ue.fetch(request, timeout=self.timeout))
        except UnprotectedResponse as e:
            err = UnprotectedAnswer(int(e.response.code), problem_of(e.response), self.credentials)
            return ConfigResult(Outcome.ERROR, err.code, problem=err.problem, detail=str(err))
        except UnprotectedAnswer as e:
            return ConfigResult(Outcome.ERROR, e.code, problem=e.problem, detail=str(e))
        except (CoapError, TimeoutError, OSError) as e:
            detail = no_response(self.api_root, e)
            return apply_fallback(ConfigResult(Outcome.ERROR, detail=detail), None)
        return apply_fallback(interpret(response), preconfigured)

    async def observe_doc(self, doc_id: str) -> AsyncIterator[tuple[int, dict | Problem]]:
        """Observe an individual document (RFC 7641): (code, document) per notification, and a
        final (code, Problem) when the server ends the observation (e.g. 4.04 after DELETE).

        An observation can end without a word: the SCM-S restarted, or removed the UE after a CON
        notification went unacknowledged (§4.5). So when the freshness of the latest
        representation (its Max-Age, 60 s when absent) has passed without a notification, the UE
        registers again with the same token, which replaces its entry if the server still has
        one (§3.3.1, §4.1). The new registration's answer is passed on only when it differs from
        the last one (a change made while nobody was told). A re-registration that gets no answer
        (the SCM-S is down: unreachable, or lost) or a 5.xx is tried again with a back-off up to
        :data:`REREGISTER_PAUSE_MAX`, for as long as the UE observes."""
        uri = f"{self.collection_uri}/{quote(doc_id, safe='')}"
        last, token = None, None
        while True:
            first, obs = await (self._register(uri) if token is None else self._register_again(uri, token))
            token = first.token or None
            try:
                item = doc_or_problem(first)
                if item != last:
                    yield item
                last = item
                if not first.code.is_successful() or first.opt.observe is None:
                    return
                fresh = freshness(first)
                while True:
                    try:
                        note = await obs.next(max(fresh, 1.0) + REREGISTER_MARGIN)
                    except TimeoutError:
                        break  # nothing within Max-Age: register again
                    last = doc_or_problem(note)
                    yield last
                    if not note.code.is_successful() or note.opt.observe is None:
                        return  # the server ended the observation (RFC 7641 §3.2)
                    fresh = freshness(note)
            finally:
                obs.cancel()

    async def _register(self, uri: str, token: bytes | None = None):
        """The registration (RFC 7641 §3.1), asked again while it is lost (SPEC D13)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while True:
            wait = exchange_timeout(self.ue.reask, deadline - loop.time())
            if wait is None:
                raise CoapError("no answer to the observation request before the deadline", "deadline")
            try:
                return await self.ue.observe(self._get(uri), timeout=wait, token=token)
            except UnprotectedResponse as e:
                err = UnprotectedAnswer(int(e.response.code), problem_of(e.response), self.credentials)
                raise err from None
            except CoapError as e:
                if not ask_again(e.cause, deadline - loop.time()):
                    raise

    async def _register_again(self, uri: str, token: bytes):
        """A re-registration: patient, since the UE observes until it is stopped."""
        pause = 1.0
        while True:
            try:
                first, obs = await self._register(uri, token)
            except CoapError as e:
                if e.cause not in (*LOST, UNREACHABLE):
                    raise
            else:
                if first.code.class_ != 5:
                    return first, obs
                obs.cancel()  # overloaded or failing: later (its Max-Age, if it gave one)
                pause = max(pause, float(first.opt.max_age or 0))
            await asyncio.sleep(min(pause, REREGISTER_PAUSE_MAX))
            pause = min(2 * pause, REREGISTER_PAUSE_MAX)
