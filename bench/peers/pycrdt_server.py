"""pycrdt-websocket's server (``WebsocketServer`` behind its ``ASGIServer``) under uvicorn.

    python bench/peers/pycrdt_server.py

Binds 127.0.0.1 on a free port, prints ``listening on PORT`` and serves until SIGTERM.
Rooms are kept when their last client leaves (``auto_clean_rooms=False``), like the other
servers' documents while clients are connected. Nothing is persisted. permessage-deflate off,
as for every server in bench/peers.py.
"""

from __future__ import annotations

import asyncio
import socket
import sys

import uvicorn
from pycrdt.websocket import ASGIServer, WebsocketServer


async def main() -> None:
    """Serve until uvicorn stops (SIGTERM / SIGINT)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    async with WebsocketServer(auto_clean_rooms=False) as websocket_server:
        app = ASGIServer(websocket_server)
        config = uvicorn.Config(
            app,
            log_level="warning",
            lifespan="off",
            ws="websockets-sansio",
            ws_per_message_deflate=False,
            ws_max_size=64 * 1024 * 1024,
        )
        server = uvicorn.Server(config)
        print(f"listening on {port}", flush=True)
        await server.serve(sockets=[sock])


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
