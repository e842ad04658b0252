"""A bounded, deterministic fuzzer for the proxy's request handling.

What it proves, against the real proxy in front of the strict fake backend:

* every JSON-valid body gets a 4xx (in the dialect of its path) or a correct
  answer (the fake's text), never a 5xx, a reset or a cut answer;
* nothing the proxy logs carries a traceback ("internal error", "failed
  mid-answer", exc_info...);
* a normal request is served throughout (a canary every CANARY_EVERY requests).

Mutations: every path of realistic requests of each endpoint (the recorded
Claude Code and Codex CLI requests, trimmed, plus everything else each
dialect has) gets a few wrong-typed values or loses its key; then hostile
structure (deep nesting, 1 MB strings, huge numbers, non-object bodies,
bad UTF-8, lying Content-Encoding), values that end up in upstream headers,
and HTTP-level garbage over raw sockets.

Deterministic (a fixed seed; CODEX_PROXY_FUZZ_SEED picks another) and bounded
(a few thousand requests, a few seconds). CODEX_PROXY_FUZZ_FULL=1 runs every
path with every mutation instead of a sample; CODEX_PROXY_FUZZ_REPORT=FILE
writes every failure with its full traceback to FILE.

Failures are collected over a whole test and reported once at its end,
grouped by cause, each with an example (endpoint, JSON path, mutation, what
happened, the log line).
"""

import collections
import gc
import gzip
import http.client
import json
import logging
import os
import random
import re
import socket
import sys
import threading
import time
import traceback
import unittest

from fake_upstream import DEFAULT_TEXT
from support import ProxyTestCase, codex_proxy, output_text, sse_events, streamed_text, wait_for

HERE = os.path.dirname(os.path.abspath(__file__))
REFERENCE = os.path.join(os.path.dirname(os.path.dirname(HERE)), "shared", "reference")
if not os.path.isdir(REFERENCE):
    REFERENCE = "/work/shared/reference"

SEED = int(os.environ.get("CODEX_PROXY_FUZZ_SEED") or 20261128)
FULL = os.environ.get("CODEX_PROXY_FUZZ_FULL") == "1"
REPORT = os.environ.get("CODEX_PROXY_FUZZ_REPORT")
PER_PATH = 3  # mutations per path below the top level (top-level keys get all of them)
CANARY_EVERY = 50
MAX_REPORT_LINES = 40

CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"
MESSAGES = "/v1/messages?beta=true"
COUNT = "/v1/messages/count_tokens"

FOUR = tuple(range(400, 500))
VALID_CHAT = b'{"model": "gpt-5.5", "messages": [{"role": "user", "content": "hi"}]}'

CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # not allowed in a field value (RFC 9110 5.5)

DELETE = object()
MUTATIONS = [
    ("5", 5), ("-1", -1), ("1e308", 1e308), ("10**40", 10 ** 40), ("true", True), ("null", None),
    ('"x"', "x"), ('""', ""), ("[]", []), ("[1]", [1]), ("{}", {}), ('{"a": 1}', {"a": 1}),
    ('"\\ud800"', "\ud800"), ('"\u4e2d"', "\u4e2d"), ('"a\\r\\nX-Injected: 1"', "a\r\nX-Injected: 1"),
]
DELETE_MUTATION = ("<deleted>", DELETE)

BAD_LOG_MARKERS = ("Traceback", "internal error", "failed mid-answer", "connection failed")


# ---- the requests that get mutated ---------------------------------------------

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
PDF = "JVBERi0xLjQKMSAwIG9iajw8L1R5cGUvUGFnZT4+ZW5kb2JqCg=="
WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "description": "City"},
                                                    "days": {"type": "integer", "minimum": 1}},
                  "required": ["city"], "additionalProperties": False}


def load_reference(name):
    with open(os.path.join(REFERENCE, name)) as handle:
        return json.load(handle)


def chat_request():
    return {
        "model": "gpt-5.5",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in English."}]},
            {"role": "user", "content": [
                {"type": "text", "text": "What is the weather where this photo was taken?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64," + PNG, "detail": "low"}},
                {"type": "file", "file": {"filename": "trip.pdf", "file_data": "data:application/pdf;base64," + PDF}},
            ]},
            {"role": "assistant", "content": "Let me check.", "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "sunny, 21C"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "It is sunny."}], "refusal": None,
             "name": "bot"},
            {"role": "user", "content": "Thanks. And tomorrow?", "name": "alice"},
        ],
        "tools": [{"type": "function", "function": {
            "name": "get_weather", "description": "Weather for a city", "parameters": WEATHER_SCHEMA,
            "strict": False}}],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "parallel_tool_calls": True,
        "response_format": {"type": "json_schema", "json_schema": {
            "name": "answer", "description": "The answer", "strict": True,
            "schema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}}},
        "stop": ["STOP", "\n\n\n\n"],
        "stream": False,
        "stream_options": {"include_usage": True},
        "reasoning_effort": "low",
        "service_tier": "priority",
        "prompt_cache_key": "fuzz-cache-key",
        "web_search_options": {"search_context_size": "low",
                               "user_location": {"type": "approximate", "approximate": {"country": "FR"}}},
        "modalities": ["text"],
        "max_tokens": 256, "max_completion_tokens": 512, "temperature": 0.5, "top_p": 1, "n": 1,
        "presence_penalty": 0, "frequency_penalty": 0, "logit_bias": {"50256": -100}, "seed": 7, "user": "u-1",
        "metadata": {"k": "v"}, "store": False, "verbosity": "low", "logprobs": False,
    }


def chat_legacy_request():
    """The legacy functions/function_call shape, streamed."""
    return {
        "model": "gpt-5.4",
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None,
             "function_call": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}},
            {"role": "function", "name": "get_weather", "content": "sunny"},
            {"role": "user", "content": "And in Rome?"},
        ],
        "functions": [{"name": "get_weather", "description": "Weather for a city", "parameters": WEATHER_SCHEMA}],
        "function_call": {"name": "get_weather"},
        "stream": True,
        "stream_options": {"include_usage": True},
        "reasoning": {"effort": "medium"},
    }


def messages_request():
    """The recorded Claude Code request, trimmed, plus every block type a conversation can hold."""
    recorded = load_reference("claude-code-2.1.328-messages-request.json")["body"]
    body = {key: recorded[key] for key in ("model", "metadata", "max_tokens", "thinking", "context_management",
                                           "output_config", "stream")}
    body["system"] = [dict(block, text=block["text"][:120]) for block in recorded["system"]]
    first, system_message = recorded["messages"][0], recorded["messages"][1]
    first = dict(first, content=[dict(b, text=b["text"][:80]) for b in first["content"]])
    system_message = dict(system_message, content=[dict(b, text=b["text"][:80]) for b in system_message["content"]])
    tools = {tool["name"]: tool for tool in recorded["tools"]}
    write, skill, deferred = tools["Write"], tools["Skill"], tools["DeferredToolPlaceholder"]
    body["tools"] = [
        dict(write, description=write["description"][:80]),  # input_schema as a JSON string, as recorded
        dict(skill, description=skill["description"][:80], input_schema=json.loads(skill["input_schema"])),
        dict(deferred),
        {"type": "web_search_20250305", "name": "web_search", "max_uses": 3, "allowed_domains": ["example.com"],
         "user_location": {"type": "approximate", "city": "Paris", "country": "FR", "timezone": "Europe/Paris"}},
    ]
    body["messages"] = [
        first,
        system_message,
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "The user wants pong.", "signature": "codex-proxy:enc-abc"},
            {"type": "redacted_thinking", "data": "codex-proxy:enc-def"},
            {"type": "text", "text": "Writing it down."},
            {"type": "tool_use", "id": "toolu_01", "name": "Write",
             "input": {"file_path": "/tmp/pong.txt", "content": "pong"}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_01", "is_error": False, "content": [
                {"type": "text", "text": "File written."},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}]},
            {"type": "text", "text": "Now look at these.", "cache_control": {"type": "ephemeral"}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
            {"type": "document", "title": "Spec", "source": {"type": "base64", "media_type": "application/pdf",
                                                           "data": PDF}},
            {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "plain text"}},
            {"type": "document", "source": {"type": "content", "content": [{"type": "text", "text": "inner"}]}},
            {"type": "search_result", "title": "Result", "source": "https://example.com",
             "content": [{"type": "text", "text": "found"}]},
        ]},
        {"role": "assistant", "content": "Done."},
        {"role": "user", "content": "Reply with exactly: pong"},
    ]
    body["tool_choice"] = {"type": "auto", "disable_parallel_tool_use": False}
    body["stop_sequences"] = ["STOP"]
    body["temperature"] = 1
    body["top_k"] = 40
    body["service_tier"] = "auto"
    return body


