"""Request validation, in one place: what the API answers 400 (or 404) for, per endpoint, in its wording.

`check_messages` serves POST /v1/messages and each Message Batch request's params (checked when the batch
is processed, as the API does); `check_count_tokens` serves count_tokens; `check_version` every /v1 call.
Shape errors come first (the API's schema layer), then the model (404), then checks that need the model.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

from .media import MAX_IMAGES, MediaError, check_image, check_pdf
from .models import ModelSpec, find_model, not_found_message

MESSAGES_FIELDS = frozenset(
    {
        "model",
        "max_tokens",
        "messages",
        "system",
        "stop_sequences",
        "temperature",
        "top_p",
        "top_k",
        "metadata",
        "stream",
        "tools",
        "tool_choice",
        "thinking",
        "service_tier",
        "output_config",
        "container",
        "mcp_servers",
        "inference_geo",
        "speed",
        "context_management",
        "cache_control",
        "diagnostics",
    }
)
COUNT_TOKENS_FIELDS = frozenset(
    {
        "model",
        "messages",
        "system",
        "tools",
        "tool_choice",
        "thinking",
        "output_config",
        "mcp_servers",
        "context_management",
        "cache_control",
        "speed",
    }
)
BLOCK_TYPES = (
    "text",
    "image",
    "document",
    "search_result",
    "tool_use",
    "tool_result",
    "thinking",
    "redacted_thinking",
    "server_tool_use",
    "web_search_tool_result",
    "web_fetch_tool_result",
    "code_execution_tool_result",
    "bash_code_execution_tool_result",
    "text_editor_code_execution_tool_result",
    "mcp_tool_use",
    "mcp_tool_result",
    "container_upload",
)
TOOL_RESULT_BLOCK_TYPES = ("text", "image", "document", "search_result")
SERVICE_TIERS = ("auto", "standard_only")
EFFORTS = ("low", "medium", "high", "xhigh", "max")
THINKING_TYPES = ("enabled", "disabled", "adaptive")
TOOL_CHOICE_TYPES = ("auto", "any", "tool", "none")
TOOL_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")
MIN_THINKING_BUDGET = 1024
MAX_CACHE_BREAKPOINTS = 4
MIN_VERSION_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
THINKING_DOCS = "https://docs.claude.com/en/docs/build-with-claude/extended-thinking"


class ApiError(NamedTuple):
    status: int
    type: str
    message: str


class Invalid(Exception):
    """A 400 invalid_request_error, raised inside the checks and returned as an ApiError."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _blank(text: str) -> bool:
    return not text.strip()


def check_version(headers: Any) -> ApiError | None:
    """Every /v1 request must say which API version it speaks (the SDK sends one by default)."""
    version = headers.get("anthropic-version")
    if not version:
        return ApiError(400, "invalid_request_error", "anthropic-version: header is required")
    if not MIN_VERSION_RE.match(version):
        return ApiError(400, "invalid_request_error", f"anthropic-version: invalid version '{version}'")
    return None


def check_messages(body: Any, *, in_batch: bool = False) -> ApiError | None:
    """The first problem with a Messages body, or None if the API would take it."""
    return _run(body, MESSAGES_FIELDS, max_tokens=True, in_batch=in_batch)


def check_count_tokens(body: Any) -> ApiError | None:
    return _run(body, COUNT_TOKENS_FIELDS, max_tokens=False, in_batch=False)


def _run(body: Any, fields: frozenset[str], *, max_tokens: bool, in_batch: bool) -> ApiError | None:
    try:
        _shape(body, fields, max_tokens=max_tokens)
        if in_batch and body.get("stream"):
            raise Invalid("stream: Streaming is not supported for requests in a Message Batch")
    except Invalid as exc:
        return ApiError(400, "invalid_request_error", str(exc))
    spec = find_model(body["model"])
    if spec is None:
        return ApiError(404, "not_found_error", not_found_message(body["model"]))
    try:
        _with_model(body, spec, max_tokens=max_tokens)
    except Invalid as exc:
        return ApiError(400, "invalid_request_error", str(exc))
    return None


