"""A strict fake of the ChatGPT Codex backend (and a lenient fake of the public API).

The proxy's tests point the real proxy at this server. It refuses what the real
backend refuses (see shared/reference/codex-backend-notes.md) so that a request
shape that passes here has a fair chance of passing upstream, and it streams the
exact Responses SSE event shapes of the official openai SDK.

Standard library only; runs on CPython 3.8 - 3.13.
"""

import base64
import collections
import itertools
import json
import re
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

CLIENT_ID = "app_EMoamEEZ73f0CkXaXp7hrann"
DEFAULT_TEXT = "Hello from the fake backend."
DEFAULT_USAGE = {"input_tokens": 12, "cached_tokens": 0, "output_tokens": 7, "reasoning_tokens": 0}
KNOWN_FIELDS = frozenset([
    "model", "instructions", "input", "tools", "tool_choice", "parallel_tool_calls", "reasoning",
    "store", "stream", "include", "prompt_cache_key", "text", "service_tier", "client_metadata",
])
TOOL_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
RATE_LIMIT_HEADERS = [("x-codex-primary-used-percent", "12"), ("x-codex-primary-window-minutes", "300")]

RecordedRequest = collections.namedtuple("RecordedRequest", "method path query headers body json")


def _levels(*efforts):
    return [{"effort": e, "description": "%s reasoning effort" % e} for e in efforts]


