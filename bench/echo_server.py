"""The benchmark's WebSocket server: echoes every message, or, on a path with "/sink/", reads
and drops them. It picks v4.channel.k8s.io like an exec endpoint, compresses nothing, and prints
listens on 127.0.0.1.

Usage: python bench/echo_server.py PORT
"""

import asyncio
import sys

from websockets.asyncio.server import ServerConnection, serve


async def handle(ws: ServerConnection) -> None:
    if "/sink/" in ws.request.path:
        async for _ in ws:
            pass
    else:
        async for message in ws:
            await ws.send(message)


async def main(port: int) -> None:
    async with serve(
        handle,
        "127.0.0.1",
        port,
        subprotocols=["v4.channel.k8s.io"],
        compression=None,
        max_size=None,
        ping_interval=None,
    ):
        await asyncio.get_running_loop().create_future()


if __name__ == "__main__":
    try:
        asyncio.run(main(int(sys.argv[1])))
    except KeyboardInterrupt:
        pass
