"""MSGin5G configuration data: validation and per-UE placeholder expansion (SPEC D2, D5).

The ``configData`` string of a document's ``ON_NETWORK`` UeConfig is a JSON document validated
against the shipped JSON Schema (``schemas/msgin5g-configdata.schema.json``). String values may
contain ``{ueUri}``, ``{tac}`` and ``{snr}``; the SCM-S expands them for the UE it answers so that
one document can serve a whole IMEI range while every UE gets its own stable UE Service ID
(TS 33.501 Y.2: the UE ID ↔ UE Service ID mapping stays derivable without per-UE writes).
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

import jsonschema

from .model import CONFIG_TYPE_ON_NETWORK, ModelError, UeIdentity

PLACEHOLDERS = ("{ueUri}", "{tac}", "{snr}")


@cache
def schema() -> dict:
    return json.loads(
        resources.files("msgin5g").joinpath("schemas/msgin5g-configdata.schema.json").read_text()
    )


@cache
def _validator() -> jsonschema.protocols.Validator:
    cls = jsonschema.validators.validator_for(schema())
    cls.check_schema(schema())
    return cls(schema())


def validate_config_data(config_data: Any, field: str = "configData") -> dict:
    """Parse and validate one MSGin5G configData; ModelError names the failing field (→ 4.00)."""
    if not isinstance(config_data, str):
        raise ModelError(field, "must be a text string holding a JSON document", "INVALID_CONFIG_DATA")
    try:
        data = json.loads(config_data)
    except ValueError as e:
        raise ModelError(field, f"not a JSON document: {e}", "INVALID_CONFIG_DATA") from None
    errors = sorted(_validator().iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        path = "/".join(str(p) for p in err.absolute_path)
        if err.validator == "required":
            missing = [r for r in err.validator_value if isinstance(data, dict) and r not in data]
            path = "/".join(filter(None, [path, missing[0] if missing else ""]))
        raise ModelError(f"{field}/{path}" if path else field, err.message, "INVALID_CONFIG_DATA")
    return data


def validate_doc_config_data(doc: dict) -> None:
    """Validate every ON_NETWORK configData of a (model-valid) document (SPEC D2)."""
    for i, cfg in enumerate(doc.get("ueConfigs", ())):
        if cfg.get("configType") == CONFIG_TYPE_ON_NETWORK:
            validate_config_data(cfg.get("configData"), f"ueConfigs/{i}/configData")


class ExpansionError(ValueError):
    """A placeholder needs a value the UE identity does not have (e.g. {snr} without an SNR)."""


def _values(ue: UeIdentity) -> dict[str, str | None]:
    return {"{ueUri}": ue.uri, "{tac}": ue.tac, "{snr}": ue.snr_text}


def _expand_value(value: Any, values: dict[str, str | None]) -> Any:
    if isinstance(value, str):
        for ph, v in values.items():
            if ph in value:
                if v is None:
                    raise ExpansionError(f"placeholder {ph} has no value for this UE")
                value = value.replace(ph, v)
        return value
    if isinstance(value, dict):
        return {k: _expand_value(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_value(v, values) for v in value]
    return value


def needs_expansion(doc: dict) -> bool:
    return any(ph in cfg.get("configData", "") for cfg in doc.get("ueConfigs", ()) for ph in PLACEHOLDERS)


def expand_doc(doc: dict, ue: UeIdentity) -> dict:
    """A copy of ``doc`` with every configData's placeholders expanded for ``ue`` (SPEC D5).

    JSON configData is expanded value by value (so a URI with quotes cannot break the JSON);
    other configData strings (e.g. COMMON, opaque to us) by plain substitution.
    """
    if not needs_expansion(doc):
        return doc
    values = _values(ue)
    out = dict(doc)
    configs = []
    for cfg in doc["ueConfigs"]:
        data = cfg.get("configData", "")
        if any(ph in data for ph in PLACEHOLDERS):
            cfg = dict(cfg)
            try:
                parsed = json.loads(data)
            except ValueError:
                cfg["configData"] = _expand_value(data, values)
            else:
                cfg["configData"] = json.dumps(_expand_value(parsed, values), separators=(",", ":"))
        configs.append(cfg)
    out["ueConfigs"] = configs
    return out
