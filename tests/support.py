"""Shared test helpers, one of each: a running proxy on a loopback port (ProxyTestCase), auth files,
the script as a process (run_script), HTTP calls and raw sockets (raw_request, read_until, read_head,
read_all), translator streams (run_stream), SSE and answer readers (sse_events, sse_data, streamed_text,
output_text), polling (wait_for), and the ways of feeding bytes to a sans-IO reader (splits)."""

import asyncio
import base64
import copy
import http.client
import importlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SCRIPT = os.path.join(ROOT, "codex_proxy.py")
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

import codex_proxy  # noqa: E402
import gc  # noqa: E402
import logging  # noqa: E402
import warnings  # noqa: E402

# Unclosed sockets and transports: turned into errors, which reach the
# unraisable hook (they happen in __del__), where they are collected so that
# ProxyTestCase can fail the test that left them behind.
LEAKS = []
warnings.filterwarnings("error", category=ResourceWarning)


def _record_unraisable(unraisable):
    if unraisable.exc_type is not None and issubclass(unraisable.exc_type, ResourceWarning):
        LEAKS.append(str(unraisable.exc_value))
    else:
        sys.__unraisablehook__(unraisable)


sys.unraisablehook = _record_unraisable

# Expected failures log warnings; keep them out of the test report.
logging.getLogger("codex_proxy").addHandler(logging.NullHandler())
from fake_upstream import FakeCodexBackend  # noqa: E402


def optional_module(name):
    """An optional test dependency (an official SDK), or None where it is not installed: its tests
    then skip, unless CODEX_PROXY_REQUIRE_OPTIONAL is set (as in CI), where its absence fails."""
    try:
        return importlib.import_module(name)
    except ImportError:
        if os.environ.get("CODEX_PROXY_REQUIRE_OPTIONAL"):
            raise
        return None


def splits(data):
    """The ways of feeding `data`: whole, byte by byte, and in two at every point (at
    points spread over it, and all near its ends, when it is long)."""
    yield "whole", [data]
    yield "byte by byte", [data[at:at + 1] for at in range(len(data))]
    points = range(1, len(data)) if len(data) <= 3000 else sorted(
        set(range(1, len(data), 97)) | set(range(1, 200)) | set(range(max(1, len(data) - 200), len(data))))
    for at in points:
        yield "split at %d" % at, [data[:at], data[at:]]


def clock():
    """Now, as the proxy sees it: its one clock (codex_proxy.wall_clock), which tests move by
    patching it. Every timestamp a test writes for the proxy to compare is built from this."""
    return codex_proxy.wall_clock()


def iso_ago(seconds):
    """A time `seconds` ago (negative: ahead), in the Codex CLI's last_refresh format."""
    return codex_proxy.utc_stamp(clock() - seconds)


