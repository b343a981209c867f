"""``msgin5g keys``: provision OSCORE credentials (TS 24.546 6.2.1.2; TS 33.501 Annex Y; SPEC D12).

With ``--db URL`` the keys are the SCM-S's, rows in its store (:mod:`msgin5g.store.keys`):
``add`` makes one key and writes its key file, ``import`` makes one per identity of a CSV file in
one transaction and writes one JSON Lines bundle, ``list`` shows them, ``revoke`` ends a key — every
running server refuses it (4.01) from its next request on. With ``--registry DIR`` they are a
Gateway UE's registry directory for its constrained UEs (``msgin5g gateway --security DIR``).
Formats: docs/security.md.
"""

from __future__ import annotations

import csv
import json
import time

import click
from rich.console import Console
from rich.table import Table

from ..authz import parse_identity
from ..model import ModelError
from .keys import ALGORITHMS, DEFAULT_ALGORITHM, KeyEntry, RegistryError, identity_arg, kid_for, parse_kid
from .registry import Registry
from .storekeys import add_keys, utc_now


def output_options(f):
    f = click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")(f)
    return click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")(f)


def emit(as_json: bool, quiet: bool, text: str, value) -> None:
    if as_json:
        click.echo(json.dumps(value, indent=1))
    elif not quiet:
        click.echo(text)


registry_opt = click.option(
    "--registry",
    "registry_dir",
    default=None,
    type=click.Path(file_okay=False),
    help="A Gateway UE's key registry directory (created by the first add) instead of --db.",
)
db_opt = click.option(
    "--db",
    "db_url",
    default=None,
    help="The SCM-S's store (sqlite:///path.db or postgresql://...) that holds its keys.",
)


def _where(db_url, registry_dir):
    if (db_url is None) == (registry_dir is None):
        raise click.UsageError("give --db URL (the SCM-S's keys) or --registry DIR (a gateway's)")


def _open(db_url):
    from ..clicommon import EXIT_PRECONDITION, TARGET, explain
    from ..store import open_store

    TARGET["db"] = db_url
    try:
        return open_store(db_url)
    except Exception as e:  # a URL that names no reachable store: one line, no traceback, status 2
        known = explain(e)
        err = click.ClickException(known[0] if known else f"cannot open the store {db_url}: {e}")
        err.exit_code = EXIT_PRECONDITION
        raise err from None


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
@db_opt
@registry_opt
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False),
    help="Client key file to write (never overwritten).",
)
@click.option(
    "--algorithm",
    type=click.Choice(list(ALGORITHMS)),
    default=DEFAULT_ALGORITHM,
    show_default=True,
    help="AEAD; A128GCM suits unconstrained peers (a gateway's bulk GETs over TCP: no 64 KiB limit).",
)
@click.option(
    "--psk",
    is_flag=True,
    help="Write the coaps (DTLS) PSK file to --out instead of the OSCORE key file: "
    '{"psk_identity": IDENTITY, "psk": TEXT} (--db only).',
)
@output_options
def add(identity, role, db_url, registry_dir, out, algorithm, psk, as_json, quiet) -> None:
    """Create a key for IDENTITY: server side in --db (or --registry), client side in --out."""
    _where(db_url, registry_dir)
    ident = _identity(identity, role)
    if psk and db_url is None:
        raise click.UsageError("--psk is for the SCM-S's keys: give --db URL")
    if db_url is not None:
        store = _open(db_url)
        try:
            (number,) = add_keys(store, [ident], out, algorithm, psk=psk)
        except RegistryError as e:
            raise click.ClickException(str(e)) from None
        finally:
            store.close()
        kid = kid_for(number, algorithm).hex()
        emit(
            as_json,
            quiet,
            f"{ident}: key {kid} added to {db_url}\n{'coaps PSK file' if psk else 'credentials'}: {out}",
            {"identity": str(ident), "kid": kid, "store": db_url, "credentials": str(out), "psk": psk},
        )
        return
    try:
        entry, creds = Registry(registry_dir).add(ident, out, algorithm)
    except RegistryError as e:
        raise click.ClickException(str(e)) from None
    emit(
        as_json,
        quiet,
        f"{ident}: key {entry.kid.hex()} added to {registry_dir}\n"
        f"credentials: {out} (OSCORE context {creds.context_dir})",
        {**entry.to_json(), "registry": str(registry_dir), "credentials": str(out)},
    )