def count_tokens_request():
    return {
        "model": "claude-sonnet-4-5",
        "system": "You are terse.",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"},
                                         {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                                      "data": PNG}}]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                               "input": {"city": "Paris"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}]},
        ],
        "tools": [{"name": "get_weather", "description": "Weather for a city", "input_schema": WEATHER_SCHEMA}],
        "tool_choice": {"type": "tool", "name": "get_weather"},
        "thinking": {"type": "enabled", "budget_tokens": 2048},
    }


def responses_request():
    """The recorded Codex CLI request, trimmed, plus input items of every type."""
    recorded = load_reference("codex-cli-0.169-responses-request.json")["body"]
    body = dict(recorded)
    body["input"] = [dict(item, content=[dict(part, text=part["text"][:80]) for part in item["content"]])
                     for item in recorded["input"]][:3] + [
        {"role": "system", "content": "Be brief."},
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "Look:"},
            {"type": "input_image", "image_url": "data:image/png;base64," + PNG, "detail": "low"},
            {"type": "input_file", "filename": "a.pdf", "file_data": "data:application/pdf;base64," + PDF}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Looking."}]},
        {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "thinking"}],
         "encrypted_content": "enc-1"},
        {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "exec_command",
         "arguments": "{\"cmd\": \"ls\"}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "a.txt"},
        {"type": "custom_tool_call", "call_id": "call_2", "name": "apply_patch", "input": "*** Begin Patch"},
        {"type": "custom_tool_call_output", "call_id": "call_2", "output": "ok"},
        {"type": "message", "role": "user", "content": "Reply with exactly: pong"},
    ]
    tools = recorded["tools"]
    exec_command = dict(tools[0], parameters=dict(tools[0]["parameters"], properties={
        key: tools[0]["parameters"]["properties"][key] for key in ("cmd", "prefix_rule", "sandbox_permissions")}))
    body["tools"] = [exec_command, tools[2], tools[3], tools[8], tools[9]]
    body["instructions"] = "You are Codex."
    body["text"] = {"verbosity": "low", "format": {"type": "json_schema", "name": "out", "strict": False,
                                                   "schema": {"type": "object", "properties": {}}}}
    body["reasoning"] = {"effort": "medium", "summary": "auto"}
    body["service_tier"] = "priority"
    return body


def messages_headers():
    recorded = load_reference("claude-code-2.1.328-messages-request.json")["headers"]
    keep = ("anthropic-version", "anthropic-beta", "x-app", "X-Claude-Code-Session-Id", "User-Agent", "Accept")
    return {name: recorded[name] for name in keep}


def responses_headers():
    recorded = load_reference("codex-cli-0.169-responses-request.json")["headers"]
    return {name: value for name, value in recorded.items()
            if name not in ("authorization", "content-type") and "[" not in value}


# ---- JSON paths and mutations ----------------------------------------------------

def walk(tree, prefix=()):
    """Every path below the root: tuples of dict keys and list indices."""
    if isinstance(tree, dict):
        children = tree.items()
    elif isinstance(tree, list):
        children = enumerate(tree)
    else:
        return
    for key, value in children:
        yield prefix + (key,)
        for path in walk(value, prefix + (key,)):
            yield path


