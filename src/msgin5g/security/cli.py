"""``msgin5g keys``: provision OSCORE credentials (TS 24.546 6.2.1.2; TS 33.501 Annex Y; SPEC D12).

``add`` creates one key: the server's context in the registry directory (the one ``msgin5g server
--security DIR`` or ``msgin5g gateway --security DIR`` serves) and the client's credentials file
with its own context next to it. ``list`` shows the registry; ``revoke`` ends a key — a running
server refuses it (4.01) from its next request on. Formats: docs/security.md.
"""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table

from ..model import ModelError
from .keys import ALGORITHMS, DEFAULT_ALGORITHM, RegistryError, identity_arg, parse_kid
from .registry import Registry


def output_options(f):
    f = click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")(f)
    return click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")(f)


registry_opt = click.option(
    "--registry",
    "registry_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Key registry directory (created by the first add).",
)


@click.group()
def keys() -> None:
    """OSCORE credentials: add, list and revoke keys of a registry."""


def _identity(text: str, role: str | None):
    try:
        return identity_arg(text, role)
    except ModelError as e:
        raise click.BadParameter(str(e), param_hint="IDENTITY") from None


@keys.command("add")
@click.argument("identity")
@click.option(
    "--role",
    type=click.Choice(["ue", "gateway", "admin"]),
    default=None,
    help="Role of IDENTITY; without it IDENTITY is ue:<uri>, gateway:<id> or admin[:<label>].",
)
@registry_opt
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False),
    help="Client credentials file to write (its OSCORE context goes to FILE's name + .oscore/).",
)
@click.option(
    "--algorithm",
    type=click.Choice(list(ALGORITHMS)),
    default=DEFAULT_ALGORITHM,
    show_default=True,
    help="AEAD; A128GCM suits unconstrained peers (a gateway's bulk GETs over TCP: no 64 KiB limit).",
)
@output_options
def add(identity, role, registry_dir, out, algorithm, as_json, quiet) -> None:
    """Create a key for IDENTITY: server side in --registry, client side in --out."""
    ident = _identity(identity, role)
    try:
        entry, creds = Registry(registry_dir).add(ident, out, algorithm)
    except RegistryError as e:
        raise click.ClickException(str(e)) from None
    if as_json:
        click.echo(json.dumps({**entry.to_json(), "credentials": str(out)}, indent=1))
    elif not quiet:
        click.echo(f"{ident}: key {entry.kid.hex()} added to {registry_dir}")
        click.echo(f"credentials: {out} (OSCORE context {creds.context_dir})")


@keys.command("list")
@registry_opt
@output_options
@click.option("--all", "show_all", is_flag=True, help="Include revoked keys.")
def list_(registry_dir, as_json, quiet, show_all) -> None:
    """List the keys of a registry."""
    try:
        state = Registry(registry_dir).load()
    except RegistryError as e:
        raise click.ClickException(str(e)) from None
    entries = [e for e in state.entries.values() if show_all or e.active]
    if as_json:
        click.echo(json.dumps([{**e.to_json(), "role": e.identity.role.value} for e in entries], indent=1))
        return
    if quiet:
        return
    table = Table(title=f"{len(entries)} keys in {registry_dir}")
    for col in ("kid", "identity", "role", "algorithm", "created", "status"):
        table.add_column(col, overflow="fold")
    for e in entries:
        status = "active" if e.active else f"revoked {e.revoked}"
        table.add_row(e.kid.hex(), str(e.identity), e.identity.role.value, e.algorithm, e.created, status)
    Console().print(table)


@keys.command("revoke")
@click.argument("identity", required=False)
@click.option("--role", type=click.Choice(["ue", "gateway", "admin"]), default=None)
@click.option("--kid", default=None, help="Revoke this one key (hex) instead of an identity's keys.")
@registry_opt
@output_options
def revoke(identity, role, kid, registry_dir, as_json, quiet) -> None:
    """Revoke IDENTITY's active key (or --kid): a running server refuses it from now on."""
    if (identity is None) == (kid is None):
        raise click.UsageError("give IDENTITY or --kid")
    try:
        if kid is not None:
            revoked = Registry(registry_dir).revoke(kid=parse_kid(kid))
        else:
            revoked = Registry(registry_dir).revoke(identity=_identity(identity, role))
    except RegistryError as e:
        raise click.ClickException(str(e)) from None
    if as_json:
        click.echo(json.dumps([e.to_json() for e in revoked], indent=1))
    elif not quiet:
        for e in revoked:
            click.echo(f"{e.identity}: key {e.kid.hex()} revoked")
