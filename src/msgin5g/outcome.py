"""What a configuration request ends in, as the UE sees it (TS 24.538 6.2.1.2; SPEC §3.1, §3.3).

Pure values shared by the direct SCM-C (:mod:`.client`), the constrained UE via a relay or a
gateway, and the CLI. The exit codes let scripts tell the outcomes apart.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Any

from .model import on_network_config
from .problem import Problem


class Outcome(enum.Enum):
    CONFIGURED = "configured"  # 2.05 with an applicable document: apply it
    FORBIDDEN = "forbidden"  # 4.03: not authorized, do not retry blindly
    NOT_FOUND = "not-found"  # 4.04: no configuration exists for this UE
    ERROR = "error"  # anything else


EXIT_CODES = {Outcome.CONFIGURED: 0, Outcome.FORBIDDEN: 3, Outcome.NOT_FOUND: 4, Outcome.ERROR: 1}


@dataclass(frozen=True)
class Msgin5gConfig:
    """The MSGin5G content of a configuration (SPEC D2): what the UE stores and uses."""

    msgin5g_server_address: str
    ue_service_id: str
    segment_size: int = 2048

    @classmethod
    def from_config_data(cls, config_data: str | dict) -> Msgin5gConfig:
        data = json.loads(config_data) if isinstance(config_data, str) else config_data
        return cls(
            msgin5g_server_address=data["msgin5gServerAddress"],
            ue_service_id=data["ueServiceId"],
            segment_size=int(data.get("segmentSize", 2048)),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "msgin5gServerAddress": self.msgin5g_server_address,
            "ueServiceId": self.ue_service_id,
            "segmentSize": self.segment_size,
        }


@dataclass
class ConfigResult:
    """Result of one UE configuration procedure."""

    outcome: Outcome
    code: int | None = None  # CoAP response code (e.g. 0x45), None when no response came
    doc: dict | None = None  # the applied UeConfigDoc (first = most specific, SPEC D4)
    config: Msgin5gConfig | None = None
    problem: Problem | None = None
    preconfigured: bool = False  # True when the fall-back pre-configuration was applied
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.outcome]


def result_from_docs(code: int, docs: list[dict]) -> ConfigResult:
    """Interpret a 2.05 answer: apply the first (most specific) document's ON_NETWORK content."""
    if not docs:
        return ConfigResult(Outcome.NOT_FOUND, code, detail="2.05 with an empty array: no configuration")
    doc = docs[0]
    cfg = on_network_config(doc)
    if cfg is None:
        return ConfigResult(Outcome.ERROR, code, doc=doc, detail="document has no ON_NETWORK configuration")
    try:
        config = Msgin5gConfig.from_config_data(cfg["configData"])
    except (ValueError, KeyError, TypeError) as e:
        return ConfigResult(Outcome.ERROR, code, doc=doc, detail=f"unusable configData: {e}")
    return ConfigResult(Outcome.CONFIGURED, code, doc=doc, config=config)


def result_from_problem(code: int, problem: Problem | None) -> ConfigResult:
    outcome = {0x83: Outcome.FORBIDDEN, 0x84: Outcome.NOT_FOUND}.get(code, Outcome.ERROR)
    return ConfigResult(outcome, code, problem=problem, detail=str(problem) if problem else "")
