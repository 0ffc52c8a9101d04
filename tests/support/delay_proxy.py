"""A TCP proxy that adds a fixed one-way delay in each direction, keeping byte order: the latency
of a real link for loopback tests, since this kernel has no sch_netem (bandwidth comes from tbf
in a network namespace). Runs as its own process so its timing does not share a GIL:

    python tests/support/delay_proxy.py LISTEN_HOST:PORT TARGET_HOST:PORT ONE_WAY_MS
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_s: float) -> None:
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def deliver() -> None:
        while True:
            due, data = await queue.get()
            if not data:
                break
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        writer.close()

    task = asyncio.create_task(deliver())
    try:
        while True:
            data = await reader.read(1 << 16)
            queue.put_nowait((time.monotonic() + delay_s, data))
            if not data:
                break
    except (ConnectionError, OSError):
        queue.put_nowait((0.0, b""))
    try:
        await task
    except (ConnectionError, OSError):
        pass


def _nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def serve(listen: tuple[str, int], target: tuple[str, int], delay_s: float) -> None:
    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection(*target)
        except OSError:
            client_w.close()
            return
        _nodelay(client_w)
        _nodelay(up_w)
        await asyncio.gather(_pump(client_r, up_w, delay_s), _pump(up_r, client_w, delay_s))

    server = await asyncio.start_server(handle, *listen)
    async with server:
        await server.serve_forever()


def main() -> None:
    lh, lp = sys.argv[1].rsplit(":", 1)
    th, tp = sys.argv[2].rsplit(":", 1)
    asyncio.run(serve((lh, int(lp)), (th, int(tp)), float(sys.argv[3]) / 1000))


if __name__ == "__main__":
    main()
