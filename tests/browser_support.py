"""Helpers for tests/test_browser.py: headless Chromium, a page server that a page
reports back to, a byte-level TCP tap that records what the proxy answered, and a
small HTTP forward proxy that plays a rebound DNS name (evil.example) for Chromium.

Standard library only; Python 3.8+. Every server binds 127.0.0.1 on a free port.
"""

import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from support import read_head  # test_browser imports support first: it puts tests/ on sys.path

# What works here (Chromium 150, Debian 12, as root, no network): new headless mode;
# without the background-networking flags Chromium keeps dialling Google's hosts.
CHROMIUM_FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--no-default-browser-check", "--disable-extensions", "--mute-audio", "--disable-dev-shm-usage",
]
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
REPORT_TIMEOUT = 20.0


def find_chromium():
    """Path of a Chromium binary, or None. CODEX_PROXY_CHROMIUM overrides the search."""
    explicit = os.environ.get("CODEX_PROXY_CHROMIUM")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


def browser_required():
    """In CI (CI=true) or with CODEX_PROXY_REQUIRE_OPTIONAL set, a missing Chromium fails the run."""
    return (os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")
            or bool(os.environ.get("CODEX_PROXY_REQUIRE_OPTIONAL")))


def page_html(steps, report_url, title="probe"):
    """A page that runs `steps` (each {"name", "url", "init"} -- the arguments of fetch)
    one after the other and POSTs what it could see of each answer to `report_url`:
    {"origin", "results": {name: {"status", "type", "body", "allow_origin"} or {"error"}}}."""
    script = """
const STEPS = %s;
const REPORT = %s;
(async () => {
  const results = {};
  let failure = null;
  try {
    for (const step of STEPS) {
      const controller = new AbortController();
      const timer = setTimeout(() => controller.abort(), 8000);
      try {
        const init = Object.assign({}, step.init, {signal: controller.signal});
        const r = await fetch(step.url, init);
        let body;
        try { body = await r.text(); } catch (e) { body = null; }
        results[step.name] = {status: r.status, type: r.type, body: body,
                              allow_origin: r.headers.get("access-control-allow-origin")};
      } catch (e) {
        results[step.name] = {error: String(e)};
      } finally {
        clearTimeout(timer);
      }
    }
  } catch (e) {
    failure = String(e);
  }
  await fetch(REPORT, {method: "POST", body: JSON.stringify({origin: location.origin, results: results,
                                                             failure: failure})});
})();
""" % (json.dumps(steps), json.dumps(report_url))
    return ("<!doctype html><html><head><meta charset='utf-8'><title>%s</title></head>"
            "<body><script>%s</script></body></html>" % (title, script)).encode("utf-8")


class Reports(object):
    """Thread-safe list of the JSON reports pages sent; wait() returns the first one."""

    def __init__(self):
        self.items = []
        self.cond = threading.Condition()

    def add(self, raw):
        try:
            item = json.loads(raw.decode("utf-8"))
        except ValueError:
            item = {"unparsable": raw.decode("utf-8", "replace")}
        with self.cond:
            self.items.append(item)
            self.cond.notify_all()

    def wait(self, timeout=REPORT_TIMEOUT):
        deadline = time.monotonic() + timeout
        with self.cond:
            while not self.items:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)
            return self.items[0]


class _PageHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _send(self, status, body=b"", ctype="text/html; charset=utf-8"):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        page = self.server.owner.pages.get(self.path.split("?")[0])
        if page is None:
            return self._send(404, b"not found", "text/plain")
        self._send(200, page)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path != "/report":
            return self._send(404, b"not found", "text/plain")
        self.server.owner.reports.add(body)
        self._send(204)


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], (ConnectionError, socket.timeout)):  # a killed browser's sockets
            http.server.ThreadingHTTPServer.handle_error(self, request, client_address)


class PageServer(object):
    """Serves pages (path -> HTML bytes) on 127.0.0.1 and takes the reports at POST /report."""

    def __init__(self):
        self.pages = {}
        self.reports = Reports()
        self.server = _QuietServer(("127.0.0.1", 0), _PageHandler)
        self.server.owner = self
        self.port = self.server.server_address[1]
        self.origin = "http://127.0.0.1:%d" % self.port
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       name="PageServer", daemon=True)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def _pump(src, dst, record, lock):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            with lock:
                record.extend(data)
            dst.sendall(data)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