def replaced(tree, path, value):
    """A copy of `tree` (copied along `path` only) with the value at `path` replaced (or deleted)."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    copy = dict(tree) if isinstance(tree, dict) else list(tree)
    if rest:
        copy[head] = replaced(tree[head], rest, value)
    elif value is DELETE:
        del copy[head]
    else:
        copy[head] = value  # a key the tree lacks is added
    return copy


def path_text(path):
    out = ""
    for key in path:
        out += "[%d]" % key if isinstance(key, int) else ("." if out else "") + key
    return out or "<body>"


def encode(body):
    """JSON bytes, ASCII only: a lone surrogate goes as the escape \\ud800."""
    return json.dumps(body, ensure_ascii=True).encode("ascii")


def mutation_plan(base, rng):
    """[(path, (label, value))]: every mutation for top-level keys, a sample of PER_PATH below."""
    plan = []
    for path in walk(base):
        choices = list(MUTATIONS) + ([DELETE_MUTATION] if isinstance(path[-1], str) else [])
        if not FULL and len(path) > 1:
            rng.shuffle(choices)
            choices = choices[:PER_PATH]
        plan.extend((path, choice) for choice in choices)
    return plan


def nested(depth, kind="array"):
    if kind == "array":
        return "[" * depth + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


def with_raw(base, path, raw_json):
    """The body text of `base` with the value at `path` replaced by the JSON text `raw_json`."""
    mark = "@@fuzz-raw-value@@"
    text = json.dumps(replaced(base, path, mark))
    return text.replace('"%s"' % mark, raw_json, 1).encode("utf-8")


# ---- reading answers ---------------------------------------------------------------

def is_anthropic(path):
    return path.split("?")[0].startswith("/v1/messages")


def error_shape_problem(endpoint, raw):
    """None if `raw` is an error body in the dialect of `endpoint`, else what is wrong."""
    try:
        body = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return "error body is not JSON: %r" % raw[:120]
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or not isinstance(error.get("message"), str) \
            or not isinstance(error.get("type"), str):
        return "error body lacks error.message/error.type: %r" % raw[:160]
    if is_anthropic(endpoint) and body.get("type") != "error":
        return "Anthropic error body without type=error: %r" % raw[:160]
    return None


def answer_problem(endpoint, content_type, raw, want_call=False):
    """None if `raw` is a correct answer for `endpoint` (the fake's text and, with
    `want_call`, a named tool call), else what is wrong."""
    endpoint = endpoint.split("?")[0]
    try:
        if endpoint == COUNT:
            body = json.loads(raw.decode("utf-8"))
            tokens = body.get("input_tokens")
            if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
                return "count_tokens answer without input_tokens: %r" % raw[:160]
            return None
        if content_type.startswith("text/event-stream"):
            events = sse_events(raw)
            if endpoint == CHAT:
                if not events or events[-1][1] != "[DONE]":
                    return "chat stream does not end with [DONE]: %r" % raw[-200:]
                chunks = [json.loads(data) for _, data in events[:-1]]
                if any("error" in chunk for chunk in chunks):
                    return "chat stream carries an error: %r" % raw[-300:]
                deltas = [choice.get("delta") or {} for chunk in chunks for choice in chunk.get("choices") or ()]
                text = "".join(delta.get("content") or "" for delta in deltas)
                names = [(call.get("function") or {}).get("name") for delta in deltas
                         for call in delta.get("tool_calls") or () if "id" in call]
                names += [delta["function_call"].get("name") for delta in deltas
                          if delta.get("function_call") and "name" in delta["function_call"]]
            elif endpoint == RESPONSES:
                datas = [json.loads(data) for _, data in events]
                if "response.completed" not in [d.get("type") for d in datas]:
                    return "responses stream without response.completed: %r" % raw[-300:]
                text = streamed_text(datas)
                names = [d["item"].get("name") for d in datas if d.get("type") == "response.output_item.done"
                         and d["item"].get("type") == "function_call"]
            else:
                datas = [json.loads(data) for _, data in events]
                if "message_stop" not in [d.get("type") for d in datas]:
                    return "messages stream without message_stop: %r" % raw[-300:]
                text = "".join((d.get("delta") or {}).get("text") or "" for d in datas
                               if d.get("type") == "content_block_delta")
                names = [d["content_block"].get("name") for d in datas if d.get("type") == "content_block_start"
                         and d["content_block"].get("type") == "tool_use"]
        else:
            body = json.loads(raw.decode("utf-8"))
            if endpoint == CHAT:
                message = body["choices"][0]["message"]
                text = message["content"]
                names = [call["function"]["name"] for call in message.get("tool_calls") or ()]
                names += [message["function_call"]["name"]] if message.get("function_call") else []
            elif endpoint == RESPONSES:
                text = output_text(body)
                names = [item.get("name") for item in body.get("output") or () if item.get("type") == "function_call"]
            else:
                content = body.get("content") or ()
                text = "".join(block.get("text") or "" for block in content if block.get("type") == "text")
                names = [block.get("name") for block in content if block.get("type") == "tool_use"]
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, UnicodeDecodeError) as exc:
        return "answer does not parse: %s %s in %r" % (type(exc).__name__, exc, raw[:200])
    if text != DEFAULT_TEXT:
        return "wrong answer text: %r, not the fake's %r" % (text[:80], DEFAULT_TEXT)
    if want_call and (len(names) != 1 or not isinstance(names[0], str) or not names[0]):
        return "tool call lost: the fake called one tool, the answer has calls named %r" % (names,)
    return None


def parse_raw_responses(raw):
    """[(status, headers dict, body bytes)] of the HTTP/1.1 answers in a raw byte stream (Content-Length bodies)."""
    answers = []
    while raw:
        head, sep, rest = raw.partition(b"\r\n\r\n")
        if not sep:
            answers.append((None, {}, raw))
            break
        lines = head.decode("latin-1").split("\r\n")
        match = re.match(r"^HTTP/1\.[01] (\d{3})", lines[0])
        if not match:
            answers.append((None, {}, raw))
            break
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip(" \t")
        status = int(match.group(1))
        if status == 100:
            raw = rest
            continue
        length = int(headers.get("content-length") or 0) if "chunked" not in headers.get("transfer-encoding", "") \
            else None
        if length is None:  # chunked: good enough for our checks, keep the rest as the body
            answers.append((status, headers, rest))
            break
        answers.append((status, headers, rest[:length]))
        raw = rest[length:]
    return answers


# ---- the proxy's log ------------------------------------------------------------------

class LogCapture(logging.Handler):
    def __init__(self):
        logging.Handler.__init__(self, logging.DEBUG)
        self.records = []
        self.lock_ = threading.Lock()

    def emit(self, record):
        with self.lock_:
            self.records.append(record)

    def since(self, mark):
        with self.lock_:
            return self.records[mark:], len(self.records)


def record_text(record):
    try:
        return record.getMessage()
    except Exception as exc:  # a broken log call is a finding too
        return "<unformattable log record %r %r: %s>" % (record.msg, record.args, exc)


def is_bad(record):
    return bool(record.exc_info) or record.levelno >= logging.ERROR \
        or any(marker in record_text(record) for marker in BAD_LOG_MARKERS)


def traceback_text(record):
    if record.exc_info:
        return "".join(traceback.format_exception(*record.exc_info))
    return ""


def traceback_site(record):
    """'ExcType: message (codex_proxy.py:LINE in func)' for a record with exc_info."""
    if not record.exc_info or record.exc_info[0] is None:
        return None
    exc_type, exc, tb = record.exc_info
    site = None
    for frame, line in traceback.walk_tb(tb):
        if frame.f_code.co_filename.endswith("codex_proxy.py"):
            site = "codex_proxy.py:%d in %s" % (line, frame.f_code.co_name)
    text = str(exc).replace("\n", " ")
    return "%s: %s (%s)" % (exc_type.__name__, text[:140], site or "?")


def shorten(value, limit=60):
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit - 12] + "...(%d chars)" % len(text)


# ---- collected failures -------------------------------------------------------------------

class Finding(object):
    def __init__(self, endpoint, where, what, problem, records=()):
        self.endpoint, self.where, self.what, self.problem = endpoint, where, what, problem
        self.records = [r for r in records if is_bad(r)]
        bad = self.records[0] if self.records else None
        self.log_line = None
        if bad is not None:
            self.log_line = traceback_site(bad) or "%s %s" % (bad.levelname, shorten(record_text(bad), 160))
        self.tracebacks = [traceback_text(r) for r in self.records if r.exc_info]
        # The cause: where it broke (a traceback's site, without the message, which
        # repeats the mutated value), else what was wrong, without its details.
        site = None
        if bad is not None and bad.exc_info and bad.exc_info[0] is not None:
            site = "%s at %s" % (bad.exc_info[0].__name__, (traceback_site(bad) or "").rsplit("(", 1)[-1].rstrip(")"))
        elif bad is not None:
            site = re.sub(r"\d+", "N", shorten(record_text(bad), 60))
        kind = problem.split(": ", 1)[0].strip()
        self.cause = "%s | %s" % (kind, site) if site else kind

    def line(self):
        text = "%s %s = %s -> %s" % (self.endpoint, self.where, shorten(self.what, 50), shorten(self.problem, 160))
        if self.log_line:
            text += " | log: " + self.log_line
        return text


def summarize(findings, title):
    """The failures grouped by cause, most frequent first, with as many examples each as fit in MAX_REPORT_LINES."""
    causes = {}
    for finding in findings:
        causes.setdefault(finding.cause, []).append(finding)
    room = (MAX_REPORT_LINES - 1 - 2 * len(causes)) // max(1, len(causes))
    examples = 1 + max(0, min(2, room))
    lines = ["%s: %d failing requests, %d distinct cause(s), most frequent first:" % (title, len(findings),
                                                                                   len(causes))]
    for cause, group in sorted(causes.items(), key=lambda item: -len(item[1])):
        lines.append("- [%dx] %s" % (len(group), cause))
        lines.extend("    e.g. " + finding.line() for finding in group[:examples])
    if len(lines) > MAX_REPORT_LINES:
        lines = lines[:MAX_REPORT_LINES - 1] + ["... (%d more lines; set CODEX_PROXY_FUZZ_REPORT=FILE for all)"
                                                % (len(lines) - MAX_REPORT_LINES + 1)]
    return "\n".join(lines)


def write_report(title, findings):
    if not REPORT:
        return
    with open(REPORT, "a") as handle:
        handle.write("=== %s: %d failures\n" % (title, len(findings)))
        for finding in findings:
            handle.write(finding.line() + "\n")
            for text in finding.tracebacks[:1]:
                handle.write("    " + text.replace("\n", "\n    ").rstrip() + "\n")


# ---- the tests ------------------------------------------------------------------------------

def open_sockets():
    """Socket descriptors this process has open now (Linux), or None where unknown."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return None
    count = 0
    for name in names:
        try:
            count += os.readlink("/proc/self/fd/" + name).startswith("socket:")
        except OSError:
            pass
    return count


