"""MSGin5G configuration data: validation and per-UE placeholder expansion (SPEC D2, D5).

The ``configData`` string of a document's ``ON_NETWORK`` UeConfig is a JSON document validated
against the shipped JSON Schema (``schemas/msgin5g-configdata.schema.json``). String values may
contain ``{ueUri}``, ``{tac}`` and ``{snr}``; the SCM-S expands them for the UE it answers so that
one document can serve a whole IMEI range while every UE gets its own stable UE Service ID
(TS 33.501 Y.2: the UE ID ↔ UE Service ID mapping stays derivable without per-UE writes).
"""

from __future__ import annotations

import json
from functools import cache, lru_cache
from importlib import resources
from typing import Any

import jsonschema

from .codec import CodecError, loads_json
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


#: Top-level keywords under which validating an object equals checking ``required`` and then each
#: property against its own sub-schema (``additionalProperties`` must be absent or true).
_DECOMPOSABLE = {
    "$schema",
    "$id",
    "title",
    "description",
    "type",
    "required",
    "properties",
    "additionalProperties",
}


@cache
def _property_validators() -> dict[str, jsonschema.protocols.Validator] | None:
    s = schema()
    if set(s) - _DECOMPOSABLE or s.get("additionalProperties", True) is not True or s.get("type") != "object":
        return None
    cls = jsonschema.validators.validator_for(s)
    return {name: cls(sub) for name, sub in s.get("properties", {}).items()}


@lru_cache(maxsize=65_536)
def _property_error(name: str, kind: type, value: Any) -> str | None:
    """First schema error of one property value (memoised: server addresses and segment sizes
    repeat across a fleet, so a million-row import validates each distinct value once)."""
    validators = _property_validators()
    assert validators is not None
    err = next(iter(validators[name].iter_errors(value)), None)
    return None if err is None else err.message


def _schema_error(data: Any) -> tuple[str, str] | None:
    """(path, message) of the first violation of the configData schema, or None.

    Same verdict as validating the whole document with jsonschema (which remains the authority,
    and is used directly whenever the schema is not of the decomposable shape)."""
    validators = _property_validators()
    if validators is None or not isinstance(data, dict):
        errors = sorted(_validator().iter_errors(data), key=lambda e: list(e.absolute_path))
        if not errors:
            return None
        err = errors[0]
        path = "/".join(str(p) for p in err.absolute_path)
        if err.validator == "required" and isinstance(data, dict):
            missing = [r for r in err.validator_value if r not in data]
            path = "/".join(filter(None, [path, missing[0] if missing else ""]))
        return path, err.message
    for name in schema().get("required", ()):
        if name not in data:
            return name, f"{name!r} is a required property"
    for name, validator in validators.items():
        if name not in data:
            continue
        value = data[name]
        if isinstance(value, str | int | float | bool) or value is None:
            msg = _property_error(name, type(value), value)
        else:
            err = next(iter(validator.iter_errors(value)), None)
            msg = None if err is None else err.message
        if msg is not None:
            return name, msg
    return None


def validate_config_data(config_data: Any, field: str = "configData") -> dict:
    """Parse and validate one MSGin5G configData; ModelError names the failing field (→ 4.00)."""
    if not isinstance(config_data, str):
        raise ModelError(field, "must be a text string holding a JSON document", "INVALID_CONFIG_DATA")
    try:
        data = loads_json(config_data)  # strict: no NaN, no lone surrogates, bounded nesting
    except CodecError as e:
        raise ModelError(field, f"not a JSON document: {e}", "INVALID_CONFIG_DATA") from None
    return check_config_object(data, field)


def check_config_object(data: Any, field: str = "configData") -> Any:
    """Validate an already parsed configData object against the schema (ModelError → 4.00)."""
    error = _schema_error(data)
    if error is not None:
        path, message = error
        raise ModelError(f"{field}/{path}" if path else field, message, "INVALID_CONFIG_DATA")
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