# ---- shape (the API's schema layer) -------------------------------------------------------------


def _shape(params: Any, fields: frozenset[str], *, max_tokens: bool) -> None:
    if not isinstance(params, dict):
        raise Invalid("Input should be a valid dictionary")
    extra = sorted(set(params) - fields)
    if extra:
        raise Invalid(f"{extra[0]}: Extra inputs are not permitted")
    for name in ("model", "max_tokens", "messages") if max_tokens else ("model", "messages"):
        if name not in params:
            raise Invalid(f"{name}: Field required")
    if not isinstance(params["model"], str) or not params["model"]:
        raise Invalid("model: Input should be a valid string")
    if max_tokens:
        if not _is_int(params["max_tokens"]):
            raise Invalid("max_tokens: Input should be a valid integer")
        if params["max_tokens"] < 1:
            raise Invalid("max_tokens: Input should be greater than or equal to 1")
    tool_names = _tools(params.get("tools"))
    _messages(params["messages"])
    if "system" in params:
        _system(params["system"])
    _sampling(params)
    _metadata(params)
    _tool_choice(params, tool_names)
    _thinking(params)
    _output_config(params.get("output_config"))
    _cache_breakpoints(params)


def _text_block(path: str, block: dict, *, final_assistant: bool = False) -> None:
    text = block.get("text")
    if not isinstance(text, str):
        raise Invalid(f"{path}.text: Field required")
    if not text:
        raise Invalid("messages: text content blocks must be non-empty")
    if _blank(text):
        raise Invalid("messages: text content blocks must contain non-whitespace text")


def _source(path: str, block: dict) -> None:
    source = block.get("source")
    if not isinstance(source, dict):
        raise Invalid(f"{path}.source: Field required")
    kind = source.get("type")
    try:
        if block["type"] == "image":
            if kind == "base64":
                check_image(source.get("data"), source.get("media_type"))
            elif kind not in ("url", "file"):
                raise Invalid(f"{path}.source.type: Input should be 'base64', 'url' or 'file'")
        elif kind == "base64":
            if source.get("media_type") != "application/pdf":
                raise Invalid(f"{path}.source.base64.media_type: Input should be 'application/pdf'")
            check_pdf(source.get("data"))
        elif kind == "text":
            if source.get("media_type") != "text/plain" or not isinstance(source.get("data"), str):
                raise Invalid(f"{path}.source.text: media_type should be 'text/plain' and data a string")
        elif kind not in ("url", "file", "content"):
            raise Invalid(f"{path}.source.type: Input should be 'base64', 'text', 'content', 'url' or 'file'")
    except MediaError as exc:
        raise Invalid(f"{path}.source.{kind}.{exc}") from None


def _block(path: str, block: Any, allowed: tuple[str, ...] = BLOCK_TYPES) -> str:
    if not isinstance(block, dict) or not isinstance(block.get("type"), str):
        raise Invalid(f"{path}: Input should be a valid dictionary with a 'type' field")
    kind = block["type"]
    if kind not in allowed:
        expected = ", ".join(f"'{t}'" for t in allowed)
        raise Invalid(
            f"{path}: Input tag '{kind}' found using 'type' does not match any of the expected tags: {expected}"
        )
    if kind == "text":
        _text_block(path, block)
    elif kind in ("image", "document"):
        _source(path, block)
    elif kind == "tool_use":
        if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
            raise Invalid(f"{path}: tool_use blocks need a string 'id' and 'name'")
        if not isinstance(block.get("input"), dict):
            raise Invalid(f"{path}.input: Input should be a valid dictionary")
    elif kind == "tool_result":
        if not isinstance(block.get("tool_use_id"), str):
            raise Invalid(f"{path}.tool_use_id: Field required")
        content = block.get("content")
        if isinstance(content, list):
            for j, inner in enumerate(content):
                _block(f"{path}.content.{j}", inner, TOOL_RESULT_BLOCK_TYPES)
        elif content is not None and not isinstance(content, str):
            raise Invalid(f"{path}.content: Input should be a valid string or list")
    elif kind == "thinking" and not (
        isinstance(block.get("thinking"), str) and isinstance(block.get("signature"), str)
    ):
        raise Invalid(f"{path}: thinking blocks need string 'thinking' and 'signature'")
    return kind