def make_jwt(exp=None, **claims):
    def b64(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
    if exp is not None:
        claims["exp"] = exp
    return "%s.%s.sig" % (b64({"alg": "none"}), b64(claims))


def write_auth(folder, access_token="access-1", refresh_token="refresh-1", account_id="acct-123",
               last_refresh=None, id_token="x.e30.y", **extra):
    """An auth.json in `folder`, as the Codex CLI writes it; refreshed just now unless
    `last_refresh` says otherwise."""
    last_refresh = iso_ago(0) if last_refresh is None else last_refresh
    data = {"OPENAI_API_KEY": None, "tokens": {"id_token": id_token, "access_token": access_token,
                                               "refresh_token": refresh_token, "account_id": account_id},
            "last_refresh": last_refresh}
    data.update(extra)
    path = os.path.join(folder, "auth.json")
    with open(path, "w") as handle:
        json.dump(data, handle)
    return path


def read_auth(folder):
    with open(os.path.join(folder, "auth.json")) as handle:
        return json.load(handle)


def run_script(test, args, env=None, timeout=60):
    """(exit status, stdout, stderr) of `python3 codex_proxy.py ARGS` as a process, with `env` (default:
    this one's); it must print no traceback and leave no socket or file unclosed."""
    result = subprocess.run([sys.executable, "-W", "always::ResourceWarning", SCRIPT] + list(args),
                            capture_output=True, text=True, timeout=timeout, env=env)
    test.assertNotIn("Traceback", result.stderr)
    test.assertNotIn("ResourceWarning", result.stderr)
    return result.returncode, result.stdout, result.stderr


MASK = b"\x37\xfa\x21\x3d"  # RFC 6455 5.7's example mask
XOR_TABLES = [bytes(value ^ key for value in range(256)) for key in range(256)]


def masked(payload, mask):
    """`payload` masked with `mask`, a quarter at a time by bytes.translate (a way of its own, not
    codex_proxy.unmask's, so that the two check each other; and fast enough for megabytes)."""
    out = bytearray(payload)
    for phase in range(4):
        out[phase::4] = payload[phase::4].translate(XOR_TABLES[mask[phase]])
    return bytes(out)


def masked_frame(opcode, payload, fin=True, mask=MASK, rsv=0, length_bytes=None, length=None):
    """A client's frame (RFC 6455 5.2): masked unless `mask` is None. `rsv` sets RSV bits;
    `length_bytes` (0, 2 or 8) forces the length's encoding, `length` a length other than the
    payload's: how tests build the frames a client must not send."""
    size = len(payload) if length is None else length
    if length_bytes is None:
        length_bytes = 0 if size <= 125 else 2 if size <= 0xFFFF else 8
    mask_bit = 0x80 if mask is not None else 0
    head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
    if length_bytes == 0:
        head += bytes([mask_bit | size])
    else:
        head += bytes([mask_bit | (126 if length_bytes == 2 else 127)]) + size.to_bytes(length_bytes, "big")
    return head + (mask + masked(payload, mask) if mask is not None else payload)


class WebSocketClient:
    """A WebSocket client for tests, on a plain socket: the handshake, masked frames out (any
    frame a test builds, too), the server's frames in. Closed after the test (`test.addCleanup`)."""

    def __init__(self, test, port, path="/v1/responses", headers=None, timeout=10):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        test.addCleanup(self.sock.close)
        self.received = b""
        self.key = base64.b64encode(os.urandom(16)).decode()
        fields = {"Host": "127.0.0.1:%d" % port, "Upgrade": "websocket", "Connection": "Upgrade",
                  "Sec-WebSocket-Key": self.key, "Sec-WebSocket-Version": "13"}
        fields.update(headers or {})
        head = "GET %s HTTP/1.1\r\n" % path + "".join("%s: %s\r\n" % (k, v) for k, v in fields.items()
                                                      if v is not None)
        self.sock.sendall(head.encode("latin-1") + b"\r\n")

    def answer_head(self):
        """(status, headers lower-cased) of the server's answer to the upgrade; for a refusal, the
        body follows in `self.received` (read to the end with `rest`)."""
        head, self.received = read_head(self.sock)
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(lines[0].split()[1]), headers

    def rest(self):
        return self.received + read_all(self.sock)

    def send(self, data):
        self.sock.sendall(data)

    def send_text(self, text):
        self.send(masked_frame(0x1, text.encode("utf-8")))

    def send_json(self, message):
        self.send_text(json.dumps(message))

    def read_exactly(self, size):
        while len(self.received) < size:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("the server closed the connection")
            self.received += data
        data, self.received = self.received[:size], self.received[size:]
        return data

    def read_frame(self):
        """(opcode, payload) of the server's next frame, checked as a client must: unmasked, no
        RSV bit."""
        first, second = self.read_exactly(2)
        assert not second & 0x80, "a server frame was masked"
        assert not first & 0x70, "a server frame had RSV bits"
        size = second & 0x7F
        if size >= 126:
            size = int.from_bytes(self.read_exactly(2 if size == 126 else 8), "big")
        return first & 0x0F, self.read_exactly(size)

    def read_message(self):
        """The next JSON text message (pings and pongs skipped); (opcode, payload) of a close."""
        while True:
            opcode, payload = self.read_frame()
            if opcode == 0x1:
                return json.loads(payload.decode("utf-8"))
            if opcode == 0x8:
                return opcode, payload

    def read_response(self):
        """The messages of one response, up to its terminal event (or an error)."""
        events = []
        while True:
            event = self.read_message()
            events.append(event)
            if isinstance(event, tuple) or event.get("type") in (
                    "response.completed", "response.failed", "response.incomplete", "error"):
                return events

    def closed_with(self):
        """The code of the server's close frame (the frames before it skipped), and that the TCP
        connection ends after it."""
        while True:
            opcode, payload = self.read_frame()
            if opcode == 0x8:
                break
        return int.from_bytes(payload[:2], "big") if payload else None


class RunningProxy:
    """The real proxy (`start_proxy`) on its own event loop in a thread."""

    def __init__(self, config):
        self.config = config
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.error = None

    def _run(self):
        asyncio.set_event_loop(self.loop)
        try:
            self.server = self.loop.run_until_complete(codex_proxy.start_proxy(self.config))
        except Exception as exc:  # surfaced by start()
            self.error = exc
            self.ready.set()
            return
        self.app, self.url, self.port = self.server.app, self.server.url, self.server.port
        self.ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self.server.shutdown(0))
        pending = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self.loop.run_until_complete(asyncio.sleep(0.01))  # closed transports release their sockets
        self.app.upstream.shutdown()
        self.loop.close()

    def start(self):
        self.thread.start()
        self.ready.wait(10)
        if self.error:
            raise self.error
        return self

    def stop(self):
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class ProxyTestCase(unittest.TestCase):
    """Each test gets a fresh fake backend, a CODEX_HOME with a valid login, and a proxy."""

    config_overrides = {}
    auth_extra = {}

    def setUp(self):
        self.addCleanup(self.assert_nothing_left_open, len(LEAKS))  # runs last
        self.fake = FakeCodexBackend().start()
        self.addCleanup(self.fake.stop)
        self.home = tempfile.mkdtemp(prefix="codex-home-")
        self.addCleanup(shutil.rmtree, self.home, True)
        self.write_login()
        self.proxy = self.start_proxy()

    def assert_nothing_left_open(self, before):
        gc.collect()
        self.assertEqual(LEAKS[before:], [], "sockets or transports left open")

    def write_login(self):
        write_auth(self.home, **self.auth_extra)

    def make_config(self, **overrides):
        settings = dict(host="127.0.0.1", port=0, codex_home=self.home, openai_api_key=None,
                        chatgpt_base_url=self.fake.chatgpt_base, openai_base_url=self.fake.api_base,
                        refresh_token_url=self.fake.token_url, proxy=None)
        settings.update(self.config_overrides)
        settings.update(overrides)
        return codex_proxy.Config(**settings)

    def start_proxy(self, **overrides):
        proxy = RunningProxy(self.make_config(**overrides)).start()
        self.addCleanup(proxy.stop)
        return proxy

    # -- calls
    def sdk_client(self, client_class, path=""):
        """An official SDK client (openai.OpenAI, anthropic.Anthropic) for this test's proxy,
        closed after the test."""
        client = client_class(base_url="http://127.0.0.1:%d%s" % (self.proxy.port, path), api_key="unused",
                              max_retries=0)
        self.addCleanup(client.close)
        return client

    def request(self, method, path, body=None, headers=None, proxy=None, timeout=10):
        """(status, headers dict lower-case, raw body bytes)."""
        proxy = proxy or self.proxy
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=timeout)
        try:
            payload = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
            hdrs = {"Content-Type": "application/json"}
            hdrs.update(headers or {})
            conn.request(method, path, body=payload, headers=hdrs)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def json_request(self, method, path, body=None, headers=None, proxy=None):
        status, hdrs, raw = self.request(method, path, body, headers, proxy)
        return status, hdrs, json.loads(raw.decode()) if raw else None

    def json_answer(self, method, path, body=None, headers=None, proxy=None, status=200):
        """The parsed answer to a request (json_request's arguments), once its status is checked."""
        got, _, answer = self.json_request(method, path, body, headers, proxy)
        self.assertEqual(got, status, answer)
        return answer

    def sse_request(self, path, body, headers=None):
        """(status, [(event, parsed data or raw string)], raw bytes)."""
        status, hdrs, raw = self.request("POST", path, body, headers)
        return status, sse_events(raw, json_or_text), raw

    def raw_exchange(self, data, timeout=5):
        """Send raw bytes, return everything the proxy answers until it closes."""
        sock = socket.create_connection(("127.0.0.1", self.proxy.port), timeout=timeout)
        try:
            sock.sendall(data)
            return read_all(sock, timeout)
        finally:
            sock.close()


