"""A strict fake of the ChatGPT Codex backend (and a lenient fake of the public API).

The proxy's tests point the real proxy at this server. It refuses what the real
backend refuses (see shared/reference/codex-backend-notes.md) so that a request
shape that passes here has a fair chance of passing upstream, and it streams the
exact Responses SSE event shapes of the official openai SDK.

ChatGPT mode (strict): POST /backend-api/codex/responses (SSE), POST
/backend-api/codex/responses/compact (remote compaction, one JSON answer), GET
/backend-api/codex/models (`models_reply` makes it fail), GET /backend-api/wham/usage (`usage_reply`, `usage_delay`), POST /oauth/token (JSON refresh_token grants; form-encoded
authorization_code grants, PKCE-checked). Logging in (FakeLoginServer): POST
/api/accounts/deviceauth/usercode and /api/accounts/deviceauth/token, GET /oauth/authorize
(a 302 back to the redirect_uri with a code and the state). API-key mode (lenient, like the public
API): POST /v1/responses (kept in `api_store` unless store is false), /v1/responses/compact,
/v1/responses/input_tokens, GET and DELETE /v1/responses/{id}, GET
/v1/responses/{id}/input_items, POST /v1/chat/completions, GET /v1/models.
Replies come from `fake.script` (one entry per accepted /responses, /responses/compact or
/v1/chat/completions request; see sse_events_for for the keys); every request is
recorded in `fake.requests`.

Standard library only; runs on CPython 3.8 - 3.13.
"""

import base64
import collections
import functools
import hashlib
import itertools
import json
import os
import re
import socket
import sys
import struct
import threading
import time
import uuid
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, urlsplit

CLIENT_ID = "app_EMoamEEZ73f0CkXaXp7hrann"
DEFAULT_TEXT = "Hello from the fake backend."
DEFAULT_USAGE = {"input_tokens": 12, "cached_tokens": 0, "output_tokens": 7, "reasoning_tokens": 0}
KNOWN_FIELDS = frozenset([
    "model", "instructions", "input", "tools", "tool_choice", "parallel_tool_calls", "reasoning",
    "store", "stream", "include", "prompt_cache_key", "text", "service_tier", "client_metadata",
])
TOOL_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
# Nested objects are as strict as the body: "Unknown parameter: 'reasoning.context'".
NESTED_FIELDS = (("reasoning", frozenset(["effort", "summary"])), ("text", frozenset(["format", "verbosity"])))
TOOL_FIELDS = {"function": frozenset(["type", "name", "description", "parameters", "strict"]),
               "custom": frozenset(["type", "name", "description", "format"])}
# The built-in image tool: these keys only (a `model` in it is refused, as the real backend does).
IMAGE_TOOL_FIELDS = frozenset(["type", "size", "quality", "background", "output_format", "output_compression",
                               "moderation", "partial_images", "action", "input_fidelity", "input_image_mask"])
IMAGE_SIZES = ("1024x1024", "1024x1536", "1536x1024", "auto")
# An image_generation_call item in input (a drawn image shown again): these keys only.
IMAGE_CALL_INPUT_FIELDS = frozenset(["type", "id", "status", "result"])
# POST /responses/compact (the Codex CLI's remote compaction): one JSON answer, these fields only.
COMPACT_FIELDS = frozenset([
    "model", "input", "instructions", "tools", "parallel_tool_calls", "reasoning", "text", "service_tier",
    "prompt_cache_key",
])
RATE_LIMIT_HEADERS = [("x-codex-primary-used-percent", "12"), ("x-codex-primary-window-minutes", "300")]

RecordedRequest = collections.namedtuple("RecordedRequest", "method path query headers body json")


def _levels(*efforts):
    return [{"effort": e, "description": "%s reasoning effort" % e} for e in efforts]


def default_catalog():
    """A fresh copy of the default /models catalog (tests may mutate fake.catalog).

    Each entry has every field the real backend gives for Codex CLI 0.169 (`codex debug models
    --bundled` shows them): Codex cannot decode the catalog without display_name, priority,
    shell_type, visibility, supported_in_api, supported_reasoning_levels, support_verbosity,
    truncation_policy and experimental_supported_tools. gpt-5.5 also carries the keys that ask
    for transports and features the proxy does not serve (the WebSocket, Responses Lite, speed
    tiers, model messages, an upgrade)."""
    def entry(slug, priority, levels, default="medium", visibility="list", in_api=True):
        return {"slug": slug, "display_name": slug, "description": "The %s model." % slug,
                "visibility": visibility, "supported_in_api": in_api, "priority": priority,
                "default_reasoning_level": default, "supported_reasoning_levels": _levels(*levels),
                "shell_type": "shell_command", "base_instructions": "You are %s, a coding agent." % slug,
                "supports_reasoning_summaries": True, "default_reasoning_summary": "auto",
                "support_verbosity": True, "default_verbosity": "low", "apply_patch_tool_type": "freeform",
                "web_search_tool_type": "text", "truncation_policy": {"mode": "tokens", "limit": 10000},
                "supports_parallel_tool_calls": True, "context_window": 272000, "max_context_window": 272000,
                "effective_context_window_percent": 95, "experimental_supported_tools": [],
                "input_modalities": ["text", "image"], "supports_search_tool": False}
    newest = entry("gpt-5.5", 1, ["low", "medium", "high", "xhigh"])
    newest.update(supports_websockets=True, use_responses_lite=True, additional_speed_tiers=["fast"],
                  service_tiers=[{"id": "priority", "name": "Fast", "description": "Faster, more usage"}],
                  default_service_tier="priority", availability_nux={"message": "New: gpt-5.5"},
                  upgrade={"model": "gpt-5.6", "migration_markdown": "Try gpt-5.6."},
                  model_messages={"instructions_template": "You are gpt-5.5. {{ personality }}",
                                  "instructions_variables": None},
                  multi_agent_version="v2", auto_review_model_override="gpt-5.5-mini")
    return {"models": [
        newest,
        entry("gpt-5.5-mini", 3, ["low", "medium", "high"]),
        entry("gpt-5.4", 2, ["minimal", "low", "medium", "high"]),
        entry("gpt-5-hidden", 4, ["low", "medium", "high"], visibility="hide"),
        entry("gpt-5-internal", 5, ["low", "medium", "high"], in_api=False),
    ]}


