"""The upstream client: streaming relay, client hang-ups, keep-alive, timeouts,
error statuses, proxies (HTTPS_PROXY / NO_PROXY) and concurrency.

Run: python3 -m unittest tests.test_upstream -v
"""

import os
import socket
import threading
import time
import unittest
from unittest import mock

from support import (ProxyTestCase, closed_port, codex_proxy, output_text, raw_request, read_until, streamed_text,
                     wait_for)
from fake_upstream import overloaded_reply, usage_limit_reply

FAKE_TEXT = "Hello from the fake backend."
LONG_SLOW_REPLY = {"text": "x" * 50, "delay": 0.05, "events_repeat": 200}  # ~600 deltas, ~30 s


class UpstreamTestCase(ProxyTestCase):
    def post(self, body, headers=None, proxy=None):
        return self.json_request("POST", "/v1/responses", body, headers, proxy)

    def stream(self, body):
        return self.sse_request("/v1/responses", dict(body, stream=True))

    def open_raw_stream(self, port, body):
        """A raw socket with a request sent and the answer's first bytes read."""
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.addCleanup(sock.close)
        sock.sendall(raw_request("/v1/responses", body))
        return sock, read_until(sock, b"response.created")


# ---------------------------------------------------------------------------
# Client hang-ups and the upstream connection

class HangupTest(UpstreamTestCase):
    def test_client_disconnect_mid_stream_closes_the_upstream(self):
        proxy = self.start_proxy(max_streams=1)  # a stuck worker would refuse every later call
        self.fake.script.append(dict(LONG_SLOW_REPLY))
        sock, received = self.open_raw_stream(proxy.port, {"model": "gpt-5.5", "input": "long", "stream": True})
        self.assertTrue(received.startswith(b"HTTP/1.1 200 "), received[:200])
        self.assertIn(b"text/event-stream", received)
        self.assertIn(b"event: response.created", received)
        started = time.monotonic()
        sock.close()
        self.assertTrue(self.fake.stream_closed_early.wait(5), "the upstream stream was not closed")
        self.assertLess(time.monotonic() - started, 3)
        self.assertEqual(self.request("GET", "/health", proxy=proxy)[0], 200)
        self.assertTrue(wait_for(lambda: proxy.app.upstream.streams() == 0, 2))
        # The only upstream worker is free again: a new call completes at once.
        started = time.monotonic()
        status, _, payload = self.post({"model": "gpt-5.5", "input": "again"}, proxy=proxy)
        self.assertEqual(status, 200, payload)
        self.assertEqual(output_text(payload), FAKE_TEXT)
        self.assertLess(time.monotonic() - started, 2)
        # The cut connection was not put back into the pool as if it were reusable.
        for conns in proxy.app.upstream.pool.idle.values():
            for conn in conns:
                self.assertIsNotNone(conn.sock)

    def test_client_disconnect_while_waiting_for_a_non_stream_answer_closes_the_upstream(self):
        proxy = self.start_proxy(max_streams=1)
        self.fake.script.append(dict(LONG_SLOW_REPLY))
        sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        self.addCleanup(sock.close)
        sock.sendall(raw_request("/v1/responses", {"model": "gpt-5.5", "input": "long"}))
        self.assertTrue(wait_for(lambda: len(self.fake.requests_to("/responses")) == 1, 3))
        time.sleep(0.2)
        sock.close()
        # A client that gives up on a non-stream answer must stop the upstream generation too (else
        # it runs to its end, spending the user's usage limit, and holds an upstream worker thread).
        self.assertTrue(self.fake.stream_closed_early.wait(3),
                        "the upstream kept streaming after the client left a non-stream request")


# ---------------------------------------------------------------------------
# The connection pool

