"""``msgin5g profile``: VAL user profiles on a running SCM-S (TS 24.546 C.2; SPEC D16).

The counterpart of ``msgin5g config`` for the SU_UserProfile API, with the same options
(``--server``, ``--service-id``, ``--identity`` in lab mode, ``--credentials`` when secured):

- ``import FILE`` — a .json / .yaml list of ProfileDoc (or one), validated entirely before anything
  is sent; a ``configData`` may be given as an object (serialised to the JSON string the data model
  carries). All or nothing: when the server refuses an entry, what was created is deleted again.
- ``list --val-tgt-ue ID`` — the profiles of one VAL user or VAL UE (the API's only query).
- ``get ID`` / ``delete ID`` — one profile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import click
import yaml
from rich.console import Console
from rich.table import Table

from .. import api
from ..codec import CF_CBOR, decode, encode
from ..model import ModelError
from ..profiles import PROFILE_DOC_ID_KEY, validate_profile_doc
from ..scmc import ScmClient, ScmClientError
from ..security.credentials import CredentialsError
from .cli import Refused, credentials_opt, emit, identity_opt, output_options, server_opt, service_opt
from .files import ProvisioningError


class ProfileClient(ScmClient):
    """The SCM-C's administrator operations on ``{apiRoot}/su-up/v1/val-services/{valServiceId}/
    user-profiles`` (C.2.1.2): the same requests as for UE configurations, on the other collection."""

    @property
    def collection_uri(self) -> str:
        return self.api_root + api.path_text(api.collection_path(self.service_id, api=api.SU_UP))

    async def create(self, doc: dict) -> dict:
        from aiocoap.numbers.codes import Code

        m = self._message(Code.POST, self.collection_uri, payload=encode(doc), content_format=CF_CBOR)
        r = self._ok(await self.request(m), Code.CREATED)
        created = decode(r.payload) if r.payload else {}
        if PROFILE_DOC_ID_KEY not in created and r.opt.location_path:
            created[PROFILE_DOC_ID_KEY] = r.opt.location_path[-1]  # digest §10.2: the last segment
        return created

    async def list_for(self, val_tgt_ue: str) -> list[dict]:
        """GET with ``val-tgt-ue`` (Table C.2.1.2.2.3.1-1)."""
        return await self.list_docs([f"{api.Q_VAL_TGT_UE}={val_tgt_ue}"])


def _normalise(doc: object) -> object:
    """A configData given as an object becomes the JSON string ProfileConfig carries."""
    info = doc.get("profileInformation") if isinstance(doc, dict) else None
    if isinstance(info, dict):
        for cfg in info.get("profileConfigs", ()) or ():
            if isinstance(cfg, dict) and isinstance(cfg.get("configData"), dict | list):
                cfg["configData"] = json.dumps(cfg["configData"], separators=(",", ":"))
    return doc


def load_profiles(path: str | Path) -> list[dict]:
    """Read and validate a whole profile file (all or nothing; the first problem names the entry
    and the field)."""
    path = Path(path)
    name = str(path)
    suffix = path.suffix.lower()
    if suffix not in (".json", ".yaml", ".yml"):
        raise ProvisioningError(name, "name", "", "unknown format; use .json, .yaml or .yml")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ProvisioningError(name, "open", "", e.strerror or str(e)) from None
    except UnicodeDecodeError as e:
        raise ProvisioningError(name, "read", "", f"not UTF-8 text: {e}") from None
    try:
        data = json.loads(text) if suffix == ".json" else yaml.safe_load(text)
    except ValueError as e:
        raise ProvisioningError(name, "parse", "", f"not JSON: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = getattr(e, "problem", None) or " ".join(str(e).split())
        raise ProvisioningError(name, "parse", "", f"not YAML: {what}{where}") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise ProvisioningError(name, "top level", "", "expected a list of ProfileDoc")
    docs = []
    for i, doc in enumerate(data):
        try:
            validate_profile_doc(_normalise(doc))
        except ModelError as e:
            raise ProvisioningError(name, f"entry {i}", e.field, e.detail) from None
        if PROFILE_DOC_ID_KEY in doc:
            raise ProvisioningError(
                name, f"entry {i}", PROFILE_DOC_ID_KEY, "assigned by the SCM-S; remove it to import"
            )
        docs.append(doc)
    return docs


def _run(server: str, service_id: str, identity: str | None, credentials, operation):
    """``await operation(client)`` against the SCM-S; a refused request becomes one CLI error line."""
    if identity is not None and credentials is not None:
        raise click.UsageError("--identity (lab mode) and --credentials exclude each other")

    async def run():
        async with ProfileClient(server, service_id, identity=identity, credentials=credentials) as client:
            return await operation(client)

    try:
        return asyncio.run(run())
    except ScmClientError as e:  # exit status by the answer: 3 for 4.01/4.03, 4 for 4.04, else 1
        raise Refused(str(e), e.code) from None
    except CredentialsError as e:
        raise click.ClickException(str(e)) from None
    # unreachable server, time-outs: one line and exit status 2 from the command group (clicommon.explain)


@click.group()
def profile() -> None:
    """VAL user profiles (su-up): import, list, get, delete."""


@profile.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@server_opt
@service_opt
@identity_opt
@credentials_opt
@output_options
def import_(file, server, service_id, identity, credentials, as_json, quiet) -> None:
    """Import FILE (.json/.yaml list of ProfileDoc). All or nothing."""
    try:
        docs = load_profiles(file)
    except ProvisioningError as e:
        raise click.ClickException(str(e)) from None

    async def create_all(client: ProfileClient) -> list[str]:
        created: list[str] = []
        try:
            for i, doc in enumerate(docs):
                # a POST already sent when Ctrl-C comes may have created its profile: wait for its
                # answer, so that the rollback knows it (all or nothing, also when interrupted)
                task = asyncio.ensure_future(client.create(doc))
                try:
                    created.append((await asyncio.shield(task))[PROFILE_DOC_ID_KEY])
                except asyncio.CancelledError:
                    with contextlib.suppress(Exception):
                        created.append((await task)[PROFILE_DOC_ID_KEY])
                    raise
                except ScmClientError as e:
                    raise Refused(f"entry {i}: the server refused it: {e}", e.code) from None
        except BaseException:
            for doc_id in created:  # roll back, so that nothing is half-imported
                try:
                    await client.delete(doc_id)
                except Exception:
                    click.echo(f"could not roll back {doc_id}", err=True)
            raise
        return created

    created = _run(server, service_id, identity, credentials, create_all)
    text = "\n".join([f"imported {len(created)} user profiles into {service_id} via {server}", *created])
    emit(as_json, quiet, text, created)


@profile.command("list")
@click.option(
    "--val-tgt-ue",
    "val_tgt_ue",
    required=True,
    help="VAL user ID or VAL UE ID (valUserId:/valUeId: to say which).",
)
@server_opt
@service_opt
@identity_opt
@credentials_opt
@output_options
def list_(val_tgt_ue, server, service_id, identity, credentials, as_json, quiet) -> None:
    """List the user profiles of one VAL user or VAL UE."""
    docs = _run(server, service_id, identity, credentials, lambda c: c.list_for(val_tgt_ue))
    if as_json:
        click.echo(json.dumps(docs, indent=1))
        return
    if quiet:
        return
    table = Table(title=f"{len(docs)} user profiles of {val_tgt_ue} ({service_id})")
    for col in ("profileDocId", "profileName", "target", "status", "default", "configTypes"):
        table.add_column(col)
    for d in docs:
        info = d.get("profileInformation", {})
        tgt = d.get("valTgtUe", {})
        target = ", ".join(f"{k}={v}" for k, v in tgt.items() if k in ("valUserId", "valUeId"))
        types = ", ".join(str(c.get("configType", "?")) for c in info.get("profileConfigs", ()))
        table.add_row(
            d.get(PROFILE_DOC_ID_KEY, ""),
            str(info.get("profileName", "")),
            target,
            "enabled" if info.get("status") else "disabled",
            "yes" if info.get("isDefault") else "",
            types,
        )
    Console().print(table)


@profile.command("get")
@click.argument("doc_id")
@server_opt
@service_opt
@identity_opt
@credentials_opt
@output_options
def get(doc_id, server, service_id, identity, credentials, as_json, quiet) -> None:
    """Print one user profile as JSON (-q: nothing; the exit status says whether it exists)."""
    doc = _run(server, service_id, identity, credentials, lambda c: c.get_doc(doc_id))
    if as_json or not quiet:
        click.echo(json.dumps(doc, indent=1))


@profile.command("delete")
@click.argument("doc_id")
@server_opt
@service_opt
@identity_opt
@credentials_opt
@output_options
def delete(doc_id, server, service_id, identity, credentials, as_json, quiet) -> None:
    """Delete one user profile."""
    _run(server, service_id, identity, credentials, lambda c: c.delete(doc_id))
    emit(as_json, quiet, f"deleted {doc_id}", {"deleted": doc_id})