def fake_id_token(account_id="acct-123", email="user@example.com", plan="plus"):
    """An unsigned JWT carrying the claims the Codex CLI reads from id_token."""
    def b64(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
    claims = {"email": email, "exp": int(time.time()) + 3600,
              "https://api.openai.com/auth": {"chatgpt_account_id": account_id, "chatgpt_plan_type": plan}}
    return "%s.%s.%s" % (b64({"alg": "none", "typ": "JWT"}), b64(claims), "sig")


def usage_limit_reply(resets_in_seconds=120, plan_type="plus"):
    """Scripted reply: the real 429 usage-limit answer (note: no Retry-After header)."""
    return {"status": 429, "body": {"error": {
        "type": "usage_limit_reached", "message": "The usage limit has been reached", "plan_type": plan_type,
        "resets_at": int(time.time()) + resets_in_seconds, "resets_in_seconds": resets_in_seconds}}}


def overloaded_reply(code="server_is_overloaded"):
    return {"status": 503, "body": {"error": {"code": code, "message": "Our servers are currently overloaded."}}}


# ---------------------------------------------------------------------------
# Request validation (ChatGPT mode)

def codex_request_error(body, catalog=None):
    """Return the 400 `detail` the real backend would give for this body, or None if accepted.

    Checks run in the order the backend reports them, so a test can assert the first problem.
    """
    if not isinstance(body, dict):
        return "Request body must be a JSON object"
    if body.get("stream") is not True:
        return "Stream must be set to true"
    if body.get("store") is not False:  # missing counts as true upstream
        return "Store must be set to false"
    instructions = body.get("instructions")
    if not isinstance(instructions, str) or not instructions.strip():
        return "Instructions are required"
    for key in body:
        if key not in KNOWN_FIELDS:
            return "Unsupported parameter: %s" % key
    return (_nested_error(body) or _input_error(body.get("input", [])) or _tools_error(body.get("tools", []))
            or _model_error(body, catalog))


def compact_request_error(body, catalog=None):
    """The 400 `detail` of POST /responses/compact for this body, or None if accepted.

    Not a stream and nothing stored: only COMPACT_FIELDS are known (`stream`, `store`,
    `include` are refused like any other); the input is validated as for /responses.
    """
    if not isinstance(body, dict):
        return "Request body must be a JSON object"
    for key in body:
        if key not in COMPACT_FIELDS:
            return "Unsupported parameter: %s" % key
    if "instructions" in body and not isinstance(body["instructions"], str):
        return "Invalid type for 'instructions': expected a string."
    if "input" not in body:
        return "Missing required parameter: 'input'."
    return (_nested_error(body) or _input_error(body["input"]) or _tools_error(body.get("tools", []))
            or _model_error(body, catalog))


def _nested_error(body):
    for name, allowed in NESTED_FIELDS:
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, dict):
            return "Invalid type for '%s': expected an object." % name
        for key in value:
            if key not in allowed:
                return "Unknown parameter: '%s.%s'." % (name, key)
    return None


def _input_error(items):
    """Input items as the backend checks them: a list, no system messages, every tool call
    paired with its output (function and custom tools alike), reasoning and compaction
    items only with the encrypted content the backend issued, a drawn image shown again
    only with its id, status and result (IMAGE_CALL_INPUT_FIELDS)."""
    if not isinstance(items, list):
        return "Input must be a list"
    calls, outputs = [], set()
    seen_calls = set()
    for at, item in enumerate(items):
        if not isinstance(item, dict):
            return "Invalid input item"
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message" and item.get("role") == "system":
            return "System messages are not allowed"
        if kind in ("function_call", "custom_tool_call", "function_call_output", "custom_tool_call_output") \
                and not isinstance(item.get("call_id"), str):
            return "Invalid type for 'input[].call_id': expected a string."
        if kind in ("function_call", "custom_tool_call"):
            calls.append(item.get("call_id"))
            seen_calls.add(item.get("call_id"))
        elif kind in ("function_call_output", "custom_tool_call_output"):
            if item.get("call_id") not in seen_calls:
                return "No tool call found for function call output with call_id %s." % item.get("call_id")
            outputs.add(item.get("call_id"))
        elif kind == "reasoning":
            if not isinstance(item.get("encrypted_content"), str) or not item["encrypted_content"]:
                return "Reasoning items require encrypted_content when store is false."
        elif kind == "compaction":
            if "encrypted_content" not in item:
                return "Missing required parameter: 'input[%d].encrypted_content'." % at
            if not isinstance(item["encrypted_content"], str) or not item["encrypted_content"]:
                return "Invalid type for 'input[%d].encrypted_content': expected a string." % at
        elif kind == "image_generation_call":
            problem = _image_call_input_error(item, at)
            if problem:
                return problem
    for call_id in calls:
        if call_id not in outputs:
            return "No tool output found for function call %s." % call_id
    return None


def _image_call_input_error(item, at):
    for key in item:
        if key not in IMAGE_CALL_INPUT_FIELDS:
            return "Unknown parameter: 'input[%d].%s'." % (at, key)
    for key in ("id", "status", "result"):
        if key not in item:
            return "Missing required parameter: 'input[%d].%s'." % (at, key)
        if not isinstance(item[key], str):
            return "Invalid type for 'input[%d].%s': expected a string." % (at, key)
    return None


def _tools_error(tools):
    if not isinstance(tools, list):
        return "Tools must be a list"
    for at, tool in enumerate(tools):
        if not isinstance(tool, dict):
            return "Invalid tool"
        kind = tool.get("type")
        if kind == "function" and "function" in tool:
            # Chat Completions nesting ({"function": {...}}) is the classic translation mistake.
            return "Missing required parameter: 'tools[].name'."
        if kind == "image_generation":
            for key in tool:
                if key not in IMAGE_TOOL_FIELDS:
                    return "Unknown parameter: 'tools[%d].%s'." % (at, key)
            if tool.get("size", "auto") not in IMAGE_SIZES:
                return "Invalid value: '%s'. Supported values are: %s." % (
                    tool["size"], ", ".join("'%s'" % size for size in IMAGE_SIZES))
        if isinstance(kind, str) and kind in TOOL_FIELDS:
            for key in tool:
                if key not in TOOL_FIELDS[kind]:
                    return "Unknown parameter: 'tools[%d].%s'." % (at, key)
            if not isinstance(tool.get("name"), str):
                return "Missing required parameter: 'tools[].name'."
            if not TOOL_NAME_RE.match(tool["name"]):
                return "Invalid tool name: %r. Expected a string that matches ^[a-zA-Z0-9_-]{1,64}$." % tool["name"]
            bad = uncompilable_pattern(tool.get("parameters")) if kind == "function" else None
            if bad is not None:  # the real backend compiles every pattern with Python's re
                return "Invalid schema for function '%s': %r is not a 'regex'." % (tool["name"], bad)
    return None


def uncompilable_pattern(node):
    """The first `pattern` keyword anywhere in a schema that Python's re cannot compile, or None
    (what is under enum, const, default and examples is data, not schema)."""
    if isinstance(node, list):
        return next((bad for bad in map(uncompilable_pattern, node) if bad is not None), None)
    if not isinstance(node, dict):
        return None
    pattern = node.get("pattern")
    if isinstance(pattern, str):
        try:
            re.compile(pattern)
        except re.error:
            return pattern
    schemas = [value for key, value in node.items() if key not in ("enum", "const", "default", "examples")]
    return next((bad for bad in map(uncompilable_pattern, schemas) if bad is not None), None)


def _model_error(body, catalog):
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return "Model is required"
    entry = _catalog_entry(catalog if catalog is not None else default_catalog(), model)
    if entry is None:
        return "The '%s' model is not supported when using Codex with a ChatGPT account." % model
    reasoning = body.get("reasoning")
    if reasoning is not None:
        effort = reasoning.get("effort")
        allowed = [lvl.get("effort") for lvl in entry.get("supported_reasoning_levels", [])]
        if effort is not None and effort not in allowed:
            return "Unsupported value: '%s' is not supported with the '%s' model. Supported values are: %s." % (
                effort, model, ", ".join(allowed))
    return None


def _catalog_entry(catalog, slug):
    for entry in catalog.get("models", []):
        if entry.get("slug") == slug:
            return entry
    return None


# ---------------------------------------------------------------------------
# Reply rendering

