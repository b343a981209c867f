"""Provisioning files → validated UeConfigDocs (``msgin5g config import``).

Formats, chosen by file extension:

- ``.json`` / ``.yaml`` / ``.yml``: a list of UeConfigDoc; a ``configData`` may be given as an
  object (serialised to the JSON string the data model wants) or as a string;
- ``.csv``: one UE per row with the header ``ue-uri,ueServiceId,msgin5gServerAddress,segmentSize``
  (segmentSize may be empty) → one per-UE document each.

Everything is validated before anything is written (SPEC D2): the first error is reported with
the file, the entry (or CSV line) and the field, and nothing is imported.
"""

from __future__ import annotations

import csv
import ctypes
import json
import multiprocessing
import os
import queue as stdlib_queue
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..codec import CodecError, check_value
from ..configdata import check_config_object, validate_doc_config_data
from ..model import CONFIG_TYPE_ON_NETWORK, ModelError, check_uri, validate_doc

CSV_COLUMNS = ("ue-uri", "ueServiceId", "msgin5gServerAddress", "segmentSize")


class ProvisioningError(ValueError):
    def __init__(self, file: str, where: str, field: str, detail: str):
        self.file, self.where, self.field, self.detail = file, where, field, detail
        loc = f"{file}, {where}" + (f", field {field}" if field else "")
        super().__init__(f"{loc}: {detail}")


@dataclass(frozen=True)
class Provisioned:
    docs: list[dict]
    source: str


def _normalise(doc: object) -> object:
    """configData given as an object becomes the JSON string the data model carries."""
    if isinstance(doc, dict):
        for cfg in doc.get("ueConfigs", ()) or ():
            if isinstance(cfg, dict) and isinstance(cfg.get("configData"), dict | list):
                cfg["configData"] = json.dumps(cfg["configData"], separators=(",", ":"))
    return doc


def _check(doc: object, file: str, where: str) -> dict:
    """The same checks as a POST (data model, admitted values, configData schema)."""
    try:
        validate_doc(doc)
        check_value(doc)  # e.g. YAML's .nan or !!binary, JSON's NaN: not storable (docs/hardening.md)
        validate_doc_config_data(doc)  # type: ignore[arg-type]
    except ModelError as e:
        raise ProvisioningError(file, where, e.field, e.detail) from None
    except CodecError as e:
        raise ProvisioningError(file, where, "", str(e)) from None
    return doc  # type: ignore[return-value]


def csv_doc(
    ue_uri: str, ue_service_id: str, server_address: str, segment_size: str | None, domain: str
) -> dict:
    """The per-UE document of one CSV row, checked field by field: the row fixes the document's
    shape, so only the UE URI and the configData object need checking (no JSON round trip)."""
    data: dict = {"msgin5gServerAddress": server_address, "ueServiceId": ue_service_id}
    if segment_size:
        data["segmentSize"] = int(segment_size) if segment_size.isdigit() else segment_size
    check_uri(ue_uri, "valUeIds/uris/0")
    check_config_object(data, "ueConfigs/0/configData")
    return {
        "valServiceDomain": domain,
        "valUeIds": {"uris": [ue_uri]},
        "ueConfigs": [
            {"configType": CONFIG_TYPE_ON_NETWORK, "configData": json.dumps(data, separators=(",", ":"))}
        ],
    }


def _iter_csv(path: Path, domain: str) -> Iterator[dict]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header[: len(CSV_COLUMNS)]) != CSV_COLUMNS:
            raise ProvisioningError(str(path), "line 1", "", f"header must be {','.join(CSV_COLUMNS)}")
        for row in reader:
            line = reader.line_num
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) < 3 or len(row) > len(CSV_COLUMNS):
                raise ProvisioningError(
                    str(path), f"line {line}", "", f"expected 3 or 4 columns, got {len(row)}"
                )
            ue_uri, sid, addr = (c.strip() for c in row[:3])
            seg = row[3].strip() if len(row) > 3 else ""
            try:
                yield csv_doc(ue_uri, sid, addr, seg, domain)
            except ModelError as e:
                raise ProvisioningError(str(path), f"line {line}", e.field, e.detail) from None


