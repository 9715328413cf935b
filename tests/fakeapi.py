"""A tiny HTTP server that misbehaves on purpose (bad bodies, trickled replies, storms), for what the emulator does
not do. It runs on its own thread and event loop; `handler(request, n)` gets each request and its number."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

Handler = Callable[[web.Request, int, dict], Awaitable[web.StreamResponse | None]]


def message(params: dict, text: str = "ok") -> dict:
    """A valid Messages reply for `params`."""
    return {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": params.get("model", "claude-haiku-4-5"),
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 2},
    }


def json_response(body: object, status: int = 200, **headers: str) -> web.Response:
    return web.Response(
        body=orjson.dumps(body),
        status=status,
        content_type="application/json",
        headers={"request-id": "req_fake", **headers},
    )


class FakeAPI:
    """`handler` answers each request; with `upstream`, every route is served and a handler that returns None
    passes the request on to the upstream server (the emulator) unchanged."""

    def __init__(self, handler: Handler, upstream: str | None = None) -> None:
        self.handler = handler
        self.upstream = upstream
        self.requests = 0
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        if not self.ready.wait(10):
            raise RuntimeError("fake API did not start")

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        if self.upstream:
            app.router.add_route("*", "/{tail:.*}", self._handle)
        else:
            app.router.add_post("/v1/messages", self._handle)
        self.runner = web.AppRunner(app, handle_signals=False)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base_url = f"http://127.0.0.1:{port}"
        self.ready.set()
        self.loop.run_forever()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        body = await request.read()
        params = orjson.loads(body) if body and request.content_type == "application/json" else {}
        response = await self.handler(request, self.requests, params)
        return response if response is not None else await self._forward(request, body)

    async def _forward(self, request: web.Request, body: bytes) -> web.Response:
        from aiohttp import ClientSession

        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        async with (
            ClientSession() as session,
            session.request(request.method, f"{self.upstream}{request.rel_url}", data=body, headers=headers) as up,
        ):
            data = await up.read()
            kept = {
                k: v
                for k, v in up.headers.items()
                if k.lower() not in ("content-length", "transfer-encoding", "content-encoding", "connection")
            }
            return web.Response(body=data, status=up.status, headers=kept)

    def close(self) -> None:
        async def stop() -> None:
            await self.runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def __enter__(self) -> FakeAPI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