def _content(path: str, content: Any) -> list[dict]:
    if isinstance(content, str):
        if not content:
            raise Invalid(f"{path}: messages must have non-empty content")
        if _blank(content):
            raise Invalid("messages: text content blocks must contain non-whitespace text")
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise Invalid(f"{path}.content: Input should be a valid list")
    if not content:
        raise Invalid(f"{path}: messages must have non-empty content")
    for j, block in enumerate(content):
        _block(f"{path}.content.{j}", block)
    return content


def _messages(messages: Any) -> None:
    if not isinstance(messages, list):
        raise Invalid("messages: Input should be a valid list")
    if not messages:
        raise Invalid("messages: at least one message is required")
    blocks: list[list[dict]] = []
    images = 0
    for i, message in enumerate(messages):
        path = f"messages.{i}"
        if not isinstance(message, dict):
            raise Invalid(f"{path}: Input should be a valid dictionary")
        extra = sorted(set(message) - {"role", "content"})
        if extra:
            raise Invalid(f"{path}.{extra[0]}: Extra inputs are not permitted")
        if message.get("role") not in ("user", "assistant"):
            raise Invalid(f"{path}.role: Input should be 'user' or 'assistant'")
        if "content" not in message:
            raise Invalid(f"{path}.content: Field required")
        blocks.append(_content(path, message["content"]))
        images += sum(1 for b in blocks[-1] if b.get("type") == "image")
    if messages[0]["role"] != "user":
        raise Invalid('messages: first message must use the "user" role')
    if images > MAX_IMAGES:
        raise Invalid(f"messages: A maximum of {MAX_IMAGES} images may be provided in one request. Found {images}.")
    _tool_pairs(messages, blocks)
    last = messages[-1]
    if last["role"] == "assistant":
        tail = blocks[-1][-1]
        if tail.get("type") == "text" and tail["text"] != tail["text"].rstrip():
            raise Invalid("messages: final assistant content cannot end with trailing whitespace")


def _tool_pairs(messages: list[dict], blocks: list[list[dict]]) -> None:
    """Every tool_result answers a tool_use of the message just before; every tool_use is answered next."""
    for i, content in enumerate(blocks):
        results = [(j, b["tool_use_id"]) for j, b in enumerate(content) if b.get("type") == "tool_result"]
        asked = set()
        if i > 0 and messages[i - 1]["role"] == "assistant":
            asked = {b["id"] for b in blocks[i - 1] if b.get("type") == "tool_use"}
        for j, tool_use_id in results:
            if tool_use_id not in asked:
                raise Invalid(
                    f"messages.{i}.content.{j}: unexpected `tool_use_id` found in `tool_result` blocks: "
                    f"{tool_use_id}. Each `tool_result` block must have a corresponding `tool_use` block in "
                    "the previous message."
                )
        uses = [b["id"] for b in content if b.get("type") == "tool_use"]
        if uses and i + 1 < len(blocks):
            answered = {b["tool_use_id"] for b in blocks[i + 1] if b.get("type") == "tool_result"}
            missing = [u for u in uses if u not in answered]
            if missing:
                raise Invalid(
                    f"messages.{i + 1}: `tool_use` ids were found without `tool_result` blocks immediately "
                    f"after: {', '.join(missing)}. Each `tool_use` block must have a corresponding "
                    "`tool_result` block in the next message."
                )