class DumpDirTestCase(ProxyTestCase):
    """A ProxyTestCase whose proxy writes each exchange to --dump-dir (self.dump_dir)."""

    def setUp(self):
        self.dump_dir = tempfile.mkdtemp(prefix="codex-dump-")
        self.addCleanup(shutil.rmtree, self.dump_dir, True)
        self.config_overrides = dict(self.config_overrides, dump_dir=self.dump_dir)
        super().setUp()

    def dumps(self):
        """(file name, text) of each exchange written (whole: one being written is a .part), by name."""
        result = []
        for name in sorted(n for n in os.listdir(self.dump_dir) if n.endswith(".json")):
            with open(os.path.join(self.dump_dir, name), encoding="utf-8") as handle:
                result.append((name, handle.read()))
        return result


def run_stream(stream, events, finish=True):
    """(stream, what it wrote) after feeding a translator stream copies of `events` (so that it
    cannot change the test's own) and, with `finish`, ending it."""
    out = []
    for event in events:
        out.extend(stream.feed(copy.deepcopy(event)))
    if finish:
        out.extend(stream.finish())
    return stream, out


def read_all(sock, timeout=10):
    """Everything a socket receives until its peer closes (or `timeout` seconds of silence)."""
    sock.settimeout(timeout)
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def taken_port(test):
    """A loopback port something else listens on (for the length of `test`)."""
    sock = socket.socket()
    test.addCleanup(sock.close)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    return sock.getsockname()[1]


