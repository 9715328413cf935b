"""The one place that talks to the Anthropic SDK: building the client, sending one request, naming its failure.

The SDK is imported lazily: `import anthropic` costs about a second, and commands that only read the
store (status, results) must start fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import functools
import math
import os
import ssl
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from anthropic import AsyncAnthropic

RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
FATAL_STATUS = frozenset({401, 402, 403})
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    409: "conflict_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
STATUS_OF_TYPE = {t: s for s, t in ERROR_TYPES.items() if s != 422} | {"timeout_error": 504}
BACKENDS = ("aiohttp", "httpx")
MAX_RETRY_AFTER_S = 600.0  # a server hint beyond this (or garbage: inf, nan, negative) is not trusted
STREAMED_DEADLINE_S = 3600.0  # the least total time a streamed (long) request is given


@dataclass(slots=True)
class Reply:
    message: dict[str, Any]
    headers: Mapping[str, str]
    request_id: str | None


class APIFailure(Exception):
    """A failed request, normalised: HTTP status (None for connection errors), API error type and message."""

    def __init__(
        self,
        status: int | None,
        error_type: str,
        message: str,
        error_class: str,
        retry_after: float | None = None,
        request_id: str | None = None,
        headers: Mapping[str, str] | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(f"{status or 'no response'} {error_type}: {message}")
        self._retryable = retryable
        self.status = status
        self.error_type = error_type
        self.message = message
        self.error_class = error_class
        self.retry_after = retry_after
        self.request_id = request_id
        self.headers = headers or {}

    @property
    def retryable(self) -> bool:
        if self._retryable is not None:
            return self._retryable
        return self.status is None or self.status in RETRYABLE_STATUS

    @property
    def api_wide(self) -> bool:
        """An error of the API itself (overloaded, rate limited), not of this request: never an item's fault."""
        return self.status in (429, 529)

    @property
    def fatal(self) -> bool:
        return self.status in FATAL_STATUS

    def error_body(self) -> dict[str, Any]:
        """The error in the API's own envelope, as the Message Batches results carry it."""
        return {
            "type": "error",
            "error": {"type": self.error_type, "message": self.message},
            "request_id": self.request_id,
        }