class LoopbackListener(object):
    """A TCP listener on 127.0.0.1 whose accept loop hands each client to `accepted`;
    stop() closes the listener and every socket it keeps in `socks`."""

    name = "LoopbackListener"

    def __init__(self):
        self.lock = threading.Lock()
        self.socks = set()
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(0.05)  # so that the accept loop notices stop()
        self.port = self.listener.getsockname()[1]
        self.closed = False
        self.thread = threading.Thread(target=self._accept, name=self.name, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.closed = True
        try:
            self.listener.close()
        except OSError:
            pass
        with self.lock:
            socks = list(self.socks)
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        self.thread.join(5)

    def _accept(self):
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            client.settimeout(None)
            self.accepted(client)

    def accepted(self, client):
        raise NotImplementedError


class TcpTap(LoopbackListener):
    """A transparent TCP relay 127.0.0.1:port -> 127.0.0.1:target that keeps every byte
    both ways, so a test can see the answers to requests a page cannot read (no-cors)."""

    name = "TcpTap"
    STATUS_RE = re.compile(rb"HTTP/1\.[01] (\d{3})[^\r\n]*\r\n")
    REQUEST_RE = re.compile(rb"(?:^|\n)([A-Z]+) (\S+) HTTP/1\.[01]\r\n")

    def __init__(self, target_port):
        self.target_port = target_port
        self.conns = []  # [(client->server bytearray, server->client bytearray)]
        LoopbackListener.__init__(self)

    def accepted(self, client):
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
            upstream.settimeout(None)
        except OSError:
            client.close()
            return
        sent, received = bytearray(), bytearray()
        with self.lock:
            self.conns.append((sent, received))
            self.socks.update([client, upstream])
        for args in ((client, upstream, sent), (upstream, client, received)):
            threading.Thread(target=_pump, args=args + (self.lock,), daemon=True).start()

    def requests(self):
        """[(method, target)] of every request that went through, in order per connection."""
        with self.lock:
            data = [bytes(sent) for sent, _ in self.conns]
        return [(m.group(1).decode(), m.group(2).decode()) for raw in data for m in self.REQUEST_RE.finditer(raw)]

    def statuses(self):
        """The status codes of every answer that came back."""
        with self.lock:
            data = [bytes(received) for _, received in self.conns]
        return [int(m.group(1)) for raw in data for m in self.STATUS_RE.finditer(raw)]

    def transcript(self, limit=4000):
        with self.lock:
            parts = [b"--> " + bytes(sent) + b"\n<-- " + bytes(received) for sent, received in self.conns]
        return b"\n====\n".join(parts).decode("utf-8", "replace")[:limit]


def _read_exact(sock, count, buffered):
    data = bytearray(buffered)
    while len(data) < count:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data.extend(chunk)
    return bytes(data[:count]), bytes(data[count:])


def _header(lines, name):
    name = name.lower()
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip().lower() == name:
            return value.strip()
    return None


class ForwardProxy(LoopbackListener):
    """An HTTP forward proxy for Chromium's --proxy-server that plays DNS rebinding:

    * GET http://<fake host>/ answers with `page` (the attacker's page);
    * POST http://<fake host>/__report takes the page's report (into `reports`);
    * any other request for <fake host> is relayed unchanged, Host header and all,
      to 127.0.0.1:<target port> -- as if the name now resolved to 127.0.0.1;
    * anything else (other hosts, CONNECT) is refused with 502 and logged.

    `log` keeps (method, absolute URL, Host header, status answered) of every request.
    """

    name = "ForwardProxy"

    def __init__(self, fake_host, target_port, page=b""):
        self.fake_host = fake_host.lower()  # "evil.example:1234"
        self.target_port = target_port
        self.page = page
        self.reports = Reports()
        self.log = []
        LoopbackListener.__init__(self)

    def entries(self):
        with self.lock:
            return list(self.log)

    def accepted(self, client):
        with self.lock:
            self.socks.add(client)
        threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _record(self, method, url, host, status):
        with self.lock:
            self.log.append((method, url, host, status))

    @staticmethod
    def _answer(client, status, body=b"", ctype="text/plain"):
        reason = {200: "OK", 204: "No Content", 502: "Bad Gateway"}.get(status, "Status")
        client.sendall(("HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nCache-Control: no-store\r\n"
                        "Connection: close\r\nProxy-Connection: close\r\n\r\n" % (status, reason, ctype, len(body))
                        ).encode("latin-1") + body)

    def _serve(self, client):
        upstream = None
        try:
            client.settimeout(15)
            head, rest = read_head(client)
            if head is None:
                return
            lines = head.decode("latin-1").split("\r\n")
            method, url, _version = (lines[0].split(" ") + ["", ""])[:3]
            headers = lines[1:]
            host = _header(headers, "host") or ""
            length = int(_header(headers, "content-length") or 0)
            body, _ = _read_exact(client, length, rest)
            if method == "CONNECT" or not url.lower().startswith("http://"):
                self._record(method, url, host, 502)
                return self._answer(client, 502, b"this test proxy only plays http://" + self.fake_host.encode())
            authority, slash, path = url[len("http://"):].partition("/")
            path = slash + path if slash else "/"
            if authority.lower() != self.fake_host:
                self._record(method, url, host, 502)
                return self._answer(client, 502, b"not proxied by this test")
            if method == "GET" and path == "/":
                self._record(method, url, host, 200)
                return self._answer(client, 200, self.page, "text/html; charset=utf-8")
            if method == "POST" and path == "/__report":
                self.reports.add(body)
                self._record(method, url, host, 204)
                return self._answer(client, 204)
            # The rebound name: relay the request as it is to 127.0.0.1:<target port>.
            kept = [line for line in headers
                    if line.partition(":")[0].strip().lower() not in ("proxy-connection", "connection",
                                                                       "proxy-authorization", "keep-alive")]
            request = "\r\n".join(["%s %s HTTP/1.1" % (method, path)] + kept + ["Connection: close", "", ""])
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=15)
            upstream.sendall(request.encode("latin-1") + body)
            status = self._relay_answer(upstream, client, method)
            self._record(method, url, host, status)
        except (OSError, ValueError):
            pass
        finally:
            if upstream is not None:
                upstream.close()
            with self.lock:
                self.socks.discard(client)
            try:
                client.close()
            except OSError:
                pass

    @staticmethod
    def _relay_answer(upstream, client, method):
        """Copy one HTTP answer from upstream to the client (closing the connection after
        it) and return its status, or None when none came."""
        head, rest = read_head(upstream)
        if head is None:
            return None
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        kept = [line for line in lines[1:]
                if line.partition(":")[0].strip().lower() not in ("connection", "keep-alive")]
        client.sendall("\r\n".join(lines[:1] + kept + ["Connection: close", "", ""]).encode("latin-1"))
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            return status
        length = _header(kept, "content-length")
        chunked = "chunked" in (_header(kept, "transfer-encoding") or "").lower()
        if length is not None and not chunked:
            body, _ = _read_exact(upstream, int(length), rest)
            client.sendall(body)
            return status
        # Chunked or until-close: relay until the last chunk's terminator or EOF.
        data = bytearray(rest)
        client.sendall(rest)
        while not (chunked and (data.endswith(b"\r\n0\r\n\r\n") or bytes(data) == b"0\r\n\r\n")):
            chunk = upstream.recv(65536)
            if not chunk:
                break
            data.extend(chunk)
            client.sendall(chunk)
        return status


