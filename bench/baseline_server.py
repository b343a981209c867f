"""Baseline for the benchmarks: a bare aiocoap resource answering every GET with a fixed payload of
the size of a typical UE configuration answer.

    python baseline_server.py PORT PAYLOAD_BYTES [--speedups]

``--speedups`` installs the same aiocoap option-copy speed-up the SCM-S installs
(msgin5g.coap.aiocoap_tweaks.install_option_copy), so that the comparison can be made on
equal aiocoap footing."""

from __future__ import annotations

import asyncio
import sys

import aiocoap
import aiocoap.resource as resource


class Fixed(resource.Resource):
    def __init__(self, payload: bytes):
        super().__init__()
        self.payload = payload

    async def render_get(self, request):
        return aiocoap.Message(payload=self.payload, content_format=60)


class Everything(resource.Site):
    """Answers any path: the benchmark's request URIs are those of the real server."""

    def __init__(self, res):
        super().__init__()
        self.res = res

    def _find_child_and_pathstripped_message(self, request):
        return self.res, request.copy(uri_path=())


async def main(port: int, size: int) -> None:
    await aiocoap.Context.create_server_context(
        Everything(Fixed(b"\xa0" * size)), bind=("127.0.0.1", port), transports=["udp6"]
    )
    print(f"ready {port}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    if "--speedups" in sys.argv[3:]:
        from msgin5g.coap import aiocoap_tweaks

        aiocoap_tweaks.install_option_copy()
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
