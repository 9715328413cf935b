"""The emulator's HTTP server: Messages, count_tokens, Message Batches and /_emulator control endpoints."""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
import signal
import time
from collections import deque
from typing import Any

import orjson
from aiohttp import web

from .batches import BatchError, BatchStore, check_requests, result_chunks
from .cache import PromptCache
from .config import LIMIT_FIELDS, EmulatorConfig
from .faults import FaultInjector, RetryWatch
from .files import FILES_BETA, FileStore, StoredFile, has_beta
from .models import MODELS, find_model, model_info
from .ratelimit import RateLimiter
from .replies import build_message, count_input_tokens, request_key, stream_events
from .stats import Stats
from .validation import ApiError, check_count_tokens, check_messages, check_version

MAX_MESSAGES_BODY = 32 * 1024 * 1024
MAX_BATCH_BODY = 256 * 1024 * 1024
MAX_FILE_BODY = 500 * 1024 * 1024
LISTEN_BACKLOG = 4096
HTTP_ERROR_TYPES = {404: "not_found_error", 413: "request_too_large"}


class Emulator:
    """All mutable server state; reset() starts over with the current config."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.reset()

    def reset(self) -> None:
        self.clock_offset = 0.0
        self.stats = Stats(self.config.track_keys)
        self.limiter = RateLimiter(self.config)
        self.faults = FaultInjector(self.config)
        self.watch = RetryWatch()
        self.cache = PromptCache()
        self.batches = BatchStore(self.config, self.cache, self.stats)
        self.files = FileStore()
        self.batches.files = self.files
        self.requests: deque[Any] = deque(maxlen=self.config.request_log)

    def log_request(self, params: Any) -> None:
        if self.config.request_log:
            self.requests.append(params)

    def reconfigure(self, patch: dict[str, Any]) -> None:
        changed = self.config.update(**patch)
        if changed & LIMIT_FIELDS:
            self.limiter = RateLimiter(self.config)
        if "seed" in changed:
            self.faults = FaultInjector(self.config)
        self.stats.track_keys = self.config.track_keys
        if "request_log" in changed:
            self.requests = deque(self.requests, maxlen=self.config.request_log)

    def now(self) -> float:
        """The batches' clock: wall time, plus however far a test has moved it on (POST /_emulator/clock)."""
        return time.time() + self.clock_offset

    def stats_json(self) -> dict[str, Any]:
        return {**self.stats.to_json(self.watch.early, self.watch.samples), "files_uploaded": self.files.uploaded}

    def ratelimit_headers(self) -> dict[str, str]:
        return self.limiter.headers(time.monotonic(), time.time())


EMULATOR = web.AppKey("emulator", Emulator)


ABORTED = -1  # stats status of a stream the client hung up on
MIDSTREAM_AFTER_DELTAS = 2


class ClientGone(Exception):
    """The client hung up while its streamed reply was being written."""

    def __init__(self, response: web.StreamResponse) -> None:
        super().__init__("client disconnected")
        self.response = response


