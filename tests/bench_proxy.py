"""Performance benchmark: what the proxy adds to a request, and how it carries streams.

    python tests/bench_proxy.py                 full run (~4 min on 2 cores with all three columns)
    python tests/bench_proxy.py --quick         smaller workloads (~40 s)
    python tests/bench_proxy.py --only ttfb,stream
    python tests/bench_proxy.py --streams 128   concurrency of the "256 streams" figure

Figures (ids for --only):
  spawn   6. process start to the first /health 200 (median of several spawns); 6b. the same,
          and the idle RSS, for `python -m codex_proxy` with its bytecode cached (information)
  ttfb    1. added time to first body byte, sequential streamed chat requests
  stream  2./3. one long unpaced stream (20,000 deltas) on /v1/chat/completions
          and /v1/messages: proxy CPU per delta, deltas/s
  c256    4./7. 256 concurrent chat streams of 200 deltas 10 ms apart: errors,
          exact content, p99 completion, first content, upstream streams open at
          once; the proxy's RSS idle and at peak (`rss` is an alias)
  c1000   5. 1,000 concurrent chat streams of 100 deltas 40 ms apart
  image   8. a 2 MB image answer: the time codex-proxy adds to the backend's own (information)
  websocket  9. time to the first text delta of a short /v1/responses stream over the Responses
          WebSocket (a socket kept open) vs over HTTP SSE (a keep-alive connection), p50/p90;
          the client side is a minimal WebSocket client of its own (`ws` is an alias)
Concurrent streams start evenly over half a stream's length (--ramp), so that
all are open at once without timing one burst of simultaneous connects.

Columns, all fed the same workload by the same client:
  direct           the client talking straight to the fake backend (the floor)
  codex-api-proxy  the PyPI package this project replaces (FastAPI/uvicorn/httpx), if available
  codex-proxy      ../codex_proxy.py as a subprocess, as a user runs it, plus
                   --max-streams 2048 if its --help lists that flag, else
                   --upstream-threads 1100 (the default 64 would cap figure 5)

The codex-api-proxy column is optional; it needs the package in some interpreter:

    python3 -m venv /tmp/capvenv && /tmp/capvenv/bin/pip install codex-api-proxy==0.1.5
    CODEX_API_PROXY_PYTHON=/tmp/capvenv/bin/python python tests/bench_proxy.py
    (or: python tests/bench_proxy.py --compare-python /tmp/capvenv/bin/python)

It is also used when `codex_api_proxy` imports in the interpreter running the
benchmark. That package has no setting for its upstream URL (it always calls
https://chatgpt.com/backend-api/codex) and defaults to an upstream proxy at
127.0.0.1:8118, so the benchmark starts it through a small launcher (SHIM
below) that points those two module constants at the fake backend and then runs
the package's own `_serve` entry point (create_app + uvicorn.run, which picks
uvloop and httptools when installed, as they are by pip).

How it is measured. Everything runs on loopback, each proxy with a CODEX_HOME
of its own (a ChatGPT login from support.write_auth), OPENAI_API_KEY, proxy
variables and CODEX_PROXY_* settings removed from its environment. The fake
backend runs in a child process of its own: by default tests/fake_upstream.py's
request checks and exact Responses events served from one asyncio loop
(--fake threaded: its own ThreadingHTTPServer, subclassed, which on 2 cores
saturates before the proxies do). The client is one asyncio loop speaking raw
HTTP/1.1 with hand-rolled chunked decoding, so 1,000 concurrent streams cost it
1,000 sockets, not 1,000 threads; its own CPU is printed with each run. A reply's
shape travels in the prompt ("bench:{...}"), so one request works directly and
through both proxies. Paced streams send their deltas on a fixed schedule
(start + k * interval), as a model produces tokens; the events before the first
delta go out at once. Content is checked after the timing: every stream must
carry exactly its deltas and end with its dialect's terminal event.
CPU = utime + stime of the proxy process (/proc/PID/stat), RSS = VmRSS/VmHWM
(/proc/PID/status): Linux only; elsewhere those figures read n.a.

Standard library only. The script is a report, not a test: it exits 0 whatever
the verdicts.
"""

import argparse
import asyncio
import base64
import collections
import importlib.util
import json
import os
import platform
import queue
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CODEX_PROXY = os.path.join(ROOT, "codex_proxy.py")
sys.path.insert(0, HERE)

MODEL = "gpt-5.5"
ACCESS_TOKEN, ACCOUNT_ID = "access-1", "acct-123"  # what support.write_auth writes and the fake accepts
DIRECT, CAP, CP = "direct", "codex-api-proxy", "codex-proxy"
COLUMNS = (DIRECT, CAP, CP)
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

# Started with the codex-api-proxy interpreter: argv = host port chatgpt_base_url.
SHIM = r"""
import sys
import codex_api_proxy.auth, codex_api_proxy.config
codex_api_proxy.auth.CHATGPT_CODEX_BASE_URL = sys.argv[3]  # hard-coded upstream in 0.1.5
codex_api_proxy.config.DEFAULT_HTTPS_PROXY = None  # its default is an upstream proxy at 127.0.0.1:8118
from codex_api_proxy.cli import main
sys.exit(main(["_serve", "--host", sys.argv[1], "--port", sys.argv[2], "--log-level", "warning"]))
"""


# =============================================================================
# The fake backend, in a child process: `python bench_proxy.py --serve-fake KIND`
#
# Two ways to serve tests/fake_upstream.py's replies (its request checks,
# its exact Responses SSE events, one HTTP chunk per event):
#   asyncio  (default) one event loop; the floor stays low under 1,000 streams.
#   threaded its own ThreadingHTTPServer, subclassed: a thread per connection.
#            On 2 cores, 256 paced streams (25,600 deltas/s) keep it ~90% busy
#            (threads contending for the GIL cost ~50 us per delta) and its
#            first bytes lag by ~0.2 s: it measures itself more than the proxies.

def find_spec(obj, depth=0):
    """The reply shape a prompt asks for: "bench:{"c": char, "n": deltas, "i": interval}"."""
    if isinstance(obj, str):
        return json.loads(obj[6:]) if obj.startswith("bench:") else None
    if depth < 6 and isinstance(obj, (list, dict)):
        for value in (obj.values() if isinstance(obj, dict) else obj):
            spec = find_spec(value, depth + 1)
            if spec is not None:
                return spec
    return None


def reply_for(body, default_text):
    spec = find_spec(body.get("input") if isinstance(body, dict) else None)
    if spec is None:
        return {"text": default_text}
    if "image" in spec:  # an image of that many (incompressible) bytes, as base64
        return {"image": {"noise_bytes": spec["image"]}}
    return {"text": spec["c"], "events_repeat": spec["n"], "interval": spec.get("i", 0)}


class StreamCounter(object):
    """Upstream streams open now, at most since the last reset, and started."""

    def __init__(self):
        self.lock = threading.Lock()
        self.open = self.max_open = self.streams = 0

    def enter(self):
        with self.lock:
            self.open += 1
            self.streams += 1
            self.max_open = max(self.max_open, self.open)

    def leave(self):
        with self.lock:
            self.open -= 1

    def stats(self, reset=False):
        with self.lock:
            stats = {"open": self.open, "max_open": self.max_open, "streams": self.streams}
            if reset:
                self.max_open, self.streams = self.open, 0
        return stats


def serve_fake(kind, workers):
    """Run the fake backend, print its port, serve until stdin closes."""
    if kind == "asyncio":
        return asyncio.run(serve_fake_asyncio())
    fake = threaded_fake(workers).start()
    sys.stdout.write("%d\n" % fake._server.server_address[1])
    sys.stdout.flush()
    try:
        sys.stdin.read()  # until the benchmark exits or closes our stdin
    except KeyboardInterrupt:
        pass
    fake.stop()


