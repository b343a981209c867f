"""The ``msgin5g`` console script: one subcommand per actor.

Each actor's commands live beside its code (``msgin5g.<actor>.cli``); this module only wires
them together, importing each lazily so that ``msgin5g relay --help`` does not load the server.
"""

from __future__ import annotations

import importlib
import sys

import click

from . import __version__
from .clicommon import EXIT_FAILED, EXIT_INTERRUPTED, explain

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
    """Subcommands loaded on demand; every failure ends as one line and an exit status (SPEC D15):
    0 done, 1 failed, 2 usage error or precondition not met, 3 refused (4.01/4.03), 4 not found
    (4.04), 130 interrupted (Ctrl-C). Never a traceback for what an operator can fix."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.Exit as e:
            sys.exit(e.exit_code)
        except click.ClickException as e:
            e.show()
            sys.exit(e.exit_code)
        except (KeyboardInterrupt, click.Abort):
            click.echo("interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except BrokenPipeError:
            sys.exit(EXIT_FAILED)
        except Exception as e:
            known = explain(e)
            if known is None:
                raise
            click.echo(f"Error: {known[0]}", err=True)
            sys.exit(known[1])
        sys.exit(rv if isinstance(rv, int) else 0)

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
