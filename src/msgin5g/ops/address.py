"""``--http HOST:PORT`` addresses (SPEC D15). Kept apart from :mod:`.http`: parsing the option must
not import prometheus_client, whose multiprocess mode (``--workers``) is chosen at its import."""

from __future__ import annotations

from ipaddress import ip_address

from .. import api

DEFAULT_HTTP_HOST = "127.0.0.1"


def parse_http_address(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` or ``PORT`` → (host, port); loopback when no host is given."""
    if text.isdigit():
        text = f":{text}"
    return api.parse_hostport(text, 0, DEFAULT_HTTP_HOST)


def check_console_address(address: tuple[str, int] | None, *, console: bool, insecure: bool) -> None:
    """ValueError for an open console off loopback (insecure mode has no administrator to ask for)."""
    if address is None or not console:
        return
    if insecure and not is_loopback(address[0]):
        raise ValueError(
            f"--http {address[0]}: in --insecure mode the console is served on loopback "
            "only; use a loopback address, --no-console, or a secured server (without --insecure)"
        )


def is_loopback(host: str) -> bool:
    try:
        return ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


async def serve_actor_ops(address: tuple[str, int] | None, registry: str, *sources, actor: str):
    """Start a relay's, gateway's or cm-client's operations side (``--http``; SPEC D15): the
    registry ``msgin5g.ops.actors.<registry>(*sources)`` served by :func:`.http.serve_ops`. Without
    ``--http`` nothing is imported: prometheus_client and aiohttp cost start-up time nobody uses."""
    if address is None:
        return None
    from . import actors
    from .http import serve_ops

    return await serve_ops(address, getattr(actors, registry)(*sources), actor=actor)