class FuzzTestCase(ProxyTestCase):
    # Short timeouts: a case that leaves the proxy waiting must not hold the run up.
    config_overrides = {"header_timeout": 2.0, "keep_alive_timeout": 5.0, "max_body_bytes": 8 * 1024 * 1024}

    @classmethod
    def setUpClass(cls):
        cls.threads_before = set(threading.enumerate())
        cls.sockets_before = open_sockets()

    @classmethod
    def tearDownClass(cls):
        """The fuzzer leaves no thread and no socket behind."""
        def extra_threads():
            return [t for t in threading.enumerate() if t not in cls.threads_before and t.is_alive()]
        if not wait_for(lambda: not extra_threads(), 5.0):
            raise AssertionError("threads left behind: %s" % [t.name for t in extra_threads()])
        if cls.sockets_before is not None:
            def settled():
                gc.collect()
                return open_sockets() <= cls.sockets_before
            if not wait_for(settled, 5.0):
                raise AssertionError("sockets left behind: %d open, %d before"
                                     % (open_sockets(), cls.sockets_before))

    def setUp(self):
        ProxyTestCase.setUp(self)
        self.rng = random.Random("%s:%s.%s" % (SEED, type(self).__name__, self._testMethodName))
        self.capture = LogCapture()
        logger = logging.getLogger("codex_proxy")
        level = logger.level
        logger.setLevel(logging.DEBUG)
        logger.addHandler(self.capture)

        def restore():
            logger.removeHandler(self.capture)
            logger.setLevel(level)
            # Tracebacks hold frames, and frames hold sockets: let them go with the test.
            del self.capture.records[:], self.fake_crashes[:]
            for finding in self.findings:
                finding.records = []
        self.addCleanup(restore)
        self.log_mark = 0
        self.fake_crashes, self.fake_mark = [], 0
        server = getattr(self.fake, "_server", None)
        if server is not None:  # the fake's own crashes: findings (about the fake), not stderr noise
            server.handle_error = lambda request, address: self.fake_crashes.append(sys.exc_info())
        self.findings = []
        self.statuses = collections.Counter()
        self.rich = False  # whether the fake answers with reasoning, text and a tool call
        self.sent = 0
        self.conn = None
        self.addCleanup(self.close_connection)
        self.started = time.monotonic()

    # -- plumbing
    def close_connection(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def new_records(self):
        records, self.log_mark = self.capture.since(self.log_mark)
        return records

    def new_fake_crash(self):
        """What crashed the fake backend since the last call (a bug in tests/fake_upstream.py), or None."""
        crashes, self.fake_mark = self.fake_crashes[self.fake_mark:], len(self.fake_crashes)
        for exc_type, exc, tb in crashes:
            frames = [f for f in traceback.extract_tb(tb) if f.filename.endswith("fake_upstream.py")]
            site = "fake_upstream.py:%d in %s" % (frames[-1].lineno, frames[-1].name) if frames else "?"
            return "fake backend crashed, %s at %s: %s" % (exc_type.__name__, site, shorten(str(exc), 80))
        return None

    def finding(self, endpoint, where, what, problem, records=()):
        self.findings.append(Finding(endpoint, where, what, problem, records))

    def send(self, path, body, headers=None, method="POST"):
        """(status, headers, raw body) over the keep-alive connection, or (None, None, error text)."""
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.proxy.port, timeout=15)
        hdrs = {"Content-Type": "application/json"}
        hdrs.update(headers or {})
        try:
            self.conn.request(method, path, body=body, headers=hdrs)
            resp = self.conn.getresponse()
            raw = resp.read()
            answer = resp.status, {k.lower(): v for k, v in resp.getheaders()}, raw
            if resp.will_close:
                self.close_connection()
            return answer
        except (OSError, http.client.HTTPException) as exc:
            self.close_connection()
            return None, None, "%s: %s" % (type(exc).__name__, exc)

    def probe(self, endpoint, where, what, body, headers=None):
        """Send one request and check what comes back (a 4xx in the dialect of `endpoint`, or 200
        with a correct answer; a clean log; the fake alive); False if it failed."""
        status, hdrs, raw = self.send(endpoint, body, headers)
        records = self.new_records()
        problem = None
        if status is None:
            problem = "connection failed " + raw
        elif status >= 500:
            problem = "HTTP %d: %s" % (status, shorten(raw.decode("utf-8", "replace"), 200))
        elif status >= 400:
            problem = error_shape_problem(endpoint, raw)
        elif status == 200:
            problem = answer_problem(endpoint, hdrs.get("content-type", ""), raw, self.rich)
        else:
            problem = "unexpected HTTP %d" % status
        if problem is None and any(is_bad(r) for r in records):
            problem = "bad log record"
        crash = self.new_fake_crash()
        if crash:
            problem = "%s; the proxy answered HTTP %s" % (crash, status)
        if problem is not None:
            self.finding(endpoint, where, what, problem, records)
        self.sent += 1
        self.statuses[status] += 1
        if self.sent % CANARY_EVERY == 0:
            self.canary("after %s %s = %s" % (endpoint, where, shorten(what, 40)))
        return problem is None

    def canary(self, when):
        body = encode({"model": "gpt-5.5", "messages": [{"role": "user", "content": "canary"}]})
        status, hdrs, raw = self.send(CHAT, body)
        records = self.new_records()
        problem = None
        if status is None:
            problem = "canary connection failed " + raw
        elif status != 200:
            problem = "canary HTTP %d: %s" % (status, shorten(raw.decode("utf-8", "replace"), 200))
        else:
            problem = answer_problem(CHAT, hdrs.get("content-type", ""), raw, self.rich)
            problem = problem and "canary " + problem
        if problem is None and any(is_bad(r) for r in records):
            problem = "canary: bad log record"
        if problem:
            self.finding(CHAT, "<canary>", when, problem, records)

    def upstream_header_problems(self):
        """Header fields the fake received that a client smuggled in (control characters, injected fields)."""
        for rec in self.fake.requests:
            for name, value in rec.headers.items():
                if name == "x-injected" or CONTROL.search(value):
                    yield "%s %s: upstream got header %s: %r" % (rec.method, rec.path, name, shorten(value))

    def finish(self, title):
        """Fail once, with every failure grouped by cause."""
        self.canary("at the end")
        time.sleep(0.05)
        late = [r for r in self.new_records() if is_bad(r)]
        if late:
            self.finding("-", "<after the last request>", "-", "bad log record", late)
        for problem in sorted(set(self.upstream_header_problems()))[:5]:
            self.finding("-", "<upstream headers>", "-", "header smuggled upstream: " + problem)
        write_report("%s (%d requests in %.1fs; statuses %s)" % (
            title, self.sent, time.monotonic() - self.started,
            ", ".join("%s: %d" % item for item in sorted(self.statuses.items(), key=str))), self.findings)
        if self.findings:
            self.fail("\n" + summarize(self.findings, "%s (%d requests)" % (title, self.sent)))

    def check_raw(self, name, data, raw, allowed):
        """Every answer in `raw` has an allowed status and a body in its path's dialect; the log stays clean;
        the proxy still serves /health afterwards."""
        server = getattr(self.proxy, "server", None)
        wait_for(lambda: not getattr(server, "connections", None) or len(server.connections) <= (self.conn is not None),
                 1.0)  # the proxy is done with the connection, and has logged what it had to
        records = self.new_records()
        problem = None
        target = data.split(b"\r\n", 1)[0].split(b" ")[1:2]
        endpoint = target[0].decode("latin-1").split("?")[0] if target else "/"
        for status, hdrs, body in parse_raw_responses(raw):
            self.statuses[status] += 1
            if status is None:
                problem = "not an HTTP answer: %r" % body[:120]
            elif status not in allowed:
                extra = "/".join(str(s) for s in allowed if s < 400 or s > 499)
                problem = "HTTP %s (expected %s4xx): %s" % (status, extra + "/" if extra else "",
                                                           shorten(body.decode("utf-8", "replace"), 160))
            elif any(CONTROL.search(value) for value in hdrs.values()):
                problem = "response header value carries a control character: %r" % [
                    (k, v) for k, v in hdrs.items() if CONTROL.search(v)]
            elif status >= 400 and body:
                known = endpoint in ("/v1/chat/completions", "/v1/messages", "/health")
                problem = error_shape_problem(endpoint if known else "/", body)
            if problem:
                break
        self.sent += 1
        if problem is None and any(is_bad(r) for r in records):
            problem = "bad log record"
        if problem:
            self.finding("raw", repr(name), repr(data[:60]), problem, records)
        status, hdrs, body = self.send("/health", None, method="GET")
        self.close_connection()
        if status != 200:
            self.finding("raw", repr(name), "-", "proxy does not serve /health after it: %s %s" % (status, body), ())

    def check_base(self, endpoint, base, headers=None):
        """The unmutated request must be answered; the mutations mean little otherwise."""
        if not self.probe(endpoint, "<base request>", "-", encode(base), headers):
            self.fail("the base request for %s is not answered:\n%s" % (endpoint, self.findings[-1].line()))

    def fuzz_fields(self, endpoint, base, headers=None):
        self.check_base(endpoint, base, headers)
        for path, (label, value) in mutation_plan(base, self.rng):
            self.probe(endpoint, path_text(path), label, encode(replaced(base, path, value)), headers)


class FieldTypeFuzzTests(FuzzTestCase):
    """A wrong type in every field of each dialect, and every key deleted."""

    def test_chat_completions_fields(self):
        self.fuzz_fields(CHAT, chat_request())
        self.fuzz_fields(CHAT, chat_legacy_request())
        self.finish("chat fields")

    def test_messages_fields(self):
        self.fuzz_fields(MESSAGES, messages_request(), messages_headers())
        self.finish("messages fields")

    def test_count_tokens_fields(self):
        self.fuzz_fields(COUNT, count_tokens_request(), {"anthropic-version": "2023-06-01"})
        self.finish("count_tokens fields")

    def test_responses_fields(self):
        self.fuzz_fields(RESPONSES, responses_request(), responses_headers())
        self.finish("responses fields")


