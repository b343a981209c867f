"""``msgin5g ue``: an MSGin5G UE asking for its configuration (SPEC §3.1, §3.3).

Directly (``--server``), through a Relay UE (``--via-relay``) or through a Gateway UE
(``--via-gateway``). Exit status: 0 configured, 3 forbidden (4.03), 4 not found (4.04), 1 error
— also when a pre-configuration was applied, so scripts can tell that apart from a real answer.
"""

from __future__ import annotations

import asyncio
import json
import sys

import click

from ..clicommon import credentials_option, parse_hostport, server_option, setup_logging
from ..coap import aiocoap_tweaks
from ..outcome import ConfigResult, Msgin5gConfig, Outcome
from ..security.credentials import CredentialsError


@click.group()
def ue() -> None:
    """MSGin5G UE client (SCM-C): get and observe the UE's configuration."""


def _load_preconfigured(path: str | None) -> Msgin5gConfig | None:
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return Msgin5gConfig.from_config_data(json.load(f))
    except (OSError, ValueError, KeyError) as e:
        raise click.BadParameter(f"{path}: {e}", param_hint="--preconfigured") from None


QUIET = {"on": False}  # -q: the exit status alone tells the outcome


def result_json(result: ConfigResult) -> dict:
    out = {
        "outcome": result.outcome.value,
        "code": None if result.code is None else f"{result.code >> 5}.{result.code & 31:02d}",
        "preconfigured": result.preconfigured,
    }
    if result.config is not None:
        out["config"] = result.config.to_json()
    if result.doc is not None:
        out["ueConfigDocId"] = result.doc.get("ueConfigDocId")
    if result.problem is not None:
        out["problem"] = {"detail": result.problem.detail, "cause": result.problem.cause}
    if result.detail and result.problem is None:
        out["detail"] = result.detail
    return out


def print_result(ue_uri: str, result: ConfigResult, as_json: bool) -> None:
    if QUIET["on"]:
        return
    if as_json:
        click.echo(json.dumps({"ueUri": ue_uri, **result_json(result)}))
        return
    code = "-" if result.code is None else f"{result.code >> 5}.{result.code & 31:02d}"
    if result.outcome is Outcome.CONFIGURED and result.config is not None:
        c = result.config
        click.echo(
            f"{ue_uri}: configured ({code}) server={c.msgin5g_server_address} "
            f"ueServiceId={c.ue_service_id} segmentSize={c.segment_size} "
            f"doc={result.doc.get('ueConfigDocId') if result.doc else None}"
        )
        return
    click.echo(f"{ue_uri}: {result.outcome.value} ({code}) {result.detail}")
    if result.preconfigured and result.config is not None:
        click.echo(f"{ue_uri}: using pre-configured values: {json.dumps(result.config.to_json())}")