async def serve_fake_asyncio():
    """fake_upstream's Codex endpoints on one asyncio loop (keep-alive HTTP/1.1)."""
    import fake_upstream as fu
    counter = StreamCounter()
    catalog = fu.default_catalog()
    valid_tokens = {ACCESS_TOKEN}
    loop = asyncio.get_running_loop()

    def answer(writer, status, obj, headers=()):
        data = json.dumps(obj).encode()
        head = "HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n" % (status, len(data))
        head += "".join("%s: %s\r\n" % pair for pair in headers)
        writer.write(head.encode("latin-1") + b"\r\n" + data)

    def chatgpt_auth(writer, headers):
        auth = headers.get("authorization", "")
        if auth[7:].strip() not in valid_tokens:
            answer(writer, 401, {"error": {"message": "Provided authentication token is expired.",
                                           "type": "invalid_request_error", "code": "token_expired"}})
            return False
        if headers.get("chatgpt-account-id") != ACCOUNT_ID:
            answer(writer, 400, {"detail": "Missing or wrong ChatGPT-Account-ID header"})
            return False
        return True

    async def responses(writer, headers, raw):
        if not chatgpt_auth(writer, headers):
            return
        try:
            body = json.loads(raw.decode("utf-8"))
        except ValueError:
            body = None
        detail = fu.codex_request_error(body, catalog)
        if detail:
            return answer(writer, 400, {"detail": detail})
        reply = reply_for(body, fu.DEFAULT_TEXT)
        counter.enter()
        try:
            events = fu.sse_events_for(reply, body.get("model"), body)
            head = ["HTTP/1.1 200 OK", "Content-Type: text/event-stream", "Cache-Control: no-cache",
                    "Transfer-Encoding: chunked"] + ["%s: %s" % pair for pair in fu.RATE_LIMIT_HEADERS]
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
            interval, start, k = reply.get("interval") or 0, None, 0
            for event in events:
                if interval and event["type"] == "response.output_text.delta":
                    if start is None:
                        start = loop.time()
                    else:  # deltas on a fixed schedule, as a model produces tokens
                        k += 1
                        wait = start + k * interval - loop.time()
                        if wait > 0:
                            await asyncio.sleep(wait)
                data = fu.render_sse([event])
                writer.write(b"%x\r\n%s\r\n" % (len(data), data))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
        finally:
            counter.leave()

    async def route(writer, method, path, query, headers, raw):
        if (method, path) == ("POST", "/backend-api/codex/responses"):
            return await responses(writer, headers, raw)
        if (method, path) == ("GET", "/backend-api/codex/models"):
            if chatgpt_auth(writer, headers):
                if "client_version=" not in query:
                    return answer(writer, 400, {"detail": "client_version is required"})
                answer(writer, 200, catalog, fu.RATE_LIMIT_HEADERS)
            return
        if (method, path) == ("POST", "/oauth/token"):  # a refresh keeps the same (still valid) access token
            return answer(writer, 200, {"access_token": ACCESS_TOKEN, "refresh_token": "refresh-1",
                                        "id_token": fu.fake_id_token(ACCOUNT_ID)})
        if path == "/bench/stats":
            return answer(writer, 200, counter.stats(reset=method == "POST"))
        answer(writer, 404, {"detail": "Not Found"})

    async def connection(reader, writer):
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, version = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                if "chunked" in headers.get("transfer-encoding", "").lower():
                    raw = b""
                    while True:
                        size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
                        if not size:
                            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                                pass
                            break
                        raw += await reader.readexactly(size)
                        await reader.readline()
                else:
                    raw = await reader.readexactly(int(headers.get("content-length") or 0))
                path, _, query = target.partition("?")
                await route(writer, method, path, query, headers, raw)
                await writer.drain()
                if version != "HTTP/1.1" or headers.get("connection", "").lower() == "close":
                    break
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(connection, "127.0.0.1", 0, backlog=4096, limit=1 << 20)
    sys.stdout.write("%d\n" % server.sockets[0].getsockname()[1])
    sys.stdout.flush()
    await loop.run_in_executor(None, sys.stdin.read)  # until the benchmark exits or closes our stdin
    server.close()


def threaded_fake(workers):
    """fake_upstream.FakeCodexBackend itself, subclassed (--fake threaded)."""
    import fake_upstream
    from fake_upstream import FakeCodexBackend, render_sse, sse_events_for

    class KeptTokens(set):
        """Access tokens stay valid after a refresh, so one proxy refreshing
        cannot lock the other columns out mid-run."""
        def clear(self):
            pass

    def paced(events, interval):
        """Deltas on a fixed schedule, everything else as soon as possible; each
        event rendered as it is sent (rendering all 200 up front would cost a burst
        of 256 requests ~0.1 s of the fake's CPU before the first byte)."""
        start, k = None, 0
        for event in events:
            if event["type"] == "response.output_text.delta":
                if start is None:
                    start = time.monotonic()
                else:
                    k += 1
                    wait = start + k * interval - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
            yield render_sse([event])

    class PooledServer(fake_upstream._Server):
        """The fake's ThreadingHTTPServer, with threads started ahead of time.

        The stock server starts a thread per connection in its accept loop; with
        hundreds of streaming threads holding the GIL in turn, a burst of 256
        connects then takes it most of a second to accept. Here idle pre-started
        threads take connections at once (a new thread only when none is idle,
        e.g. while many keep-alive connections are parked)."""
        request_queue_size = 4096  # the stock 128 overflows on bursts of 1,000 connects

        def __init__(self, address, handler, workers):
            fake_upstream._Server.__init__(self, address, handler)
            self.jobs = queue.SimpleQueue()
            self.pool_lock = threading.Lock()
            self.idle = 0
            for _ in range(workers):
                threading.Thread(target=self._work, daemon=True).start()

        def _work(self):
            while True:
                with self.pool_lock:
                    self.idle += 1
                job = self.jobs.get()
                if job is None:
                    return
                self.process_request_thread(*job)

        def process_request(self, request, client_address):
            with self.pool_lock:
                pooled = self.idle > 0
                if pooled:
                    self.idle -= 1
            if pooled:
                self.jobs.put((request, client_address))
            else:
                fake_upstream._Server.process_request(self, request, client_address)

    class BenchFake(FakeCodexBackend):
        def __init__(self, workers):
            FakeCodexBackend.__init__(self)
            self._server.server_close()  # swapped for the pooled server, on a port of its own
            self._server = PooledServer(("127.0.0.1", 0), fake_upstream._Handler, workers)
            self._server.fake = self
            self.base_url = "http://127.0.0.1:%d" % self._server.server_address[1]
            self.chatgpt_base = self.base_url + "/backend-api/codex"
            self.api_base = self.base_url + "/v1"
            self.token_url = self.base_url + "/oauth/token"
            self.requests = collections.deque(maxlen=16)  # the fake records every request; keep a few
            self.valid_access_tokens = KeptTokens(self.valid_access_tokens)
            self.counter = StreamCounter()
            self._routes[("GET", "/bench/stats")] = lambda h, rec: h.send_json(200, self.counter.stats())
            self._routes[("POST", "/bench/stats")] = lambda h, rec: h.send_json(200, self.counter.stats(True))

        def _next_reply(self, body):
            return reply_for(body, fake_upstream.DEFAULT_TEXT)

        def _stream_responses(self, h, reply, body, extra_headers):
            self.counter.enter()
            try:
                events = sse_events_for(reply, body.get("model"), body)
                if reply.get("interval"):
                    chunks = paced(events, reply["interval"])
                else:
                    chunks = [render_sse([event]) for event in events]
                headers = [("Content-Type", "text/event-stream")] + list(extra_headers)
                h.send_stream(chunks, headers)
            finally:
                self.counter.leave()

    return BenchFake(workers)


# =============================================================================
# Processes

def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def proc_cpu(pid):
    """utime + stime of a process (all its threads), in seconds; None off Linux."""
    try:
        with open("/proc/%d/stat" % pid) as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / float(CLK_TCK)
    except (OSError, IndexError, ValueError):
        return None


def listen_overflows():
    """TcpExt ListenOverflows (system-wide): connects dropped because a server's
    accept backlog was full; each costs its client a SYN retry, ~1 s. None off Linux."""
    try:
        with open("/proc/net/netstat") as handle:
            lines = handle.read().splitlines()
        for names, values in zip(lines[::2], lines[1::2]):
            if names.startswith("TcpExt:"):
                return int(values.split()[names.split().index("ListenOverflows")])
    except (OSError, ValueError, IndexError):
        pass
    return None


def proc_status(pid, field):
    """A number from /proc/PID/status (kB for memory fields); None off Linux."""
    try:
        with open("/proc/%d/status" % pid) as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def proc_mem(pid, field="VmRSS"):
    """VmRSS / VmHWM of a process in MB; None off Linux."""
    kb = proc_status(pid, field)
    return None if kb is None else kb / 1024.0


class Sampler(threading.Thread):
    """Samples a process's VmRSS and thread count every 50 ms, keeping the peaks."""

    def __init__(self, pid):
        threading.Thread.__init__(self, daemon=True)
        self.pid, self.rss, self.threads = pid, 0.0, 0
        self.halt = threading.Event()

    def run(self):
        while not self.halt.wait(0.05):
            self.rss = max(self.rss, proc_mem(self.pid) or 0.0)
            self.threads = max(self.threads, proc_status(self.pid, "Threads") or 0)

    def stop(self):
        self.halt.set()
        self.join()
        return self