def rich_reply(body):
    """The fake's answer for RichAnswerFuzzTests: reasoning, the text, and a call of the request's first function
    tool (or of a tool it does not have)."""
    tools = [tool for tool in (body or {}).get("tools") or () if isinstance(tool, dict)
             and tool.get("type") == "function" and isinstance(tool.get("name"), str)]
    return {"reasoning": ["Thinking it over.", "Done."], "text": DEFAULT_TEXT,
            "tool_calls": [{"name": tools[0]["name"] if tools else "not_offered", "arguments": "{\"city\": \"Rome\"}"}],
            "usage": {"cached_tokens": 4, "reasoning_tokens": 3}}


class RichAnswerFuzzTests(FuzzTestCase):
    """Mutated requests whose answers are more than text (reasoning, a tool call): the answer side
    (tool names mapped back, stop sequences, thinking display, usage, legacy function_call) copes."""

    def setUp(self):
        FuzzTestCase.setUp(self)
        self.rich = True
        self.fake._next_reply = rich_reply

    def fuzz_one_each(self, endpoint, base, headers=None):
        """One random mutation per path, of the other stream mode than fuzz_fields uses."""
        self.check_base(endpoint, base, headers)
        for path in walk(base):
            choices = list(MUTATIONS) + ([DELETE_MUTATION] if isinstance(path[-1], str) else [])
            label, value = self.rng.choice(choices)
            self.probe(endpoint, path_text(path), label, encode(replaced(base, path, value)), headers)

    def test_chat_completions_answers(self):
        self.fuzz_one_each(CHAT, dict(chat_request(), stream=True))
        self.fuzz_one_each(CHAT, dict(chat_legacy_request(), stream=False))
        self.finish("chat answers")

    def test_messages_answers(self):
        self.fuzz_one_each(MESSAGES, dict(messages_request(), stream=False, thinking={"type": "enabled",
                                                                                     "budget_tokens": 4096}),
                           messages_headers())
        self.finish("messages answers")

    def test_responses_answers(self):
        self.fuzz_one_each(RESPONSES, dict(responses_request(), stream=False), responses_headers())
        self.finish("responses answers")


class StructureFuzzTests(FuzzTestCase):
    """Hostile structure: deep nesting, huge strings and numbers, bodies that are not objects."""

    # Where each endpoint gets deep nesting, long strings and odd numbers.
    NEST_AT = {
        CHAT: [("messages", 0, "content"), ("tools", 0, "function", "parameters"),
               ("response_format", "json_schema", "schema"), ("messages", 3, "tool_calls", 0, "function",
                                                               "arguments"), ("metadata",)],
        MESSAGES: [("messages", 0, "content"), ("tools", 1, "input_schema"), ("metadata",),
                   ("messages", 2, "content", 3, "input"), ("output_config", "format")],
        COUNT: [("tools", 0, "input_schema"), ("messages", 0, "content")],
        RESPONSES: [("input", 3, "content"), ("tools", 0, "parameters"), ("text", "format", "schema"),
                    ("client_metadata",), ("input",)],
    }
    STRING_AT = {
        CHAT: [("messages", 6, "content"), ("model",), ("tools", 0, "function", "name"),
               ("tools", 0, "function", "description"), ("stop", 0), ("messages", 3, "tool_calls", 0, "id"),
               ("messages", 2, "content", 1, "image_url", "url"), ("user",)],
        MESSAGES: [("messages", 5, "content"), ("system", 1, "text"), ("tools", 1, "name"), ("metadata", "user_id"),
                   ("stop_sequences", 0), ("messages", 2, "content", 3, "id"), ("model",)],
        COUNT: [("messages", 0, "content", 0, "text"), ("system",), ("tools", 0, "name")],
        RESPONSES: [("instructions",), ("input", 11, "content"), ("model",), ("tools", 0, "name"),
                    ("input", 7, "arguments"), ("include", 0)],
    }
    NUMBER_AT = {
        CHAT: [("max_tokens",), ("temperature",), ("n",), ("seed",), ("stop",), ("messages", 6, "content")],
        MESSAGES: [("max_tokens",), ("thinking",), ("temperature",), ("top_k",), ("messages", 3, "content", 0,
                                                                                   "content")],
        COUNT: [("thinking", "budget_tokens"), ("messages", 0, "content", 0, "text")],
        RESPONSES: [("max_output_tokens",), ("reasoning", "effort"), ("input", 7, "arguments"), ("prompt_cache_key",)],
    }
    NUMBERS = ["1e999", "-1e999", "1" + "0" * 400, "1" + "0" * 4000, "1" + "0" * 5000, "1.5e-400", "-0",
               "0.1e1", "123456789012345678901234567890.5"]

    def bases(self):
        return [(CHAT, chat_request(), None), (MESSAGES, messages_request(), messages_headers()),
                (COUNT, count_tokens_request(), None), (RESPONSES, responses_request(), responses_headers())]

    def test_deep_nesting(self):
        for endpoint, base, headers in self.bases():
            for depth in (50000, 5000, 2000, 990, 500):
                for kind in ("array", "object"):
                    self.probe(endpoint, "<body>", "%s nested %d deep" % (kind, depth),
                               nested(depth, kind).encode(), headers)
                    for path in self.NEST_AT[endpoint]:
                        self.probe(endpoint, path_text(path), "%s nested %d deep" % (kind, depth),
                                   with_raw(base, path, nested(depth, kind)), headers)
        self.finish("deep nesting")

    def test_huge_strings_and_numbers(self):
        long_ascii = "a" * (1024 * 1024)
        long_json = json.dumps(long_ascii)
        for endpoint, base, headers in self.bases():
            for path in self.STRING_AT[endpoint]:
                self.probe(endpoint, path_text(path), "1 MB string", with_raw(base, path, long_json), headers)
                self.probe(endpoint, path_text(path), "[1 MB string]", with_raw(base, path, "[%s]" % long_json),
                           headers)
            for path in self.NUMBER_AT[endpoint]:
                for number in self.NUMBERS:
                    self.probe(endpoint, path_text(path), number, with_raw(base, path, number), headers)
            # a key 1 MB long, and 20000 keys
            self.probe(endpoint, "<body>", "1 MB key", encode(base)[:-1] + b", " + long_json.encode() + b": 1}",
                       headers)
            many = dict(base, **{"k%d" % i: i for i in range(20000)})
            self.probe(endpoint, "<body>", "20000 extra keys", encode(many), headers)
        self.finish("huge strings and numbers")

    def test_bodies_that_are_not_objects(self):
        bodies = [b"[]", b"[{}]", b'"x"', b"5", b"-1", b"1e999", b"null", b"true", b"false", b'""', b"{}",
                  b'{"model": null}', b"NaN", b"Infinity", b"-Infinity", b'{"model": NaN}', b"{", b"}", b"[",
                  b'{"model": "gpt-5.5",}', b'{"model": "gpt-5.5"} x', b"\xef\xbb\xbf{}", b" \t\r\n{} \r\n",
                  b'{"a": 1, "a": 2}', b"\x00", b'{"\\u0000": "\\u0000"}']
        for endpoint, base, headers in self.bases():
            for body in bodies:
                self.probe(endpoint, "<body>", body.decode("latin-1"), body, headers)
            dup = encode(base)[:-1] + b', "model": "other"}'
            self.probe(endpoint, "<body>", "duplicate model key", dup, headers)
        self.finish("non-object bodies")

    def test_bad_encodings(self):
        bomb = gzip.compress(b"\x00" * (32 * 1024 * 1024), 1)
        for endpoint, base, headers in self.bases():
            good = encode(base)
            headers = dict(headers or {})
            cases = [
                ("invalid UTF-8 in a string", good.replace(b'"model": "', b'"model": "\xff\xfe', 1), {}),
                ("overlong UTF-8", good.replace(b'"model": "', b'"model": "\xc0\xaf', 1), {}),
                ("UTF-8-encoded surrogate", good.replace(b'"model": "', b'"model": "\xed\xa0\x80', 1), {}),
                ("truncated UTF-8", good.replace(b'"model": "', b'"model": "\xe4\xb8', 1), {}),
                ("UTF-16 body", json.dumps(base).encode("utf-16"), {}),
                ("Latin-1 body", json.dumps(dict(base, model="caf\xe9"), ensure_ascii=False).encode("latin-1"), {}),
                ("gzip body, no Content-Encoding", gzip.compress(good), {}),
                ("gzip body, Content-Encoding: br", gzip.compress(good), {"Content-Encoding": "br"}),
                ("gzip body, Content-Encoding: identity", gzip.compress(good), {"Content-Encoding": "identity"}),
                ("gzip body, Content-Encoding: deflate", gzip.compress(good), {"Content-Encoding": "deflate"}),
                ("gzip body, Content-Encoding: gzip, gzip", gzip.compress(good),
                 {"Content-Encoding": "gzip, gzip"}),
                ("plain body, Content-Encoding: gzip", good, {"Content-Encoding": "gzip"}),
                ("plain body, Content-Encoding: deflate", good, {"Content-Encoding": "deflate"}),
                ("truncated gzip", gzip.compress(good)[:-12], {"Content-Encoding": "gzip"}),
                ("gzip in gzip", gzip.compress(gzip.compress(good)), {"Content-Encoding": "gzip"}),
                ("gzip of invalid UTF-8", gzip.compress(b'{"model": "\xff"}'), {"Content-Encoding": "gzip"}),
                ("gzip of an array", gzip.compress(b"[]"), {"Content-Encoding": "gzip"}),
                ("Content-Encoding: latin-1 bytes", good, {"Content-Encoding": b"gz\xe9p"}),
                ("empty body", b"", {}),
                ("empty gzip", b"", {"Content-Encoding": "gzip"}),
                ("whitespace body", b"   ", {}),
            ]
            cases.append(("gzip bomb (32 MB of zeros)", bomb, {"Content-Encoding": "gzip"}))
            for name, body, extra in cases:
                self.probe(endpoint, "<body>", name, body, dict(headers, **extra))
        self.finish("bad encodings")