def default_catalog():
    """A fresh copy of the default /models catalog (tests may mutate fake.catalog)."""
    def entry(slug, priority, levels, default="medium", visibility="list", in_api=True):
        return {"slug": slug, "display_name": slug, "visibility": visibility, "supported_in_api": in_api,
                "priority": priority, "default_reasoning_level": default,
                "supported_reasoning_levels": _levels(*levels), "context_window": 272000}
    return {"models": [
        entry("gpt-5.5", 1, ["low", "medium", "high", "xhigh"]),
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
    items = body.get("input", [])
    if not isinstance(items, list):
        return "Input must be a list"
    calls, outputs = [], set()
    seen_calls = set()
    for item in items:
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
    for call_id in calls:
        if call_id not in outputs:
            return "No tool output found for function call %s." % call_id
    tools = body.get("tools", [])
    if not isinstance(tools, list):
        return "Tools must be a list"
    for tool in tools:
        if not isinstance(tool, dict):
            return "Invalid tool"
        if tool.get("type") == "function":
            # Chat Completions nesting ({"function": {...}}) is the classic translation mistake.
            if "function" in tool or not isinstance(tool.get("name"), str):
                return "Missing required parameter: 'tools[].name'."
            if not TOOL_NAME_RE.match(tool["name"]):
                return "Invalid tool name: %r. Expected a string that matches ^[a-zA-Z0-9_-]{1,64}$." % tool["name"]
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return "Model is required"
    entry = _catalog_entry(catalog if catalog is not None else default_catalog(), model)
    if entry is None:
        return "The '%s' model is not supported when using Codex with a ChatGPT account." % model
    reasoning = body.get("reasoning")
    if reasoning is not None:
        if not isinstance(reasoning, dict):
            return "Invalid type for 'reasoning': expected an object."
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
    Transport keys (delay, status, headers) are ignored here; `cut` truncates.
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

    if reply.get("text") is not None:
        repeat = int(reply.get("events_repeat", 1))
        text = reply["text"] * repeat
        item_id, idx = "msg_%s_%d" % (rid, len(output)), len(output)
        common = dict(item_id=item_id, output_index=idx, content_index=0)
        add_item({"id": item_id, "type": "message", "status": "in_progress", "content": [], "role": "assistant"})
        emit("response.content_part.added", part={"type": "output_text", "annotations": [], "text": ""}, **common)
        for piece in _pieces(reply["text"]) * repeat:
            emit("response.output_text.delta", delta=piece, logprobs=[], **common)
        emit("response.output_text.done", text=text, logprobs=[], **common)
        part = {"type": "output_text", "annotations": [], "logprobs": [], "text": text}
        emit("response.content_part.done", part=part, **common)
        done_item({"id": item_id, "type": "message", "role": "assistant", "content": [part],
                   "status": "incomplete" if reply.get("incomplete") else "completed"})

    for n, call in enumerate(reply.get("tool_calls") or []):
        item_id, idx = "fc_%s_%d" % (rid, len(output)), len(output)
        args, call_id = call.get("arguments", "{}"), call.get("call_id") or "call_%s_%d" % (rid, n)
        item = {"id": item_id, "type": "function_call", "status": "in_progress", "arguments": "",
                "call_id": call_id, "name": call["name"]}
        add_item(dict(item))
        for piece in _pieces(args):
            emit("response.function_call_arguments.delta", item_id=item_id, output_index=idx, delta=piece)
        emit("response.function_call_arguments.done", item_id=item_id, output_index=idx, arguments=args)
        item.update(status="completed", arguments=args)
        done_item(item)

    if reply.get("error_event"):
        err = reply["error_event"]
        emit("error", code=err.get("code"), message=err.get("message", "error"), param=err.get("param"))
    else:
        final = dict(response, output=output, usage=render_usage(reply.get("usage")))
        if reply.get("fail"):
            final.update(status="failed", usage=None, error={
                "code": reply["fail"].get("code", "server_error"), "message": reply["fail"].get("message", "")})
            emit("response.failed", response=final)
        elif reply.get("incomplete"):
            final.update(status="incomplete", incomplete_details={"reason": reply["incomplete"]})
            emit("response.incomplete", response=final)
        else:
            final.update(status="completed", completed_at=int(time.time()))
            if reply.get("empty_completed_output"):
                final["output"] = []  # reported real behaviour: rebuild from output_item.done
            emit("response.completed", response=final)
    if reply.get("cut"):
        deltas = [i for i, ev in enumerate(events) if ev["type"].endswith(".delta")]
        events = events[:deltas[-1] + 1] if deltas else events[:-1]
    return events


def render_sse(events):
    """Responses-style SSE bytes: `event:` + `data:` per event, no [DONE]."""
    return b"".join(("event: %s\ndata: %s\n\n" % (ev["type"], json.dumps(ev))).encode() for ev in events)


def final_response(reply, model, request=None):
    """The assembled Response object (non-stream /v1/responses), output always filled."""
    reply = dict(reply or {}, empty_completed_output=False, cut=False)
    return sse_events_for(reply, model, request)[-1].get("response")


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
        if route is None:
            return self.send_json(404, {"detail": "Not Found"})
        route(self, rec)

    def send_json(self, status, obj, headers=None):
        data = obj if isinstance(obj, bytes) else (obj.encode() if isinstance(obj, str) else json.dumps(obj).encode())
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, str(v))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            self.close_connection = True

    def send_stream(self, chunks, headers, delay=0.0, cut=False):
        """Write each chunk as its own HTTP chunk. cut=True drops the connection mid-body;
        cut="clean" ends the body properly (both without a terminal event)."""
        try:
            self.send_response(200)
            for k, v in headers:
                self.send_header(k, str(v))
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i, data in enumerate(chunks):
                if i and delay:
                    time.sleep(delay)
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

class FakeCodexBackend(object):
    def __init__(self):
        self.valid_access_tokens = {"access-1"}
        self.account_id = "acct-123"
        self.api_keys = {"sk-test-key"}
        self.refresh_tokens = {"refresh-1": ("access-2", "refresh-2", None)}
        self.refresh_count = 0
        self.refresh_delay = 0.0
        self.script = collections.deque()
        self.stream_closed_early = threading.Event()
        self.catalog = default_catalog()
        self.requests = []
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
            ("POST", "/oauth/token"): self._oauth_token,
            ("POST", "/v1/responses"): self._api_responses,
            ("POST", "/v1/chat/completions"): self._api_chat,
            ("GET", "/v1/models"): self._api_models,
        }

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
            self.refresh_count = 0
        self.stream_closed_early.clear()

    def requests_to(self, path_suffix):
        with self._lock:
            return [r for r in self.requests if r.path.endswith(path_suffix)]

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
            reply = self.script.popleft() if self.script else {"text": DEFAULT_TEXT}
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

    def _stream_responses(self, h, reply, body, extra_headers):
        events = sse_events_for(reply, body.get("model"), body)
        headers = [("Content-Type", "text/event-stream")] + extra_headers + list((reply.get("headers") or {}).items())
        h.send_stream([render_sse([ev]) for ev in events], headers, reply.get("delay", 0.0), reply.get("cut", False))

    # -- ChatGPT mode
    def _chatgpt_auth(self, h, rec):
        if self._bearer(rec) not in self.valid_access_tokens:
            h.send_json(401, {"error": {
                "message": "Provided authentication token is expired. Please try signing in again.",
                "type": "invalid_request_error", "param": None, "code": "token_expired"}, "status": 401})
            return False
        account = rec.headers.get("chatgpt-account-id")
        if not account:
            h.send_json(400, {"detail": "Missing ChatGPT-Account-ID header"})
            return False
        if account != self.account_id:
            h.send_json(401, {"detail": "Account mismatch: the token does not belong to this workspace."})
            return False
        return True

    def _codex_responses(self, h, rec):
        if not self._chatgpt_auth(h, rec):
            return
        detail = codex_request_error(rec.json, self.catalog)
        if detail:
            return h.send_json(400, {"detail": detail})
        reply = self._next_reply(rec.json)
        if reply.get("status"):
            return self._http_error(h, reply)
        self._stream_responses(h, reply, rec.json, RATE_LIMIT_HEADERS)

    def _codex_models(self, h, rec):
        if not self._chatgpt_auth(h, rec):
            return
        if not rec.query.get("client_version"):
            return h.send_json(400, {"detail": "client_version is required"})
        h.send_json(200, self.catalog, dict(RATE_LIMIT_HEADERS))

    def _oauth_token(self, h, rec):
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

    def _api_responses(self, h, rec):
        if not self._api_auth(h, rec):
            return
        body = self._api_body(h, rec)
        if body is None:
            return
        reply = self._next_reply(body)
        if reply.get("status"):
            return self._http_error(h, reply)
        if body.get("stream"):
            return self._stream_responses(h, reply, body, [])
        problem = reply.get("fail") or reply.get("error_event")
        if problem:
            return h.send_json(500, {"error": {"message": problem.get("message", ""), "type": "server_error",
                                               "param": None, "code": problem.get("code")}})
        h.send_json(200, final_response(reply, body.get("model"), body), reply.get("headers"))

    def _api_chat(self, h, rec):
        if not self._api_auth(h, rec):
            return
        body = self._api_body(h, rec)
        if body is None:
            return
        reply = self._next_reply(body)
        if reply.get("status"):
            return self._http_error(h, reply)
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

    def _api_models(self, h, rec):
        if not self._api_auth(h, rec):
            return
        h.send_json(200, {"object": "list", "data": [
            {"id": m, "object": "model", "created": 0, "owned_by": "openai"}
            for m in ("gpt-4.1", "gpt-4.1-mini", "gpt-4o", "gpt-5")]})
