"""``msgin5g keys``: provision OSCORE credentials (TS 24.546 6.2.1.2; TS 33.501 Annex Y; SPEC D12).

The keys are rows of a database (:mod:`msgin5g.store.keys`), never a file per key: with ``--db
URL`` the SCM-S's store; with ``--gateway-state FILE`` (or ``--db`` naming an existing gateway
state file) a Gateway UE's state database, whose keys secure its constrained UEs' MSGin5G-6 leg
(``msgin5g gateway --oscore``). ``add`` makes one key and writes its key file, ``import`` makes one
per identity of a CSV file in one transaction and writes one JSON Lines bundle, ``list`` shows them,
``revoke`` ends a key — every running server refuses it (4.01) from its next request on.
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
from .storekeys import add_keys, utc_now


def output_options(f):
    f = click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")(f)
    return click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")(f)


def emit(as_json: bool, quiet: bool, text: str, value) -> None:
    if as_json:
        click.echo(json.dumps(value, indent=1))
    elif not quiet:
        click.echo(text)


def db_opt(f):
    f = click.option(
        "--gateway-state",
        "gateway_state",
        default=None,
        type=click.Path(dir_okay=False),
        help="A Gateway UE's state database (its --state; created if missing): the keys of its "
        "constrained UEs, instead of --db.",
    )(f)
    return click.option(
        "--db",
        "db_url",
        default=None,
        help="The SCM-S's store (sqlite:///path.db or postgresql://...) that holds its keys.",
    )(f)


def _open(db_url, gateway_state):
    """The key store named by --db or --gateway-state (exactly one of them)."""
    from ..clicommon import EXIT_PRECONDITION, TARGET, explain
    from ..store import open_store, sqlite_path
    from ..store.keysqlite import SqliteKeyStore, is_gateway_state

    if (db_url is None) == (gateway_state is None):
        raise click.UsageError("give --db URL (the SCM-S's keys) or --gateway-state FILE (a gateway's)")
    where = db_url or gateway_state
    TARGET["db"] = where
    try:
        if gateway_state is not None:
            return SqliteKeyStore(gateway_state), where
        path = sqlite_path(db_url)
        if path is not None and is_gateway_state(path):  # a gateway's: its keys, no SCM-S tables
            return SqliteKeyStore(path), where
        return open_store(db_url), where
    except Exception as e:  # a URL that names no reachable store: one line, no traceback, status 2
        known = explain(e)
        err = click.ClickException(known[0] if known else f"cannot open the key store {where}: {e}")
        err.exit_code = EXIT_PRECONDITION
        raise err from None


@click.group()
def keys() -> None:
    """OSCORE credentials: import, add, list and revoke keys (--db or --gateway-state)."""


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
def add(identity, role, db_url, gateway_state, out, algorithm, psk, as_json, quiet) -> None:
    """Create a key for IDENTITY: server side in --db (or --gateway-state), client side in --out."""
    ident = _identity(identity, role)
    if psk and db_url is None:
        raise click.UsageError("--psk is for the SCM-S's keys: give --db URL")
    store, where = _open(db_url, gateway_state)
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
        f"{ident}: key {kid} added to {where}\n{'coaps PSK file' if psk else 'credentials'}: {out}",
        {"identity": str(ident), "kid": kid, "store": where, "credentials": str(out), "psk": psk},
    )


@keys.command("list")
@db_opt
@output_options
@click.option("--all", "show_all", is_flag=True, help="Include revoked keys.")
def list_(db_url, gateway_state, as_json, quiet, show_all) -> None:
    """List the keys (of --db or --gateway-state)."""
    store, where = _open(db_url, gateway_state)
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
    if as_json:
        click.echo(json.dumps([{**e.to_json(), "role": e.identity.role.value} for e in entries], indent=1))
        return
    if quiet:
        return
    table = Table(title=f"{len(entries)} keys in {where}")
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
@output_options
def revoke(identity, role, kid, db_url, gateway_state, as_json, quiet) -> None:
    """Revoke IDENTITY's active key (or --kid): running servers refuse it from their next request on."""
    if (identity is None) == (kid is None):
        raise click.UsageError("give IDENTITY or --kid")
    try:
        number = int.from_bytes(parse_kid(kid), "big") if kid is not None else None
    except RegistryError as e:
        raise click.BadParameter(str(e), param_hint="--kid") from None
    who = str(_identity(identity, role)) if identity is not None else None
    store, where = _open(db_url, gateway_state)
    try:
        done = store.revoke_keys(utc_now(), identity=who, number=number)
    finally:
        store.close()
    if not done:
        raise click.ClickException(f"{who or 'key ' + kid}: no active key to revoke in {where}")
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


@keys.command("import")
@click.argument("identities_csv", metavar="IDENTITIES.csv", type=click.Path(exists=True, dir_okay=False))
@db_opt
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
def import_(identities_csv, db_url, gateway_state, out, algorithm, as_json, quiet) -> None:
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
    store, where = _open(db_url, gateway_state)
    try:
        numbers = add_keys(store, identities, out, algorithm)
    except RegistryError as e:
        raise click.ClickException(str(e)) from None
    finally:
        store.close()
    emit(
        as_json,
        quiet,
        f"{len(numbers)} keys added to {where} in {time.monotonic() - began:.1f} s; bundle: {out}",
        {"added": len(numbers), "store": where, "bundle": str(out)},
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
    store, _ = _open(db_url, None)
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
