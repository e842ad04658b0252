"""The upstream client through an HTTPS proxy: CONNECT tunnel, CA bundle, NO_PROXY, proxy credentials.

The Codex backend is a second FakeCodexBackend whose listening socket is wrapped in TLS with a
test-only certificate (tests/data, see its README). Between the proxy and that fake sits
ConnectTunnel, a minimal HTTP CONNECT proxy that records every CONNECT and then only pipes bytes.
"""

import base64
import gc
import json
import os
import select
import socket
import ssl
import sys
import threading
import unittest
import warnings
from unittest import mock

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # also as `python -m unittest tests.test_tunnel`

import fake_upstream  # noqa: E402
from support import FakeCodexBackend, ProxyTestCase, read_head, streamed_text  # noqa: E402

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
CA_PEM = os.path.join(DATA, "tunnel-ca.pem")  # signed SERVER_PEM
SERVER_PEM = os.path.join(DATA, "tunnel-server.pem")  # cert + key for 127.0.0.1 and localhost
OTHER_CA_PEM = os.path.join(DATA, "other-ca.pem")  # an unrelated CA: must not verify SERVER_PEM
PROXY_ENV = ("HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy")
RESPONSES_BODY = {"model": "gpt-5.5", "input": "hi"}


def collect_quietly():
    """Before 3.12, http.client leaves a refused CONNECT's response (and its socket) to the garbage
    collector, which then warns "unclosed socket" in whatever test runs next. Collect it here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


class ConnectTunnel:
    """An HTTP CONNECT proxy on a loopback port.

    Each request head is recorded in `connects` (method, target, version, lower-case headers);
    a CONNECT is answered 200 and then bytes are piped both ways until either side closes.
    With `require_auth="user:pass"` a CONNECT without that Basic credential gets a 407.
    """

    def __init__(self, require_auth=None):
        self.require_auth = require_auth
        self.connects = []
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.sockets = set()
        self.threads = []
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(0.05)  # the accept loop checks `stopped` this often
        self.port = self.listener.getsockname()[1]
        self.url = "http://127.0.0.1:%d" % self.port
        self._spawn(self._accept_loop)

    def _spawn(self, target, *args):
        thread = threading.Thread(target=target, args=args, name="ConnectTunnel", daemon=True)
        with self.lock:
            self.threads.append(thread)
        thread.start()

    def _track(self, sock, add=True):
        with self.lock:
            (self.sockets.add if add else self.sockets.discard)(sock)

    def stop(self):
        self.stopped.set()
        self.listener.close()
        with self.lock:
            socks, threads = list(self.sockets), list(self.threads)
        for sock in socks:  # wake threads blocked in recv()
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in threads:
            thread.join(2)
        for sock in socks:
            sock.close()

    def _accept_loop(self):
        while not self.stopped.is_set():
            try:
                client, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:  # closed by stop()
                return
            client.settimeout(5)
            self._track(client)
            self._spawn(self._serve, client)

    def _serve(self, client):
        upstream = None
        try:
            head, rest = read_head(client, limit=65536)
            if head is None:
                return
            lines = head.decode("latin-1").split("\r\n")
            method, target, version = (lines[0].split(" ") + ["", "", ""])[:3]
            headers = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            record = {"method": method, "target": target, "version": version, "headers": headers,
                      "first_bytes": b""}
            with self.lock:
                self.connects.append(record)
            if method != "CONNECT":
                client.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            if self.require_auth is not None and headers.get("proxy-authorization") != \
                    "Basic " + base64.b64encode(self.require_auth.encode()).decode():
                client.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic "
                               b"realm=\"test\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            host, _, port = target.rpartition(":")
            try:
                upstream = socket.create_connection((host.strip("[]"), int(port)), timeout=5)
            except (OSError, ValueError):
                client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            self._track(upstream)
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            if rest:
                upstream.sendall(rest)
            self._pipe(client, upstream, record)
        except OSError:
            pass
        finally:
            for sock in (client, upstream):
                if sock is not None:
                    self._track(sock, False)
                    sock.close()

    def _pipe(self, client, upstream, record):
        peer = {client: upstream, upstream: client}
        while not self.stopped.is_set():
            readable, _, _ = select.select([client, upstream], [], [], 0.1)
            for sock in readable:
                data = sock.recv(65536)
                if not data:
                    return
                if sock is client and not record["first_bytes"]:
                    record["first_bytes"] = data[:3]
                peer[sock].sendall(data)


class TunnelTests(ProxyTestCase):
    """The proxy reaches an HTTPS Codex backend through a CONNECT proxy."""

    def setUp(self):
        env = mock.patch.dict(os.environ)  # restores every variable on cleanup
        env.start()
        self.addCleanup(env.stop)
        for name in PROXY_ENV:  # the machine's own proxy settings must not leak in
            os.environ.pop(name, None)
        ProxyTestCase.setUp(self)
        self.tls_fake, self.tls_base = self.start_tls_fake()

    def start_tls_fake(self):
        fake = FakeCodexBackend()
        self.addCleanup(fake.stop)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(SERVER_PEM)
        # The handshake runs in accept() (do_handshake_on_connect): a client that refuses the
        # certificate makes accept() raise an OSError, which socketserver drops quietly.
        fake._server.socket = context.wrap_socket(fake._server.socket, server_side=True)
        fake.start()
        return fake, "https://127.0.0.1:%d/backend-api/codex" % fake._server.server_address[1]

    def start_tunnel(self, **kwargs):
        tunnel = ConnectTunnel(**kwargs)
        self.addCleanup(tunnel.stop)
        return tunnel

    def use_proxy(self, **overrides):
        """Start a proxy on the TLS fake and make it the one self.request & co. call."""
        settings = dict(chatgpt_base_url=self.tls_base, ca_file=CA_PEM)
        settings.update(overrides)
        self.proxy = self.start_proxy(**settings)
        return self.proxy

    def assert_answers_through_upstream(self):
        status, _, body = self.json_request("POST", "/v1/responses", RESPONSES_BODY)
        self.assertEqual(status, 200, body)
        self.assertEqual(body["status"], "completed")
        self.assertEqual(body["output"][-1]["content"][0]["text"], fake_upstream.DEFAULT_TEXT)
        status, events, _ = self.sse_request("/v1/responses", dict(RESPONSES_BODY, stream=True))
        self.assertEqual(status, 200)
        self.assertEqual(events[-1][1]["type"], "response.completed")
        self.assertEqual(streamed_text(e for _, e in events), fake_upstream.DEFAULT_TEXT)
        status, _, models = self.json_request("GET", "/v1/models")
        self.assertEqual(status, 200, models)
        self.assertIn("gpt-5.5", [m["id"] for m in models["data"]])
        self.assertEqual(len(self.tls_fake.requests_to("/backend-api/codex/responses")), 2)
        self.assertTrue(self.tls_fake.requests_to("/backend-api/codex/models"))
        self.assertEqual(self.fake.requests, [])  # the plain-HTTP fake was never involved

    def assert_tunnelled(self, tunnel):
        target = "127.0.0.1:%d" % self.tls_fake._server.server_address[1]
        self.assertTrue(tunnel.connects, "the tunnel proxy saw no request")
        for record in tunnel.connects:
            self.assertEqual((record["method"], record["target"]), ("CONNECT", target))
            self.assertTrue(record["first_bytes"].startswith(b"\x16\x03"),  # a TLS handshake record
                            "not TLS inside the tunnel: %r" % record["first_bytes"])

    def assert_unreachable(self, path, body, fragment):
        status, hdrs, raw = self.request("POST" if body else "GET", path, body)
        self.assertEqual(status, 502, raw)
        self.assertTrue(hdrs["content-type"].startswith("application/json"))
        error = json.loads(raw.decode())["error"]
        self.assertEqual(error["code"], "upstream_unavailable")
        self.assertIn(fragment, error["message"].lower())
        self.assertNotIn("Traceback", error["message"])
        return error["message"]

    # (1) the --proxy flag
    def test_proxy_flag_tunnels_responses_and_models_to_an_https_upstream(self):
        tunnel = self.start_tunnel()
        self.use_proxy(proxy=tunnel.url)
        self.assert_answers_through_upstream()
        self.assert_tunnelled(tunnel)
        self.assertNotIn("proxy-authorization", tunnel.connects[0]["headers"])

    def test_proxy_flag_without_a_scheme_is_taken_as_http(self):
        tunnel = self.start_tunnel()
        self.use_proxy(proxy="127.0.0.1:%d" % tunnel.port)
        status, _, body = self.json_request("POST", "/v1/responses", RESPONSES_BODY)
        self.assertEqual(status, 200, body)
        self.assert_tunnelled(tunnel)

    # (2) the CA bundle decides whether TLS verification passes
    def test_a_ca_file_that_did_not_sign_the_upstream_certificate_is_a_clear_502(self):
        for label, ca_file in (("unrelated CA", OTHER_CA_PEM), ("no CA file: default trust store", None)):
            with self.subTest(label):
                tunnel = self.start_tunnel()
                self.use_proxy(proxy=tunnel.url, ca_file=ca_file)
                message = self.assert_unreachable("/v1/responses", RESPONSES_BODY, "certificate verify failed")
                self.assertIn("127.0.0.1", message)
                self.assert_unreachable("/v1/models", None, "certificate verify failed")
                self.assert_tunnelled(tunnel)  # the tunnel worked; the certificate did not
        self.assertEqual(self.tls_fake.requests, [])

    # (3) HTTPS_PROXY and NO_PROXY
    def test_https_proxy_from_the_environment_is_used_when_there_is_no_flag(self):
        tunnel = self.start_tunnel()
        os.environ["HTTPS_PROXY"] = tunnel.url
        self.use_proxy(proxy=None)
        self.assert_answers_through_upstream()
        self.assert_tunnelled(tunnel)

    def test_no_proxy_matching_the_upstream_host_goes_direct(self):
        tunnel = self.start_tunnel()
        os.environ["HTTPS_PROXY"] = tunnel.url
        os.environ["NO_PROXY"] = "example.com, 127.0.0.1"
        self.use_proxy(proxy=None)
        self.assert_answers_through_upstream()
        self.assertEqual(tunnel.connects, [])

    def test_no_proxy_in_lower_case_and_with_the_proxy_flag_goes_direct(self):
        tunnel = self.start_tunnel()
        os.environ["no_proxy"] = "127.0.0.1"
        self.use_proxy(proxy=tunnel.url)
        status, _, body = self.json_request("POST", "/v1/responses", RESPONSES_BODY)
        self.assertEqual(status, 200, body)
        self.assertEqual(tunnel.connects, [])

    # (4) proxy credentials
    def test_credentials_in_the_proxy_url_arrive_as_basic_proxy_authorization(self):
        tunnel = self.start_tunnel(require_auth="user:pass")
        self.use_proxy(proxy="http://user:pass@127.0.0.1:%d" % tunnel.port)
        self.assert_answers_through_upstream()
        self.assert_tunnelled(tunnel)
        for record in tunnel.connects:
            scheme, _, value = record["headers"]["proxy-authorization"].partition(" ")
            self.assertEqual(scheme, "Basic")
            self.assertEqual(base64.b64decode(value).decode(), "user:pass")

    def test_percent_encoded_credentials_are_decoded_before_encoding(self):
        tunnel = self.start_tunnel(require_auth="us@er:p:ss w")
        self.use_proxy(proxy="http://us%40er:p%3Ass%20w@127.0.0.1:" + str(tunnel.port))
        status, _, body = self.json_request("POST", "/v1/responses", RESPONSES_BODY)
        self.assertEqual(status, 200, body)
        value = tunnel.connects[0]["headers"]["proxy-authorization"][len("Basic "):]
        self.assertEqual(base64.b64decode(value).decode(), "us@er:p:ss w")

    def test_a_proxy_refusing_the_connect_is_a_clear_502(self):
        self.addCleanup(collect_quietly)  # runs last, once the proxy has stopped
        tunnel = self.start_tunnel(require_auth="user:pass")
        self.use_proxy(proxy=tunnel.url)  # no credentials: 407
        self.assert_unreachable("/v1/responses", RESPONSES_BODY, "407")
        self.assertNotIn("proxy-authorization", tunnel.connects[0]["headers"])
        self.assertEqual(self.tls_fake.requests, [])


if __name__ == "__main__":
    unittest.main()