def _pieces(s, n=3):
    """Split s into about n deltas, as the model would stream it."""
    if not s:
        return []
    size = max(1, -(-len(s) // n))
    return [s[i:i + size] for i in range(0, len(s), size)]


def render_usage(usage=None):
    u = dict(DEFAULT_USAGE)
    u.update(usage or {})
    return {"input_tokens": u["input_tokens"],
            "input_tokens_details": {"cached_tokens": u["cached_tokens"], "cache_write_tokens": 0},
            "output_tokens": u["output_tokens"],
            "output_tokens_details": {"reasoning_tokens": u["reasoning_tokens"]},
            "total_tokens": u["input_tokens"] + u["output_tokens"]}


def sse_events_for(reply, model, request=None):
    """The Responses stream events (data dicts, in order) for a scripted reply.

    `request` (the request body) only fills echo fields of the response object.
    Reply keys, in the order their output items come:
      reasoning: a summary text or a list of them -> a reasoning item with encrypted_content;
      web_search: {"query"} -> a web_search_call item;
      image: {"revised_prompt"?, "partial_images"?, "fail"?: {"code", "message"}, "colour"?} -> an
        image_generation_call item, drawn (see drawn_image) with its in_progress, generating,
        partial_image (as many as asked: the reply's, else the tool's partial_images) and completed
        events; `fail` ends it failed with that error instead of a result;
      text (with events_repeat: the text that many times) -> an assistant message;
        citations: [{"url", "title", "start", "end"}] -> url_citation annotations on its text, each
        sent as response.output_text.annotation.added after the deltas and kept in the done part
        (with citations_in_events_only, left out of the done part and item);
      tool_calls: [{"name", "arguments", "call_id"?}] -> function_call items;
      custom_tool_calls: [{"name", "input", "call_id"?}] -> custom_tool_call items (freeform
        input streamed by response.custom_tool_call_input.delta/.done);
    then the terminal event: `fail` {"code", "message"} -> response.failed, `incomplete`
    (a reason) -> response.incomplete, `error_event` -> an `error` event instead, else
    response.completed; `usage` overrides DEFAULT_USAGE; `empty_completed_output` sends the
    terminal response with `output: []` (reported real behaviour); `cut` truncates after
    the last delta. Transport keys (delay, stall, status, body, headers) are ignored here.
    """
    reply = reply or {}
    request = request or {}
    seq = itertools.count()
    events = []
    rid = uuid.uuid4().hex[:24]

    def emit(type_, **fields):
        ev = {"type": type_}
        ev.update(fields)
        ev["sequence_number"] = next(seq)
        events.append(ev)

    response = {
        "id": "resp_" + rid, "object": "response", "created_at": int(time.time()), "status": "in_progress",
        "background": False, "error": None, "incomplete_details": None,
        "instructions": request.get("instructions"), "max_output_tokens": None, "model": model,
        "output": [], "parallel_tool_calls": request.get("parallel_tool_calls", True),
        "previous_response_id": None, "reasoning": request.get("reasoning") or {"effort": None, "summary": None},
        "service_tier": request.get("service_tier", "default"), "store": False, "temperature": 1.0,
        "text": request.get("text") or {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": request.get("tool_choice", "auto"), "tools": request.get("tools", []), "top_p": 1.0,
        "truncation": "disabled", "usage": None, "user": None, "metadata": {},
    }
    emit("response.created", response=json.loads(json.dumps(response)))
    emit("response.in_progress", response=json.loads(json.dumps(response)))
    output = []

    def add_item(item):
        emit("response.output_item.added", output_index=len(output), item=item)

    def done_item(item):
        emit("response.output_item.done", output_index=len(output), item=item)
        output.append(item)

    if reply.get("reasoning") is not None:
        summaries = reply["reasoning"]
        summaries = [summaries] if isinstance(summaries, str) else list(summaries)
        item_id, idx = "rs_%s_%d" % (rid, len(output)), len(output)
        add_item({"id": item_id, "type": "reasoning", "summary": []})
        for si, text in enumerate(summaries):
            common = dict(item_id=item_id, output_index=idx, summary_index=si)
            emit("response.reasoning_summary_part.added", part={"type": "summary_text", "text": ""}, **common)
            for piece in _pieces(text):
                emit("response.reasoning_summary_text.delta", delta=piece, **common)
            emit("response.reasoning_summary_text.done", text=text, **common)
            emit("response.reasoning_summary_part.done", part={"type": "summary_text", "text": text}, **common)
        done_item({"id": item_id, "type": "reasoning", "encrypted_content": "enc-" + uuid.uuid4().hex,
                   "summary": [{"type": "summary_text", "text": t} for t in summaries]})

    if reply.get("web_search") is not None:
        item_id, idx = "ws_%s_%d" % (rid, len(output)), len(output)
        action = {"type": "search", "query": reply["web_search"].get("query", "")}
        add_item({"id": item_id, "type": "web_search_call", "status": "in_progress", "action": action})
        for phase in ("in_progress", "searching", "completed"):
            emit("response.web_search_call." + phase, item_id=item_id, output_index=idx)
        done_item({"id": item_id, "type": "web_search_call", "status": "completed", "action": action})

    if reply.get("image") is not None:
        image_call(reply["image"], request, rid, emit, add_item, done_item, len(output))

    if reply.get("text") is not None:
        repeat = int(reply.get("events_repeat", 1))
        text = reply["text"] * repeat
        item_id, idx = "msg_%s_%d" % (rid, len(output)), len(output)
        common = dict(item_id=item_id, output_index=idx, content_index=0)
        add_item({"id": item_id, "type": "message", "status": "in_progress", "content": [], "role": "assistant"})
        emit("response.content_part.added", part={"type": "output_text", "annotations": [], "text": ""}, **common)
        for piece in _pieces(reply["text"]) * repeat:
            emit("response.output_text.delta", delta=piece, logprobs=[], **common)
        notes = [{"type": "url_citation", "start_index": c["start"], "end_index": c["end"], "url": c["url"],
                  "title": c.get("title", "")} for c in reply.get("citations") or ()]
        for n, note in enumerate(notes):
            emit("response.output_text.annotation.added", annotation_index=n, annotation=note, **common)
        emit("response.output_text.done", text=text, logprobs=[], **common)
        kept = [] if reply.get("citations_in_events_only") else notes
        part = {"type": "output_text", "annotations": kept, "logprobs": [], "text": text}
        emit("response.content_part.done", part=part, **common)
        done_item({"id": item_id, "type": "message", "role": "assistant", "content": [part],
                   "status": "incomplete" if reply.get("incomplete") else "completed"})

    def call_item(kind, prefix, field, events, call, call_id):
        """A call item whose `field` streams as `events`.delta, then .done."""
        item_id, idx = "%s_%s_%d" % (prefix, rid, len(output)), len(output)
        text = call.get(field, "{}" if field == "arguments" else "")
        item = {"id": item_id, "type": kind, "status": "in_progress", field: "", "call_id": call_id,
                "name": call["name"]}
        add_item(dict(item))
        for piece in _pieces(text):
            emit(events + ".delta", item_id=item_id, output_index=idx, delta=piece)
        emit(events + ".done", item_id=item_id, output_index=idx, **{field: text})
        item.update({"status": "completed", field: text})
        done_item(item)

    for n, call in enumerate(reply.get("tool_calls") or []):
        call_item("function_call", "fc", "arguments", "response.function_call_arguments", call,
                  call.get("call_id") or "call_%s_%d" % (rid, n))
    for n, call in enumerate(reply.get("custom_tool_calls") or []):  # freeform tools (Codex CLI's apply_patch)
        call_item("custom_tool_call", "ctc", "input", "response.custom_tool_call_input", call,
                  call.get("call_id") or "call_%s_c%d" % (rid, n))

    if reply.get("error_event"):
        err = reply["error_event"]
        emit("error", code=err.get("code"), message=err.get("message", "error"), param=err.get("param"))
    else:
        final = dict(response, output=output, usage=render_usage(reply.get("usage")))
        if reply.get("fail"):
            final.update(status="failed", usage=None, error={
                "code": reply["fail"].get("code", "server_error"), "message": reply["fail"].get("message", "")})
            terminal = "response.failed"
        elif reply.get("incomplete"):
            final.update(status="incomplete", incomplete_details={"reason": reply["incomplete"]})
            terminal = "response.incomplete"
        else:
            final.update(status="completed", completed_at=int(time.time()))
            terminal = "response.completed"
        if reply.get("empty_completed_output"):
            final["output"] = []  # reported real behaviour: rebuild from output_item.done
        emit(terminal, response=final)
    if reply.get("cut"):
        deltas = [i for i, ev in enumerate(events) if ev["type"].endswith(".delta")]
        events = events[:deltas[-1] + 1] if deltas else events[:-1]
    return events


# ---------------------------------------------------------------------------
# Drawing: the image_generation tool's answers

def png(width, height, rgb=(40, 120, 200)):
    """A real PNG of one colour (what the fake draws: small to send, valid to decode)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xffffffff)
    row = b"\x00" + bytes(rgb) * width
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(row * height, 9)) + chunk(b"IEND", b""))


def png_size(data):
    """(width, height) of PNG bytes, or None."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


def image_tool(request):
    """The request's image_generation tool, or None."""
    return next((t for t in request.get("tools") or () if isinstance(t, dict) and t.get("type") == "image_generation"),
                None)


def input_images(request):
    """The bytes of every input_image data URL in the request's input, in order."""
    found = []
    for item in _as_items(request.get("input")):
        content = _object(item).get("content")
        for part in content if isinstance(content, list) else ():
            url = part.get("image_url") if isinstance(part, dict) and part.get("type") == "input_image" else None
            if isinstance(url, str) and url.startswith("data:") and ";base64," in url:
                found.append(base64.b64decode(url.split(";base64,", 1)[1]))
    return found


def drawn_image(reply, request):
    """(the image's settings, its base64 PNG): the size asked for (an edit: the first input's
    size), the tool's options echoed as the real backend echoes them."""
    tool = image_tool(request) or {}
    inputs = input_images(request)
    size = inputs and png_size(inputs[0])
    if not size:
        asked = tool.get("size", "auto")
        size = tuple(int(n) for n in (asked if asked != "auto" else "1024x1024").split("x"))
    settings = {"size": "%dx%d" % size, "quality": tool.get("quality", "auto").replace("auto", "high"),
                "background": tool.get("background", "auto").replace("auto", "opaque"),
                "output_format": tool.get("output_format", "png")}
    if reply.get("noise_bytes"):  # the benchmark's large image: incompressible bytes, not a picture
        return settings, noise_base64(int(reply["noise_bytes"]))
    colour = tuple(reply.get("colour") or (40, 120, 200))
    return settings, base64.b64encode(png(size[0], size[1], colour)).decode("ascii")


@functools.lru_cache(maxsize=4)
def noise_base64(size):
    return base64.b64encode(os.urandom(size)).decode("ascii")


def image_call(spec, request, rid, emit, add_item, done_item, idx):
    """The events of one image_generation_call item (see sse_events_for's `image`)."""
    item_id = "ig_%s_%d" % (rid, idx)
    settings, b64 = drawn_image(spec, request)
    action = "edit" if input_images(request) else "generate"
    add_item({"id": item_id, "type": "image_generation_call", "status": "in_progress"})
    emit("response.image_generation_call.in_progress", item_id=item_id, output_index=idx)
    emit("response.image_generation_call.generating", item_id=item_id, output_index=idx)
    if spec.get("fail"):
        error = dict({"type": "image_generation_user_error", "param": None}, **spec["fail"])
        done_item({"id": item_id, "type": "image_generation_call", "status": "failed", "result": None,
                   "error": error})
        return
    partials = spec.get("partial_images", (image_tool(request) or {}).get("partial_images", 0))
    for n in range(int(partials or 0)):
        emit("response.image_generation_call.partial_image", item_id=item_id, output_index=idx,
             partial_image_b64=drawn_image(dict(spec, colour=(n * 60 % 256, 80, 80)), request)[1],
             partial_image_index=n, **settings)
    emit("response.image_generation_call.completed", item_id=item_id, output_index=idx)
    done_item(dict({"id": item_id, "type": "image_generation_call", "status": "completed", "result": b64,
                    "revised_prompt": spec.get("revised_prompt", "A drawing of: " + last_user_text(request)),
                    "action": action}, **settings))


def last_user_text(request):
    texts = [part.get("text") for item in map(_object, _as_items(request.get("input"))) if item.get("role") == "user"
             for part in (item.get("content") if isinstance(item.get("content"), list) else ())
             if isinstance(part, dict) and part.get("type") == "input_text"]
    return texts[-1] if texts else ""


def render_sse(events):
    """Responses-style SSE bytes: `event:` + `data:` per event, no [DONE]."""
    return b"".join(("event: %s\ndata: %s\n\n" % (ev["type"], json.dumps(ev))).encode() for ev in events)


def final_response(reply, model, request=None):
    """The assembled Response object (non-stream /v1/responses), output always filled."""
    reply = dict(reply or {}, empty_completed_output=False, cut=False)
    return sse_events_for(reply, model, request)[-1].get("response")


def _item_id(item, prefix="item"):
    kind = item.get("type", "message") if isinstance(item, dict) else None
    prefixes = {"message": "msg", "function_call": "fc", "function_call_output": "fco", "reasoning": "rs",
                "custom_tool_call": "ctc", "custom_tool_call_output": "ctco", "compaction": "cmp"}
    return "%s_%s" % (prefixes.get(kind, prefix) if isinstance(kind, str) else prefix, uuid.uuid4().hex[:24])


def _object(value):
    return value if isinstance(value, dict) else {}


def _as_items(items):
    """A request's `input` as a list of items (a string is one user message)."""
    if isinstance(items, str):
        return [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": items}]}]
    return list(items) if isinstance(items, list) else []


def compaction_content(items):
    """The encrypted_content the fake's compaction of these input items carries."""
    blob = json.dumps(items, sort_keys=True, default=str).encode("utf-8", "replace")
    return "enc-compaction-" + hashlib.sha256(blob).hexdigest()[:24]


def compacted_response(request, reply=None):
    """The answer of POST /responses/compact (openai SDK `CompactedResponse`): every user
    message of the input, as a message item with an id, then one `compaction` item whose
    encrypted_content is derived from the input (a reply's `compaction` key overrides it)."""
    reply = reply or {}
    items = _as_items((request or {}).get("input"))
    output = []
    for item in items:
        if isinstance(item, dict) and item.get("type", "message") == "message" and item.get("role") == "user":
            content = item.get("content")
            if isinstance(content, str):
                content = [{"type": "input_text", "text": content}]
            output.append({"id": _item_id(item), "type": "message", "status": "completed", "role": "user",
                           "content": content})
    output.append({"id": "cmp_" + uuid.uuid4().hex[:24], "type": "compaction",
                   "encrypted_content": reply.get("compaction") or compaction_content(items)})
    return {"id": "resp_" + uuid.uuid4().hex[:24], "object": "response.compaction", "created_at": int(time.time()),
            "output": output, "usage": render_usage(reply.get("usage"))}


def fake_input_tokens(body):
    """What the API-key-mode fake answers on POST /v1/responses/input_tokens: a number derived
    from the body's size (not a real count, but recognisable in a test)."""
    body = body if isinstance(body, dict) else {}
    blob = json.dumps([body.get("instructions"), body.get("input"), body.get("tools")], default=str)
    return max(1, len(blob) // 4)


def input_items_page(items, query):
    """({"object": "list", "data", "first_id", "last_id", "has_more"}, None) for a page of
    stored input items as the API lists them (limit 1-100, default 20; order asc/desc,
    default desc; after: an item id), or (None, error message)."""
    try:
        limit = int(query.get("limit", "20"))
    except ValueError:
        return None, "Invalid 'limit': expected an integer."
    if not 1 <= limit <= 100:
        return None, "Invalid 'limit': integer below minimum value or above maximum value (1 to 100)."
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        return None, "Invalid 'order': expected 'asc' or 'desc'."
    listed = list(items) if order == "asc" else list(reversed(items))
    start = 0
    if query.get("after"):
        ids = [item.get("id") for item in listed]
        if query["after"] not in ids:
            return None, "Invalid 'after': no input item with id '%s'." % query["after"]
        start = ids.index(query["after"]) + 1
    page = listed[start:start + limit]
    return {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None, "has_more": start + limit < len(listed)}, None


def _chat_usage(usage):
    u = render_usage(usage)
    return {"prompt_tokens": u["input_tokens"], "completion_tokens": u["output_tokens"],
            "total_tokens": u["total_tokens"],
            "prompt_tokens_details": {"cached_tokens": u["input_tokens_details"]["cached_tokens"]},
            "completion_tokens_details": {"reasoning_tokens": u["output_tokens_details"]["reasoning_tokens"]}}


def _chat_finish(reply):
    return "tool_calls" if reply.get("tool_calls") else ("length" if reply.get("incomplete") else "stop")


def chat_completion_for(reply, model):
    calls = [{"id": c.get("call_id") or "call_%d" % i, "type": "function",
              "function": {"name": c["name"], "arguments": c.get("arguments", "{}")}}
             for i, c in enumerate(reply.get("tool_calls") or [])]
    message = {"role": "assistant", "content": reply.get("text"), "refusal": None}
    if calls:
        message["tool_calls"] = calls
    return {"id": "chatcmpl-" + uuid.uuid4().hex[:24], "object": "chat.completion", "created": int(time.time()),
            "model": model, "choices": [{"index": 0, "message": message, "finish_reason": _chat_finish(reply),
                                         "logprobs": None}], "usage": _chat_usage(reply.get("usage"))}


def chat_chunks_for(reply, model, include_usage=False):
    cid, created = "chatcmpl-" + uuid.uuid4().hex[:24], int(time.time())

    def chunk(delta, finish=None):
        return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
    chunks = [chunk({"role": "assistant", "content": ""})]
    chunks += [chunk({"content": p}) for p in _pieces(reply.get("text") or "")]
    for i, c in enumerate(reply.get("tool_calls") or []):
        chunks.append(chunk({"tool_calls": [{"index": i, "id": c.get("call_id") or "call_%d" % i, "type": "function",
                                             "function": {"name": c["name"], "arguments": ""}}]}))
        chunks += [chunk({"tool_calls": [{"index": i, "function": {"arguments": p}}]})
                   for p in _pieces(c.get("arguments", "{}"))]
    chunks.append(chunk({}, _chat_finish(reply)))
    if include_usage:
        last = chunk({})
        last.update(choices=[], usage=_chat_usage(reply.get("usage")))
        chunks.append(last)
    return chunks


# ---------------------------------------------------------------------------
# HTTP plumbing

class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # a stuck streaming handler must not hang stop()
    request_queue_size = 128  # bursts of 64 concurrent streams must not be reset
    fake = None

    def handle_error(self, request, client_address):
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # the proxy closed a connection while it was read (a cancelled answer's): expected
        ThreadingHTTPServer.handle_error(self, request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeCodexBackend/1.0"
    timeout = 30  # idle keep-alive connections end on their own

    def log_message(self, *args):
        pass

    def setup(self):
        BaseHTTPRequestHandler.setup(self)
        # Events are written one by one, as the real backend streams them; without
        # this, Nagle's algorithm holds each small write for the peer's delayed ACK.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.fake._track(self.connection, True)

    def finish(self):
        try:
            BaseHTTPRequestHandler.finish(self)
        finally:
            self.server.fake._track(self.connection, False)

    def do_GET(self):
        self._dispatch()

    def do_POST(self):
        self._dispatch()

    def do_DELETE(self):
        self._dispatch()

    def _read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _dispatch(self):
        url = urlsplit(self.path)
        body = self._read_body()
        try:
            parsed = json.loads(body.decode("utf-8")) if body else None
        except ValueError:
            parsed = None
        rec = RecordedRequest(self.command, url.path,
                              {k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()},
                              {k.lower(): v for k, v in self.headers.items()}, body, parsed)
        fake = self.server.fake
        with fake._lock:
            fake.requests.append(rec)
        route = fake._routes.get((self.command, url.path))
        if route is not None:
            return route(self, rec)
        for method, pattern, handler in fake._pattern_routes:
            match = pattern.match(url.path)
            if match and method == self.command:
                return handler(self, rec, *match.groups())
        self.send_json(404, {"detail": "Not Found"})

    def send_json(self, status, obj, headers=None):
        data = obj if isinstance(obj, bytes) else (obj.encode() if isinstance(obj, str) else json.dumps(obj).encode())
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("x-request-id", self.server.fake.new_answer_id())
            for k, v in (headers or {}).items():
                self.send_header(k, str(v))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            self.close_connection = True

    def send_stream(self, chunks, headers, delay=0.0, cut=False, pauses=None):
        """Write each chunk as its own HTTP chunk. cut=True drops the connection mid-body;
        cut="clean" ends the body properly (both without a terminal event). `delay` seconds
        pass between chunks; pauses {i: seconds} add a silence before chunk i."""
        try:
            self.send_response(200)
            for k, v in headers:
                self.send_header(k, str(v))
            self.send_header("x-request-id", self.server.fake.new_answer_id())
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i, data in enumerate(chunks):
                if i and delay:
                    time.sleep(delay)
                if pauses and pauses.get(i):
                    time.sleep(pauses[i])
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            if cut is True:
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
            else:
                self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            self.close_connection = True
            self.server.fake.stream_closed_early.set()


# ---------------------------------------------------------------------------
# The fake

def s256(verifier):
    """A PKCE S256 code challenge."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).rstrip(b"=").decode()


AUTHORIZE_PARAMETERS = {"response_type": "code", "client_id": CLIENT_ID, "code_challenge_method": "S256",
                        "scope": "openid profile email offline_access", "id_token_add_organizations": "true",
                        "codex_cli_simplified_flow": "true", "originator": "codex_cli_rs"}


class FakeLoginServer(object):
    """The issuer's login endpoints, as `codex login` uses them (mixed into FakeCodexBackend).

    Device code: usercode hands out a code; token answers 403 and 404 (alternately: both
    mean "not entered yet") `device_pending` times, then the grant; `device_login_enabled`
    False makes usercode a 404. Browser: /oauth/authorize checks the Codex CLI's parameters
    and redirects (302) to the redirect_uri with a code and the state, as the real page does
    once the user has signed in. Either code buys tokens once at /oauth/token (form-encoded,
    with the right redirect_uri and PKCE verifier): an id token for `account_id` with
    `login_email` and `login_plan`, and an access token the fake then accepts.
    """

    def _init_login(self):
        self.device_login_enabled = True
        self.device_pending = 2
        self.device_interval = "0.1"  # a string, as the real server sends it
        self.login_email = "user@example.com"
        self.login_plan = "plus"
        self.login_tokens = []  # access tokens issued by logins
        self._devices = {}  # device_auth_id -> {"user_code", "pending"}
        self._codes = {}  # authorization code -> (code_challenge, redirect_uri)
        return {("POST", "/api/accounts/deviceauth/usercode"): self._device_usercode,
                ("POST", "/api/accounts/deviceauth/token"): self._device_token,
                ("GET", "/oauth/authorize"): self._authorize}

    def _device_usercode(self, h, rec):
        body = rec.json if isinstance(rec.json, dict) else {}
        if body.get("client_id") != CLIENT_ID:
            return h.send_json(400, {"error": {"code": "invalid_client", "message": "Unknown client_id"}})
        if not self.device_login_enabled:
            return h.send_json(404, {"detail": "Not Found"})
        device_auth_id, user_code = "deviceauth_" + uuid.uuid4().hex, "%04X-%04X" % (next(self._chain), 0xC0DE)
        with self._lock:
            self._devices[device_auth_id] = {"user_code": user_code, "pending": self.device_pending}
        h.send_json(200, {"device_auth_id": device_auth_id, "user_code": user_code, "interval": self.device_interval})

    def _device_token(self, h, rec):
        body = rec.json if isinstance(rec.json, dict) else {}
        with self._lock:
            device = self._devices.get(body.get("device_auth_id"))
            if device is None or device["user_code"] != body.get("user_code"):
                return h.send_json(400, {"error": {"code": "invalid_request", "message": "Unknown device code"}})
            device["pending"] -= 1
            if device["pending"] >= 0:
                return h.send_json(403 if device["pending"] % 2 else 404, {"error": {
                    "code": "deviceauth_authorization_unknown", "message": "Device authorization is unknown."}})
            del self._devices[body["device_auth_id"]]
        verifier = base64.urlsafe_b64encode(uuid.uuid4().bytes * 2).rstrip(b"=").decode()
        code = self._new_code(s256(verifier), self.base_url + "/deviceauth/callback")
        h.send_json(200, {"authorization_code": code, "code_challenge": s256(verifier), "code_verifier": verifier})

    def _authorize(self, h, rec):
        for name, value in AUTHORIZE_PARAMETERS.items():
            if rec.query.get(name) != value:
                return h.send_json(400, {"error": "invalid_request", "error_description": "Bad %s" % name})
        redirect_uri, state = rec.query.get("redirect_uri", ""), rec.query.get("state")
        if not re.match(r"^http://localhost:\d+/auth/callback$", redirect_uri) or not state \
                or not rec.query.get("code_challenge"):
            return h.send_json(400, {"error": "invalid_request", "error_description": "Bad redirect_uri or state"})
        code = self._new_code(rec.query["code_challenge"], redirect_uri)
        query = "code=%s&state=%s" % (quote(code, safe=""), quote(state, safe=""))
        h.send_json(302, b"", {"Location": redirect_uri + "?" + query})

    def _new_code(self, challenge, redirect_uri):
        code = "code-" + uuid.uuid4().hex
        with self._lock:
            self._codes[code] = (challenge, redirect_uri)
        return code

    def _code_grant(self, h, rec):
        """POST /oauth/token, form-encoded authorization_code grant."""
        form = {k: v[0] for k, v in parse_qs(rec.body.decode("utf-8", "replace")).items()}
        if form.get("client_id") != CLIENT_ID or form.get("grant_type") != "authorization_code":
            return h.send_json(400, {"error": "invalid_request", "error_description": "Bad client_id or grant_type"})
        with self._lock:
            issued = self._codes.pop(form.get("code"), None)  # a code buys tokens once
        if issued is None or issued[1] != form.get("redirect_uri") or issued[0] != s256(form.get("code_verifier", "")):
            return h.send_json(400, {"error": "invalid_grant", "error_description":
                                     "Invalid authorization code, redirect_uri or code_verifier"})
        n = next(self._chain)
        access, refresh = "access-login-%d" % n, "refresh-login-%d" % n
        with self._lock:
            self.valid_access_tokens.add(access)
            self._issued.add(refresh)
            self.login_tokens.append(access)
        h.send_json(200, {"access_token": access, "refresh_token": refresh, "token_type": "Bearer",
                          "id_token": fake_id_token(self.account_id, self.login_email, self.login_plan)})


class FakeCodexBackend(FakeLoginServer):
    def __init__(self):
        self.valid_access_tokens = {"access-1"}
        self.account_id = "acct-123"
        self.accounts = {}  # access token -> its account id, for tokens of other accounts than account_id
        self.api_keys = {"sk-test-key"}
        self.refresh_tokens = {"refresh-1": ("access-2", "refresh-2", None)}
        self.refresh_count = 0
        self.refresh_delay = 0.0
        self.script = collections.deque()
        self.stream_closed_early = threading.Event()
        self.catalog = default_catalog()
        self.usage = None  # wham/usage's answer; None: one built from used_percents
        # The knob of each account's usage: account id -> {"primary": percent, "secondary": percent}, what
        # the headers of its answers (429s too) and its wham/usage report; an account not here reports
        # RATE_LIMIT_HEADERS and wham/usage's 12% and 3%.
        self.used_percents = {}
        self.usage_reply = None  # {"status", "body"}: what wham/usage answers instead
        self.usage_delay = 0.0  # seconds wham/usage waits before answering (a slow re-check)
        self.models_reply = None  # {"status", "body"}: what /backend-api/codex/models answers instead of the catalog
        self.requests = []
        self.answer_ids = []  # the x-request-id of each answer, in order (as the real backend names its answers)
        # API-key mode: the responses the fake /v1/responses made (unless store: false), by id:
        # {"response": the Response object, output filled; "input": its input items, each with an id}.
        # Tests may add entries to have something to GET.
        self.api_store = collections.OrderedDict()
        self._lock = threading.Lock()
        self._spent, self._issued, self._chain = set(), set(), itertools.count(3)
        self._conns = set()
        self._thread = None
        self._closed = False
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        self.base_url = "http://127.0.0.1:%d" % self._server.server_address[1]
        self.chatgpt_base = self.base_url + "/backend-api/codex"
        self.api_base = self.base_url + "/v1"
        self.token_url = self.base_url + "/oauth/token"
        self._routes = {
            ("POST", "/backend-api/codex/responses"): self._codex_responses,
            ("GET", "/backend-api/codex/models"): self._codex_models,
            ("GET", "/backend-api/wham/usage"): self._wham_usage,
            ("POST", "/oauth/token"): self._oauth_token,
            ("POST", "/backend-api/codex/responses/compact"): self._codex_compact,
            ("POST", "/v1/responses"): self._api_responses,
            ("POST", "/v1/responses/compact"): self._api_compact,
            ("POST", "/v1/responses/input_tokens"): self._api_input_tokens,
            ("POST", "/v1/chat/completions"): self._api_chat,
            ("POST", "/v1/images/generations"): self._api_images,
            ("GET", "/v1/models"): self._api_models,
        }
        self._routes.update(self._init_login())
        self._pattern_routes = [
            ("GET", re.compile(r"^/v1/responses/([^/]+)$"), self._api_retrieve),
            ("DELETE", re.compile(r"^/v1/responses/([^/]+)$"), self._api_delete),
            ("GET", re.compile(r"^/v1/responses/([^/]+)/input_items$"), self._api_input_items),
        ]

    # -- lifecycle
    def start(self):
        if self._closed:
            raise RuntimeError("FakeCodexBackend cannot be restarted after stop()")
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                            name="FakeCodexBackend", daemon=True)
            self._thread.start()
        return self

    def stop(self):
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(5)
        for conn in self.open_connections():  # wake handler threads parked on idle keep-alive connections
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._server.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def reset(self):
        with self._lock:
            del self.requests[:]
            self.script.clear()
            self.api_store.clear()
            self.refresh_count = 0
        self.stream_closed_early.clear()

    def requests_to(self, path_suffix):
        with self._lock:
            return [r for r in self.requests if r.path.endswith(path_suffix)]

    def new_answer_id(self):
        """A new answer's x-request-id (not under _lock: some answers are sent holding it)."""
        answer_id = "fake-req-%s" % uuid.uuid4().hex[:16]
        self.answer_ids.append(answer_id)  # one atomic step
        return answer_id

    def open_connections(self):
        """The sockets of the connections clients have open to the fake now."""
        with self._lock:
            return list(self._conns)

    def _track(self, conn, add):
        with self._lock:
            (self._conns.add if add else self._conns.discard)(conn)

    # -- helpers
    def _next_reply(self, body):
        with self._lock:
            reply = self.script.popleft() if self.script else (
                {"image": {}} if _object(body).get("tool_choice") == {"type": "image_generation"}
                else {"text": DEFAULT_TEXT})
        if callable(reply):
            reply = reply(body)
        if callable(reply.get("callback")):
            reply = reply["callback"](body)
        return reply

    @staticmethod
    def _bearer(rec):
        auth = rec.headers.get("authorization", "")
        return auth[7:].strip() if auth[:7].lower() == "bearer " else None

    def _http_error(self, h, reply):
        h.send_json(int(reply["status"]), reply.get("body", {"detail": "error"}), reply.get("headers"))

    def _stream_responses(self, h, reply, body, extra_headers, events=None):
        """Stream a reply's events. A reply's `stall` (seconds) is one silence of the upstream
        mid-answer: after the first delta event, or while it draws (after the first
        image_generation_call.generating), else after response.in_progress."""
        events = events if events is not None else sse_events_for(reply, body.get("model"), body)
        headers = [("Content-Type", "text/event-stream")] + extra_headers + list((reply.get("headers") or {}).items())
        pauses = None
        if reply.get("stall"):
            busy = [i for i, ev in enumerate(events) if ev["type"].endswith((".delta", ".generating"))]
            pauses = {(busy[0] if busy else min(1, len(events) - 1)) + 1: float(reply["stall"])}
        h.send_stream([render_sse([ev]) for ev in events], headers, reply.get("delay", 0.0), reply.get("cut", False),
                      pauses)

    # -- ChatGPT mode
    def _chatgpt_auth(self, h, rec):
        token = self._bearer(rec)
        if token not in self.valid_access_tokens:
            h.send_json(401, {"error": {
                "message": "Provided authentication token is expired. Please try signing in again.",
                "type": "invalid_request_error", "param": None, "code": "token_expired"}, "status": 401})
            return False
        account = rec.headers.get("chatgpt-account-id")
        if not account:
            h.send_json(400, {"detail": "Missing ChatGPT-Account-ID header"})
            return False
        if account != self.accounts.get(token, self.account_id):
            h.send_json(401, {"detail": "Account mismatch: the token does not belong to this workspace."})
            return False
        return True

    def _checked_reply(self, h, rec, request_error):
        """The next script entry for a request the backend accepts, or None once an error is answered
        (a wrong login, a request `request_error` refuses, or a scripted {"status", "body"})."""
        if not self._chatgpt_auth(h, rec):
            return None
        detail = request_error(rec.json, self.catalog)
        if detail:
            h.send_json(400, {"detail": detail})
            return None
        reply = self._next_reply(rec.json)
        if reply.get("status"):
            headers = dict(self.rate_limit_headers(rec))
            headers.update(reply.get("headers") or {})
            self._http_error(h, dict(reply, headers=headers))
            return None
        return reply

    def rate_limit_headers(self, rec):
        """The usage headers of an answer to the account `rec` was sent with (see used_percents)."""
        used = self.used_percents.get(rec.headers.get("chatgpt-account-id"))
        if used is None:
            return list(RATE_LIMIT_HEADERS)
        headers = []
        for name, minutes in (("primary", 300), ("secondary", 10080)):
            if name in used:
                headers += [("x-codex-%s-used-percent" % name, "%g" % used[name]),
                            ("x-codex-%s-window-minutes" % name, str(minutes)),
                            ("x-codex-%s-reset-after-seconds" % name, str(minutes * 30))]
        return headers

    def _codex_responses(self, h, rec):
        reply = self._checked_reply(h, rec, codex_request_error)
        if reply is not None:
            self._stream_responses(h, reply, rec.json, self.rate_limit_headers(rec))

    def _codex_compact(self, h, rec):
        """POST /responses/compact: the Codex CLI's remote compaction, one JSON answer. Takes one
        script entry like /responses: {"status", "body"} answers an error; `compaction` sets the
        encrypted_content, `usage` the usage, `delay` waits before answering."""
        reply = self._checked_reply(h, rec, compact_request_error)
        if reply is None:
            return
        if reply.get("delay"):
            time.sleep(reply["delay"])
        headers = dict(self.rate_limit_headers(rec))
        headers.update(reply.get("headers") or {})
        h.send_json(200, compacted_response(rec.json, reply), headers)

    def _wham_usage(self, h, rec):
        """The plan's usage windows, as chatgpt.com/backend-api/wham/usage reports them."""
        if not self._chatgpt_auth(h, rec):
            return
        if self.usage_delay:
            time.sleep(self.usage_delay)
        if self.usage_reply:
            return self._http_error(h, self.usage_reply)
        now = int(time.time())
        used = self.used_percents.get(rec.headers.get("chatgpt-account-id"), {"primary": 12, "secondary": 3})
        windows = {name + "_window": {"used_percent": used[name], "limit_window_seconds": seconds,
                                      "reset_after_seconds": after, "reset_at": now + after}
                   for name, seconds, after in (("primary", 18000, 3600), ("secondary", 604800, 86400))
                   if name in used}
        full = any(percent >= 100 for percent in used.values())
        h.send_json(200, self.usage if self.usage is not None else {
            "email": "user@example.com", "plan_type": "plus",
            "rate_limit": dict(windows, allowed=not full, limit_reached=full)})

    def _codex_models(self, h, rec):
        if not self._chatgpt_auth(h, rec):
            return
        if not rec.query.get("client_version"):
            return h.send_json(400, {"detail": "client_version is required"})
        if self.models_reply:
            return self._http_error(h, self.models_reply)
        h.send_json(200, self.catalog, dict(RATE_LIMIT_HEADERS))

    def _oauth_token(self, h, rec):
        if rec.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            return self._code_grant(h, rec)
        body = rec.json if isinstance(rec.json, dict) else {}
        if body.get("client_id") != CLIENT_ID:
            return h.send_json(400, {"error": {"code": "invalid_client", "message": "Unknown client_id"}})
        if body.get("grant_type") != "refresh_token":
            return h.send_json(400, {"error": {"code": "unsupported_grant_type", "message": "Bad grant_type"}})
        token = body.get("refresh_token")
        with self._lock:  # spend atomically, so a second concurrent use of one token is "reused"
            if token in self._spent:
                return h.send_json(401, {"error": {"code": "refresh_token_reused", "message":
                                                   "Your refresh token has already been used to generate a new access token. Please try signing in again."}})
            if token in self.refresh_tokens:
                new = self.refresh_tokens[token]
            elif token in self._issued:  # tokens we handed out can be refreshed again
                n = next(self._chain)
                new = ("access-%d" % n, "refresh-%d" % n, None)
            else:
                return h.send_json(401, {"error": {"code": "refresh_token_invalidated", "message":
                                                   "Your refresh token has been invalidated. Please try signing in again."}})
            self._spent.add(token)
        if self.refresh_delay:
            time.sleep(self.refresh_delay)
        access, refresh, id_token = new
        with self._lock:
            self.valid_access_tokens.clear()  # like an expiry: only the newest access token works
            self.valid_access_tokens.add(access)
            self._issued.add(refresh)
            self.refresh_count += 1
        h.send_json(200, {"access_token": access, "refresh_token": refresh,
                          "id_token": id_token or fake_id_token(self.account_id)})

    # -- API-key mode (lenient, like the public API)
    def _api_auth(self, h, rec):
        if self._bearer(rec) in self.api_keys:
            return True
        h.send_json(401, {"error": {"message": "Incorrect API key provided.", "type": "invalid_request_error",
                                    "param": None, "code": "invalid_api_key"}})
        return False

    def _api_body(self, h, rec):
        if isinstance(rec.json, dict):
            return rec.json
        h.send_json(400, {"error": {"message": "We could not parse the JSON body of your request.",
                                    "type": "invalid_request_error", "param": None, "code": None}})
        return None

    def _api_call(self, h, rec):
        """(body, scripted reply) of an API-key-mode call, or None once a refusal was answered."""
        if not self._api_auth(h, rec):
            return None
        body = self._api_body(h, rec)
        if body is None:
            return None
        reply = self._next_reply(body)
        if reply.get("status"):
            self._http_error(h, reply)
            return None
        return body, reply

    def _api_responses(self, h, rec):
        call = self._api_call(h, rec)
        if call is None:
            return
        body, reply = call
        previous = body.get("previous_response_id")
        if previous is not None and previous not in self.api_store:  # as the API: it chains only what it stored
            return h.send_json(400, {"error": {"message": "Previous response with id '%s' not found." % previous,
                                               "type": "invalid_request_error", "param": "previous_response_id",
                                               "code": "previous_response_not_found"}})
        if body.get("stream"):
            events = sse_events_for(reply, body.get("model"), body)
            self._api_keep(body, events)  # before the answer: a client may GET it as soon as it is read
            return self._stream_responses(h, reply, body, [], events)
        problem = reply.get("fail") or reply.get("error_event")
        if problem:
            return h.send_json(500, {"error": {"message": problem.get("message", ""), "type": "server_error",
                                               "param": None, "code": problem.get("code")}})
        events = sse_events_for(dict(reply, empty_completed_output=False, cut=False), body.get("model"), body)
        self._api_keep(body, events)
        h.send_json(200, events[-1]["response"], reply.get("headers"))

    def _api_keep(self, body, events):
        """Remember a response (as the public API does unless store is false)."""
        final = events[-1].get("response") if events else None
        if body.get("store") is False or not isinstance(final, dict) or "id" not in final:
            return
        output = [ev["item"] for ev in events if ev["type"] == "response.output_item.done"]
        items = [dict(item, id=item.get("id") or _item_id(item)) for item in _as_items(body.get("input"))
                 if isinstance(item, dict)]
        with self._lock:
            self.api_store[final["id"]] = {"response": dict(final, output=output), "input": items}

    def _api_not_found(self, h, response_id):
        h.send_json(404, {"error": {"message": "Response with id '%s' not found." % response_id,
                                    "type": "invalid_request_error", "param": None, "code": None}})

    def _api_compact(self, h, rec):
        """POST /v1/responses/compact (lenient): the same answer shape as the backend's."""
        call = self._api_call(h, rec)
        if call is None:
            return
        body, reply = call
        h.send_json(200, compacted_response(body, reply), reply.get("headers"))

    def _api_input_tokens(self, h, rec):
        if not self._api_auth(h, rec):
            return
        body = self._api_body(h, rec)
        if body is None:
            return
        h.send_json(200, {"object": "response.input_tokens", "input_tokens": fake_input_tokens(body)})

    def _api_stored(self, h, rec, response_id, forget=False):
        """A stored response (taken out of the store with `forget`), or None once a 401/404 is answered."""
        if not self._api_auth(h, rec):
            return None
        with self._lock:
            stored = self.api_store.pop(response_id, None) if forget else self.api_store.get(response_id)
        if stored is None:
            self._api_not_found(h, response_id)
        return stored

    def _api_retrieve(self, h, rec, response_id):
        stored = self._api_stored(h, rec, response_id)
        if stored is not None:
            h.send_json(200, stored["response"])

    def _api_delete(self, h, rec, response_id):
        if self._api_stored(h, rec, response_id, forget=True) is not None:
            h.send_json(200, {"id": response_id, "object": "response", "deleted": True})

    def _api_input_items(self, h, rec, response_id):
        stored = self._api_stored(h, rec, response_id)
        if stored is None:
            return
        page, problem = input_items_page(stored["input"], rec.query)
        if problem:
            return h.send_json(400, {"error": {"message": problem, "type": "invalid_request_error",
                                               "param": problem.split("'")[1], "code": None}})
        h.send_json(200, page)

    def _api_chat(self, h, rec):
        call = self._api_call(h, rec)
        if call is None:
            return
        body, reply = call
        model = body.get("model")
        if not body.get("stream"):
            return h.send_json(200, chat_completion_for(reply, model), reply.get("headers"))
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        chunks = [("data: %s\n\n" % json.dumps(c)).encode() for c in chat_chunks_for(reply, model, include_usage)]
        if reply.get("cut"):
            chunks = chunks[:-2 if include_usage else -1]
        else:
            chunks.append(b"data: [DONE]\n\n")
        headers = [("Content-Type", "text/event-stream")] + list((reply.get("headers") or {}).items())
        h.send_stream(chunks, headers, reply.get("delay", 0.0), reply.get("cut", False))

    def _api_images(self, h, rec):
        """The public Images API (non-stream): a PNG of the size asked, n of them."""
        body = self._api_body(h, rec) if self._api_auth(h, rec) else None
        if body is None:
            return
        width, height = (int(n) for n in (body.get("size") or "1024x1024").replace("auto", "1024x1024").split("x"))
        image = base64.b64encode(png(width, height)).decode("ascii")
        h.send_json(200, {"created": int(time.time()), "data": [{"b64_json": image}] * int(body.get("n") or 1),
                          "usage": {"input_tokens": 5, "output_tokens": 9, "total_tokens": 14}})

    def _api_models(self, h, rec):
        if not self._api_auth(h, rec):
            return
        h.send_json(200, {"object": "list", "data": [
            {"id": m, "object": "model", "created": 0, "owned_by": "openai"}
            for m in ("gpt-4.1", "gpt-4.1-mini", "gpt-4o", "gpt-5")]})