class PoolTest(UpstreamTestCase):
    def watch_accepts(self):
        """Record the client port of every connection the fake accepts."""
        accepted = []
        server = self.fake._server
        original = server.get_request

        def get_request():
            conn, address = original()
            accepted.append(address[1])
            return conn, address

        server.get_request = get_request
        return accepted

    def idle_ports(self, proxy=None):
        pool = (proxy or self.proxy).app.upstream.pool
        with pool.lock:
            return {conn.sock.getsockname()[1] for conns in pool.idle.values() for conn in conns
                    if conn.sock is not None}

    def test_keep_alive_connection_is_reused(self):
        accepted = self.watch_accepts()
        self.assertEqual(self.json_request("GET", "/v1/models")[0], 200)  # catalog cached
        status, _, first = self.post({"model": "gpt-5.5", "input": "one"})
        self.assertEqual((status, output_text(first)), (200, FAKE_TEXT))
        # The connection goes back to the pool as the body's end is read, before the loop's
        # stream.close() could throw a fully read connection away.
        self.assertTrue(wait_for(lambda: self.idle_ports(), 2), "no idle connection after a complete answer")
        before = list(accepted)
        self.assertTrue(self.idle_ports() <= set(before))
        status, _, second = self.post({"model": "gpt-5.5", "input": "two"})
        self.assertEqual((status, output_text(second)), (200, FAKE_TEXT))
        self.assertTrue(wait_for(lambda: self.idle_ports(), 2))
        self.assertEqual(accepted, before, "the second request opened a new upstream connection")
        self.assertTrue(self.idle_ports() <= set(before))
        calls = self.fake.requests_to("/responses")
        self.assertEqual([c.json["input"][0]["content"][0]["text"] for c in calls], ["one", "two"])
        self.assertEqual(len(self.fake.requests_to("/models")), 1)  # the catalog is cached

    def test_keep_alive_after_json_answers(self):
        accepted = self.watch_accepts()
        api = self.start_proxy(openai_api_key="sk-test-key", auth="apikey")
        for n in range(3):
            status, _, payload = self.post({"model": "gpt-4.1", "input": "hi %d" % n}, proxy=api)
            self.assertEqual((status, output_text(payload)), (200, FAKE_TEXT))
            wait_for(lambda: self.idle_ports(api), 1)
        self.assertEqual(len(self.fake.requests_to("/v1/responses")), 3)
        # HTTPResponse.read1 never marks a Content-Length answer closed at its end; pump closes it, so
        # ConnectionPool.release keeps the connection.
        self.assertEqual(len(accepted), 1, "each JSON answer took a new upstream connection")

    def test_stale_pooled_connections_are_replaced(self):
        # Three answers at once leave three idle connections in the pool...
        for _ in range(3):
            self.fake.script.append({"text": "abc", "delay": 0.05})
        self.assertEqual(self.json_request("GET", "/v1/models")[0], 200)
        results = []
        threads = [threading.Thread(target=lambda: results.append(self.post({"model": "gpt-5.5", "input": "hi"})[0]))
                   for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        self.assertEqual(results, [200, 200, 200])
        self.assertTrue(wait_for(lambda: len(self.idle_ports()) >= 2, 2), self.idle_ports())
        # ...then the server closes its idle keep-alive connections (as real servers do after a while).
        for conn in self.fake.open_connections():
            conn.shutdown(socket.SHUT_RDWR)
        self.assertTrue(wait_for(lambda: not self.fake.open_connections(), 3))
        time.sleep(0.05)
        status, _, payload = self.post({"model": "gpt-5.5", "input": "after idle"})
        # A stale kept-alive connection is retried once, and the retry must not take another (equally
        # stale) idle connection, or with two or more of them the client gets 502.
        self.assertEqual(status, 200, payload)
        self.assertEqual(output_text(payload), FAKE_TEXT)


# ---------------------------------------------------------------------------
# Unreachable and silent upstreams

class UnreachableTest(UpstreamTestCase):
    def test_upstream_unreachable_is_a_502(self):
        port = closed_port()
        proxy = self.start_proxy(chatgpt_base_url="http://127.0.0.1:%d/backend-api/codex" % port)
        for stream in (False, True):
            with self.subTest(stream=stream):
                started = time.monotonic()
                status, headers, payload = self.post({"model": "gpt-5.5", "input": "hi", "stream": stream},
                                                     proxy=proxy)
                self.assertEqual(status, 502, payload)
                self.assertEqual(headers["content-type"], "application/json")
                error = payload["error"]
                self.assertEqual((error["type"], error["code"]), ("server_error", "upstream_unavailable"))
                self.assertIn("cannot reach upstream 127.0.0.1", error["message"])
                self.assertIn("refused", error["message"].lower())
                self.assertLess(time.monotonic() - started, 3)
        status, _, payload = self.json_request("GET", "/v1/models", proxy=proxy)
        self.assertEqual(status, 502, payload)
        self.assertIn("cannot reach upstream", payload["error"]["message"])
        self.assertEqual(self.request("GET", "/health", proxy=proxy)[0], 200)


class IdleTimeoutTest(UpstreamTestCase):
    config_overrides = {"upstream_idle_timeout": 0.3}

    def test_silent_upstream_mid_stream_ends_with_an_error_event(self):
        self.assertEqual(self.json_request("GET", "/v1/models")[0], 200)
        self.fake.script.append({"text": "abc", "delay": 1.0})  # ~10 events, one per second
        started = time.monotonic()
        status, events, raw = self.stream({"model": "gpt-5.5", "input": "hi"})
        elapsed = time.monotonic() - started
        self.assertEqual(status, 200, raw)
        self.assertEqual(events[0][0], "response.created")
        self.assertEqual(events[-1][0], "error")
        self.assertEqual(events[-1][1]["code"], "stream_interrupted")
        self.assertNotIn("response.completed", [name for name, _ in events])
        self.assertLess(elapsed, 0.95, "the proxy waited for the next upstream event instead of timing out")
        self.assertTrue(self.fake.stream_closed_early.wait(3))
        # The timed-out connection is not reused: the next call works.
        status, _, payload = self.post({"model": "gpt-5.5", "input": "next"})
        self.assertEqual((status, output_text(payload)), (200, FAKE_TEXT))

    def test_silent_upstream_non_stream_is_a_5xx(self):
        self.assertEqual(self.json_request("GET", "/v1/models")[0], 200)
        self.fake.script.append({"text": "abc", "delay": 1.0})
        started = time.monotonic()
        status, _, payload = self.post({"model": "gpt-5.5", "input": "hi"})
        self.assertGreaterEqual(status, 500, payload)
        self.assertLess(status, 600)
        self.assertEqual(payload["error"]["type"], "server_error")
        self.assertTrue(payload["error"]["message"])
        self.assertLess(time.monotonic() - started, 0.95)


# ---------------------------------------------------------------------------
# Upstream errors, before and during the answer

class UpstreamErrorTest(UpstreamTestCase):
    def test_unknown_model_is_a_400_with_the_backend_detail(self):
        for stream in (False, True):
            with self.subTest(stream=stream):
                status, headers, payload = self.post({"model": "gpt-4o", "input": "hi", "stream": stream})
                self.assertEqual(status, 400, payload)
                self.assertEqual(headers["content-type"], "application/json")
                message = payload["error"]["message"]  # the backend's words, then the plan's models
                self.assertTrue(message.startswith(
                    "The 'gpt-4o' model is not supported when using Codex with a ChatGPT account."), message)
                self.assertTrue(message.endswith("Models of your plan: gpt-5.5, gpt-5.4, gpt-5.5-mini."), message)
                self.assertEqual(payload["error"]["type"], "invalid_request_error")
        self.assertEqual(self.fake.requests_to("/responses")[0].json["model"], "gpt-4o")

    def test_usage_limit_is_a_429_with_retry_after(self):
        for stream in (False, True):
            with self.subTest(stream=stream):
                self.fake.script.append(usage_limit_reply(resets_in_seconds=120))
                status, headers, payload = self.post({"model": "gpt-5.5", "input": "hi", "stream": stream})
                self.assertEqual(status, 429, payload)
                self.assertIn(int(headers["retry-after"]), range(115, 121))
                error = payload["error"]
                self.assertTrue({"message", "type", "param", "code"} <= set(error), error)
                # The backend's own type and reset times are kept: the Codex CLI stops (saying when the
                # limit resets) only on those, and retries any other 429.
                self.assertEqual((error["type"], error["code"]), ("usage_limit_reached", "usage_limit_reached"))
                self.assertEqual((error["resets_in_seconds"], error["plan_type"]), (120, "plus"))
                self.assertLessEqual(abs(error["resets_at"] - (time.time() + 120)), 5)
                self.assertIn("usage limit has been reached", error["message"])

    def test_overloaded_is_a_503(self):
        for code in ("server_is_overloaded", "slow_down"):
            with self.subTest(code=code):
                self.fake.script.append(overloaded_reply(code))
                status, _, payload = self.post({"model": "gpt-5.5", "input": "hi"})
                self.assertEqual(status, 503, payload)
                self.assertEqual((payload["error"]["type"], payload["error"]["code"]), ("server_error", code))
                self.assertIn("overloaded", payload["error"]["message"])

    def test_non_json_upstream_error_text_is_surfaced(self):
        self.fake.script.append({"status": 502, "body": "<html><body>Bad gateway from the edge</body></html>"})
        status, _, payload = self.post({"model": "gpt-5.5", "input": "hi"})
        self.assertEqual(status, 502, payload)
        self.assertIn("Bad gateway from the edge", payload["error"]["message"])

    def for_each_cut(self, check):
        """`check()` once for each way an upstream stream can end early (torn, or closed cleanly),
        the cut answer scripted for its request."""
        for cut in (True, "clean"):
            with self.subTest(cut=cut):
                self.fake.script.append({"text": "partial answer here", "cut": cut})
                check()

    def test_stream_cut_mid_answer_ends_with_a_proxy_error_event(self):
        def check():
            status, events, raw = self.stream({"model": "gpt-5.5", "input": "hi"})
            self.assertEqual(status, 200, raw)
            names = [name for name, _ in events]
            self.assertEqual(names[0], "response.created")
            self.assertEqual(streamed_text(data for _, data in events), "partial answer here")
            self.assertFalse({"response.completed", "response.failed", "response.incomplete"} & set(names))
            self.assertEqual(names.count("error"), 1)
            self.assertEqual(events[-1], ("error", {"type": "error", "code": "stream_interrupted", "message":
                                                    "The upstream stream ended before the response was complete."}))
            self.assertTrue(raw.endswith(b"\n\n"))
        self.for_each_cut(check)

    def test_stream_cut_non_stream_is_a_502(self):
        def check():
            status, _, payload = self.post({"model": "gpt-5.5", "input": "hi"})
            self.assertEqual(status, 502, payload)
            self.assertEqual(payload["error"]["code"], "stream_interrupted")
            self.assertEqual(payload["error"]["type"], "server_error")
        self.for_each_cut(check)

    def test_failed_response_non_stream_maps_the_code_to_a_status(self):
        cases = [("context_length_exceeded", "Your input exceeds the context window of this model.", 400),
                 ("server_is_overloaded", "Try again later.", 503),
                 ("rate_limit_exceeded", "Slow down there.", 429),
                 ("server_error", "Something broke upstream.", 502)]
        for code, message, expected in cases:
            with self.subTest(code=code):
                self.assertEqual(codex_proxy.upstream_error_status(code), expected)
                self.fake.script.append({"text": "so far", "fail": {"code": code, "message": message}})
                status, _, payload = self.post({"model": "gpt-5.5", "input": "hi"})
                self.assertEqual(status, expected, payload)
                self.assertEqual((payload["error"]["message"], payload["error"]["code"]), (message, code))

    def test_failed_response_stream_is_relayed_without_an_extra_error(self):
        self.fake.script.append({"text": "so far", "fail": {"code": "server_error", "message": "boom"}})
        status, events, raw = self.stream({"model": "gpt-5.5", "input": "hi"})
        self.assertEqual(status, 200, raw)
        self.assertEqual(events[-1][0], "response.failed")
        self.assertEqual(events[-1][1]["response"]["error"], {"code": "server_error", "message": "boom"})
        self.assertNotIn("error", [name for name, _ in events])

    def test_rate_limit_headers_are_relayed(self):
        status, headers, payload = self.post({"model": "gpt-5.5", "input": "hi"})
        self.assertEqual(status, 200, payload)
        self.assertEqual(headers.get("x-codex-primary-used-percent"), "12")
        status, hdrs, raw = self.request("POST", "/v1/responses", {"model": "gpt-5.5", "input": "hi", "stream": True})
        self.assertEqual(hdrs.get("x-codex-primary-window-minutes"), "300")


# ---------------------------------------------------------------------------
# HTTPS_PROXY / NO_PROXY

class ProxyForTest(unittest.TestCase):
    URL = "https://chatgpt.com/backend-api/codex/responses"

    def env(self, **values):
        return mock.patch.dict(os.environ, values, clear=True)

    def test_no_proxy_configured(self):
        with self.env():
            self.assertIsNone(codex_proxy.proxy_for(self.URL, None))

    def test_https_proxy_from_the_environment(self):
        with self.env(HTTPS_PROXY="http://proxy.corp:3128"):
            self.assertEqual(codex_proxy.proxy_for(self.URL, None), "http://proxy.corp:3128")
        with self.env(https_proxy="http://lower.corp:8080"):
            self.assertEqual(codex_proxy.proxy_for(self.URL, None), "http://lower.corp:8080")

    def test_explicit_proxy_wins(self):
        with self.env(HTTPS_PROXY="http://env.corp:3128"):
            self.assertEqual(codex_proxy.proxy_for(self.URL, "http://flag.corp:9000"), "http://flag.corp:9000")
        with self.env():
            self.assertEqual(codex_proxy.proxy_for(self.URL, "http://flag.corp:9000"), "http://flag.corp:9000")

    def test_no_proxy_rules(self):
        cases = [
            ("chatgpt.com", "https://chatgpt.com/x", None),  # exact host
            ("chatgpt.com", "https://api.openai.com/v1", "P"),
            ("auth.openai.com", "https://api.openai.com/v1", "P"),
            ("example.com", "https://api.example.com/x", None),  # suffix without a dot
            (".example.com", "https://api.example.com/x", None),  # suffix with a dot
            (".example.com", "https://example.com/x", None),
            ("example.com", "https://notexample.com/x", "P"),  # not a domain suffix
            ("*", "https://chatgpt.com/x", None),
            ("other.org, chatgpt.com ,", "https://chatgpt.com/x", None),  # list with spaces
            ("ChatGPT.COM", "https://chatgpt.com/x", None),  # case-insensitive
            ("", "https://chatgpt.com/x", "P"),
        ]
        for no_proxy, url, expected in cases:
            for name in ("NO_PROXY", "no_proxy"):
                with self.subTest(no_proxy=no_proxy, url=url, var=name):
                    with self.env(HTTPS_PROXY="http://P:1", **{name: no_proxy}):
                        got = codex_proxy.proxy_for(url, None)
                    self.assertEqual(got, None if expected is None else "http://P:1")
        with self.env(NO_PROXY="chatgpt.com"):
            self.assertIsNone(codex_proxy.proxy_for(self.URL, "http://flag.corp:9000"))

    def test_https_calls_tunnel_through_the_proxy(self):
        """CONNECT to the target through the proxy, with Proxy-Authorization from the URL's user:password."""
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        self.addCleanup(listener.close)
        seen = []

        def refuse_tunnel():
            conn, _ = listener.accept()
            with conn:
                seen.append(read_until(conn, b"\r\n\r\n").decode("latin-1"))
                conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")

        thread = threading.Thread(target=refuse_tunnel, daemon=True)
        thread.start()
        config = codex_proxy.Config(proxy="http://user:p%40ss@127.0.0.1:" + str(listener.getsockname()[1]),
                                    connect_timeout=5)
        pool = codex_proxy.ConnectionPool(config)
        with self.env():
            with self.assertRaises(codex_proxy.UpstreamUnavailable) as caught:
                pool.request("POST", self.URL, {"Content-Length": "2"}, b"{}")
        thread.join(5)
        self.assertIn("cannot reach upstream chatgpt.com", str(caught.exception))
        self.assertIn("403", str(caught.exception))
        self.assertEqual(len(seen), 1)
        self.assertTrue(seen[0].startswith("CONNECT chatgpt.com:443 HTTP/1."), seen[0])
        self.assertIn("Proxy-Authorization: Basic dXNlcjpwQHNz\r\n", seen[0])  # user:p@ss


# ---------------------------------------------------------------------------
# Concurrency

class ConcurrencyTest(UpstreamTestCase):
    def one_stream(self):
        status, events, raw = self.stream({"model": "gpt-5.5", "input": "hi"})
        if status != 200:
            return status, raw.decode("utf-8", "replace")
        return status, streamed_text(data for _, data in events), events[-1][0] if events else None

    def test_80_concurrent_streams_each_get_an_upstream_at_once(self):
        self.assertEqual(self.json_request("GET", "/v1/models")[0], 200)
        reply = {"text": "abcdef", "delay": 0.05}  # ~11 events: ~0.5 s each
        self.fake.script.append(dict(reply))
        started = time.monotonic()
        self.assertEqual(self.one_stream(), (200, "abcdef", "response.completed"))
        single = time.monotonic() - started
        for _ in range(80):
            self.fake.script.append(dict(reply))
        results, peak = [], [0]
        lock = threading.Lock()

        def run():
            try:
                outcome = self.one_stream()
            except Exception as exc:  # recorded, asserted below
                outcome = repr(exc)
            with lock:
                results.append(outcome)
                peak[0] = max(peak[0], self.proxy.app.upstream.streams())

        def sample():
            while len(results) < 80:
                peak[0] = max(peak[0], self.proxy.app.upstream.streams())
                time.sleep(0.005)
        threads = [threading.Thread(target=run) for _ in range(80)] + [threading.Thread(target=sample)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        total = time.monotonic() - started
        expected = (200, "abcdef", "response.completed")
        self.assertEqual([r for r in results if r != expected], [])
        self.assertEqual(len(results), 80)
        self.assertEqual(len(self.fake.requests_to("/responses")), 81)
        self.assertGreater(peak[0], 64)  # no cap at the old 64 threads
        self.assertLess(total, max(80 * single / 4, 2.0), "80 streams took %.2fs (one: %.2fs)" % (total, single))

    def test_beyond_max_streams_a_request_gets_a_prompt_503_with_retry_after(self):
        proxy = self.start_proxy(max_streams=3)
        socks = []
        for n in range(3):
            self.fake.script.append({"text": "x" * 50, "delay": 0.05, "events_repeat": 40})  # ~6 s
            sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
            self.addCleanup(sock.close)
            sock.sendall(raw_request("/v1/responses", {"model": "gpt-5.5", "input": "hold %d" % n, "stream": True}))
            socks.append(sock)
        self.assertTrue(wait_for(lambda: proxy.app.upstream.streams() == 3, 5))
        started = time.monotonic()
        status, headers, body = self.json_request("POST", "/v1/chat/completions", {
            "model": "gpt-5.5", "messages": [{"role": "user", "content": "hi"}]}, proxy=proxy)
        self.assertLess(time.monotonic() - started, 1)
        self.assertEqual((status, headers.get("retry-after")), (503, "1"), body)
        self.assertIn("--max-streams", body["error"]["message"])
        status, headers, body = self.json_request("POST", "/v1/messages", {
            "model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]},
            proxy=proxy)
        self.assertEqual((status, body["error"]["type"], headers.get("retry-after")), (529, "overloaded_error", "1"))
        for sock in socks:
            sock.close()
        self.assertTrue(wait_for(lambda: proxy.app.upstream.streams() == 0, 5))
        self.assertEqual(self.json_request("GET", "/v1/models", proxy=proxy)[0], 200)


if __name__ == "__main__":
    unittest.main()
