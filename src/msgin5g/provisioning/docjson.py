"""``configData`` as an object on the command line and in the console (SPEC D2, D15).

The data model carries an ON_NETWORK ``configData`` as a JSON *string* (TS 24.546 C.3.2.2.3); people
read and write it as an object. :func:`for_people` turns the strings that hold JSON objects into
objects for output; :func:`for_wire` turns objects back into the compact string the SCM-S stores.
"""

from __future__ import annotations

import copy
import json


def for_wire(doc: dict) -> dict:
    """A copy of ``doc`` whose object ``configData`` values are JSON strings."""
    out = copy.deepcopy(doc)
    for cfg in out.get("ueConfigs", ()) or ():
        if isinstance(cfg, dict) and isinstance(cfg.get("configData"), dict | list):
            cfg["configData"] = json.dumps(cfg["configData"], separators=(",", ":"))
    return out


def for_people(doc: dict) -> dict:
    """A copy of ``doc`` whose ``configData`` strings holding a JSON object are objects."""
    out = copy.deepcopy(doc)
    for cfg in out.get("ueConfigs", ()) or ():
        data = cfg.get("configData") if isinstance(cfg, dict) else None
        if isinstance(data, str) and data.lstrip().startswith("{"):
            try:
                cfg["configData"] = json.loads(data)
            except ValueError:
                pass
    return out


def same_content(a: dict, b: dict) -> bool:
    """Equal documents apart from ``ueConfigDocId`` and the spelling of their configData JSON."""
    strip = lambda d: {k: v for k, v in for_people(d).items() if k != "ueConfigDocId"}  # noqa: E731
    return strip(a) == strip(b)