class Reject(Exception):
    """An API error to send as the JSON error envelope."""

    def __init__(self, status: int, error_type: str, message: str, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.error_type, self.message, self.headers = status, error_type, message, headers


def request_id(request: web.Request) -> str:
    rid = request.get("request_id")
    if rid is None:
        rid = request["request_id"] = "req_emu" + secrets.token_hex(12)
    return rid


def json_response(data: Any, status: int = 200, headers: dict | None = None) -> web.Response:
    body = orjson.dumps(data)
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


def error_response(
    request: web.Request, status: int, error_type: str, message: str, headers: dict | None = None
) -> web.Response:
    error = {"type": error_type, "message": message}
    return json_response({"type": "error", "error": error, "request_id": request_id(request)}, status, headers)


def check_auth(request: web.Request, config: EmulatorConfig) -> None:
    key = request.headers.get("x-api-key")
    if key is None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        key = token.strip() if scheme.lower() == "bearer" else None
    if not key:
        raise Reject(401, "authentication_error", "x-api-key header is required")
    if config.api_key is not None and key != config.api_key:
        raise Reject(401, "authentication_error", "invalid x-api-key")


def check_headers(request: web.Request, config: EmulatorConfig) -> None:
    """Authentication first (401), then the anthropic-version header every /v1 call must carry (400)."""
    check_auth(request, config)
    raise_api_error(check_version(request.headers))


def raise_api_error(error: ApiError | None) -> None:
    if error is not None:
        raise Reject(error.status, error.type, error.message)


async def read_json(request: web.Request, limit: int) -> Any:
    if request.content_length is not None and request.content_length > limit:
        raise Reject(413, "request_too_large", f"Request exceeds the maximum allowed size of {limit} bytes")
    raw = await request.read()
    if len(raw) > limit:
        raise Reject(413, "request_too_large", f"Request exceeds the maximum allowed size of {limit} bytes")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Reject(400, "invalid_request_error", f"Request body is not valid JSON: {exc}") from None


@web.middleware
async def envelope_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Turn Reject and aiohttp's own HTTP errors (404 route, 405, 413) into the API error envelope."""
    try:
        return await handler(request)
    except Reject as exc:
        return error_response(request, exc.status, exc.error_type, exc.message, exc.headers)
    except BatchError as exc:
        return error_response(request, exc.status, exc.error_type, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        error_type = HTTP_ERROR_TYPES.get(exc.status, "invalid_request_error")
        return error_response(request, exc.status, error_type, exc.reason)


async def add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["request-id"] = request_id(request)


# ---- Messages ---------------------------------------------------------------------------------


def drop_connection(request: web.Request) -> None:
    """Close the socket without writing a response, like a connection lost mid-request."""
    transport = request.transport
    if transport is not None:
        transport.close()


async def handle_messages(request: web.Request) -> web.StreamResponse:
    emu = request.app[EMULATOR]
    stats = emu.stats  # the request finishes on the stats it started on, even across a reset
    stats.started()
    status: int | None = None
    key: str | None = None
    response: web.StreamResponse | None = None
    try:
        key, response = await _messages(request, emu, stats)
        status = None if response is None else response.status
    except Reject as exc:
        status = exc.status
        if exc.status != 401:
            exc.headers = {**emu.ratelimit_headers(), **(exc.headers or {})}
        raise
    except ClientGone as exc:
        status, response = ABORTED, exc.response
    except asyncio.CancelledError:
        status = ABORTED
        raise
    except Exception:
        status = 500  # a bug here must not be counted as an intentionally dropped connection
        raise
    finally:
        stats.finished(status, key)
    # For a dropped connection, aiohttp fails to write this placeholder and moves on quietly.
    return web.Response(status=500) if response is None else response


async def _messages(request: web.Request, emu: Emulator, stats: Stats) -> tuple[str | None, web.StreamResponse | None]:
    check_headers(request, emu.config)
    body = await read_json(request, MAX_MESSAGES_BODY)
    emu.log_request(body)
    error = check_messages(body)
    if error is not None and error.status != 404:
        raise_api_error(error)
    if error is None:
        file_problem = emu.files.check(body, has_beta(request.headers))
        if file_problem is not None:
            raise Reject(400, "invalid_request_error", file_problem)
    key = request_key(body)
    now = time.monotonic()
    stats.received(key)
    emu.watch.arrived(key, now)
    raise_api_error(error)
    extra_delay = _inject_fault(request, emu, stats, key, now)
    if extra_delay is None:
        return key, None
    return key, await _reply(request, emu, stats, body, key, extra_delay)


def injected_retry_after(seconds: float) -> str:
    """Whole seconds (at least 1) as the API sends them; a sub-second setting, which only chaos tests use to
    stay fast, is sent as a decimal, which the SDK and batchrun both accept."""
    return f"{seconds:g}" if seconds < 1 else str(math.ceil(seconds))


def _inject_fault(request: web.Request, emu: Emulator, stats: Stats, key: str, now: float) -> float | None:
    """Raise the injected error, return None for a dropped connection, else the extra delay in seconds."""
    fault = emu.faults.pick(key)
    if fault is None:
        return 0.0
    stats.injected[fault] += 1
    if fault in ("429", "529"):
        retry_after = injected_retry_after(emu.config.retry_after_s)
        emu.watch.told_to_wait(key, now, float(retry_after))
        headers = {"retry-after": retry_after}
        if fault == "429":
            message = "Number of concurrent connections has exceeded your rate limit. Please try again later."
            raise Reject(429, "rate_limit_error", message, headers)
        raise Reject(529, "overloaded_error", "Overloaded", headers)
    if fault == "500":
        raise Reject(500, "api_error", "Internal server error")
    if fault == "drop":
        drop_connection(request)
        return None
    return emu.config.slow_ms / 1000.0


async def _reply(
    request: web.Request, emu: Emulator, stats: Stats, body: dict, key: str, extra_delay: float
) -> web.StreamResponse:
    now = time.monotonic()
    use = emu.cache.lookup(body, now)
    limiter = emu.limiter  # refund to the buckets that were charged, even if reconfigured meanwhile
    refusal = limiter.admit(count_input_tokens(body) - use.read, body["max_tokens"], now)
    if refusal is not None:
        stats.rate_limited += 1
        emu.watch.told_to_wait(key, now, refusal.retry_after)
        headers = {"retry-after": str(refusal.retry_after)}
        raise Reject(429, "rate_limit_error", refusal.message, headers)
    emu.cache.commit(use, now)
    msg_id = "msg_emu" + secrets.token_hex(12)
    fault = emu.faults.reply_fault(key, body)
    if fault is not None:
        stats.injected[fault] += 1
    message = build_message(
        body,
        msg_id=msg_id,
        cache_creation=use.creation,
        cache_read=use.read,
        cache_ttl=use.ttl,
        fault=fault,
        divergence=emu.config.model_divergence,
    )
    try:
        await asyncio.sleep(emu.faults.latency_s() + extra_delay)
    finally:
        limiter.refund_output(body["max_tokens"] - message["usage"]["output_tokens"], time.monotonic())
    emu.faults.succeeded(key)
    stats.message_usage(body["model"], message["usage"])
    headers = emu.ratelimit_headers()
    if body.get("stream") and emu.faults.stream_as_json(key):
        stats.injected["stream_as_json"] += 1
        return json_response(message, headers=headers)
    if body.get("stream"):
        stats.streamed += 1
        fail = emu.faults.midstream_error(key)
        if fail:
            stats.injected["midstream"] += 1
        fail_after = MIDSTREAM_AFTER_DELTAS if fail else None
        return await _stream(request, message, headers, fail_after, emu.config.stream_event_ms / 1000.0)
    return json_response(message, headers=headers)


def sse(event_type: str, data: dict) -> bytes:
    return f"event: {event_type}\ndata: ".encode() + orjson.dumps(data) + b"\n\n"


async def _stream(
    request: web.Request, message: dict, headers: dict[str, str], fail_after: int | None, pause_s: float
) -> web.StreamResponse:
    """Send `message` as SSE; with fail_after, an overloaded_error event replaces the rest after that many deltas.
    A client that hangs up raises ClientGone."""
    response = web.StreamResponse(headers={**headers, "Cache-Control": "no-cache"})
    response.content_type = "text/event-stream"
    response.charset = "utf-8"
    try:
        await response.prepare(request)
        deltas = 0
        for event in stream_events(message):
            if fail_after is not None and deltas >= fail_after:
                error = {"type": "overloaded_error", "message": "Overloaded"}
                await response.write(sse("error", {"type": "error", "error": error, "request_id": request_id(request)}))
                break
            deltas += event["type"] == "content_block_delta"
            await response.write(sse(event["type"], event))
            if pause_s:
                await asyncio.sleep(pause_s)
        await response.write_eof()
    except ConnectionError:
        raise ClientGone(response) from None
    return response


async def handle_count_tokens(request: web.Request) -> web.Response:
    emu = request.app[EMULATOR]
    check_headers(request, emu.config)
    body = await read_json(request, MAX_MESSAGES_BODY)
    emu.stats.count_tokens_requests += 1
    raise_api_error(check_count_tokens(body))
    return json_response({"input_tokens": count_input_tokens(body)}, headers=emu.ratelimit_headers())


# ---- Message Batches --------------------------------------------------------------------------


def _base_url(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


def _batch_json(request: web.Request, batch: Any) -> web.Response:
    return json_response(batch.to_json(_base_url(request)))


async def handle_batch_create(request: web.Request) -> web.Response:
    emu = request.app[EMULATOR]
    check_headers(request, emu.config)
    items = check_requests(await read_json(request, MAX_BATCH_BODY))
    for _, params in items:
        emu.log_request(params)
    if not has_beta(request.headers):
        referring = next((params for _, params in items if emu.files.references(params)), None)
        if referring is not None:
            raise Reject(400, "invalid_request_error", emu.files.check(referring, False) or "")
    return _batch_json(request, emu.batches.create(items, emu.now()))


async def handle_batch_get(request: web.Request) -> web.Response:
    emu = request.app[EMULATOR]
    check_headers(request, emu.config)
    return _batch_json(request, await emu.batches.get(request.match_info["batch_id"], emu.now()))


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit", "20")
    if not raw.isdigit():
        raise Reject(400, "invalid_request_error", "limit: Input should be a valid integer")
    if not 1 <= int(raw) <= 1000:
        raise Reject(400, "invalid_request_error", "limit: Input should be between 1 and 1000")
    return int(raw)


async def handle_batch_list(request: web.Request) -> web.Response:
    emu = request.app[EMULATOR]
    check_headers(request, emu.config)
    after_id, before_id = request.query.get("after_id"), request.query.get("before_id")
    if after_id and before_id:
        raise Reject(400, "invalid_request_error", "Only one of after_id and before_id may be given")
    page = await emu.batches.page(_limit(request), after_id, before_id, emu.now())
    page["data"] = [batch.to_json(_base_url(request)) for batch in page["data"]]
    return json_response(page)


async def handle_batch_cancel(request: web.Request) -> web.Response:
    emu = request.app[EMULATOR]
    check_headers(request, emu.config)
    return _batch_json(request, await emu.batches.cancel(request.match_info["batch_id"], emu.now()))


async def handle_batch_delete(request: web.Request) -> web.Response:
    emu = request.app[EMULATOR]
    check_headers(request, emu.config)
    batch_id = request.match_info["batch_id"]
    await emu.batches.delete(batch_id, emu.now())
    return json_response({"id": batch_id, "type": "message_batch_deleted"})


async def handle_batch_results(request: web.Request) -> web.StreamResponse:
    emu = request.app[EMULATOR]
    check_auth(request, emu.config)
    batch = await emu.batches.get(request.match_info["batch_id"], emu.now())
    if batch.outcomes is None:
        message = f"Message Batch {batch.id} has not finished processing (status: {batch.status()})"
        raise Reject(400, "invalid_request_error", message)
    response = web.StreamResponse(
        headers={"Content-Disposition": f"attachment; filename*=utf-8''{batch.id}_results.jsonl"}
    )
    response.content_type = "application/x-jsonl"
    await response.prepare(request)
    for chunk in result_chunks(batch):  # streamed, so a 100k-item batch never sits in one string
        await response.write(chunk)
    await response.write_eof()
    return response


# ---- Files (beta) -----------------------------------------------------------------------------


def _files_call(request: web.Request) -> Emulator:
    emu = request.app[EMULATOR]
    check_headers(request, emu.config)
    if not has_beta(request.headers):
        raise Reject(400, "invalid_request_error", f"the Files API needs the header 'anthropic-beta: {FILES_BETA}'")
    return emu


def _file(emu: Emulator, file_id: str) -> StoredFile:
    stored = emu.files.get(file_id)
    if stored is None:
        raise Reject(404, "not_found_error", f"File '{file_id}' not found.")
    return stored


async def handle_file_upload(request: web.Request) -> web.Response:
    emu = _files_call(request)
    if request.content_length is not None and request.content_length > MAX_FILE_BODY:
        raise Reject(413, "request_too_large", f"Request exceeds the maximum allowed size of {MAX_FILE_BODY} bytes")
    try:
        form = await request.post()
    except ValueError as exc:
        raise Reject(400, "invalid_request_error", f"not a multipart form: {exc}") from None
    part = form.get("file")
    if not isinstance(part, web.FileField):
        raise Reject(400, "invalid_request_error", "file: Field required (a multipart part named 'file')")
    data = part.file.read()
    stored = emu.files.add(part.filename, part.content_type, data, emu.now())
    return json_response(stored.to_json())


async def handle_file_get(request: web.Request) -> web.Response:
    emu = _files_call(request)
    return json_response(_file(emu, request.match_info["file_id"]).to_json())


async def handle_file_delete(request: web.Request) -> web.Response:
    emu = _files_call(request)
    file_id = request.match_info["file_id"]
    _file(emu, file_id)
    emu.files.delete(file_id)
    return json_response({"id": file_id, "type": "file_deleted"})


async def handle_file_list(request: web.Request) -> web.Response:
    emu = _files_call(request)
    data = [f.to_json() for f in reversed(emu.files.files.values())][: _limit(request)]
    first, last = (data[0]["id"], data[-1]["id"]) if data else (None, None)
    more = len(emu.files.files) > len(data)
    return json_response({"data": data, "has_more": more, "first_id": first, "last_id": last})


# ---- Models -----------------------------------------------------------------------------------


async def handle_model_get(request: web.Request) -> web.Response:
    check_headers(request, request.app[EMULATOR].config)
    model_id = request.match_info["model_id"]
    spec = find_model(model_id)
    if spec is None:
        raise Reject(404, "not_found_error", f"model: {model_id}")
    return json_response(model_info(spec, model_id))


async def handle_model_list(request: web.Request) -> web.Response:
    check_headers(request, request.app[EMULATOR].config)
    ids = [spec.id for spec in MODELS]
    after_id, before_id = request.query.get("after_id"), request.query.get("before_id")
    limit = _limit(request)
    start = ids.index(after_id) + 1 if after_id in ids else 0
    stop = ids.index(before_id) if before_id in ids else len(ids)
    chosen = ids[max(start, stop - limit) if before_id else start : stop][:limit]
    data = [model_info(find_model(i)) for i in chosen]
    more = (start + len(chosen) < len(ids)) if not before_id else stop - len(chosen) > 0
    page = {"data": data, "has_more": more, "first_id": chosen[0] if chosen else None}
    return json_response({**page, "last_id": chosen[-1] if chosen else None})


# ---- Control ----------------------------------------------------------------------------------


async def handle_stats(request: web.Request) -> web.Response:
    return json_response(request.app[EMULATOR].stats_json())


async def handle_requests(request: web.Request) -> web.Response:
    """The request bodies kept (config request_log), oldest first."""
    return json_response({"requests": list(request.app[EMULATOR].requests)})


async def handle_reset(request: web.Request) -> web.Response:
    """Start over; with {"config": {...}}, under that config first (one call instead of configure + reset)."""
    emu = request.app[EMULATOR]
    body = await read_json(request, MAX_MESSAGES_BODY) if request.can_read_body else {}
    patch = body.get("config") if isinstance(body, dict) else None
    if patch is not None:
        _reconfigure(emu, patch)
    emu.reset()
    return json_response({"ok": True})


def _reconfigure(emu: Emulator, patch: Any) -> None:
    if not isinstance(patch, dict):
        raise Reject(400, "invalid_request_error", "config patch must be a JSON object")
    try:
        emu.reconfigure(patch)
    except ValueError as exc:
        raise Reject(400, "invalid_request_error", str(exc)) from None


async def handle_clock(request: web.Request) -> web.Response:
    """Move the batches' clock on by {"advance": seconds}: a batch's hours pass at once, nothing else changes."""
    emu = request.app[EMULATOR]
    body = await read_json(request, MAX_MESSAGES_BODY)
    advance = body.get("advance") if isinstance(body, dict) else None
    if isinstance(advance, bool) or not isinstance(advance, int | float) or not 0 <= advance < math.inf:
        raise Reject(400, "invalid_request_error", "advance: a number of seconds, 0 or more")
    emu.clock_offset += advance
    return json_response({"offset": emu.clock_offset})


async def handle_config(request: web.Request) -> web.Response:
    emu = request.app[EMULATOR]
    if request.method == "POST":
        _reconfigure(emu, await read_json(request, MAX_MESSAGES_BODY))
    return json_response(emu.config.to_dict())


def make_app(config: EmulatorConfig) -> web.Application:
    app = web.Application(middlewares=[envelope_middleware], client_max_size=MAX_BATCH_BODY + 1)
    app[EMULATOR] = Emulator(config)
    app.on_response_prepare.append(add_request_id)
    batch = "/v1/messages/batches/{batch_id}"
    app.router.add_post("/v1/messages", handle_messages)
    app.router.add_post("/v1/messages/count_tokens", handle_count_tokens)
    app.router.add_post("/v1/messages/batches", handle_batch_create)
    app.router.add_get("/v1/messages/batches", handle_batch_list)
    app.router.add_get(batch, handle_batch_get)
    app.router.add_delete(batch, handle_batch_delete)
    app.router.add_post(batch + "/cancel", handle_batch_cancel)
    app.router.add_get(batch + "/results", handle_batch_results)
    app.router.add_post("/v1/files", handle_file_upload)
    app.router.add_get("/v1/files", handle_file_list)
    app.router.add_get("/v1/files/{file_id}", handle_file_get)
    app.router.add_delete("/v1/files/{file_id}", handle_file_delete)
    app.router.add_get("/v1/models", handle_model_list)
    app.router.add_get("/v1/models/{model_id}", handle_model_get)
    app.router.add_get("/_emulator/stats", handle_stats)
    app.router.add_get("/_emulator/requests", handle_requests)
    app.router.add_post("/_emulator/reset", handle_reset)
    app.router.add_post("/_emulator/clock", handle_clock)
    app.router.add_route("*", "/_emulator/config", handle_config)
    return app


async def start(config: EmulatorConfig, host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, str]:
    """Start serving in the running event loop; returns (runner, base_url). Stop with runner.cleanup()."""
    runner = web.AppRunner(make_app(config), access_log=None, handle_signals=False, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=LISTEN_BACKLOG)
    await site.start()
    bound_host, bound_port = runner.addresses[0][:2]
    return runner, f"http://{bound_host}:{bound_port}"


async def _serve(config: EmulatorConfig, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    stopping = False

    def on_signal(signum: int, frame: Any) -> None:
        # The first SIGINT or SIGTERM stops it; later ones (the lifeline's and terminate()'s both come, a Ctrl-C
        # pressed again) are ignored, to the end of the process. A plain handler, not loop.add_signal_handler:
        # asyncio puts the default one back when its loop closes (as Python does with its own handlers when it
        # exits), and a signal in that moment killed the process or printed a traceback.
        nonlocal stopping
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        if not stopping:
            stopping = True
            with contextlib.suppress(RuntimeError):  # the loop already closed
                loop.call_soon_threadsafe(stop.set)

    for sig in (signal.SIGINT, signal.SIGTERM):  # before the line that says it is up: a signal may follow at once
        signal.signal(sig, on_signal)
    runner, base_url = await start(config, host, port)
    try:
        print(f"batchrun-emulator listening on {base_url}", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


def serve(config: EmulatorConfig, host: str = "127.0.0.1", port: int = 0) -> None:
    """Serve until SIGTERM or SIGINT; the first stdout line is `batchrun-emulator listening on URL`."""
    asyncio.run(_serve(config, host, port))