def iter_docs(path: str | Path, domain: str = "msgin5g.example") -> Iterator[dict]:
    """The validated documents of a provisioning file in order — lazily for CSV, so that a large
    file streams into one store transaction; the first problem raises ProvisioningError."""
    path = Path(path)
    name = str(path)
    try:
        suffix = path.suffix.lower()
        if suffix == ".csv":
            yield from _iter_csv(path, domain)
            return
        text = path.read_text(encoding="utf-8")
        if suffix == ".json":
            try:
                data = json.loads(text)
            except ValueError as e:
                raise ProvisioningError(name, "parse", "", f"not JSON: {e}") from None
        elif suffix in (".yaml", ".yml"):
            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as e:
                raise ProvisioningError(name, "parse", "", f"not YAML: {e}") from None
        else:
            raise ProvisioningError(name, "name", "", "unknown format; use .json, .yaml, .yml or .csv")
    except OSError as e:
        raise ProvisioningError(name, "open", "", e.strerror or str(e)) from None
    except UnicodeDecodeError as e:
        raise ProvisioningError(name, "read", "", f"not UTF-8 text: {e}") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise ProvisioningError(name, "top level", "", "expected a list of UeConfigDoc")
    for i, doc in enumerate(data):
        yield _check(_normalise(doc), name, f"entry {i}")


def load(path: str | Path, domain: str = "msgin5g.example") -> Provisioned:
    """Read and validate a whole provisioning file (all or nothing)."""
    return Provisioned(list(iter_docs(path, domain)), str(path))


_ERROR = "error"


PR_SET_PDEATHSIG = 1  # linux/prctl.h
PARENT_CHECK_SECONDS = 1.0


def die_with_parent(parent_pid: int) -> None:
    """Make this (child) process end when ``parent_pid`` does — also on kill -9, which gives the
    parent no chance to clean up: Linux delivers SIGKILL to the child (prctl PR_SET_PDEATHSIG);
    elsewhere :func:`_put` notices the re-parenting. A parent already gone ends the child at once."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the periodic check in _put remains
        pass
    if os.getppid() != parent_pid:
        os._exit(1)


def _put(queue, item, parent_pid: int) -> None:
    """queue.put that gives up (ending the process) once the parent is gone, instead of blocking
    forever on a full queue nobody reads."""
    while True:
        try:
            queue.put(item, timeout=PARENT_CHECK_SECONDS)
            return
        except stdlib_queue.Full:
            if os.getppid() != parent_pid:
                os._exit(1)


def _parse_worker(path: str, domain: str, chunk: int, queue, parent_pid: int | None = None) -> None:
    """Child process of :func:`iter_docs_in_worker`: parse, validate and send chunks of documents."""
    parent_pid = os.getppid() if parent_pid is None else parent_pid
    die_with_parent(parent_pid)
    try:
        batch: list[dict] = []
        for doc in iter_docs(path, domain):
            batch.append(doc)
            if len(batch) >= chunk:
                _put(queue, batch, parent_pid)
                batch = []
        if batch:
            _put(queue, batch, parent_pid)
        _put(queue, None, parent_pid)
    except ProvisioningError as e:
        _put(queue, (_ERROR, e.file, e.where, e.field, e.detail), parent_pid)
    except Exception as e:  # report anything else too, rather than leave the parent waiting
        _put(queue, (_ERROR, path, "read", "", f"{type(e).__name__}: {e}"), parent_pid)


def iter_docs_in_worker(
    path: str | Path, domain: str = "msgin5g.example", chunk: int = 5_000
) -> Iterator[dict]:
    """:func:`iter_docs` run in a child process: parsing and JSON Schema validation use the second
    core while this process writes to the store (offline bulk provisioning). A problem found by
    the child is raised here as the same ProvisioningError, so the caller's transaction rolls back."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue(maxsize=8)
    worker = ctx.Process(
        target=_parse_worker, args=(str(path), domain, chunk, queue, os.getpid()), daemon=True
    )
    worker.start()
    try:
        while True:
            try:
                item = queue.get(timeout=PARENT_CHECK_SECONDS)
            except stdlib_queue.Empty:
                if worker.is_alive():
                    continue
                raise ProvisioningError(
                    str(path), "read", "", f"the parsing process ended unexpectedly ({worker.exitcode})"
                ) from None
            if item is None:
                return
            if isinstance(item, tuple) and item and item[0] == _ERROR:
                raise ProvisioningError(*item[1:])
            yield from item
    finally:
        if worker.is_alive():
            worker.kill()
        worker.join()