def _system(system: Any) -> None:
    if isinstance(system, str):
        return
    if not isinstance(system, list):
        raise Invalid("system: Input should be a valid string or a list of text blocks")
    for i, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise Invalid(f"system.{i}.type: Input should be 'text'")
        if not isinstance(block.get("text"), str):
            raise Invalid(f"system.{i}.text: Field required")
        if not block["text"]:
            raise Invalid("system: text content blocks must be non-empty")


def _sampling(params: dict) -> None:
    for name in ("temperature", "top_p"):
        if name in params:
            value = params[name]
            if not _is_number(value):
                raise Invalid(f"{name}: Input should be a valid number")
            if not 0 <= value <= 1:
                raise Invalid(f"{name}: Input should be between 0 and 1")
    if "top_k" in params and (not _is_int(params["top_k"]) or params["top_k"] < 0):
        raise Invalid("top_k: Input should be a non-negative integer")
    stops = params.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise Invalid("stop_sequences: Input should be a valid list of strings")
        for i, stop in enumerate(stops):
            if _blank(stop):
                raise Invalid(f"stop_sequences.{i}: each stop sequence must contain non-whitespace characters")
    if "stream" in params and not isinstance(params["stream"], bool):
        raise Invalid("stream: Input should be a valid boolean")
    if "service_tier" in params and params["service_tier"] not in SERVICE_TIERS:
        raise Invalid("service_tier: Input should be 'auto' or 'standard_only'")


def _metadata(params: dict) -> None:
    if "metadata" not in params:
        return
    metadata = params["metadata"]
    if not isinstance(metadata, dict):
        raise Invalid("metadata: Input should be a valid dictionary")
    extra = sorted(set(metadata) - {"user_id"})
    if extra:
        raise Invalid(f"metadata.{extra[0]}: Extra inputs are not permitted")
    user_id = metadata.get("user_id")
    if user_id is not None and (not isinstance(user_id, str) or len(user_id) > 256):
        raise Invalid("metadata.user_id: Input should be a valid string of at most 256 characters")


def _tools(tools: Any) -> list[str]:
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise Invalid("tools: Input should be a valid list")
    names: list[str] = []
    for i, tool in enumerate(tools):
        path = f"tools.{i}"
        if not isinstance(tool, dict):
            raise Invalid(f"{path}: Input should be a valid dictionary")
        kind = tool.get("type", "custom")
        if not isinstance(tool.get("name"), str):
            raise Invalid(f"{path}.{kind}.name: Field required")
        if kind in ("custom", None):
            if not TOOL_NAME_RE.match(tool["name"]):
                raise Invalid(f"{path}.custom.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'")
            if "input_schema" not in tool:
                raise Invalid(f"{path}.custom.input_schema: Field required")
            schema = tool["input_schema"]
            if not isinstance(schema, dict) or schema.get("type") != "object":
                raise Invalid(f"{path}.custom.input_schema.type: Input should be 'object'")
        names.append(tool["name"])
    if len(set(names)) != len(names):
        raise Invalid("tools: Tool names must be unique.")
    return names


def _tool_choice(params: dict, tool_names: list[str]) -> None:
    if "tool_choice" not in params:
        return
    choice = params["tool_choice"]
    if not isinstance(choice, dict) or choice.get("type") not in TOOL_CHOICE_TYPES:
        raise Invalid("tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'")
    if choice["type"] != "none" and not tool_names:
        raise Invalid("tool_choice: tool_choice may only be specified while providing tools.")
    if choice["type"] == "tool":
        if not isinstance(choice.get("name"), str):
            raise Invalid("tool_choice.tool.name: Field required")
        if choice["name"] not in tool_names:
            raise Invalid(f"tool_choice: Tool '{choice['name']}' not found in provided tools")


