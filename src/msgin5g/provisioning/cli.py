"""``msgin5g config``: provisioning of UE configuration documents and of the gateway registry.

Documents go over CoAP to a running SCM-S (administrator role), or, with ``import --direct``,
straight into a store in one transaction for offline bulk provisioning. The gateway registry
(which Gateway UE may bulk-configure which UEs; SPEC D6, D12) is kept in the store and edited
directly (``--db``, or ``MSGIN5G_DB``); every change says which store it wrote. The SCM-S reads it
on every bulk GET.

``configData`` is printed as an object and accepted as an object or a string everywhere. Exit
status: 0 done, 1 failed, 2 usage or precondition (server or store unreachable), 3 refused
(4.01/4.03), 4 not found (4.04), 130 interrupted — see docs/operations.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from contextlib import contextmanager

import click
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from ..clicommon import (
    EXIT_FAILED,
    EXIT_FORBIDDEN,
    EXIT_NOT_FOUND,
    EXIT_PRECONDITION,
    credentials_option,
    db_option,
    server_option,
)
from ..scmc import ScmClient, ScmClientError
from ..security.credentials import CredentialsError
from ..store import default_db_url, open_store
from .docjson import for_people, for_wire, same_content
from .files import ProvisioningError, iter_docs_in_worker, load

console = Console(stderr=True)


class Refused(click.ClickException):
    """The SCM-S answered with an error: the message is its problem details, the exit status
    says which kind (3: 4.01/4.03, 4: 4.04, 1: anything else)."""

    def __init__(self, message: str, code: int | None):
        super().__init__(message)
        self.exit_code = exit_status(code)


def exit_status(code: int | None) -> int:
    if code == 0x84:
        return EXIT_NOT_FOUND
    if code in (0x81, 0x83):
        return EXIT_FORBIDDEN
    return EXIT_FAILED


@click.group()
def config() -> None:
    """Provision UE configuration documents and the gateway registry."""


#: the options each document command shares, one by one (``msgin5g profile`` uses them too)
server_opt = server_option()
service_opt = click.option("--service-id", default="msgin5g", show_default=True)
identity_opt = click.option(
    "--identity",
    default=None,
    help="Lab identity claimed in insecure mode (default: none = admin).",
)
credentials_opt = credentials_option("An administrator's OSCORE credentials file (secured SCM-S).")


def scm_options(f):
    """--server, --service-id, --identity, --credentials, --json, -q: every document command."""
    for opt in reversed(
        (
            server_opt,
            service_opt,
            identity_opt,
            credentials_opt,
            output_options,
        )
    ):
        f = opt(f)
    return f


def output_options(f):
    f = click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")(f)
    return click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")(f)


def emit(as_json: bool, quiet: bool, text: str, value) -> None:
    if as_json:
        click.echo(json.dumps(value, indent=1))
    elif not quiet:
        click.echo(text)


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
    except ScmClientError as e:
        raise Refused(str(e), e.code) from None
    except CredentialsError as e:
        raise click.ClickException(str(e)) from None


@contextmanager
def store_at(db_url: str | None):
    store = open_store(db_url or default_db_url())
    try:
        yield store
    finally:
        store.close()


def _load(file: str, domain: str) -> list[dict]:
    try:
        return load(file, domain).docs
    except ProvisioningError as e:
        raise click.ClickException(str(e)) from None


async def _create(client: ScmClient, doc: dict, created: list[str]) -> str:
    """POST one document and note its id — even if Ctrl-C cancels the command meanwhile: a POST
    already sent may have created it, and the rollback must know (all or nothing, also when
    interrupted)."""
    task = asyncio.ensure_future(client.create(doc))
    try:
        res = await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            created.append((await task)["ueConfigDocId"])
        raise
    created.append(res["ueConfigDocId"])
    return res["ueConfigDocId"]


async def _rollback(client: ScmClient, created: list[str], restore: list[tuple[str, dict]]) -> None:
    """Undo: delete what was created, put back what was replaced (latest first)."""
    for doc_id in reversed(created):
        try:
            await client.delete(doc_id)
        except Exception as e:
            console.print(f"could not roll back {doc_id}: {e}", markup=False)
    for doc_id, previous in reversed(restore):
        try:
            await client.replace(doc_id, previous)
        except Exception as e:
            console.print(f"could not restore {doc_id}: {e}", markup=False)
    if created or restore:
        console.print(
            f"rolled back: {len(created)} created document(s) deleted, {len(restore)} restored", markup=False
        )


@config.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@scm_options
@click.option("--domain", default="msgin5g.example", show_default=True, help="valServiceDomain of CSV rows.")
@click.option("--direct", is_flag=True, help="Write straight into the store (--db) in one transaction.")
@db_option("Store URL for --direct (sqlite:///... or postgresql://...).")
def import_(file, server, service_id, identity, credentials, as_json, quiet, domain, direct, db_url) -> None:
    """Import FILE (.json/.yaml list of UeConfigDoc, or .csv one UE per row). All or nothing, also
    when interrupted: over CoAP, what was created is deleted again."""
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
        emit(
            as_json,
            quiet,
            f"imported {len(ids)} documents into {service_id} in {dt:.2f} s "
            f"({rate:,.0f} docs/s from file to store, one transaction)",
            {"imported": len(ids), "seconds": round(dt, 3)},
        )
        return
    docs = _load(file, domain)
    client = _client(server, service_id, identity, credentials)
    try:
        created = asyncio.run(_import_coap(client, docs, quiet or as_json))
    except CredentialsError as e:
        raise click.ClickException(str(e)) from None
    emit(as_json, quiet, f"imported {len(created)} documents into {service_id} via {server}", created)


async def _import_coap(client: ScmClient, docs: list[dict], quiet: bool = False) -> list[str]:
    """POST each document; on the first failure (or Ctrl-C) delete what was created."""
    created: list[str] = []
    async with client:
        try:
            with Progress(console=console, transient=True, disable=quiet) as progress:
                task = progress.add_task("importing", total=len(docs))
                for i, doc in enumerate(docs):
                    try:
                        await _create(client, doc, created)
                    except ScmClientError as e:
                        raise Refused(f"entry {i}: the server refused it: {e}", e.code) from None
                    progress.advance(task)
        except BaseException:
            await _rollback(client, created, [])
            raise
    return created


@config.command("apply")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@scm_options
@click.option("--domain", default="msgin5g.example", show_default=True, help="valServiceDomain of CSV rows.")
@click.option("--dry-run", is_flag=True, help="Only say what would change.")
def apply(file, server, service_id, identity, credentials, as_json, quiet, domain, dry_run) -> None:
    """Make the server hold FILE's documents: idempotent, running it twice changes nothing.

    An entry is matched to a stored document by its ueConfigDocId when it has one, else by its
    configName (which must then be unique on the server and in FILE): matched and equal →
    unchanged; matched and different → replaced (PUT); unmatched → created (POST). Documents not
    in FILE are left alone. All or nothing: on a refusal or Ctrl-C every change is undone."""
    docs = [for_wire(d) for d in _load(file, domain)]
    client = _client(server, service_id, identity, credentials)
    try:
        result = asyncio.run(_apply(client, docs, dry_run))
    except ScmClientError as e:
        raise Refused(str(e), e.code) from None
    except CredentialsError as e:
        raise click.ClickException(str(e)) from None
    verb = "would be" if dry_run else "were"
    emit(
        as_json,
        quiet,
        f"{len(result['created'])} created, {len(result['updated'])} updated, "
        f"{len(result['unchanged'])} unchanged ({len(docs)} entries; changes {verb} applied)",
        result,
    )


def plan_apply(docs: list[dict], existing: list[dict]) -> list[tuple[str, dict, dict | None]]:
    """(action, wanted, current) per entry: "create", "update" or "unchanged" (see ``apply``)."""
    by_id = {d["ueConfigDocId"]: d for d in existing}
    by_name: dict[str, list[dict]] = {}
    for d in existing:
        by_name.setdefault(d.get("configName") or "", []).append(d)
    names: set[str] = set()
    plan = []
    for i, doc in enumerate(docs):
        doc_id, name = doc.get("ueConfigDocId"), doc.get("configName")
        if doc_id:
            current = by_id.get(doc_id)
            if current is None:
                raise click.ClickException(f"entry {i}: no document {doc_id!r} on the server to update")
        elif name:
            if name in names:
                raise click.ClickException(f"entry {i}: configName {name!r} appears twice in the file")
            names.add(name)
            matches = by_name.get(name, [])
            if len(matches) > 1:
                ids = ", ".join(m["ueConfigDocId"] for m in matches)
                raise click.ClickException(
                    f"entry {i}: configName {name!r} names {len(matches)} documents ({ids}); "
                    "give the entry the ueConfigDocId to update"
                )
            current = matches[0] if matches else None
        else:
            raise click.UsageError(
                f"entry {i} has neither ueConfigDocId nor configName: apply matches documents by one of them"
            )
        if current is None:
            plan.append(("create", doc, None))
        elif same_content(doc, current):
            plan.append(("unchanged", doc, current))
        else:
            plan.append(("update", doc, current))
    return plan


async def _apply(client: ScmClient, docs: list[dict], dry_run: bool) -> dict:
    result: dict[str, list[str]] = {"created": [], "updated": [], "unchanged": []}
    async with client:
        plan = plan_apply(docs, await client.list_docs())
        if dry_run:
            for action, doc, current in plan:
                key = {"create": "created", "update": "updated", "unchanged": "unchanged"}[action]
                result[key].append(current["ueConfigDocId"] if current else doc.get("configName", ""))
            return result
        created: list[str] = []
        restore: list[tuple[str, dict]] = []
        try:
            for action, doc, current in plan:
                if action == "create":
                    result["created"].append(await _create(client, doc, created))
                elif action == "update":
                    doc_id = current["ueConfigDocId"]
                    restore.append((doc_id, current))  # noted first: restored even if Ctrl-C hits mid-PUT
                    await asyncio.shield(client.replace(doc_id, {**doc, "ueConfigDocId": doc_id}))
                    result["updated"].append(doc_id)
                else:
                    result["unchanged"].append(current["ueConfigDocId"])
        except BaseException:
            await _rollback(client, created, restore)
            raise
    return result


@config.command("update")
@click.argument("doc_id")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@scm_options
def update(doc_id, file, server, service_id, identity, credentials, as_json, quiet) -> None:
    """Replace document DOC_ID with the one document in FILE (.json/.yaml; configData an object or
    a string; a ueConfigDocId in FILE must be DOC_ID)."""
    docs = _load(file, "msgin5g.example")
    if len(docs) != 1:
        raise click.UsageError(f"{file} holds {len(docs)} documents; update takes exactly one")
    doc = for_wire(docs[0])
    if doc.get("ueConfigDocId", doc_id) != doc_id:
        raise click.UsageError(f"{file} is document {doc['ueConfigDocId']!r}, not {doc_id!r}")
    doc["ueConfigDocId"] = doc_id
    new = call_server(server, service_id, identity, lambda c: c.replace(doc_id, doc), credentials)
    emit(as_json, quiet, f"updated {doc_id}", for_people(new))


@config.command("list")
@scm_options
@click.option("--ue-uri", default=None)
@click.option("--ue-type", default=None)
@click.option("--ue-snr", default=None)
@click.option("--ue-vendor", default=None)
def list_(
    server, service_id, identity, credentials, as_json, quiet, ue_uri, ue_type, ue_snr, ue_vendor
) -> None:
    """List documents (admin query; with --ue-uri: what that UE would get, most specific first)."""
    from ..scmc import query_options

    query = query_options(ue_uri, ue_type, ue_snr, ue_vendor)
    docs = call_server(server, service_id, identity, lambda client: client.list_docs(query), credentials)
    if as_json:
        click.echo(json.dumps([for_people(d) for d in docs], indent=1))
        return
    if quiet:
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
        for cfg in for_people(d).get("ueConfigs", ()):
            if cfg.get("configType") == "ON_NETWORK":
                data = cfg.get("configData")
                sid = data.get("ueServiceId", "") if isinstance(data, dict) else "?"
        table.add_row(d.get("ueConfigDocId", ""), d.get("configName", ""), scope, sid)
    Console().print(table)


@config.command("get")
@click.argument("doc_id")
@scm_options
def get(doc_id, server, service_id, identity, credentials, as_json, quiet) -> None:
    """Print one document as JSON (configData as an object). Exit 4 when there is none."""
    doc = call_server(server, service_id, identity, lambda client: client.get_doc(doc_id), credentials)
    if not quiet or as_json:
        click.echo(json.dumps(for_people(doc), indent=1))


@config.command("delete")
@click.argument("doc_id")
@scm_options
def delete(doc_id, server, service_id, identity, credentials, as_json, quiet) -> None:
    """Delete one document. Exit 4 when there is none."""
    call_server(server, service_id, identity, lambda client: client.delete(doc_id), credentials)
    emit(as_json, quiet, f"deleted {doc_id}", {"deleted": doc_id})


@config.group("gateway")
def gateway_registry() -> None:
    """The gateway registry: which Gateway UE may bulk-configure which UEs (kept in the store)."""


def gw_db_option(f):
    return db_option(
        "Store URL of the SCM-S (sqlite:///... or postgresql://...); default: the SQLite file "
        "`msgin5g server` uses without --db."
    )(f)


def _which_store(db_url: str | None) -> str:
    if db_url:
        return db_url
    url = default_db_url()
    console.print(
        f"no --db (or MSGIN5G_DB): using the default store {url}, which only a server started "
        "without --db reads",
        markup=False,
    )
    return url


@gateway_registry.command("set")
@click.argument("gateway_id")
@click.option("--all", "all_", is_flag=True, help="May configure every UE.")
@click.option("--uri", "uris", multiple=True, help="A UE it may configure (repeatable).")
@click.option("--tac", "tacs", multiple=True, help="TAC[:LOW-HIGH] it may configure (repeatable).")
@gw_db_option
@output_options
def gw_set(gateway_id, all_, uris, tacs, db_url, as_json, quiet) -> None:
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
    url = _which_store(db_url)
    with store_at(url) as store:
        store.set_gateway(gateway_id, coverage)
    emit(
        as_json,
        quiet,
        f"gateway {gateway_id}: {json.dumps(coverage)} (written to {url})",
        {"gateway": gateway_id, "coverage": coverage, "store": url},
    )


@gateway_registry.command("list")
@gw_db_option
@output_options
def gw_list(db_url, as_json, quiet) -> None:
    """The registered gateways and what each may configure."""
    with store_at(_which_store(db_url)) as store:
        gateways = store.list_gateways()
    if as_json:
        click.echo(json.dumps(gateways, indent=1))
    elif not quiet:
        for gid, cov in gateways.items():
            click.echo(f"{gid}: {json.dumps(cov)}")


@gateway_registry.command("delete")
@click.argument("gateway_id")
@gw_db_option
@output_options
def gw_delete(gateway_id, db_url, as_json, quiet) -> None:
    """Remove GATEWAY_ID from the registry (exit 4 when it is not there)."""
    url = _which_store(db_url)
    with store_at(url) as store:
        found = store.delete_gateway(gateway_id)
    if not found:
        click.echo(f"Error: no gateway {gateway_id} in {url}", err=True)
        sys.exit(EXIT_NOT_FOUND)
    emit(as_json, quiet, f"deleted gateway {gateway_id} from {url}", {"deleted": gateway_id, "store": url})


__all__ = ["EXIT_PRECONDITION", "config", "credentials_opt", "identity_opt", "server_opt", "service_opt"]