class UpstreamHeaderFuzzTests(FuzzTestCase):
    """Values that end up in upstream request headers."""

    CACHE_KEYS = [("\"\u4e2d\"", "\u4e2d"), ("[5]", [5]), ('"a\\r\\nX-Injected: 1"', "a\r\nX-Injected: 1"),
                  ("10 KB string", "k" * 10240), ("70 KB string", "k" * 70000), ('"\\ud800"', "\ud800"),
                  ("1e308", 1e308), ("{}", {}), ('{"a": 1}', {"a": 1}), ("true", True), ('"a\\u0000b"', "a\x00b"),
                  ('"a\\rb"', "a\rb"), ('"\\u00e9"', "\u00e9"), ('" spaced "', " spaced ")]
    HEADER_VALUES = [("latin-1 bytes", b"caf\xe9"), ("UTF-8 \u4e2d", "\u4e2d".encode("utf-8")),
                     ("10 KB", b"s" * 10240), ("60 KB", b"s" * 60000), ("NUL", b"a\x00b"), ("DEL", b"a\x7fb"),
                     ("tab inside", b"a\tb"), ("empty", b""), ("bare CR", b"a\rX-Injected: 1")]
    HEADER_NAMES = ["session_id", "session-id", "x-claude-code-session-id", "thread-id", "x-codex-turn-metadata",
                    "x-client-request-id"]

    def test_prompt_cache_key_values(self):
        for endpoint, base in ((CHAT, chat_request()), (RESPONSES, responses_request())):
            for label, value in self.CACHE_KEYS:
                self.probe(endpoint, "prompt_cache_key", label, encode(dict(base, prompt_cache_key=value)))
        base = messages_request()
        for label, value in self.CACHE_KEYS:
            user_id = json.dumps({"device_id": "d", "account_uuid": "", "session_id": value})
            self.probe(MESSAGES, "metadata.user_id.session_id", label,
                       encode(dict(base, metadata={"user_id": user_id})))
            self.probe(MESSAGES, "metadata.user_id", label, encode(dict(base, metadata={"user_id": value})))
        self.finish("prompt_cache_key values")

    def test_session_headers(self):
        bases = [(CHAT, chat_request()), (RESPONSES, responses_request()), (MESSAGES, messages_request())]
        for endpoint, base in bases:
            body = encode(base)
            for name in self.HEADER_NAMES:
                for label, value in self.HEADER_VALUES:
                    if b"\r" in value:  # http.client refuses this one: send it raw
                        self.raw_probe(endpoint, name, label, value, body)
                    else:
                        self.probe(endpoint, "header " + name, label, body, {name: value})
        self.finish("session headers")

    def raw_probe(self, endpoint, name, label, value, body):
        raw = self.raw_exchange(b"POST %s HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n%s: %s\r\n"
                                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                                % (endpoint.encode(), name.encode(), value, len(body), body))
        answers = parse_raw_responses(raw)
        records = self.new_records()
        status = answers[0][0] if answers else None
        problem = None
        if status is None:
            problem = "no HTTP answer: %r" % raw[:120]
        elif status >= 500:
            problem = "HTTP %d: %s" % (status, shorten(answers[0][2].decode("utf-8", "replace"), 200))
        elif status >= 400:
            problem = error_shape_problem(endpoint, answers[0][2])
        if problem is None and any(is_bad(r) for r in records):
            problem = "bad log record"
        if problem:
            self.finding(endpoint, "header " + name, label, problem, records)
        self.sent += 1