@keys.command("list")
@db_opt
@registry_opt
@output_options
@click.option("--all", "show_all", is_flag=True, help="Include revoked keys.")
def list_(db_url, registry_dir, as_json, quiet, show_all) -> None:
    """List the keys (of --db or --registry)."""
    _where(db_url, registry_dir)
    if db_url is not None:
        store = _open(db_url)
        try:
            rows = list(store.iter_keys(include_revoked=show_all))
        finally:
            store.close()
        entries = [
            KeyEntry(
                kid_for(r.number, r.algorithm), parse_identity(r.identity), r.created, r.revoked, r.algorithm
            )
            for r in rows
        ]
        registry_dir = db_url
    else:
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
@db_opt
@registry_opt
@output_options
def revoke(identity, role, kid, db_url, registry_dir, as_json, quiet) -> None:
    """Revoke IDENTITY's active key (or --kid): running servers refuse it from their next request on."""
    if (identity is None) == (kid is None):
        raise click.UsageError("give IDENTITY or --kid")
    _where(db_url, registry_dir)
    if db_url is not None:
        try:
            number = int.from_bytes(parse_kid(kid), "big") if kid is not None else None
        except RegistryError as e:
            raise click.BadParameter(str(e), param_hint="--kid") from None
        who = str(_identity(identity, role)) if identity is not None else None
        store = _open(db_url)
        try:
            done = store.revoke_keys(utc_now(), identity=who, number=number)
        finally:
            store.close()
        if not done:
            raise click.ClickException(f"{who or 'key ' + kid}: no active key to revoke in {db_url}")
        gone = [
            (str(ident), None if n is None else int(n).to_bytes((int(n).bit_length() + 7) // 8, "big").hex())
            for n, ident in done
        ]
        emit(
            as_json,
            quiet,
            "\n".join(
                f"{ident}: TLS client certificates revoked" if k is None else f"{ident}: key {k} revoked"
                for ident, k in gone
            ),
            [{"identity": ident, "kid": k} for ident, k in gone],
        )
        return
    try:
        if kid is not None:
            revoked = Registry(registry_dir).revoke(kid=parse_kid(kid))
        else:
            revoked = Registry(registry_dir).revoke(identity=_identity(identity, role))
    except RegistryError as e:
        raise click.ClickException(str(e)) from None
    emit(
        as_json,
        quiet,
        "\n".join(f"{e.identity}: key {e.kid.hex()} revoked" for e in revoked),
        [e.to_json() for e in revoked],
    )


@keys.command("import")
@click.argument("identities_csv", metavar="IDENTITIES.csv", type=click.Path(exists=True, dir_okay=False))
@click.option("--db", "db_url", required=True, help="The SCM-S's store that holds its keys.")
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False),
    help="JSON Lines bundle of the client keys to write (one line per identity; never overwritten).",
)
@click.option(
    "--algorithm", type=click.Choice(list(ALGORITHMS)), default=DEFAULT_ALGORITHM, show_default=True
)
@output_options
def import_(identities_csv, db_url, out, algorithm, as_json, quiet) -> None:
    """Make one key per identity of a CSV file (header ``identity``; ``ue:<MSGin5G UE ID>``,
    ``gateway:<id>``, ``admin:<label>``), all in one transaction, and write their bundle."""
    began = time.monotonic()
    identities = []
    with open(identities_csv, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "identity" not in reader.fieldnames:
            raise click.ClickException(f"{identities_csv}: the first line must be the header 'identity'")
        for line, row in enumerate(reader, start=2):
            text = (row.get("identity") or "").strip()
            try:
                identities.append(identity_arg(text))
            except ModelError as e:
                raise click.ClickException(f"{identities_csv} line {line}: {e}") from None
    if not identities:
        raise click.ClickException(f"{identities_csv}: no identities")
    store = _open(db_url)
    try:
        numbers = add_keys(store, identities, out, algorithm)
    except RegistryError as e:
        raise click.ClickException(str(e)) from None
    finally:
        store.close()
    emit(
        as_json,
        quiet,
        f"{len(numbers)} keys added to {db_url} in {time.monotonic() - began:.1f} s; bundle: {out}",
        {"added": len(numbers), "store": db_url, "bundle": str(out)},
    )


@keys.command("cert")
@click.argument("identity")
@click.option("--role", type=click.Choice(["ue", "gateway", "admin"]), default=None)
@click.option("--db", "db_url", required=True, help="The SCM-S's store (its CA is made on first use).")
@click.option(
    "--out", required=True, type=click.Path(file_okay=False), help="Directory for cert.pem, key.pem, ca.pem."
)
@output_options
def cert(identity, role, db_url, out, as_json, quiet) -> None:
    """Issue a TLS client certificate for IDENTITY (coaps+tcp with mutual TLS): the identity in
    its subjectAltName URI, signed by the CA kept in the store."""
    from pathlib import Path

    from . import tls

    ident = _identity(identity, role)
    target = Path(out)
    for name in ("cert.pem", "key.pem", "ca.pem"):
        if (target / name).exists():
            raise click.ClickException(f"{target / name} exists; certificates are never overwritten")
    store = _open(db_url)
    try:
        ca_cert, ca_key = store.tls_ca(tls.new_ca)
        cert_pem, key_pem, serial = tls.issue(ca_cert, ca_key, identity=ident)
        store.add_cert(serial, str(ident), utc_now())
    finally:
        store.close()
    tls.write_client_files(target, cert_pem, key_pem, ca_cert)
    emit(
        as_json,
        quiet,
        f"{ident}: certificate {serial:x} in {target}/cert.pem (key.pem, ca.pem)",
        {"identity": str(ident), "serial": format(serial, "x"), "directory": str(target)},
    )