def closed_port():
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout=5.0, interval=0.01):
    """Polls `predicate` until it is true or `timeout` seconds have passed; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def read_until(sock, marker, received=b"", limit=None):
    """What `sock` receives (after `received`) until `marker` is in it, the peer closes, or more
    than `limit` bytes have come."""
    while marker not in received and (limit is None or len(received) <= limit):
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    return received


def read_head(sock, received=b"", limit=256 * 1024):
    """(an HTTP head without its blank line, the bytes after it) from `sock`, for the tests' own
    servers; (None, what came) when the peer closes first or the head is over `limit` bytes."""
    head, blank, rest = read_until(sock, b"\r\n\r\n", received, limit).partition(b"\r\n\r\n")
    return (head, rest) if blank else (None, head)


def raw_request(path, body, extra=""):
    """The bytes of a POST of `body` (JSON unless already bytes) to `path`; `extra`: more header
    lines, each ending in CRLF."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return ("POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n%s"
            "Content-Length: %d\r\n\r\n" % (path, extra, len(data))).encode() + data


def sse_events(raw, load=str):
    """[(event name or None, load(data))] of Server-Sent Events bytes, read by the tests' own
    parser (not the proxy's SSEParser), strict about UTF-8."""
    events = []
    for block in raw.decode("utf-8").replace("\r\n", "\n").split("\n\n"):
        name, data = None, []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[6:] if line.startswith("data: ") else line[5:])
        if data:
            events.append((name, load("\n".join(data))))
    return events


def sse_data(raw):
    """The JSON payloads of the events in `raw`, in order."""
    return [data for _, data in sse_events(raw, json.loads)]


def json_or_text(text):
    try:
        return json.loads(text)
    except ValueError:
        return text


def streamed_text(payloads):
    """The text of a Responses stream: its output_text deltas (`payloads`: the events' data)."""
    return "".join(data["delta"] for data in payloads if data.get("type") == "response.output_text.delta")


def output_text(response):
    """The text of a Responses API answer's message items."""
    return "".join(part.get("text") or "" for item in response.get("output") or ()
                   if item.get("type") == "message" for part in item.get("content") or ())
