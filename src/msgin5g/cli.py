"""The ``msgin5g`` console script: one subcommand per actor.

Each actor's commands live beside its code (``msgin5g.<actor>.cli``); this module only wires
them together, importing each lazily so that ``msgin5g relay --help`` does not load the server.
"""

from __future__ import annotations

import importlib

import click

from . import __version__

#: subcommand → "module:attribute" of its click command/group
SUBCOMMANDS = {
    "server": "msgin5g.server.cli:server",
    "config": "msgin5g.provisioning.cli:config",
    "profile": "msgin5g.provisioning.profile_cli:profile",
    "ue": "msgin5g.ue.cli:ue",
    "relay": "msgin5g.relay.cli:relay",
    "gateway": "msgin5g.gateway.cli:gateway",
    "cm-client": "msgin5g.gateway.cli:cm_client",
    "demo": "msgin5g.demo.cli:demo",
    "keys": "msgin5g.security.cli:keys",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = SUBCOMMANDS.get(cmd_name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="msgin5g")
def main() -> None:
    """MSGin5G UE configuration over CoAP (TS 24.538 Rel-18 over SEAL TS 24.546 Annex C)."""


if __name__ == "__main__":  # pragma: no cover
    main()
