"""``msgin5g config``: provisioning of UE configuration documents and of the gateway registry.

Documents go over CoAP to a running SCM-S (administrator role), or, with ``import --direct``,
straight into a store in one transaction for offline bulk provisioning. The gateway registry
(which Gateway UE may bulk-configure which UEs; SPEC D6, D12) is kept in the store and edited
directly (``--db``); the SCM-S reads it on every bulk GET.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from contextlib import contextmanager

import click
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from ..clicommon import credentials_option
from ..scmc import ScmClient, ScmClientError
from ..security.registry import CredentialsError
from ..store import default_db_url, open_store
from .files import ProvisioningError, iter_docs_in_worker, load

console = Console(stderr=True)


@click.group()
def config() -> None:
    """Provision UE configuration documents and the gateway registry."""


server_opt = click.option(
    "--server", default="coap://127.0.0.1:5683", show_default=True, help="apiRoot of the SCM-S."
)
service_opt = click.option("--service-id", default="msgin5g", show_default=True)
identity_opt = click.option(
    "--identity", default=None, help="Lab identity claimed in insecure mode (default: none = admin)."
)
credentials_opt = credentials_option("An administrator's OSCORE credentials file (secured SCM-S).")


def _client(server: str, service_id: str, identity: str | None, credentials) -> ScmClient:
    if identity is not None and credentials is not None:
        raise click.UsageError("--identity (lab mode) and --credentials exclude each other")
    return ScmClient(server, service_id, identity=identity, credentials=credentials)


def call_server(server: str, service_id: str, identity: str | None, operation, credentials=None):
    """Run ``await operation(client)`` against the SCM-S; a refused request becomes a CLI error."""

    async def run():
        async with _client(server, service_id, identity, credentials) as client:
            return await operation(client)

    try:
        return asyncio.run(run())
    except (ScmClientError, CredentialsError) as e:
        raise click.ClickException(str(e)) from None


@contextmanager
def store_at(db_url: str | None):
    store = open_store(db_url or default_db_url())
    try:
        yield store
    finally:
        store.close()


@config.command("import")
@click.argument("file", type=click.Path(dir_okay=False))
@server_opt
@service_opt
@identity_opt
@credentials_opt
@click.option("--domain", default="msgin5g.example", show_default=True, help="valServiceDomain of CSV rows.")
@click.option("--direct", is_flag=True, help="Write straight into the store (--db) in one transaction.")
@click.option(
    "--db", "db_url", default=None, help="Store URL for --direct (sqlite:///... or postgresql://...)."
)
def import_(file, server, service_id, identity, credentials, domain, direct, db_url) -> None:
    """Import FILE (.json/.yaml list of UeConfigDoc, or .csv one UE per row). All or nothing."""
    if direct:
        # parsing and validation stream from a child process into ONE store transaction; the
        # first bad entry raises inside the transaction, which then rolls back: nothing imported
        with store_at(db_url) as store:
            t0 = time.perf_counter()
            try:
                ids = store.import_docs(service_id, iter_docs_in_worker(file, domain))
            except ProvisioningError as e:
                raise click.ClickException(str(e)) from None
            dt = time.perf_counter() - t0
        rate = len(ids) / dt if dt > 0 else float("inf")
        click.echo(
            f"imported {len(ids)} documents into {service_id} in {dt:.2f} s "
            f"({rate:,.0f} docs/s from file to store, one transaction)"
        )
        return
    try:
        prov = load(file, domain)
    except ProvisioningError as e:
        raise click.ClickException(str(e)) from None
    client = _client(server, service_id, identity, credentials)
    try:
        created = asyncio.run(_import_coap(client, prov.docs))
    except CredentialsError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"imported {len(created)} documents into {service_id} via {server}")


async def _import_coap(client: ScmClient, docs: list[dict]) -> list[str]:
    """POST each document; on the first failure delete what was created, so nothing is half-imported."""
    created: list[str] = []
    async with client:
        try:
            with Progress(console=console, transient=True) as progress:
                task = progress.add_task("importing", total=len(docs))
                for i, doc in enumerate(docs):
                    try:
                        created.append((await client.create(doc))["ueConfigDocId"])
                    except ScmClientError as e:
                        raise click.ClickException(f"entry {i}: the server refused it: {e}") from None
                    progress.advance(task)
        except BaseException:
            for doc_id in created:
                try:
                    await client.delete(doc_id)
                except Exception:
                    console.print(f"[red]could not roll back {doc_id}[/red]")
            raise
    return created


@config.command("list")
@server_opt
@service_opt
@identity_opt
@credentials_opt
@click.option("--ue-uri", default=None)
@click.option("--ue-type", default=None)
@click.option("--ue-snr", default=None)
@click.option("--ue-vendor", default=None)
@click.option("--json", "as_json", is_flag=True)
def list_(server, service_id, identity, credentials, ue_uri, ue_type, ue_snr, ue_vendor, as_json) -> None:
    """List documents (admin query; with --ue-uri: what that UE would get, most specific first)."""
    from ..scmc import query_options

    query = query_options(ue_uri, ue_type, ue_snr, ue_vendor)
    docs = call_server(server, service_id, identity, lambda client: client.list_docs(query), credentials)
    if as_json:
        click.echo(json.dumps(docs, indent=1))
        return
    table = Table(title=f"{len(docs)} UE configuration documents ({service_id})")
    for col in ("ueConfigDocId", "configName", "applies to", "ueServiceId"):
        table.add_column(col)
    for d in docs:
        ids = d.get("valUeIds")
        if ids is None:
            scope = "whole domain"
        else:
            parts = list(ids.get("uris", ()))[:2]
            for r in ids.get("imeiRanges", ()):
                sr = r.get("snrRange")
                parts.append(f"TAC {r['tac']}" + (f" SNR {sr['low']}-{sr['high']}" if sr else ""))
            scope = ", ".join(parts)
        sid = ""
        for cfg in d.get("ueConfigs", ()):
            if cfg.get("configType") == "ON_NETWORK":
                try:
                    sid = json.loads(cfg["configData"]).get("ueServiceId", "")
                except ValueError:
                    sid = "?"
        table.add_row(d.get("ueConfigDocId", ""), d.get("configName", ""), scope, sid)
    Console().print(table)


@config.command("get")
@click.argument("doc_id")
@server_opt
@service_opt
@identity_opt
@credentials_opt
def get(doc_id, server, service_id, identity, credentials) -> None:
    """Print one document as JSON."""
    doc = call_server(server, service_id, identity, lambda client: client.get_doc(doc_id), credentials)
    click.echo(json.dumps(doc, indent=1))


@config.command("delete")
@click.argument("doc_id")
@server_opt
@service_opt
@identity_opt
@credentials_opt
def delete(doc_id, server, service_id, identity, credentials) -> None:
    """Delete one document."""
    call_server(server, service_id, identity, lambda client: client.delete(doc_id), credentials)
    click.echo(f"deleted {doc_id}")


@config.group("gateway")
def gateway_registry() -> None:
    """The gateway registry: which Gateway UE may bulk-configure which UEs."""


db_opt = click.option(
    "--db", "db_url", default=None, help="Store URL (default: the server's default SQLite file)."
)


@gateway_registry.command("set")
@click.argument("gateway_id")
@click.option("--all", "all_", is_flag=True, help="May configure every UE.")
@click.option("--uri", "uris", multiple=True, help="A UE it may configure (repeatable).")
@click.option("--tac", "tacs", multiple=True, help="TAC[:LOW-HIGH] it may configure (repeatable).")
@db_opt
def gw_set(gateway_id, all_, uris, tacs, db_url) -> None:
    """Register or replace GATEWAY_ID's coverage."""
    from ..model import ModelError, validate_imei_range

    if all_:
        coverage: dict = {"all": True}
    else:
        coverage = {}
        if uris:
            coverage["uris"] = list(uris)
        ranges = []
        for t in tacs:
            tac, _, span = t.partition(":")
            rng: dict = {"tac": tac}
            if span:
                low, _, high = span.partition("-")
                rng["snrRange"] = {"low": low, "high": high or low}
            ranges.append(rng)
        if ranges:
            coverage["imeiRanges"] = ranges
        if not coverage:
            raise click.UsageError("give --all, --uri or --tac")
        try:
            for i, rng in enumerate(ranges):
                validate_imei_range(rng, f"--tac #{i}")
        except ModelError as e:
            raise click.BadParameter(str(e)) from None
    with store_at(db_url) as store:
        store.set_gateway(gateway_id, coverage)
    click.echo(f"gateway {gateway_id}: {json.dumps(coverage)}")


@gateway_registry.command("list")
@db_opt
def gw_list(db_url) -> None:
    with store_at(db_url) as store:
        for gid, cov in store.list_gateways().items():
            click.echo(f"{gid}: {json.dumps(cov)}")


@gateway_registry.command("delete")
@click.argument("gateway_id")
@db_opt
def gw_delete(gateway_id, db_url) -> None:
    with store_at(db_url) as store:
        found = store.delete_gateway(gateway_id)
    if not found:
        click.echo(f"no gateway {gateway_id}", err=True)
        sys.exit(1)
    click.echo(f"deleted gateway {gateway_id}")