def http_get(port, path, timeout=5.0):
    """(status, body) of a blocking GET; raises OSError when nothing listens."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n" % path.encode())
        data = b""
        while True:
            piece = sock.recv(65536)
            if not piece:
                break
            data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def _die_with_parent():
    """In the child, before exec: SIGTERM when the benchmark dies (Linux), so that
    even a killed run leaves no proxy behind."""
    try:
        import ctypes
        ctypes.CDLL(None).prctl(1, 15)  # PR_SET_PDEATHSIG, SIGTERM
    except Exception:  # noqa: BLE001 - best effort
        pass


class Child(object):
    """A subprocess whose output goes to a log file, stopped in stop()."""

    def __init__(self, name, argv, env, log_dir, stdin=subprocess.DEVNULL, stdout=None, cwd=None):
        self.name = name
        self.log_path = os.path.join(log_dir, "%s-%d.log" % (name, int(time.time() * 1e6)))
        self.log = open(self.log_path, "wb")
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(argv, env=env, stdin=stdin, stdout=stdout or self.log, stderr=self.log,
                                     close_fds=True, cwd=cwd,
                                     preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
        self.pid = self.proc.pid
        self.port = None

    def log_tail(self, n=15):
        try:
            with open(self.log_path, "rb") as handle:
                return b"\n".join(handle.read().splitlines()[-n:]).decode("utf-8", "replace")
        except OSError:
            return ""

    def wait_healthy(self, timeout=30.0):
        """Poll /health every ~1 ms; returns seconds from spawn to the first 200."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("%s exited with %s:\n%s" % (self.name, self.proc.returncode, self.log_tail()))
            try:
                status, _ = http_get(self.port, "/health", timeout=2.0)
                if status == 200:
                    return time.perf_counter() - self.started
            except OSError:
                pass
            time.sleep(0.001)
        raise RuntimeError("%s gave no /health 200 within %.0f s:\n%s" % (self.name, timeout, self.log_tail()))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


class Bench(object):
    """The fake backend, the proxies' start-up recipes, and every child to clean up."""

    def __init__(self, args):
        self.args = args
        self.tmp = tempfile.mkdtemp(prefix="codex-bench-")
        self.children = []
        self.fake = None
        self.cap_python = None
        self.cap_note = None
        self.capacity_flags = []
        self.capacity_note = ""

    # -- lifecycle
    def start_fake(self):
        workers = max(self.args.streams, self.args.big_streams) + 300
        child = Child("fake", [sys.executable, "-u", os.path.abspath(__file__), "--serve-fake",
                               self.args.fake, "--fake-workers", str(workers)], self.base_env(),
                      self.tmp, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.children.append(child)
        line = child.proc.stdout.readline()
        if not line.strip():
            raise RuntimeError("the fake backend did not start:\n" + child.log_tail())
        child.port = int(line)
        self.fake = child
        self.fake_base = "http://127.0.0.1:%d" % child.port
        return child

    def close(self):
        for child in reversed(self.children):
            try:
                if child is self.fake and child.proc.stdin:
                    child.proc.stdin.close()
                child.stop()
            except Exception:  # noqa: BLE001 - keep cleaning up
                pass
        self.children = []
        shutil.rmtree(self.tmp, True)

    def stop_child(self, child):
        if child in self.children:
            self.children.remove(child)
        child.stop()

    # -- environment
    @staticmethod
    def base_env():
        env = dict(os.environ)
        for key in list(env):
            # Our own settings come from flags; API-key mode, upstream proxies and
            # user CODEX_PROXY_* settings would change what is measured.
            if key in ("OPENAI_API_KEY", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
                       "all_proxy") or key.startswith("CODEX_PROXY_") or key.startswith("CODEX_API_PROXY_"):
                del env[key]
        env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
        return env

    def proxy_env(self):
        """A CODEX_HOME of its own with a fresh ChatGPT login (no refresh due)."""
        home = tempfile.mkdtemp(prefix="home-", dir=self.tmp)
        now = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
        try:
            from support import write_auth  # imports codex_proxy, which may be mid-refactor
        except Exception:  # noqa: BLE001 - the same file, written by hand
            def write_auth(folder, access_token, account_id, last_refresh):
                with open(os.path.join(folder, "auth.json"), "w") as handle:
                    json.dump({"OPENAI_API_KEY": None, "last_refresh": last_refresh, "tokens": {
                        "id_token": "x.e30.y", "access_token": access_token, "refresh_token": "refresh-1",
                        "account_id": account_id}}, handle)
        write_auth(home, access_token=ACCESS_TOKEN, account_id=ACCOUNT_ID, last_refresh=now)
        env = self.base_env()
        env["CODEX_HOME"] = home
        env["CODEX_REFRESH_TOKEN_URL_OVERRIDE"] = self.fake_base + "/oauth/token"
        return env

    def detect(self):
        """Which codex-api-proxy interpreter to use (if any); codex-proxy's capacity flags."""
        helptext = subprocess.run([sys.executable, CODEX_PROXY, "--help"], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, env=self.base_env()).stdout.decode("utf-8", "replace")
        need = max(self.args.streams, self.args.big_streams)
        if "--max-streams" in helptext:
            self.capacity_flags = ["--max-streams", str(max(2048, 2 * need))]
        elif "--upstream-threads" in helptext:
            self.capacity_flags = ["--upstream-threads", str(max(1100, need + 100))]
        self.capacity_note = " ".join(self.capacity_flags) or "(no capacity flag found in --help)"

        candidates = []
        if self.args.compare_python:
            candidates.append(("--compare-python", self.args.compare_python))
        elif os.environ.get("CODEX_API_PROXY_PYTHON"):
            candidates.append(("CODEX_API_PROXY_PYTHON", os.environ["CODEX_API_PROXY_PYTHON"]))
        elif importlib.util.find_spec("codex_api_proxy") is not None:
            candidates.append(("this interpreter", sys.executable))
        if self.args.no_compare or not candidates:
            self.cap_note = ("skipped (--no-compare)" if self.args.no_compare else
                             "skipped: not installed (set CODEX_API_PROXY_PYTHON or --compare-python)")
            return
        origin, python = candidates[0]
        try:
            out = subprocess.run([python, "-c", "import codex_api_proxy; print(codex_api_proxy.__version__)"],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60,
                                 env=self.base_env())
        except (OSError, subprocess.TimeoutExpired) as exc:
            self.cap_note = "skipped: cannot run %s (%s): %s" % (python, origin, exc)
            return
        if out.returncode != 0:
            self.cap_note = "skipped: %s (%s) cannot import codex_api_proxy" % (python, origin)
            return
        self.cap_python = python
        self.cap_note = "codex-api-proxy %s via %s (%s)" % (out.stdout.decode().strip(), python, origin)

    def columns(self):
        return [c for c in COLUMNS if c != CAP or self.cap_python]

    # -- proxies
    def spawn(self, column):
        """Start a proxy column; returns its Child (not yet healthy)."""
        port = free_port()
        env = self.proxy_env()
        if column == CP:
            argv = [sys.executable, CODEX_PROXY, "--host", "127.0.0.1", "--port", str(port),
                    "--chatgpt-base-url", self.fake_base + "/backend-api/codex", "--log-level", "warning"]
            argv += self.capacity_flags
        else:
            argv = [self.cap_python, "-c", SHIM, "127.0.0.1", str(port), self.fake_base + "/backend-api/codex"]
        child = Child(column, argv, env, self.tmp)
        child.port = port
        self.children.append(child)
        return child

    def start_proxy(self, column, warm=True):
        """Spawn a proxy column, wait for /health, warm it up (the first requests
        fetch the model catalog, open pools...). A codex-api-proxy that cannot
        do this drops its column for the rest of the run (CompareUnavailable)."""
        child = self.spawn(column)
        try:
            child.wait_healthy()
            if warm:
                async def warm_up():
                    for dialect in ("chat", "messages", "chat", "messages", "chat"):
                        problem = check_content(await fetch(self.target(column, child), dialect, "w", 4))
                        if problem:
                            raise RuntimeError("%s warm-up failed: %s\n%s" % (column, problem, child.log_tail()))
                asyncio.run(warm_up())
        except Exception as exc:
            self.stop_child(child)
            if column != CAP:
                raise
            raise CompareUnavailable(str(exc))
        return child

    def target(self, column, child=None):
        if column == DIRECT:
            return Target(DIRECT, self.fake.port, None)
        return Target(column, child.port, child.pid)

    def fake_stats(self, reset=False):
        if reset:
            req = urllib.request.Request(self.fake_base + "/bench/stats", data=b"{}", method="POST")
        else:
            req = self.fake_base + "/bench/stats"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(req, timeout=10) as resp:
            return json.loads(resp.read().decode())


Target = collections.namedtuple("Target", "column port pid")


class CompareUnavailable(Exception):
    """codex-api-proxy failed to start or to answer: the figure is run again without it."""


# =============================================================================
# The client: raw HTTP/1.1 over asyncio streams

def spec(char, n, interval=0.0):
    return "bench:" + json.dumps({"c": char, "n": n, "i": interval})


def request_for(target, dialect, prompt):
    """(path, body bytes, extra header lines) of one streamed request."""
    if target.column == DIRECT:
        body = {"model": MODEL, "instructions": "You are a benchmark.", "stream": True, "store": False,
                "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": prompt}]}]}
        headers = "Authorization: Bearer %s\r\nChatGPT-Account-ID: %s\r\n" % (ACCESS_TOKEN, ACCOUNT_ID)
        return "/backend-api/codex/responses", json.dumps(body).encode(), headers
    if dialect == "responses":  # the proxy's /v1/responses, fed what the backend itself takes
        return "/v1/responses", request_for(Target(DIRECT, None, None), dialect, prompt)[1], ""
    if dialect == "chat":
        body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": prompt}]}
        return "/v1/chat/completions", json.dumps(body).encode(), ""
    body = {"model": MODEL, "max_tokens": 4096, "stream": True, "messages": [{"role": "user", "content": prompt}]}
    return "/v1/messages", json.dumps(body).encode(), "anthropic-version: 2023-06-01\r\n"