def _thinking(params: dict) -> None:
    if "thinking" not in params:
        return
    thinking = params["thinking"]
    if not isinstance(thinking, dict) or thinking.get("type") not in THINKING_TYPES:
        raise Invalid("thinking.type: Input should be 'enabled', 'disabled' or 'adaptive'")
    if thinking["type"] == "disabled":
        return
    if thinking["type"] == "enabled":
        budget = thinking.get("budget_tokens")
        if not _is_int(budget):
            raise Invalid("thinking.enabled.budget_tokens: Field required")
        if budget < MIN_THINKING_BUDGET:
            raise Invalid(
                f"thinking.enabled.budget_tokens: Input should be greater than or equal to {MIN_THINKING_BUDGET}"
            )
        if "max_tokens" in params and budget >= params["max_tokens"]:
            raise Invalid(
                "`max_tokens` must be greater than `thinking.budget_tokens`. Please consult our documentation at "
                + THINKING_DOCS
            )
    if "temperature" in params and params["temperature"] != 1:
        raise Invalid(
            "`temperature` may only be set to 1 when thinking is enabled. Please consult our documentation at "
            + THINKING_DOCS
        )
    if "top_k" in params:
        raise Invalid(
            "`top_k` is not supported when thinking is enabled. Please consult our documentation at " + THINKING_DOCS
        )
    if "top_p" in params and not 0.95 <= params["top_p"] <= 1:
        raise Invalid(
            "`top_p` must be between 0.95 and 1 when thinking is enabled. Please consult our documentation at "
            + THINKING_DOCS
        )
    choice = params.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") in ("any", "tool"):
        raise Invalid("Thinking may not be enabled when tool_choice forces tool use.")


def _output_config(config: Any) -> None:
    if config is None:
        return
    if not isinstance(config, dict):
        raise Invalid("output_config: Input should be a valid dictionary")
    extra = sorted(set(config) - {"format", "effort"})
    if extra:
        raise Invalid(f"output_config.{extra[0]}: Extra inputs are not permitted")
    if "effort" in config and config["effort"] is not None and config["effort"] not in EFFORTS:
        raise Invalid("output_config.effort: Input should be 'low', 'medium', 'high', 'xhigh' or 'max'")
    fmt = config.get("format")
    if fmt is None:
        return
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        raise Invalid("output_config.format.type: Input should be 'json_schema'")
    if not isinstance(fmt.get("schema"), dict):
        raise Invalid("output_config.format.schema: Input should be a valid dictionary")


def _cache_breakpoints(params: dict) -> None:
    def marked(block: Any) -> bool:
        return isinstance(block, dict) and isinstance(block.get("cache_control"), dict)

    count = sum(map(marked, params.get("tools") or []))
    system = params.get("system")
    count += sum(map(marked, system)) if isinstance(system, list) else 0
    for message in params["messages"]:
        if isinstance(message["content"], list):
            count += sum(map(marked, message["content"]))
    count += isinstance(params.get("cache_control"), dict)
    if count > MAX_CACHE_BREAKPOINTS:
        raise Invalid(f"A maximum of {MAX_CACHE_BREAKPOINTS} blocks with cache_control may be provided. Found {count}.")


# ---- checks that need the model -----------------------------------------------------------------


def _with_model(params: dict, spec: ModelSpec, *, max_tokens: bool) -> None:
    from .replies import count_input_tokens  # replies imports nothing from here; late to keep layers clear

    if max_tokens and params["max_tokens"] > spec.max_output:
        raise Invalid(
            f"max_tokens: {params['max_tokens']} > {spec.max_output}, which is the maximum allowed number of "
            f"output tokens for {spec.id}"
        )
    tokens = count_input_tokens(params)
    if tokens > spec.context_window:
        raise Invalid(f"prompt is too long: {tokens} tokens > {spec.context_window} maximum")
    if max_tokens and tokens + params["max_tokens"] > spec.context_window:
        raise Invalid(
            f"input length and `max_tokens` exceed context limit: {tokens} + {params['max_tokens']} > "
            f"{spec.context_window}, decrease input length or `max_tokens` and try again"
        )