class HTTPLevelFuzzTests(FuzzTestCase):
    """Raw bytes: each case gets an HTTP answer (4xx unless said) or a clean close, and the proxy goes on."""

    VALID = VALID_CHAT
    FOUR = FOUR

    def cases(self):
        v = self.VALID
        chat = b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        msgs = b"POST /v1/messages HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        close = b"Connection: close\r\n"
        ok = (200,) + self.FOUR
        cases = [
            # request lines
            ("garbage request line", b"GARBAGE\r\n\r\n", self.FOUR),
            ("request line with an extra token", b"GET /health HTTP/1.1 x\r\n\r\n", self.FOUR),
            ("lower-case version", b"GET /health http/1.1\r\n\r\n", self.FOUR),
            ("HTTP/0.9 request", b"GET /health\r\n\r\n", self.FOUR),
            ("HTTP/2.0 request line", b"GET /health HTTP/2.0\r\n\r\n", self.FOUR + (505,)),
            ("HTTP/1.10", b"GET /health HTTP/1.10\r\n\r\n", self.FOUR),
            ("HTTP/9.9", b"GET /health HTTP/9.9\r\n\r\n", self.FOUR + (505,)),
            ("two spaces", b"GET  /health HTTP/1.1\r\n\r\n", self.FOUR),
            ("tab separators", b"GET\t/health\tHTTP/1.1\r\n\r\n", self.FOUR),
            ("NUL in method", b"G\x00T /health HTTP/1.1\r\n\r\n", self.FOUR),
            ("NUL in target", b"GET /he\x00alth HTTP/1.1\r\n" + close + b"\r\n", self.FOUR),
            ("NUL in version", b"GET /health HTTP/1.\x001\r\n\r\n", self.FOUR),
            ("only NULs", b"\x00" * 64 + b"\r\n\r\n", self.FOUR),
            ("binary garbage", bytes(range(256)) + b"\r\n\r\n", self.FOUR),
            ("TLS client hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40 + b"\r\n\r\n",
             self.FOUR),
            ("request line 9 KB", b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", self.FOUR),
            # targets
            ("target http://[x/", b"GET http://[x/ HTTP/1.1\r\n\r\n", self.FOUR),
            ("target http://[x/ on POST", b"POST http://[x/v1/messages HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
             self.FOUR),
            ("target *", b"OPTIONS * HTTP/1.1\r\n" + close + b"\r\n", self.FOUR),
            ("absolute-form target", b"GET http://127.0.0.1/v1/models HTTP/1.1\r\n" + close + b"\r\n", ok),
            ("target %ff%fe model", b"GET /v1/models/%ff%fe HTTP/1.1\r\n" + close + b"\r\n", self.FOUR),
            ("target %00 model", b"GET /v1/models/%00 HTTP/1.1\r\n" + close + b"\r\n", self.FOUR),
            ("target %ud800 model", b"GET /v1/models/%ED%A0%80 HTTP/1.1\r\n" + close + b"\r\n", self.FOUR),
            ("target with raw UTF-8", b"GET /v1/models/\xe4\xb8\xad HTTP/1.1\r\n" + close + b"\r\n", self.FOUR),
            ("target 8000-char model", b"GET /v1/models/" + b"m" * 8000 + b" HTTP/1.1\r\n" + close + b"\r\n",
             self.FOUR),
            ("target with ..", b"GET /v1/../../health HTTP/1.1\r\n" + close + b"\r\n", ok),
            ("target //", b"GET // HTTP/1.1\r\n" + close + b"\r\n", ok),
            ("target ?query only", b"GET ?x=1 HTTP/1.1\r\n" + close + b"\r\n", ok),
            ("target #fragment", b"GET /health#x HTTP/1.1\r\n" + close + b"\r\n", ok),
            ("target bad percent", b"POST /v1/chat/completions?x=%zz%ff HTTP/1.1\r\n"
             + b"Content-Length: %d\r\n%s\r\n%s" % (len(v), close, v), ok),
            # header lines
            ("header without colon", chat + b"NoColon\r\n" + close + b"\r\n", self.FOUR),
            ("space before colon", chat + b"Content-Length : 2\r\n" + close + b"\r\n{}", self.FOUR),
            ("space in header name", chat + b"Bad Name: 1\r\n" + close + b"\r\n", self.FOUR),
            ("obs-fold continuation", chat + b"X-A: 1\r\n  folded\r\n" + close + b"\r\n", self.FOUR),
            ("leading whitespace header", b"GET /health HTTP/1.1\r\n X-A: 1\r\n" + close + b"\r\n", self.FOUR),
            ("empty header name", chat + b": value\r\n" + close + b"\r\n", self.FOUR),
            ("NUL in header name", chat + b"X-\x00: 1\r\n" + close + b"\r\n", self.FOUR),
            ("NUL in header value", chat + b"X-A: a\x00b\r\nContent-Length: %d\r\n%s\r\n%s" % (len(v), close, v), ok),
            ("NUL in session_id", chat + b"session_id: a\x00b\r\nContent-Length: %d\r\n%s\r\n%s"
             % (len(v), close, v), ok),
            ("bare CR in session_id", chat + b"session_id: a\rX-Injected: 1\r\nContent-Length: %d\r\n%s\r\n%s"
             % (len(v), close, v), ok),
            ("bare CR in x-codex header", chat + b"x-codex-a: a\rb\r\nContent-Length: %d\r\n%s\r\n%s"
             % (len(v), close, v), ok),
            ("latin-1 header value", msgs + b"x-claude-code-session-id: caf\xe9\r\nContent-Length: %d\r\n%s\r\n%s"
             % (len(v), close, v), ok),
            ("200 header fields", b"GET /health HTTP/1.1\r\n" + b"X-A: 1\r\n" * 200 + b"\r\n", self.FOUR),
            ("70 KB header", b"GET /health HTTP/1.1\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n", self.FOUR),
            ("LF-only line endings", b"GET /health HTTP/1.1\nConnection: close\n\n", ok),
            ("blank lines before request", b"\r\n\r\n\nGET /health HTTP/1.1\r\n" + close + b"\r\n", ok),
            ("Connection: close, bogus", b"GET /health HTTP/1.1\r\nConnection: close, \xe9\r\n\r\n", ok),
            # Content-Length
            ("Content-Length: \u00b2", chat + u"Content-Length: \u00b2\r\n".encode("utf-8") + close + b"\r\n{}",
             self.FOUR),
            ("Content-Length: latin-1 \u00b2", chat + b"Content-Length: \xb2\r\n" + close + b"\r\n{}", self.FOUR),
            ("Content-Length: Arabic-Indic 3", chat + u"Content-Length: \u0663\r\n".encode("utf-8") + close
             + b"\r\n{}x", self.FOUR),
            ("Content-Length: -1", chat + b"Content-Length: -1\r\n" + close + b"\r\n", self.FOUR),
            ("Content-Length: +2", chat + b"Content-Length: +2\r\n" + close + b"\r\n{}", self.FOUR),
            ("Content-Length: 0x2", chat + b"Content-Length: 0x2\r\n" + close + b"\r\n{}", self.FOUR),
            ("Content-Length: 2.0", chat + b"Content-Length: 2.0\r\n" + close + b"\r\n{}", self.FOUR),
            ("Content-Length: 1e3", chat + b"Content-Length: 1e3\r\n" + close + b"\r\n{}", self.FOUR),
            ("Content-Length: empty", chat + b"Content-Length:\r\n" + close + b"\r\n{}", self.FOUR),
            ("Content-Length: 2 2", chat + b"Content-Length: 2 2\r\n" + close + b"\r\n{}", self.FOUR),
            ("Content-Length: 2, 3", chat + b"Content-Length: 2, 3\r\n" + close + b"\r\n{}", self.FOUR),
            ("duplicate conflicting Content-Length", chat + b"Content-Length: 2\r\nContent-Length: 3\r\n" + close
             + b"\r\n{} ", self.FOUR),
            ("duplicate equal Content-Length", chat + b"Content-Length: 2\r\nContent-Length: 2\r\n" + close
             + b"\r\n{}", self.FOUR),
            ("Content-Length: 20 digits", chat + b"Content-Length: " + b"9" * 20 + b"\r\n" + close + b"\r\n{}",
             self.FOUR),
            ("Content-Length: 18 digits", chat + b"Content-Length: " + b"9" * 18 + b"\r\n" + close + b"\r\n{}",
             self.FOUR),
            ("Content-Length shorter than body", chat + b"Content-Length: 2\r\n" + close + b"\r\n{}GARBAGE\r\n\r\n",
             self.FOUR),
            ("Content-Length with NUL", chat + b"Content-Length: 2\x00\r\n" + close + b"\r\n{}", self.FOUR),
            # Transfer-Encoding
            ("chunked size zz", chat + b"Transfer-Encoding: chunked\r\n" + close + b"\r\nzz\r\n{}\r\n0\r\n\r\n",
             self.FOUR),
            ("chunked size -1", chat + b"Transfer-Encoding: chunked\r\n" + close + b"\r\n-1\r\n{}\r\n0\r\n\r\n",
             self.FOUR),
            ("chunked size 0x2", chat + b"Transfer-Encoding: chunked\r\n" + close + b"\r\n0x2\r\n{}\r\n0\r\n\r\n",
             self.FOUR),
            ("chunked size +2", chat + b"Transfer-Encoding: chunked\r\n" + close + b"\r\n+2\r\n{}\r\n0\r\n\r\n",
             self.FOUR),
            ("chunked size \u00b2", chat + b"Transfer-Encoding: chunked\r\n" + close
             + u"\u00b2\r\n{}\r\n0\r\n\r\n".encode("utf-8"), self.FOUR),
            ("chunked size 17 hex digits", chat + b"Transfer-Encoding: chunked\r\n" + close + b"\r\n"
             + b"1" * 17 + b"\r\n{}\r\n0\r\n\r\n", self.FOUR),
            ("chunked size 16 f", chat + b"Transfer-Encoding: chunked\r\n" + close + b"\r\n"
             + b"f" * 16 + b"\r\n{}\r\n0\r\n\r\n", self.FOUR),
            ("chunked size longer than data", chat + b"Transfer-Encoding: chunked\r\n" + close
             + b"\r\n5\r\n{}\r\n0\r\n\r\n", self.FOUR),
            ("chunked data without CRLF", chat + b"Transfer-Encoding: chunked\r\n" + close + b"\r\n2\r\n{}XX0\r\n\r\n",
             self.FOUR),
            ("chunked size line 5 KB", chat + b"Transfer-Encoding: chunked\r\n" + close + b"\r\n2;" + b"e" * 5000
             + b"\r\n{}\r\n0\r\n\r\n", self.FOUR),
            ("chunked with a bad body", chat + b"Transfer-Encoding: chunked\r\n" + close
             + b"\r\n2;x=1\r\n{}\r\n0\r\nX-Trailer: 1\r\n\r\n", self.FOUR),
            ("chunked valid body", chat + b"Transfer-Encoding: chunked\r\n" + close + b"\r\n%x\r\n%s\r\n0\r\n\r\n"
             % (len(v), v), (200,)),
            ("chunked twice", chat + b"Transfer-Encoding: chunked, chunked\r\n" + close + b"\r\n0\r\n\r\n",
             self.FOUR + (501,)),
            ("Transfer-Encoding: gzip", chat + b"Transfer-Encoding: gzip\r\n" + close + b"\r\n", self.FOUR + (501,)),
            ("Transfer-Encoding: gzip, chunked", chat + b"Transfer-Encoding: gzip, chunked\r\n" + close
             + b"\r\n0\r\n\r\n", self.FOUR + (501,)),
            ("Transfer-Encoding: latin-1", chat + b"Transfer-Encoding: chunk\xe9d\r\n" + close + b"\r\n",
             self.FOUR + (501,)),
            ("Transfer-Encoding and Content-Length", chat + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n"
             + close + b"\r\n0\r\n\r\n", self.FOUR),
            ("Transfer-Encoding empty", chat + b"Transfer-Encoding:\r\n" + close + b"\r\n", self.FOUR + (501,)),
            # Expect, methods
            ("Expect: bogus", chat + b"Expect: bogus\r\nContent-Length: 2\r\n" + close + b"\r\n{}", self.FOUR),
            ("Expect: 100-continue", chat + b"Expect: 100-continue\r\nContent-Length: %d\r\n%s\r\n%s"
             % (len(v), close, v), (200,)),
            ("PATCH on chat", b"PATCH /v1/chat/completions HTTP/1.1\r\n" + close + b"\r\n", self.FOUR),
            ("GET on messages", b"GET /v1/messages HTTP/1.1\r\n" + close + b"\r\n", self.FOUR),
            ("lower-case method", b"post /v1/chat/completions HTTP/1.1\r\nContent-Length: 2\r\n" + close
             + b"\r\n{}", self.FOUR),
            ("method 300 chars", b"X" * 300 + b" /health HTTP/1.1\r\n" + close + b"\r\n", self.FOUR),
            # pipelining
            ("pipelined garbage after a request", b"GET /health HTTP/1.1\r\n\r\nGARBAGE\r\n\r\n", ok),
            ("pipelined requests", b"GET /health HTTP/1.1\r\n\r\n" + chat + b"Content-Length: %d\r\n%s\r\n%s"
             % (len(v), close, v), ok),
            ("HTTP/1.0 keep-alive POST", b"POST /v1/chat/completions HTTP/1.0\r\nConnection: keep-alive\r\n"
             b"Content-Length: %d\r\n\r\n%s" % (len(v), v) + b"GET /health HTTP/1.0\r\n\r\n", ok),
        ]
        waits = [
            # The proxy waits for more (its timeouts end these); the client gives up first.
            ("head never ends", b"GET /health HTTP/1.1\r\nX-A: 1\r\n"),
            ("body shorter than Content-Length", chat + b"Content-Length: 100\r\n\r\n{}"),
            ("chunked body never ends", chat + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n"),
            ("half a request line", b"GET /hea"),
            ("nothing at all", b""),
        ]
        return cases, waits

    def test_raw_requests(self):
        cases, waits = self.cases()
        for index, (name, data, allowed) in enumerate(cases):
            raw = self.raw_exchange(data, timeout=3)
            self.check_raw(name, data, raw, allowed)
            if index % 10 == 9:
                self.canary("after raw case %r" % name)
                self.close_connection()
        for name, data in waits:
            sock = socket.create_connection(("127.0.0.1", self.proxy.port), timeout=0.05)
            try:
                if data:
                    sock.sendall(data)
                try:
                    raw = sock.recv(65536)
                except socket.timeout:
                    raw = b""
            finally:
                sock.close()
            self.check_raw(name, data, raw, self.FOUR + (408,))
        self.finish("HTTP-level mutations")


class GuardFuzzTests(FuzzTestCase):
    """The guard in front of the routes (Host, Origin, Sec-Fetch-Site, the local API key, CORS preflight)
    with hostile header values: 401/403/204 or an answer, never a 5xx, and nothing odd echoed back."""

    config_overrides = dict(FuzzTestCase.config_overrides, api_key="fuzz-key",
                            **({"allow_origins": ["http://allowed.example"]}
                               if hasattr(codex_proxy.Config(), "allow_origins") else {}))

    def test_guard_headers(self):
        v = VALID_CHAT
        key = b"Authorization: Bearer fuzz-key\r\n"
        allowed = b"Origin: http://allowed.example\r\n"

        def post(*lines):
            return (b"POST /v1/chat/completions HTTP/1.1\r\nContent-Type: application/json\r\n" + b"".join(lines)
                    + b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(v), v))
        cases = [
            ("no key", post(b"Host: localhost\r\n")),
            ("Bearer latin-1", post(b"Authorization: Bearer fuzz-k\xe9y\r\n")),
            ("Bearer UTF-8", post(u"Authorization: Bearer \u4e2d\r\n".encode("utf-8"))),
            ("Bearer NUL", post(b"Authorization: Bearer fuzz-key\x00\r\n")),
            ("Bearer without a key", post(b"Authorization: Bearer\r\n")),
            ("Bearer 50 KB", post(b"Authorization: Bearer " + b"k" * 50000 + b"\r\n")),
            ("two Authorization", post(key, b"Authorization: Bearer other\r\n")),
            ("x-api-key latin-1", post(b"x-api-key: \xff\xfe\r\n")),
            ("x-api-key and a wrong Bearer", post(b"x-api-key: fuzz-key\r\nAuthorization: Bearer no\r\n")),
            ("Basic auth", post(b"Authorization: Basic Zm9vOmJhcg==\r\n")),
        ]
        # With the key, one Host or Origin line each: what the guard must parse without tripping.
        guarded = (
            b"Host: [::1", b"Host: [::1]:x", u"Host: \u4e2d".encode("utf-8"), b"Host: loc\xe1lhost", b"Host:",
            b"Host: localhost\x00.evil", b"Host: localhost:" + b"9" * 40, b"Host: localhost\r\nHost: evil.example",
            b"Host: evil@localhost", b"Host: 127.1", b"Host: ::1", b"Host: [fe80::1%25eth0]:80", b"Host: localhost.",
            b"Host: " + b"a." * 1000 + b"localhost", b"Origin: null", b"Origin: http://[x",
            b"Origin: http://\xe9.example", allowed[:-2], b"Origin: HTTP://ALLOWED.EXAMPLE/",
            b"Origin: http://allowed.example\rX-Injected: 1", b"Origin: http://allowed.example\r",
            b"Origin: http://allowed.example\x0b", b"Origin: \x0chttp://allowed.example",
            b"Origin: http://allowed.example\x00", b"Origin: http://allowed.example\x1f",
            allowed + b"Origin: http://evil.example")
        cases += [("with the key, " + shorten(line), post(key, line + b"\r\n")) for line in guarded]
        cases += [
            ("Sec-Fetch-Site cross-site", post(key, b"Sec-Fetch-Site: cross-site\r\n")),
            ("Sec-Fetch-Site latin-1", post(key, b"Sec-Fetch-Site: cr\xf6ss-site\r\n")),
            ("preflight, no Origin", b"OPTIONS /v1/chat/completions HTTP/1.1\r\nConnection: close\r\n\r\n"),
            ("preflight, odd request headers", b"OPTIONS /v1/messages HTTP/1.1\r\n" + allowed
             + b"Access-Control-Request-Method: P\xd6ST\r\nAccess-Control-Request-Headers: a\x00b, \xe9, "
             + b"x" * 3000 + b"\r\nAccess-Control-Request-Private-Network: TRUE\r\nConnection: close\r\n\r\n"),
            ("preflight on an unknown path", b"OPTIONS /v1/nope HTTP/1.1\r\n" + allowed
             + b"Connection: close\r\n\r\n"),
            ("preflight from a refused origin", b"OPTIONS /v1/messages HTTP/1.1\r\nOrigin: http://evil\r\n"
             + b"Connection: close\r\n\r\n"),
        ]
        for name, data in cases:
            raw = self.raw_exchange(data, timeout=3)
            self.check_raw(name, data, raw, (200, 204) + FOUR)
        self.finish("guard headers")

    def send(self, path, body, headers=None, method="POST"):
        return FuzzTestCase.send(self, path, body, dict(headers or {}, Authorization="Bearer fuzz-key"), method)


if __name__ == "__main__":
    unittest.main()