class Chromium(object):
    """One headless Chromium with a fresh profile, opening `url`; stop() kills its whole
    process group and removes the profile."""

    def __init__(self, binary, url, extra_flags=()):
        self.profile = tempfile.mkdtemp(prefix="codex-proxy-chromium-")
        self.log_path = os.path.join(self.profile, "chromium.log")
        self.args = [binary] + CHROMIUM_FLAGS + list(extra_flags) + ["--user-data-dir=" + self.profile, url]
        self.process = None

    def start(self):
        log = open(self.log_path, "wb")
        try:
            self.process = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        finally:
            log.close()
        return self

    def log_tail(self, lines=15):
        """The end of Chromium's output, without the D-Bus noise of a machine with no session bus."""
        try:
            with open(self.log_path, "rb") as handle:
                text = handle.read().decode("utf-8", "replace")
        except OSError:
            return ""
        kept = [line for line in text.splitlines() if "dbus" not in line.lower()]
        return "\n".join(kept[-lines:])

    def stop(self):
        if self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)  # the group Popen started for it
            except OSError:
                pass
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                pass
        for _ in range(10):  # children may still be writing into the profile for a moment
            shutil.rmtree(self.profile, ignore_errors=True)
            if not os.path.exists(self.profile):
                break
            time.sleep(0.1)