# A non-empty text value of a delta in any of the three dialects:
# Responses "delta", Chat "content", Anthropic "text".
CONTENT = re.compile(rb'"(?:delta|content|text)": ?"(?!")')


class Result(object):
    __slots__ = ("t0", "t_first_byte", "t_first_content", "t_end", "status", "error", "pieces", "dialect",
                 "char", "n")

    def __init__(self, dialect, char, n):
        self.t0 = self.t_first_byte = self.t_first_content = self.t_end = None
        self.status, self.error, self.pieces = None, None, []
        self.dialect, self.char, self.n = dialect, char, n

    @property
    def total(self):
        return self.t_end - self.t0

    @property
    def ttfb(self):
        return self.t_first_byte - self.t0

    @property
    def first_content(self):
        return self.t_first_content - self.t0


class ChunkedDecoder(object):
    """Incremental Transfer-Encoding: chunked decoder (no trailers expected)."""

    def __init__(self, out):
        self.out = out
        self.buf = b""
        self.need = 0  # > 0: chunk bytes still to come; -1: CRLF after a chunk; 0: a size line
        self.last = False
        self.done = False

    def feed(self, data):
        buf = self.buf + data if self.buf else data
        pos, end = 0, len(buf)
        while not self.done:
            if self.need > 0:
                if pos >= end:
                    break
                take = min(self.need, end - pos)
                self.out.append(buf[pos:pos + take])
                pos += take
                self.need -= take
                if self.need:
                    break
                self.need = -1
            elif self.need == -1:
                if end - pos < 2:
                    break
                if buf[pos:pos + 2] != b"\r\n":
                    raise ValueError("bad chunk framing")
                pos += 2
                self.need = 0
            else:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    break
                line, pos = buf[pos:eol], eol + 2
                if self.last:  # trailers, then an empty line
                    self.done = not line
                    continue
                size = int(line.split(b";")[0], 16)
                if size == 0:
                    self.last = True
                else:
                    self.need = size
        self.buf = buf[pos:]
        return self.done


async def fetch(target, dialect, char, n, interval=0.0, timeout=300.0, at=None):
    """One streamed request (sent at perf_counter() time `at`, if given); never
    raises (errors land in result.error)."""
    if at is not None:
        await asyncio.sleep(max(0.0, at - time.perf_counter()))
    result = Result(dialect, char, n)
    path, payload, extra = request_for(target, dialect, spec(char, n, interval))
    request = ("POST %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
               "Accept: text/event-stream\r\nContent-Length: %d\r\nConnection: close\r\n%s\r\n"
               % (path, target.port, len(payload), extra)).encode("latin-1") + payload
    writer = None
    result.t0 = time.perf_counter()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", target.port), timeout)
        writer.write(request)
        await asyncio.wait_for(_read_response(reader, result), timeout)
    except asyncio.TimeoutError:
        result.error = "timed out after %.0f s" % timeout
    except Exception as exc:  # noqa: BLE001 - reported, counted as an error
        result.error = "%s: %s" % (type(exc).__name__, exc)
    finally:
        if writer is not None:
            writer.close()
    return result