@ue.command("get-config")
@server_option(help_text="apiRoot of the SCM-S (coap://, coap+tcp://, coap+ws://; coaps:// with a PSK file).")
@click.option(
    "--via-relay", default=None, metavar="HOST:PORT", help="Ask through a Relay UE (PC5, SPEC §3.2)."
)
@click.option(
    "--via-gateway", default=None, metavar="HOST:PORT", help="Ask through a Gateway UE (SPEC §3.4)."
)
@click.option(
    "--ue-uri", required=True, help="MSGin5G UE ID (= VAL UE ID), e.g. urn:gsma:imei:35209900-176148-1."
)
@click.option(
    "--service-id", default="msgin5g", show_default=True, help="valServiceId of the MSGin5G service."
)
@click.option("--ue-type", default=None, help="TAC (8 digits).")
@click.option("--ue-snr", default=None, help="Serial number (1-6 digits).")
@click.option("--ue-vendor", default=None)
@click.option("--l2-id", type=int, default=None, help="PC5 Layer-2 ID (relay only; random if absent).")
@click.option("--urgent", is_flag=True, help="Ask the gateway to flush at once (gateway only).")
@click.option("--identity", default=None, help="Lab identity claimed in insecure mode, e.g. ue:<uri>.")
@credentials_option(
    "OSCORE credentials file: the UE's key with the SCM-S (direct and through a relay), or its key "
    "with the gateway (--via-gateway)."
)
@click.option(
    "--key-identity", default=None, help="The entry of a --credentials bundle to use (default ue:<--ue-uri>)."
)
@click.option("--observe", is_flag=True, help="Keep observing the applied document and print each update.")
@click.option(
    "--preconfigured", default=None, type=click.Path(dir_okay=False), help="JSON file used on 4.03/4.04."
)
@click.option("--timeout", default=30.0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing; the exit status tells the outcome.")
@click.option("-v", "--verbose", count=True)
def get_config(
    server,
    via_relay,
    via_gateway,
    ue_uri,
    service_id,
    ue_type,
    ue_snr,
    ue_vendor,
    l2_id,
    urgent,
    identity,
    credentials,
    key_identity,
    observe,
    preconfigured,
    timeout,
    as_json,
    quiet,
    verbose,
) -> None:
    """Get this UE's configuration (TS 24.538 6.2.1.2) and print what it applied."""
    setup_logging(verbose)
    QUIET["on"] = quiet
    if via_relay and via_gateway:
        raise click.UsageError("--via-relay and --via-gateway exclude each other")
    if identity is not None and credentials is not None:
        raise click.UsageError("--identity (lab mode) and --credentials exclude each other")
    params = dict(click.get_current_context().params, pre=_load_preconfigured(preconfigured))
    aiocoap_tweaks.install_process_tweaks()
    try:
        if hasattr(credentials, "select"):  # a bundle: this UE's entry (SPEC D12)
            params["credentials"] = credentials.select(key_identity or f"ue:{ue_uri}")
        result = asyncio.run(_get(**params))
    except CredentialsError as e:
        raise click.ClickException(str(e)) from None
    sys.exit(1 if result.preconfigured else result.exit_code)


async def _get(
    *,
    server,
    via_relay,
    via_gateway,
    ue_uri,
    service_id,
    ue_type,
    ue_snr,
    ue_vendor,
    l2_id,
    urgent,
    identity,
    credentials,
    observe,
    pre,
    timeout,
    as_json,
    **_unused,
) -> ConfigResult:
    from ..scmc import ScmClient, apply_fallback
    from ..security.dtls import PskCredentials
    from .outcome import explain_refusal

    if isinstance(credentials, PskCredentials) and (via_relay or via_gateway):
        raise CredentialsError("a coaps PSK file is for a direct coaps:// --server, not a relay or gateway")
    psk = isinstance(credentials, PskCredentials)
    security = credentials.security_context() if credentials is not None and not psk else None

    if via_relay:
        from .via_relay import get_config_via_relay

        host, port = parse_hostport(via_relay, 65401)
        result = await get_config_via_relay(
            host,
            port,
            server,
            service_id=service_id,
            ue_uri=ue_uri,
            ue_type=ue_type,
            ue_snr=ue_snr,
            ue_vendor=ue_vendor,
            l2_id=l2_id,
            timeout=timeout,
            security=security,
        )
        result = apply_fallback(explain_refusal(result, credentials, "SCM-S"), pre)
    elif via_gateway:
        from .via_gateway import get_config_via_gateway

        host, port = parse_hostport(via_gateway, 65402)
        result = await get_config_via_gateway(
            host,
            port,
            service_id=service_id,
            ue_uri=ue_uri,
            ue_type=ue_type,
            ue_snr=ue_snr,
            ue_vendor=ue_vendor,
            urgent=urgent,
            timeout=timeout,
            security=security,
        )
        # without credentials the 4.01 may also be the SCM-S's refusal of the gateway, passed on
        peer = "Gateway UE" if credentials is not None else "Gateway UE (or the SCM-S behind it)"
        result = apply_fallback(explain_refusal(result, credentials, peer), pre)
    else:
        from .direct import DirectClient, uses_message_layer

        # CoAP over UDP on the message layer (Q-Block2, asking again when lost); others on aiocoap
        client_class = DirectClient if uses_message_layer(server) else ScmClient
        async with client_class(
            server, service_id, identity=identity, credentials=credentials, timeout=timeout
        ) as client:
            result = await client.get_config(ue_uri, ue_type, ue_snr, ue_vendor, preconfigured=pre)
            print_result(ue_uri, result, as_json)
            if (
                observe
                and result.outcome is Outcome.CONFIGURED
                and result.doc
                and result.doc.get("ueConfigDocId")
            ):
                await _observe(client, ue_uri, result.doc["ueConfigDocId"], as_json, applied=result.doc)
            return result
    print_result(ue_uri, result, as_json)
    return result


async def _observe(client, ue_uri: str, doc_id: str, as_json: bool, applied: dict | None = None) -> None:
    """Re-apply the document on every notification (RFC 7641) until the server ends it or Ctrl-C.

    The registration's first answer is the document's current state: the one just applied, which is
    not applied twice — unless the document changed in between (the registration's own answer lost
    on the way, a notification of the change came first and counts as the first answer, RFC 7641
    §3.2, §4.4): then it is applied like any notification."""
    import aiocoap

    from ..outcome import result_from_docs, result_from_problem
    from .constrained import CoapError

    first = True
    try:
        async for code, body in client.observe_doc(doc_id):
            if first:
                first = False
                if body == applied:
                    continue  # the registration answer repeats what was just applied
            result = (
                result_from_docs(code, [body]) if isinstance(body, dict) else result_from_problem(code, body)
            )
            print_result(ue_uri, result, as_json)
            sys.stdout.flush()
    except (CoapError, TimeoutError, OSError, aiocoap.error.Error) as e:
        # the configuration was applied; only the observation could not be set up or went away
        click.echo(f"the observation of {doc_id} ended: {e or type(e).__name__}", err=True)
    # Ctrl-C cancels this loop; the command then exits 130 (msgin5g.cli)