def make_client(
    backend: str = "aiohttp",
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    timeout: float = 600.0,
) -> AsyncAnthropic:
    """One shared client for a run; the SDK's own retries are off because tenacity owns the policy."""
    import anthropic

    kwargs: dict[str, Any] = {"max_retries": 0, "timeout": anthropic.Timeout(timeout, connect=10.0)}
    if base_url:
        kwargs["base_url"] = base_url
    if api_key:
        kwargs["api_key"] = api_key
    if backend not in BACKENDS:
        raise ValueError(f"unknown HTTP backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    http_client = anthropic.DefaultAioHttpClient if backend == "aiohttp" else anthropic.DefaultAsyncHttpxClient
    cert_file, cert_dir = os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")
    try:
        tls = tls_context(cert_file, cert_dir)
    except (OSError, ssl.SSLError) as e:
        from batchrun.errors import UsageError

        raise UsageError(
            f"cannot load the certificate authorities (SSL_CERT_FILE={cert_file}, SSL_CERT_DIR={cert_dir}): "
            f"{e.strerror or e}; point them at a CA bundle, or unset them"
        ) from None
    kwargs["http_client"] = http_client(timeout=kwargs["timeout"], verify=tls)
    return anthropic.AsyncAnthropic(**kwargs)


@functools.cache
def tls_context(cert_file: str | None, cert_dir: str | None) -> ssl.SSLContext:
    """The SDK's own TLS settings (certifi, or SSL_CERT_FILE / SSL_CERT_DIR), built once per process: loading the
    certificate authorities takes 35 ms, which every client paid twice. Keyed by the two variables, so setting
    either one later still counts."""
    import httpx2

    return httpx2.create_ssl_context(verify=True, trust_env=True)


def needs_streaming(params: Mapping[str, Any]) -> bool:
    """Mirrors the SDK's refusal to send a non-streaming request that may run past 10 minutes."""
    from anthropic._constants import MODEL_NONSTREAMING_TOKENS

    max_tokens = params["max_tokens"]
    limit = MODEL_NONSTREAMING_TOKENS.get(params["model"])
    return 3600 * max_tokens / 128_000 > 600 or (limit is not None and max_tokens > limit)


async def send(client: AsyncAnthropic, params: dict[str, Any], deadline: float = 600.0) -> Reply:
    """Send one Messages request (streamed when its max_tokens requires it); raise APIFailure.

    `deadline` bounds the whole request, not just each read: a server that trickles a byte now and then
    would otherwise hold a worker forever. Streamed requests get at least STREAMED_DEADLINE_S.
    """
    rest = {k: v for k, v in params.items() if k not in ("model", "max_tokens", "messages")}
    args = {
        "model": params["model"],
        "max_tokens": params["max_tokens"],
        "messages": params["messages"],
        "extra_body": rest or None,
    }
    streamed = needs_streaming(params)
    limit = max(deadline, STREAMED_DEADLINE_S) if streamed else deadline
    with api_errors(client.api_key):
        try:
            async with asyncio.timeout(limit):
                if streamed:
                    message, headers = await _streamed(client, args)
                else:
                    raw = await client.messages.with_raw_response.create(**args)
                    headers = raw.headers
                    message = _message(raw.http_response.content, headers)
        except TimeoutError:
            raise APIFailure(
                None, "timeout_error", f"no complete reply within {limit:g}s", "RequestDeadline", retryable=True
            ) from None
    return Reply(message, headers, headers.get("request-id"))


async def _streamed(client: AsyncAnthropic, args: dict[str, Any]) -> tuple[dict[str, Any], Mapping[str, str]]:
    """A streamed request's final Message. A gateway that answers with something other than an event stream (a
    plain JSON body), or a stream that ends before its message is complete, is the API's fault, and retried: the
    SDK would fail on it with a bare AssertionError."""
    async with client.messages.stream(**args) as stream:
        headers = stream.response.headers
        kind = headers.get("content-type", "")
        if not kind.startswith("text/event-stream"):
            await stream.response.aread()
            raise _malformed(
                f"a streamed request was answered with {kind or 'no content type'}, not an event stream", headers
            )
        try:
            message = (await stream.get_final_message()).to_dict(mode="json")
        except AssertionError:
            raise _malformed("the event stream ended without a message", headers) from None
    problem = _message_problem(message)
    if problem is not None:
        raise _malformed(f"the event stream's message is not a Message: {problem}", headers)
    return message, headers


def _malformed(problem: str, headers: Mapping[str, str]) -> APIFailure:
    return APIFailure(
        200,
        "api_error",
        f"the API answered 200 with a body that is not a Message: {problem}",
        "MalformedReply",
        request_id=headers.get("request-id"),
        headers=headers,
        retryable=True,
    )


def _message(body: bytes, headers: Mapping[str, str]) -> dict[str, Any]:
    """The reply as a dict, checked to be a Message: a 200 with another body is the API's fault, and retried."""
    try:
        message = orjson.loads(body)
        problem = _message_problem(message)
    except orjson.JSONDecodeError as e:
        problem = f"not JSON ({e})"
    if problem is not None:
        raise _malformed(problem, headers)
    return message


def _message_problem(message: Any) -> str | None:
    """Why a reply is not a Message (None when it is one): the check of the online path and of batch results.
    Exact type checks (JSON gives plain dicts, lists, str and int; a bool is not a token count): it runs for every
    batch result, so it is kept to about a microsecond."""
    if type(message) is not dict or message.get("type") != "message":
        return "no message object"
    content = message.get("content")
    if type(content) is not list:
        return "content is not a list"
    for block in content:
        if type(block) is not dict or type(block.get("type")) is not str:
            return "a content block is not a block object"
        if block["type"] == "text" and type(block.get("text")) is not str:
            return "a text block has no text"
    return _usage_problem(message.get("usage"))


def _usage_problem(usage: Any) -> str | None:
    if type(usage) is not dict:
        return "no usage object"
    for key in TOKEN_COUNTS:
        value = usage.get(key)
        if type(value) is not int or value < 0:
            if value is None and key in OPTIONAL_COUNTS:
                continue
            return f"usage.{key} is {value!r}, not a whole number"
    breakdown = usage.get("cache_creation")
    if breakdown is not None and (
        type(breakdown) is not dict or any(type(v) is not int or v < 0 for v in breakdown.values())
    ):
        return "usage.cache_creation is not a breakdown of whole numbers"
    return None


TOKEN_COUNTS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
OPTIONAL_COUNTS = frozenset(TOKEN_COUNTS[2:])


@contextlib.contextmanager
def api_errors(api_key: str | None) -> Iterator[None]:
    """SDK and transport errors of any call become APIFailure, with the API key redacted from every message."""
    import anthropic
    import httpx2

    try:
        yield
    except anthropic.APIStatusError as e:
        raise failure_from_status(e, api_key) from None
    except (anthropic.APIConnectionError, httpx2.HTTPError, ConnectionError) as e:
        kind = "timeout_error" if isinstance(e, anthropic.APITimeoutError | httpx2.TimeoutException) else "api_error"
        raise APIFailure(None, kind, redact(f"{e} ({type(e).__name__})", api_key), type(e).__name__) from None
    except anthropic.AnthropicError as e:  # e.g. an ended batch without a results_url
        raise APIFailure(None, "api_error", redact(str(e), api_key), type(e).__name__) from None


def failure_from_status(e: Any, api_key: str | None) -> APIFailure:
    status = e.status_code
    body = e.body if isinstance(e.body, dict) else {}
    error = body.get("error") if isinstance(body.get("error"), dict) else {}
    error_type = error.get("type") or ERROR_TYPES.get(status, "api_error")
    if status < 400:  # an error event after a 200 began streaming: it is what its type says
        status = STATUS_OF_TYPE.get(error_type, 500)
    message = error.get("message") or e.message
    headers = e.response.headers
    return APIFailure(
        status,
        error_type,
        redact(str(message), api_key),
        type(e).__name__,
        retry_after=retry_after(headers),
        request_id=headers.get("request-id"),
        headers=headers,
    )


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds the server asked us to wait: `retry-after-ms`, then `retry-after` (seconds or an HTTP date).

    Capped at MAX_RETRY_AFTER_S; a value that is not a finite, non-negative number is treated as absent.
    """
    value = headers.get("retry-after-ms")
    if value is not None:
        seconds = _seconds(value, scale=1000)
        if seconds is not None:
            return seconds
    value = headers.get("retry-after")
    if value is None:
        return None
    seconds = _seconds(value)
    if seconds is not None:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return min(MAX_RETRY_AFTER_S, max(0.0, when.timestamp() - time.time()))


def _seconds(value: str, scale: float = 1.0) -> float | None:
    try:
        seconds = float(value) / scale
    except ValueError:
        return None
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return min(MAX_RETRY_AFTER_S, seconds)


REDACT_PIECE = 12  # a piece of the key this long or longer is redacted wherever it appears, in any case


def redact(text: str, api_key: str | None) -> str:
    """The API key never leaves the process: not in the store, results, logs or messages. Matched without regard
    to case, and so is any piece of it of REDACT_PIECE characters or more (a gateway that echoes part of it)."""
    for secret in {api_key, os.environ.get("ANTHROPIC_API_KEY")}:
        if secret and len(secret) >= 8:
            text = _redact_one(text, secret)
    return text


def _redact_one(text: str, secret: str) -> str:
    low = text.lower()
    size, pieces, probes = _key_pieces(secret.lower())
    # a match of `size` characters covers a whole probe-long piece starting at a multiple of the probe's length:
    # looking there first skips the full scan for almost every message (a batch may redact 100,000 of them)
    step = len(next(iter(probes)))
    if not any(low[i : i + step] in probes for i in range(0, len(low), step)):
        return text
    spans: list[list[int]] = []
    for i in range(len(low) - size + 1):
        if low[i : i + size] in pieces:
            if spans and i <= spans[-1][1]:
                spans[-1][1] = i + size
            else:
                spans.append([i, i + size])
    for start, end in reversed(spans):
        text = text[:start] + "[redacted]" + text[end:]
    return text


@functools.lru_cache(maxsize=4)
def _key_pieces(key: str) -> tuple[int, frozenset[str], frozenset[str]]:
    """The key's pieces of REDACT_PIECE characters (the whole key when shorter), and its pieces of half that
    length (rounded up), the probes."""
    size = min(REDACT_PIECE, len(key))
    step = (size + 1) // 2
    pieces = frozenset(key[i : i + size] for i in range(len(key) - size + 1))
    probes = frozenset(key[i : i + step] for i in range(len(key) - step + 1))
    return size, pieces, probes