async def _read_response(reader, result):
    buf = b""
    while True:
        data = await reader.read(262144)
        if not data:
            raise ConnectionError("connection closed before the response head")
        buf += data
        cut = buf.find(b"\r\n\r\n")
        if cut >= 0:
            break
    head, rest = buf[:cut].decode("latin-1").split("\r\n"), buf[cut + 4:]
    result.status = int(head[0].split(" ", 2)[1])
    headers = {}
    for line in head[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    chunked = "chunked" in headers.get("transfer-encoding", "").lower()
    length = int(headers["content-length"]) if "content-length" in headers else None
    pieces = result.pieces
    decoder = ChunkedDecoder(pieces) if chunked else None
    got, tail, seen = 0, b"", 0
    while True:
        if rest:
            now = time.perf_counter()
            if result.t_first_byte is None:
                result.t_first_byte = now
            if decoder is not None:
                done = decoder.feed(rest)
            else:
                pieces.append(rest)
                got += len(rest)
                done = length is not None and got >= length
            if result.t_first_content is None and len(pieces) > seen:
                window = tail + b"".join(pieces[seen:])
                seen = len(pieces)
                if CONTENT.search(window):
                    result.t_first_content = now
                tail = window[-48:]
            if done:
                break
        rest = await reader.read(262144)
        if not rest:
            if decoder is None and length is None:
                break
            raise ConnectionError("connection closed mid-body")
    result.t_end = time.perf_counter()
    if result.status != 200:
        result.error = "HTTP %d: %s" % (result.status, b"".join(pieces)[:200].decode("utf-8", "replace"))


def check_content(result):
    """After the timing: the streamed text must be exactly n deltas of `char`,
    and the stream must end with its dialect's terminal event. Returns an error or None."""
    if result.error:
        return result.error
    text, terminal = [], False
    body = b"".join(result.pieces).replace(b"\r\n", b"\n")
    for block in body.split(b"\n\n"):
        data = [line[5:].strip() for line in block.split(b"\n") if line.startswith(b"data:")]
        if not data:
            continue
        raw = b"\n".join(data)
        if raw == b"[DONE]":
            terminal = terminal or result.dialect == "chat"
            continue
        try:
            event = json.loads(raw.decode("utf-8"))
        except ValueError:
            return "not JSON: %r" % raw[:80]
        kind = event.get("type") if isinstance(event, dict) else None
        if kind is None and not isinstance(event, dict):
            return "not an event object: %r" % raw[:80]
        if result.dialect in ("direct", "responses"):
            if kind == "response.output_text.delta":
                text.append(event["delta"])
            elif kind == "response.completed":
                terminal = True
        elif result.dialect == "chat":
            for choice in event.get("choices") or []:
                content = (choice.get("delta") or {}).get("content")
                if content:
                    text.append(content)
        else:
            if kind == "content_block_delta" and event["delta"].get("type") == "text_delta":
                text.append(event["delta"]["text"])
            elif kind == "message_stop":
                terminal = True
    text = "".join(text)
    if text != result.char * result.n:
        return "wrong content: %d chars, expected %d x %r" % (len(text), result.n, result.char)
    if not terminal:
        return "no terminal event"
    return None


# =============================================================================
# Statistics and the table

def pct(values, q):
    """Nearest-rank percentile."""
    values = sorted(values)
    if not values:
        return float("nan")
    k = max(0, min(len(values) - 1, int(-(-q * len(values) // 1)) - 1))
    return values[k]


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


class Row(object):
    """One line of the table: values per column, a target, and codex-proxy's verdict."""

    def __init__(self, figure, label, fmt, target_text, judge=None):
        self.figure, self.label, self.fmt, self.target_text, self.judge = figure, label, fmt, target_text, judge
        self.values = {}
        self.notes = {}
        self.verdict = "n.a."

    def cell(self, column):
        if column in self.notes:
            return self.notes[column]
        value = self.values.get(column)
        if value is None:
            return "n.a."
        return self.fmt(value) if callable(self.fmt) else self.fmt % value

    def decide(self):
        if CP in self.notes and CP not in self.values:
            self.verdict = "FAIL"
        elif self.judge is None or self.values.get(CP) is None:
            self.verdict = "n.a."
        else:
            self.verdict = "PASS" if self.judge(self.values[CP], self.values) else "FAIL"


def fmt_int(value):
    return "{:,.0f}".format(value)


# =============================================================================
# Figures

def run_async(coro):
    return asyncio.run(coro)


def figure_ttfb(bench, rows, log):
    """Added time to first byte: sequential streamed chat requests (a new
    connection each), the columns taking turns request by request."""
    n = bench.args.requests
    cols = bench.columns()
    children = {c: bench.start_proxy(c) for c in cols if c != DIRECT}
    try:
        targets = [bench.target(c, children.get(c)) for c in cols]

        async def go():
            samples = {c: [] for c in cols}
            totals = {c: [] for c in cols}
            errors = collections.Counter()
            for i in range(n):
                order = targets if i % 2 == 0 else targets[::-1]
                for target in order:
                    result = await fetch(target, "direct" if target.column == DIRECT else "chat", "t", 5)
                    if check_content(result):
                        errors[target.column] += 1
                        continue
                    samples[target.column].append(result.ttfb)
                    totals[target.column].append(result.total)
            return samples, totals, errors
        samples, totals, errors = run_async(go())
    finally:
        for child in children.values():
            bench.stop_child(child)
    base = samples[DIRECT]
    p50 = Row("ttfb", "1. added TTFB p50, streamed chat (ms)", "%.2f", "<= 0.5 ms",
              lambda v, _: v <= 0.5)
    p99 = Row("ttfb", "1. added TTFB p99, streamed chat (ms)", "%.2f", "<= 2 ms", lambda v, _: v <= 2.0)
    for c in cols:
        log("  %-16s TTFB p50 %6.2f ms  p99 %6.2f ms  | whole answer p50 %6.2f ms  (%d requests, %d errors)" % (
            c, pct(samples[c], .5) * 1e3, pct(samples[c], .99) * 1e3, pct(totals[c], .5) * 1e3,
            len(samples[c]), errors[c]))
        if c == DIRECT:
            continue
        if errors[c] or not samples[c]:
            p50.notes[c] = p99.notes[c] = "%d errors" % errors[c]
            continue
        p50.values[c] = (pct(samples[c], .5) - pct(base, .5)) * 1e3
        p99.values[c] = (pct(samples[c], .99) - pct(base, .99)) * 1e3
    # The direct cell shows the floor itself (absolute), the proxies what they add to it.
    p50.notes[DIRECT] = "%.2f (floor)" % (pct(base, .5) * 1e3)
    p99.notes[DIRECT] = "%.2f (floor)" % (pct(base, .99) * 1e3)
    rows += [p50, p99]


def figure_stream(bench, rows, log):
    """One long unpaced stream per dialect: proxy CPU per delta (utime+stime
    over the stream / deltas) and deltas/s (first content to last byte)."""
    n, rounds = bench.args.deltas, bench.args.rounds
    cols = bench.columns()
    cpu = {(c, d): [] for c in cols for d in ("chat", "messages")}
    rate = {(c, d): [] for c in cols for d in ("chat", "messages")}
    errors = {}
    children = {c: bench.start_proxy(c) for c in cols if c != DIRECT}
    try:
        for r in range(rounds):
            for c in (cols if r % 2 == 0 else cols[::-1]):
                target = bench.target(c, children.get(c))
                for dialect in ("chat", "messages"):
                    if c == DIRECT and dialect == "messages":
                        continue  # one Responses stream is the floor of both
                    fake_before = proc_cpu(bench.fake.pid)
                    before = proc_cpu(target.pid) if target.pid else None
                    result = run_async(fetch(target, "direct" if c == DIRECT else dialect, "s", n))
                    time.sleep(0.05)  # let the proxy finish its last writes before reading its CPU
                    after = proc_cpu(target.pid) if target.pid else None
                    fake_after = proc_cpu(bench.fake.pid)
                    problem = check_content(result)
                    if problem:
                        errors[(c, dialect)] = problem
                        continue
                    seconds = result.t_end - result.t_first_content
                    rate[(c, dialect)].append(n / seconds)
                    if before is not None and after is not None:
                        cpu[(c, dialect)].append((after - before) / n * 1e6)
                    log("  %-16s %-8s round %d: %6.0f deltas/s, proxy CPU %s, fake CPU %.1f us/delta" % (
                        c, dialect if c != DIRECT else "(both)", r + 1, n / seconds,
                        "%.1f us/delta" % ((after - before) / n * 1e6) if before is not None else "n.a.",
                        (fake_after - fake_before) / n * 1e6 if fake_before is not None else float("nan")))
    finally:
        for child in children.values():
            bench.stop_child(child)
    for dialect, path in (("chat", "/v1/chat/completions"), ("messages", "/v1/messages")):
        def cpu_ok(v, values):
            theirs = values.get(CAP)
            return v <= 20.0 and (theirs is None or v * 2 <= theirs)
        row = Row("stream", "2. proxy CPU per delta, %s (us)" % path, "%.1f",
                  "<= 20 us and <= 1/2 of codex-api-proxy", cpu_ok)
        for c in cols:
            if c == DIRECT:
                continue
            if (c, dialect) in errors:
                row.notes[c] = "error"
            elif cpu[(c, dialect)]:
                row.values[c] = median(cpu[(c, dialect)])
        rows.append(row)
    for dialect, path in (("chat", "/v1/chat/completions"), ("messages", "/v1/messages")):
        row = Row("stream", "3. deltas/s on one stream, %s" % path, fmt_int, ">= 45,000",
                  lambda v, _: v >= 45000)
        for c in cols:
            key = (c, "chat" if c == DIRECT else dialect)
            if key in errors:
                row.notes[c] = "error"
            elif rate[key]:
                row.values[c] = median(rate[key])
        rows.append(row)
    for key, problem in errors.items():
        log("  ERROR %s %s: %s" % (key[0], key[1], problem))


def run_concurrent(bench, target, count, deltas, interval, ramp, log, label):
    """`count` paced chat streams, started evenly over `ramp` seconds (shorter
    than a stream, so that all are open at once); returns a dict of figures."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    bench.fake_stats(reset=True)
    usage_before = resource.getrusage(resource.RUSAGE_SELF)
    fake_before = proc_cpu(bench.fake.pid)
    proxy_before = proc_cpu(target.pid) if target.pid else None
    overflows_before = listen_overflows()
    sampler = Sampler(target.pid) if target.pid else None
    if sampler:
        sampler.start()

    async def go():
        dialect = "direct" if target.column == DIRECT else "chat"
        started = time.perf_counter() + 0.01
        gap = ramp / count
        tasks = [fetch(target, dialect, letters[i % 26], deltas, interval, timeout=120.0, at=started + i * gap)
                 for i in range(count)]
        results = await asyncio.gather(*tasks)
        return results, time.perf_counter() - started
    results, wall = run_async(go())
    if sampler:
        sampler.stop()
    usage_after = resource.getrusage(resource.RUSAGE_SELF)
    fake_after = proc_cpu(bench.fake.pid)
    proxy_after = proc_cpu(target.pid) if target.pid else None
    stats = bench.fake_stats()
    overflows_after = listen_overflows()
    problems = collections.Counter()
    for result in results:
        problem = check_content(result)
        if problem:
            problems[problem[:120]] += 1
        result.pieces = None
    good = [r for r in results if not r.error and r.t_first_content is not None]
    out = {
        "errors": sum(problems.values()),
        "problems": problems,
        "p50": pct([r.total for r in good], .5) if good else None,
        "p99": pct([r.total for r in good], .99) if good else None,
        "fc_p99": pct([r.first_content for r in good], .99) if good else None,
        "fc_max": max(r.first_content for r in good) if good else None,
        "max_open": stats["max_open"],
        "wall": wall,
        "cpu_per_delta": ((proxy_after - proxy_before) / float(count * deltas) * 1e6
                          if proxy_before is not None and proxy_after is not None else None),
    }
    client_cpu = (usage_after.ru_utime + usage_after.ru_stime - usage_before.ru_utime - usage_before.ru_stime)
    log("  %-16s %s: %d errors, completion p50 %.3f s p99 %.3f s, first content p99 %.1f ms max %.1f ms, "
        "upstream open max %d, wall %.2f s%s" % (
            target.column, label, out["errors"], out["p50"] or 0, out["p99"] or 0, (out["fc_p99"] or 0) * 1e3,
            (out["fc_max"] or 0) * 1e3, out["max_open"], wall,
            ", proxy peak %.0f MB RSS, %d threads" % (sampler.rss, sampler.threads) if sampler else ""))
    log("  %-16s   CPU over the run: client %.0f%%, fake %.0f%%, proxy %s of one core%s" % (
        "", client_cpu / wall * 100, (fake_after - fake_before) / wall * 100 if fake_before is not None else -1,
        "%.0f%%" % ((proxy_after - proxy_before) / wall * 100) if proxy_before is not None else "n.a.",
        " (%.0f us per delta)" % out["cpu_per_delta"] if out["cpu_per_delta"] is not None else ""))
    if overflows_before is not None and overflows_after != overflows_before:
        log("  %-16s   %d connects overflowed a listen backlog (each waits ~1 s for a SYN retry)" % (
            "", overflows_after - overflows_before))
    for problem, times in problems.most_common(3):
        log("  %-16s   %d x %s" % ("", times, problem))
    return out


def concurrent_figure(bench, count, deltas, interval, ramp, rounds, log, label):
    """Each round: a fresh proxy per column (so VmHWM is this run's peak), then
    `count` streams through each column in turn. Medians over rounds."""
    cols = bench.columns()
    runs = {c: [] for c in cols}
    rss = {c: {"idle": [], "peak": []} for c in cols}
    for r in range(rounds):
        for c in (cols if r % 2 == 0 else cols[::-1]):
            child = bench.start_proxy(c) if c != DIRECT else None
            try:
                target = bench.target(c, child)
                if child is not None:
                    time.sleep(0.3)
                    rss[c]["idle"].append(proc_mem(child.pid))
                runs[c].append(run_concurrent(bench, target, count, deltas, interval, ramp, log, label))
                if child is not None:
                    rss[c]["peak"].append(proc_mem(child.pid, "VmHWM"))
            finally:
                if child is not None:
                    bench.stop_child(child)
    summary = {}
    for c in cols:
        rs = runs[c]
        summary[c] = {
            "errors": max(x["errors"] for x in rs),
            "p99": median([x["p99"] for x in rs]),
            "fc_p99": median([x["fc_p99"] for x in rs]),
            "fc_max": median([x["fc_max"] for x in rs]),
            "max_open": median([x["max_open"] for x in rs]),
            "cpu_per_delta": median([x["cpu_per_delta"] for x in rs]),
            "rss_idle": median(rss[c]["idle"]),
            "rss_peak": median(rss[c]["peak"]),
        }
    return summary


def figure_c256(bench, rows, log):
    """Concurrent paced chat streams (default 256), with the proxies' RSS idle
    and at peak (VmHWM of a proxy started for the round)."""
    count, deltas, interval, ramp = bench.args.streams, bench.args.c256_deltas, 0.010, bench.args.c256_ramp
    label = "%d streams x %d deltas %g ms apart, started over %g s" % (count, deltas, interval * 1e3, ramp)
    summary = concurrent_figure(bench, count, deltas, interval, ramp, bench.args.crounds, log, label)
    cols = bench.columns()
    direct_p99 = summary[DIRECT]["p99"]
    errors = Row("c256", "4. %d streams: errors / exact content" % count, "%d", "0", lambda v, _: v == 0)
    p99 = Row("c256", "4. %d streams: p99 completion (s, x direct)" % count, None, "<= 1.1x direct",
              lambda v, _: direct_p99 is not None and v <= 1.1 * direct_p99)
    p99.fmt = lambda v: "%.3f (%.2fx)" % (v, v / direct_p99) if direct_p99 else "%.3f" % v
    first = Row("c256", "4. %d streams: first content p99 / max (ms)" % count, None, "every one <= 50 ms",
                lambda v, _: v[1] <= 0.050)
    first.fmt = lambda v: "%.1f / %.1f" % (v[0] * 1e3, v[1] * 1e3)
    opened = Row("c256", "4. %d streams: most upstream streams open at once" % count, "%.0f", "= %d" % count,
                 lambda v, _: v >= count)
    cpu = Row("c256", "4. %d streams: proxy CPU per paced delta (us)" % count, "%.0f", "(info)")
    rss_idle = Row("c256", "7. RSS idle (MB)", "%.1f", "<= 25 MB", lambda v, _: v <= 25)
    rss_peak = Row("c256", "7. RSS with %d streams open, peak (MB)" % count, "%.1f", "<= 40 MB",
                   lambda v, _: v <= 40)
    for c in cols:
        s = summary[c]
        errors.values[c] = s["errors"]
        if s["p99"] is not None:
            p99.values[c] = s["p99"]
            first.values[c] = (s["fc_p99"], s["fc_max"])
        opened.values[c] = s["max_open"]
        if c != DIRECT:
            cpu.values[c] = s["cpu_per_delta"]
            rss_idle.values[c] = s["rss_idle"]
            rss_peak.values[c] = s["rss_peak"]
    rows += [errors, p99, first, opened, cpu, rss_idle, rss_peak]


def figure_c1000(bench, rows, log):
    """1,000 concurrent paced chat streams, gentler (25 deltas/s each)."""
    count, deltas, interval, ramp = (bench.args.big_streams, bench.args.c1000_deltas, bench.args.c1000_interval,
                                     bench.args.c1000_ramp)
    label = "%d streams x %d deltas %g ms apart, started over %g s" % (count, deltas, interval * 1e3, ramp)
    summary = concurrent_figure(bench, count, deltas, interval, ramp, bench.args.crounds, log, label)
    direct_p99 = summary[DIRECT]["p99"]
    errors = Row("c1000", "5. %d streams: errors / exact content" % count, "%d", "0", lambda v, _: v == 0)
    p99 = Row("c1000", "5. %d streams: p99 completion (s, x direct)" % count, None, "<= 1.25x direct",
              lambda v, _: direct_p99 is not None and v <= 1.25 * direct_p99)
    p99.fmt = lambda v: "%.3f (%.2fx)" % (v, v / direct_p99) if direct_p99 else "%.3f" % v
    opened = Row("c1000", "5. %d streams: most upstream streams open at once" % count, "%.0f", "(info)")
    for c in bench.columns():
        s = summary[c]
        errors.values[c] = s["errors"]
        if s["p99"] is not None:
            p99.values[c] = s["p99"]
        opened.values[c] = s["max_open"]
    rows += [errors, p99, opened]


IMAGE_BYTES = 1536 * 1024  # the drawn image: 2 MB as base64


def http_post(port, path, body, headers=""):
    """(status, seconds to the whole answer) of a blocking POST read to its end (Connection: close)."""
    data = json.dumps(body).encode()
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(("POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n%s"
                      "Content-Length: %d\r\nConnection: close\r\n\r\n" % (path, headers, len(data))).encode()
                     + data)
        answer = b""
        while True:
            piece = sock.recv(1 << 20)
            if not piece:
                break
            answer += piece
    elapsed = time.perf_counter() - started
    return int(answer.split(b" ", 2)[1]), elapsed, len(answer)


def figure_image(bench, rows, log):
    """Relaying a drawn image: the time from request to the whole answer for a 2 MB (base64) image,
    direct (the backend's Responses stream) and as an Images API answer through codex-proxy
    (codex-api-proxy has no Images API), one request at a time, taking turns."""
    n = max(5, bench.args.requests // 20)
    child = bench.start_proxy(CP)
    prompt = "bench:" + json.dumps({"image": IMAGE_BYTES})
    direct = {"model": MODEL, "instructions": "Draw.", "stream": True, "store": False,
              "tools": [{"type": "image_generation"}], "tool_choice": {"type": "image_generation"},
              "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": prompt}]}]}
    auth = "Authorization: Bearer %s\r\nChatGPT-Account-ID: %s\r\n" % (ACCESS_TOKEN, ACCOUNT_ID)
    times = {DIRECT: [], CP: []}
    try:
        for i in range(n + 1):
            calls = [(DIRECT, bench.fake.port, "/backend-api/codex/responses", direct, auth),
                     (CP, child.port, "/v1/images/generations", {"prompt": prompt}, "")]
            for column, port, path, body, headers in (calls if i % 2 else calls[::-1]):
                status, elapsed, size = http_post(port, path, body, headers)
                if status != 200:
                    raise RuntimeError("%s answered %d\n%s" % (column, status, child.log_tail()))
                if i:  # the first round warms up (the catalog, the pool)
                    times[column].append(elapsed)
    finally:
        bench.stop_child(child)
    log("  direct %.1f ms, codex-proxy %.1f ms (medians of %d)" % (
        median(times[DIRECT]) * 1e3, median(times[CP]) * 1e3, n))
    row = Row("image", "8. a 2 MB image answer: added time, median (ms)", "%.1f", "(info)")
    row.values[CP] = (median(times[CP]) - median(times[DIRECT])) * 1e3
    row.notes[DIRECT] = "%.1f (whole stream)" % (median(times[DIRECT]) * 1e3)
    row.notes[CAP] = "no Images API"
    rows.append(row)


def figure_spawn(bench, rows, log):
    """Process start to the first /health 200, polled every millisecond; the
    direct column is the interpreter's own start-up (`python -c pass` to exit)."""
    row = Row("spawn", "6. spawn to first /health 200 (ms, median)", "%.0f", "<= 100 ms", lambda v, _: v <= 100)
    floor = []
    for _ in range(bench.args.spawns):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], env=bench.base_env())
        floor.append((time.perf_counter() - started) * 1e3)
    log("  %-16s python -c pass: %s ms" % (DIRECT, ", ".join("%.0f" % t for t in floor)))
    row.notes[DIRECT] = "%.0f (python -c pass)" % statistics.median(floor)
    for c in bench.columns():
        if c == DIRECT:
            continue
        times = []
        try:
            for _ in range(bench.args.spawns):
                child = bench.spawn(c)
                try:
                    times.append(child.wait_healthy() * 1e3)
                finally:
                    bench.stop_child(child)
        except Exception as exc:
            if c != CAP:
                raise
            raise CompareUnavailable(str(exc))
        log("  %-16s spawn to /health 200: %s ms" % (c, ", ".join("%.0f" % t for t in times)))
        row.values[c] = statistics.median(times)
    rows.append(row)
    rows.append(module_spawn_row(bench, log))


def module_spawn_row(bench, log):
    """codex-proxy started as `python -m codex_proxy` (a copy in a folder of its own, so that its
    cached bytecode goes there): spawn to the first /health 200, and RSS a second later. A
    script is compiled at every start and its syntax tree kept while it runs; a module's
    bytecode is read from __pycache__. Information: the targets are for the script."""
    folder = os.path.join(bench.tmp, "module")
    os.makedirs(folder, exist_ok=True)
    shutil.copy(CODEX_PROXY, os.path.join(folder, "codex_proxy.py"))
    times, rss = [], []
    for n in range(bench.args.spawns + 1):  # the first writes the bytecode: not counted
        env = bench.proxy_env()
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        port = free_port()
        child = Child(CP, [sys.executable, "-m", "codex_proxy", "--host", "127.0.0.1", "--port", str(port),
                           "--chatgpt-base-url", bench.fake_base + "/backend-api/codex", "--log-level", "warning"]
                      + bench.capacity_flags, env, bench.tmp, cwd=folder)
        child.port = port
        try:
            spawn = child.wait_healthy() * 1e3
            time.sleep(1.0)
            if n:
                times.append(spawn)
                rss.append(proc_mem(child.pid))
        finally:
            child.stop()
    log("  %-16s as a module, spawn to /health 200: %s ms; RSS idle %s MB" % (
        CP, ", ".join("%.0f" % t for t in times), ", ".join("%.1f" % m if m else "n.a." for m in rss)))
    row = Row("spawn", "6b. started as `python -m codex_proxy`: spawn (ms) / RSS idle (MB), medians", "%s",
              "(info)")
    known = [m for m in rss if m]
    row.values[CP] = statistics.median(times)  # no judge: information
    row.notes[CP] = "%.0f / %s" % (row.values[CP], "%.1f" % statistics.median(known) if known else "n.a.")
    return row


# =============================================================================
# Figure 9: the Responses API over a WebSocket and over HTTP SSE, each on a connection kept open

class KeptConnection(object):
    """A blocking socket to one server, kept open from request to request (as the Codex CLI keeps
    its HTTP connections pooled, and its WebSocket open for a whole run)."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def more(self):
        data = self.sock.recv(262144)
        if not data:
            raise ConnectionError("the server closed the connection")
        self.buf += data

    def take(self, size):
        while len(self.buf) < size:
            self.more()
        data, self.buf = self.buf[:size], self.buf[size:]
        return data

    def head(self):
        """(status, headers lower-cased) of the answer's head."""
        while b"\r\n\r\n" not in self.buf:
            self.more()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        headers = dict((name.strip().lower(), value.strip()) for name, _, value in
                       (line.partition(":") for line in lines[1:]))
        return int(lines[0].split(" ", 2)[1]), headers

    def close(self):
        self.sock.close()


class SSEOverHTTP(KeptConnection):
    """Streamed POSTs to `path` (with `headers`, lines), one after another on one keep-alive connection."""

    def __init__(self, port, path="/v1/responses", headers=""):
        KeptConnection.__init__(self, port)
        self.port, self.path, self.headers = port, path, headers

    def stream(self, payload, result):
        self.sock.sendall(("POST %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
                           "Accept: text/event-stream\r\n%sContent-Length: %d\r\n\r\n"
                           % (self.path, self.port, self.headers, len(payload))).encode("latin-1") + payload)
        result.status, headers = self.head()
        if "chunked" not in headers.get("transfer-encoding", ""):
            raise ValueError("not a chunked stream: %r" % headers)
        decoder = ChunkedDecoder(result.pieces)
        while True:
            since = len(result.pieces)
            done, self.buf = decoder.feed(self.buf), b""
            note_first_delta(result, since)
            if done:
                return
            self.more()


class ResponsesSocket(KeptConnection):
    """A minimal WebSocket client (RFC 6455), enough for the Responses API: the handshake, masked
    text frames out, the server's unmasked frames in (pings skipped: the proxy answers quickly)."""

    def __init__(self, port):
        KeptConnection.__init__(self, port)
        key = base64.b64encode(os.urandom(16)).decode("ascii")
        self.sock.sendall(("GET /v1/responses HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
                           "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
                           % (port, key)).encode("latin-1"))
        status, headers = self.head()
        if status != 101 or headers.get("upgrade", "").lower() != "websocket":
            raise ConnectionError("the upgrade was answered %d" % status)

    def send_text(self, payload):
        mask = os.urandom(4)
        size = len(payload)
        head = bytes([0x81]) + (bytes([0x80 | size]) if size < 126 else bytes([0x80 | 126]) + size.to_bytes(2, "big")
                                if size < 65536 else bytes([0x80 | 127]) + size.to_bytes(8, "big"))
        key = (mask * (size // 4 + 1))[:size]
        self.sock.sendall(head + mask + (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big"))
                          .to_bytes(size, "big"))

    def frame(self):
        """(opcode, payload) of the server's next frame."""
        while True:
            buf = self.buf
            if len(buf) >= 2:
                size, at = buf[1] & 0x7F, 2
                if size >= 126:
                    at = 4 if size == 126 else 10
                    size = int.from_bytes(buf[2:at], "big") if len(buf) >= at else len(buf)
                if len(buf) >= at + size:
                    self.buf = buf[at + size:]
                    return buf[0] & 0x0F, buf[at:at + size]
            self.more()

    @staticmethod
    def message(payload):
        """The response.create message of a POST's body."""
        return json.dumps(dict(json.loads(payload.decode("utf-8")), type="response.create")).encode("utf-8")

    def stream(self, message, result):
        """One response.create message; its events, each kept as an SSE block (for check_content)."""
        self.send_text(message)
        while True:
            opcode, data = self.frame()
            if opcode == 0x8:
                raise ConnectionError("the proxy closed the socket: %r" % data[:200])
            if opcode != 0x1:
                continue
            result.status = result.status or 200
            result.pieces.append(b"data: " + data + b"\n\n")
            note_first_delta(result, len(result.pieces) - 1)
            kind = TYPE.search(data)  # (not json.loads: the client's own time is in the figure)
            if kind and kind.group(1) == b"error":
                result.status = 500
            if kind and kind.group(1) in (b"response.completed", b"response.failed", b"response.incomplete",
                                          b"error"):
                return

    def close(self):
        try:
            self.sock.sendall(bytes([0x88, 0x82]) + b"\0\0\0\0" + (1000).to_bytes(2, "big"))  # masked with zeros
        finally:
            KeptConnection.close(self)


DELTA = re.compile(b'"type": ?"response.output_text.delta"')
TYPE = re.compile(b'^{"type": ?"([^"]+)"')  # an event's type, first in the proxy's JSON


def note_first_delta(result, since):
    """The moment the first text delta is in, if it is in the pieces from `since` on (checked as they
    arrive, so 'now' is close enough; the piece before is looked at too: a read may split an event)."""
    if result.t_first_content is None and DELTA.search(b"".join(result.pieces[max(0, since - 1):])):
        result.t_first_content = time.perf_counter()


def timed_stream(client, payload, char, n):
    """One request on a kept connection: a Result with its first delta and its end timed."""
    result = Result("responses", char, n)
    result.t0 = time.perf_counter()
    try:
        client.stream(payload, result)
    except (OSError, ValueError) as exc:
        result.error = "%s: %s" % (type(exc).__name__, exc)
    result.t_end = time.perf_counter()
    if result.status not in (None, 200) and not result.error:
        result.error = "status %s: %s" % (result.status, b"".join(result.pieces)[:200])
    return result


def figure_websocket(bench, rows, log):
    """Time to the first text delta of a short streamed answer from /v1/responses over the Responses
    WebSocket (one socket kept open, a response.create message each) and over HTTP SSE (one
    keep-alive connection, a POST each): the same proxy, the same fake, sequential requests taking
    turns; the direct column is the backend's own (HTTP SSE, kept alive)."""
    n = max(50, bench.args.requests // 2)
    child = bench.start_proxy(CP)
    payload = request_for(Target(CP, child.port, child.pid), "responses", spec("w", 5))[1]
    ways = collections.OrderedDict([("websocket", (ResponsesSocket(child.port), ResponsesSocket.message(payload))),
                                    ("http", (SSEOverHTTP(child.port), payload))])
    samples, totals, errors = {way: [] for way in ways}, {way: [] for way in ways}, collections.Counter()
    try:
        for i in range(n + 5):  # the first rounds warm up (the catalog, the upstream pool)
            for way, (client, sent) in (list(ways.items()) if i % 2 else list(ways.items())[::-1]):
                result = timed_stream(client, sent, "w", 5)
                problem = check_content(result)
                if problem:
                    errors[way] += 1
                    log("  %s: %s" % (way, problem))
                elif i >= 5:
                    samples[way].append(result.first_content)
                    totals[way].append(result.total)
    finally:
        for client, _ in ways.values():
            client.close()
        bench.stop_child(child)
    floor = direct_first_delta(bench, n)
    for way in ways:
        log("  %-9s first delta p50 %6.3f ms  p90 %6.3f ms  | whole answer p50 %6.3f ms  (%d requests, %d errors)"
            % (way, pct(samples[way], .5) * 1e3, pct(samples[way], .9) * 1e3, pct(totals[way], .5) * 1e3,
               len(samples[way]), errors[way]))
    log("  direct    first delta p50 %6.3f ms  p90 %6.3f ms (the backend, HTTP SSE kept alive)"
        % (pct(floor, .5) * 1e3, pct(floor, .9) * 1e3))
    for label, q in (("p50", .5), ("p90", .9)):
        row = Row("websocket", "9. /v1/responses first text delta %s (ms): WebSocket / HTTP SSE" % label, "%s",
                  "WebSocket <= HTTP SSE (+5%: noise)", lambda v, _: v[0] <= v[1] * 1.05)
        row.notes[DIRECT] = "%.2f (backend)" % (pct(floor, q) * 1e3)
        if errors or not all(samples.values()):
            row.notes[CP] = "%d errors" % sum(errors.values())
        else:
            row.values[CP] = (pct(samples["websocket"], q) * 1e3, pct(samples["http"], q) * 1e3)
            row.fmt = lambda v: "%.2f / %.2f" % v
        row.notes[CAP] = "no WebSocket"
        rows.append(row)


def direct_first_delta(bench, n):
    """The floor: first text delta straight from the fake backend, one keep-alive connection."""
    path, payload, headers = request_for(Target(DIRECT, bench.fake.port, None), "direct", spec("w", 5))
    client = SSEOverHTTP(bench.fake.port, path, headers)
    try:
        results = [timed_stream(client, payload, "w", 5) for _ in range(n + 5)][5:]
    finally:
        client.close()
    return [result.first_content for result in results if not check_content(result)]


FIGURES = collections.OrderedDict([
    ("spawn", figure_spawn),
    ("ttfb", figure_ttfb),
    ("stream", figure_stream),
    ("c256", figure_c256),
    ("c1000", figure_c1000),
    ("image", figure_image),
    ("websocket", figure_websocket),
])
ALIASES = {"ws": "websocket", "rss": "c256", "cpu": "stream", "throughput": "stream", "concurrent": "c256"}


# =============================================================================
# main

def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller workloads, one round (< 1 min on 2 cores)")
    parser.add_argument("--only", default="", help="comma-separated figures: %s (rss = c256)" % ", ".join(FIGURES))
    parser.add_argument("--streams", type=int, default=256, help="concurrent streams of figure 4 (default 256)")
    parser.add_argument("--big-streams", type=int, default=1000,
                        help="concurrent streams of figure 5 (default 1000)")
    parser.add_argument("--compare-python", help="interpreter with codex-api-proxy installed "
                                                 "(default: $CODEX_API_PROXY_PYTHON, else this one if it has it)")
    parser.add_argument("--no-compare", action="store_true", help="skip the codex-api-proxy column")
    parser.add_argument("--ramp", type=float, help="seconds over which the concurrent streams start "
                                                  "(default: half a stream's length; 0 = all at once)")
    parser.add_argument("--requests", type=int, help="sequential requests per column for TTFB (default 400)")
    parser.add_argument("--deltas", type=int, help="deltas of the long stream (default 20000)")
    parser.add_argument("--rounds", type=int, help="long-stream rounds, median reported (default 3)")
    parser.add_argument("--crounds", type=int, help="rounds of the concurrency figures (default 2)")
    parser.add_argument("--spawns", type=int, help="spawns per proxy for figure 6 (default 7)")
    parser.add_argument("--fake", choices=("asyncio", "threaded"), default="asyncio",
                        help="how the fake backend serves (default asyncio; threaded = fake_upstream's own "
                             "ThreadingHTTPServer, which saturates first on 2 cores)")
    parser.add_argument("--serve-fake", choices=("asyncio", "threaded"), help=argparse.SUPPRESS)
    parser.add_argument("--fake-workers", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = dict(requests=(150, 400), deltas=(10000, 20000), rounds=(1, 3), crounds=(1, 2), spawns=(3, 7))
    for name, (small, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, small if quick else full)
    # Streams start evenly over a window half as long as a stream, so that all
    # are open at once (checked: "most upstream streams open at once") without
    # timing one burst of simultaneous connects; --ramp 0 times the burst.
    args.c256_deltas = 100 if quick else 200
    args.c256_ramp = args.ramp if args.ramp is not None else args.c256_deltas * 0.010 / 2
    # 1,000 streams at 100 deltas/s each would be 100,000 deltas/s: more than two
    # cores can feed through three Python processes whatever the proxy. The
    # 1,000-stream figure is about holding that many connections, so its streams
    # are gentler: 25 deltas/s each (25,000 deltas/s in all, as in figure 4).
    args.c1000_deltas = 25 if quick else 100
    args.c1000_interval = 0.040
    args.c1000_ramp = args.ramp if args.ramp is not None else args.c1000_deltas * args.c1000_interval / 2
    wanted = [ALIASES.get(name.strip(), name.strip()) for name in args.only.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in FIGURES]
    if unknown:
        parser.error("unknown figure(s) %s; choose from %s" % (", ".join(unknown), ", ".join(FIGURES)))
    args.figures = [name for name in FIGURES if not wanted or name in wanted]
    return args


def raise_fd_limit():
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = 16384 if hard == resource.RLIM_INFINITY else min(hard, 16384)
        if soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))  # inherited by the children
        return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ValueError, OSError):
        return None


def describe_codex_proxy():
    """Which codex_proxy.py was measured: its size, hash and the git commit under it."""
    import hashlib
    try:
        with open(CODEX_PROXY, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        return "unreadable (%s)" % exc
    try:
        head = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, timeout=10).stdout.decode().strip()
    except (OSError, subprocess.TimeoutExpired):
        head = ""
    return "%d lines, sha256 %s%s" % (data.count(b"\n"), hashlib.sha256(data).hexdigest()[:12],
                                      ", git HEAD %s" % head if head else "")


def load_average():
    """The 1-minute load average, to show whether something else was busy."""
    try:
        return "%.2f" % os.getloadavg()[0]
    except (AttributeError, OSError):
        return "n.a."


def print_table(rows, bench, out):
    cols = bench.columns()
    for row in rows:
        row.decide()
    header = ["figure"] + cols + ["target", "verdict (codex-proxy)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        lines.append("| " + " | ".join([row.label] + [row.cell(c) for c in cols] + [row.target_text, row.verdict])
                     + " |")
    out("\n".join(lines))


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.serve_fake:
        return serve_fake(args.serve_fake, args.fake_workers)
    started = time.perf_counter()
    out = lambda text="": print(text, flush=True)  # noqa: E731
    fds = raise_fd_limit()
    bench = Bench(args)
    rows = []
    machine = "%s, %d CPUs, Python %s (%s)" % (platform.platform(), os.cpu_count() or 0,
                                              platform.python_version(), platform.python_implementation())
    try:
        bench.detect()
        bench.start_fake()
        out("codex-proxy benchmark%s: %s" % (" (--quick)" if args.quick else "", ", ".join(args.figures)))
        out("machine: %s; load average %s at start" % (machine, load_average()))
        try:
            if os.getloadavg()[0] > 0.5:
                out("WARNING: something else is keeping this machine busy; on 2 cores the figures will be noisy")
        except (AttributeError, OSError):
            pass
        out("codex-proxy: %s (%s); capacity: %s" % (CODEX_PROXY, describe_codex_proxy(), bench.capacity_note))
        out("codex-api-proxy: %s" % bench.cap_note)
        out("fake backend: %s (child process, pid %d); open files limit: %s" % (args.fake, bench.fake.pid, fds))
        for name in args.figures:
            out("\n[%s] %s" % (name, " ".join((FIGURES[name].__doc__ or "").split())))
            t = time.perf_counter()
            try:
                try:
                    FIGURES[name](bench, rows, lambda text: out(text))
                except CompareUnavailable as exc:
                    out("  codex-api-proxy failed, its column is dropped:\n    " + str(exc).replace("\n", "\n    "))
                    bench.cap_python = None
                    bench.cap_note = "dropped after failing: " + " ".join(str(exc).split())[:200]
                    FIGURES[name](bench, rows, lambda text: out(text))
            except Exception:  # noqa: BLE001 - a report: note it and carry on
                out("  figure %s failed:\n%s" % (name, traceback.format_exc()))
                failed = Row(name, "%s (failed, see log above)" % name, "%s", "")
                failed.notes[CP] = "error"
                rows.append(failed)
            out("  (%.1f s)" % (time.perf_counter() - t))
    except Exception:  # noqa: BLE001
        out("benchmark aborted:\n" + traceback.format_exc())
    finally:
        bench.close()
    out("\n## Results\n")
    print_table(rows, bench, out)
    out("\nMachine: %s. codex-proxy started with %s; %s; fake backend: %s." % (
        machine, bench.capacity_note, bench.cap_note, args.fake))
    out("Run: python tests/bench_proxy.py%s (%.0f s)." % (" --quick" if args.quick else "",
                                                         time.perf_counter() - started))
    return 0


if __name__ == "__main__":
    sys.exit(main())
