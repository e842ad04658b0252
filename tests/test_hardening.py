"""Protections against stalled or half-closed clients, failing upstreams and
credential races, and work kept off the event loop. Each test fails without
the protection it names."""

import asyncio
import logging
import os
import shutil
import signal
import socket
import stat
import struct
import tempfile
import threading
import time
import traceback
import types
import unittest
from unittest import mock

from support import (ProxyTestCase, closed_port, codex_proxy, make_jwt, raw_request, read_all, read_auth, wait_for,
                     write_auth)

FAKE_TEXT = "Hello from the fake backend."
CHAT = {"model": "gpt-5.5", "messages": [{"role": "user", "content": "hi"}]}


class StalledClientTest(ProxyTestCase):
    config_overrides = {"client_write_timeout": 0.5, "max_streams": 2}

    def test_a_client_that_stops_reading_is_dropped_and_its_upstream_freed(self):
        # About 12 MB of answer: more than the socket buffers on both sides hold.
        self.fake.script.append({"text": "x" * 60000, "events_repeat": 200})
        sock = socket.socket()
        self.addCleanup(sock.close)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", self.proxy.port))
        sock.sendall(raw_request("/v1/chat/completions", dict(CHAT, stream=True)))
        # The client reads nothing; meanwhile others are served.
        self.assertTrue(wait_for(lambda: len(self.fake.requests_to("/responses")) == 1, 5))
        status, _, body = self.json_request("POST", "/v1/chat/completions", CHAT)
        self.assertEqual((status, body["choices"][0]["message"]["content"]), (200, FAKE_TEXT))
        # After --client-write-timeout without progress the proxy drops it and closes the upstream.
        self.assertTrue(self.fake.stream_closed_early.wait(10), "the stalled client's upstream stayed open")
        self.assertTrue(wait_for(lambda: self.proxy.app.upstream.streams() == 0, 3))
        for _ in range(3):  # both upstream threads are free again
            status, _, body = self.json_request("POST", "/v1/chat/completions", CHAT)
            self.assertEqual(status, 200, body)


class HalfCloseAndQueueTest(ProxyTestCase):
    def exchange_half_closed(self, path, body):
        sock = socket.create_connection(("127.0.0.1", self.proxy.port), timeout=5)
        self.addCleanup(sock.close)
        sock.sendall(raw_request(path, body))
        sock.shutdown(socket.SHUT_WR)  # done sending, still reading
        return read_all(sock)

    def test_a_half_closed_client_still_gets_its_answer(self):
        raw = self.exchange_half_closed("/v1/chat/completions", CHAT)
        final = raw[raw.rindex(b"HTTP/1.1 "):]  # after any interim 100 Continue
        self.assertTrue(final.startswith(b"HTTP/1.1 200 "), raw[:300])
        self.assertIn(FAKE_TEXT.encode(), final)
        self.fake.script.append({"text": "streamed", "delay": 0.05})
        raw = self.exchange_half_closed("/v1/messages", {"model": "claude-sonnet-4-5", "max_tokens": 50,
                                                          "stream": True,
                                                          "messages": [{"role": "user", "content": "hi"}]})
        self.assertIn(b"event: message_stop", raw)

    def test_a_request_whose_client_left_before_it_was_sent_is_never_sent(self):
        workers = self.proxy.app.upstream.workers
        release = threading.Event()
        original = workers.submit

        def slow_to_start(job):  # the worker takes its time to pick the call up
            return original(lambda: (release.wait(10), job()))
        with mock.patch.object(workers, "submit", slow_to_start):
            sock = socket.create_connection(("127.0.0.1", self.proxy.port), timeout=5)
            sock.sendall(raw_request("/v1/responses", {"model": "gpt-5.5", "input": "b"}))
            self.assertTrue(wait_for(lambda: workers.busy == 1, 3))
            sock.close()  # leaves before its call went out
            time.sleep(0.3)
            release.set()
            self.assertTrue(wait_for(lambda: workers.busy == 0, 3))
        self.assertEqual(self.fake.requests_to("/responses"), [])
        self.assertEqual(self.request("POST", "/v1/responses", {"model": "gpt-5.5", "input": "c"})[0], 200)


class UpstreamFaultTest(ProxyTestCase):
    def error_of(self, proxy):
        status, _, body = self.json_request("POST", "/v1/chat/completions", CHAT, proxy=proxy)
        self.assertEqual((status, body["error"]["code"]), (502, "upstream_unavailable"), body)
        return body["error"]["message"]

    def test_connect_failures_name_host_and_port_and_are_tried_three_times(self):
        port = closed_port()
        proxy = self.start_proxy(chatgpt_base_url="http://127.0.0.1:%d/backend-api/codex" % port,
                                 default_model="gpt-5.5")
        attempts = []
        original = codex_proxy.ConnectionPool._new_connection

        def counting(pool, *args):
            attempts.append(args[:3])
            return original(pool, *args)
        with mock.patch.object(codex_proxy.ConnectionPool, "_new_connection", counting), \
                mock.patch.object(codex_proxy, "CONNECT_RETRY_DELAYS", (0.01, 0.01)):
            message = self.error_of(proxy)
        self.assertIn("127.0.0.1:%d" % port, message)
        self.assertIn("connection refused", message)
        self.assertEqual(len(attempts), 6)  # the catalog, then the request: three tries each

    def test_a_dns_failure_says_so(self):
        proxy = self.start_proxy(chatgpt_base_url="http://no-such-host.invalid:8443/backend-api/codex",
                                 default_model="gpt-5.5")
        with mock.patch.object(codex_proxy, "CONNECT_RETRY_DELAYS", (0.01, 0.01)):
            message = self.error_of(proxy)
        self.assertIn("no-such-host.invalid:8443", message)
        self.assertIn("DNS", message)

    def test_an_unreachable_proxy_is_named_as_the_proxy(self):
        port = closed_port()
        proxy = self.start_proxy(chatgpt_base_url="https://chatgpt.example:443/backend-api/codex",
                                 proxy="http://127.0.0.1:%d" % port, default_model="gpt-5.5")
        with mock.patch.object(codex_proxy, "CONNECT_RETRY_DELAYS", (0.01, 0.01)):
            message = self.error_of(proxy)
        self.assertIn("the proxy 127.0.0.1:%d" % port, message)
        self.assertIn("chatgpt.example:443", message)

    def test_an_exception_while_sending_closes_that_connection(self):
        closed = []
        original = codex_proxy.http.client.HTTPConnection.close

        def close(conn):
            closed.append(conn)
            original(conn)
        pool = codex_proxy.ConnectionPool(self.proxy.config)
        with mock.patch.object(codex_proxy.http.client.HTTPConnection, "close", close):
            with self.assertRaises(codex_proxy.UpstreamUnavailable) as caught:  # http.client refuses a CR
                pool.request("GET", self.fake.chatgpt_base + "/models", {"X-Bad": "a\rSECRET"}, None)
        self.assertNotIn("SECRET", str(caught.exception))  # a header value may be a key: never quoted
        self.assertEqual(len(closed), 1)
        self.assertEqual(sum(len(conns) for conns in pool.idle.values()), 0)

    def test_client_values_reach_upstream_headers_only_when_safe(self):
        for key in ("\u4e2d", "a\rb", "x" * 400):
            self.fake.reset()
            status, _, body = self.json_request("POST", "/v1/responses",
                                                {"model": "gpt-5.5", "input": "hi", "prompt_cache_key": key})
            self.assertEqual(status, 200, body)
            sent = self.fake.requests_to("/responses")[0]
            self.assertEqual(sent.json["prompt_cache_key"], key)  # in the body, as the client gave it
            self.assertRegex(sent.headers["session_id"], r"^[\x21-\x7e]{1,256}$")
        status, _, body = self.json_request("POST", "/v1/responses", {"model": "gpt-5.5", "input": "hi"},
                                            headers={"session_id": "caf\xe9"})
        self.assertEqual(status, 200, body)


class CredentialRaceTest(ProxyTestCase):
    def expired_login(self, **extra):
        write_auth(self.home, access_token=make_jwt(exp=int(time.time()) - 60), **extra)

    def test_a_hung_token_endpoint_does_not_hang_requests(self):
        proxy = self.start_proxy(refresh_timeout=0.5)
        self.expired_login()
        before = read_auth(self.home)
        self.fake.refresh_delay = 3
        started = time.monotonic()
        status, _, body = self.json_request("POST", "/v1/chat/completions", CHAT, proxy=proxy)
        self.assertLess(time.monotonic() - started, 2.5)
        # The refresh that timed out may have spent the token upstream: the
        # next try is told so (401); either way the client hears of it at once.
        self.assertIn(status, (401, 502, 504), body)
        self.assertIn("refresh" if status != 401 else "codex login", body["error"]["message"])
        self.assertEqual(read_auth(self.home), before)  # untouched
        self.assertEqual(self.request("GET", "/health", proxy=proxy)[0], 200)

    def test_credentials_with_a_line_break_still_work(self):
        write_auth(self.home, access_token="access-1\n")  # pasted by hand
        self.assertEqual(self.request("POST", "/v1/chat/completions", CHAT)[0], 200)
        self.fake.api_keys.add("sk-test-key")
        proxy = self.start_proxy(openai_api_key="sk-test-key\n", auth="apikey")
        self.assertEqual(self.request("POST", "/v1/chat/completions", CHAT, proxy=proxy)[0], 200)
        # Revoked: the 401 refreshes it (the file's token, line break and all, is the stale one).
        self.fake.valid_access_tokens = {"access-2"}
        self.assertEqual(self.request("POST", "/v1/chat/completions", CHAT)[0], 200)
        self.assertEqual(self.fake.refresh_count, 1)

    def test_a_folder_the_refresh_cannot_write_is_a_401_saying_so(self):
        self.expired_login()
        with mock.patch.object(codex_proxy, "atomic_write_json", side_effect=PermissionError(13, "Permission denied")):
            status, _, body = self.json_request("POST", "/v1/chat/completions", CHAT)
        self.assertEqual(status, 401, body)
        self.assertIn("Cannot update the Codex login in %s" % self.home, body["error"]["message"])
        self.assertIn("Permission denied", body["error"]["message"])

    def test_the_retry_after_a_refresh_carries_the_new_logins_account(self):
        self.fake.valid_access_tokens = set()  # access-1 is refused: 401, refresh, retry
        store = self.proxy.app.upstream.auth_store
        original = store.post_json

        def post_while_someone_logs_in(url, body, timeout=None):
            answer = original(url, body, timeout)
            write_auth(self.home, access_token="fresh-login", refresh_token="their-refresh", account_id="acct-2")
            self.fake.valid_access_tokens = {"fresh-login"}
            self.fake.accounts["fresh-login"] = "acct-2"  # the fake refuses the token with another account
            return answer
        store.post_json = post_while_someone_logs_in
        self.assertEqual(self.request("POST", "/v1/chat/completions", CHAT)[0], 200)
        sent = self.fake.requests_to("/backend-api/codex/models")  # the first call: the retry is its
        self.assertEqual([(r.headers["authorization"], r.headers.get("chatgpt-account-id")) for r in sent],
                         [("Bearer access-1", "acct-123"), ("Bearer fresh-login", "acct-2")])

    def test_a_login_made_during_the_refresh_is_kept(self):
        self.expired_login()
        store = self.proxy.app.upstream.auth_store
        original = store.post_json

        def post_while_someone_logs_in(url, body, timeout=None):
            answer = original(url, body, timeout)
            write_auth(self.home, access_token="fresh-login", refresh_token="their-refresh")
            return answer
        store.post_json = post_while_someone_logs_in
        tokens = store.refresh(read_auth(self.home)["tokens"]["access_token"])
        self.assertEqual(tokens["access_token"], "fresh-login")
        self.assertEqual(read_auth(self.home)["tokens"]["refresh_token"], "their-refresh")

    def test_a_symlinked_auth_json_stays_a_link(self):
        target_dir = tempfile.mkdtemp(prefix="codex-real-")
        self.addCleanup(shutil.rmtree, target_dir, True)
        write_auth(target_dir, access_token=make_jwt(exp=int(time.time()) - 60))
        os.chmod(os.path.join(target_dir, "auth.json"), 0o600)
        link = os.path.join(self.home, "auth.json")
        os.remove(link)
        os.symlink(os.path.join(target_dir, "auth.json"), link)
        status, _, body = self.json_request("POST", "/v1/chat/completions", CHAT)
        self.assertEqual(status, 200, body)
        self.assertTrue(os.path.islink(link))
        self.assertEqual(read_auth(target_dir)["tokens"]["access_token"], "access-2")
        self.assertEqual(stat.S_IMODE(os.stat(os.path.join(target_dir, "auth.json")).st_mode), 0o600)


class WindowsFallbackTest(unittest.TestCase):
    def test_auth_json_is_locked_with_msvcrt_where_fcntl_is_missing(self):
        calls = []
        fake_msvcrt = types.SimpleNamespace(LK_NBLCK=2, LK_UNLCK=0,
                                            locking=lambda fd, mode, size: calls.append((mode, size)))
        folder = tempfile.mkdtemp(prefix="codex-lock-")
        self.addCleanup(shutil.rmtree, folder, True)
        with mock.patch.object(codex_proxy, "fcntl", None), mock.patch.object(codex_proxy, "msvcrt", fake_msvcrt):
            with codex_proxy.FileLock(os.path.join(folder, "auth.json.lock")):
                self.assertEqual(calls, [(2, 1)])
        self.assertEqual(calls, [(2, 1), (0, 1)])

    def test_signals_work_where_the_loop_cannot_watch_them(self):
        loop = asyncio.new_event_loop()
        self.addCleanup(loop.close)
        installed = {}

        def refuse(*args):
            raise NotImplementedError

        async def events():  # made on the loop they are waited on (3.8 and 3.9 bind an Event to one)
            return asyncio.Event(), asyncio.Event()
        stop, hurry = loop.run_until_complete(events())
        with mock.patch.object(loop, "add_signal_handler", refuse), \
                mock.patch.object(codex_proxy.signal, "signal", lambda number, handler: installed.update(
                    {number: handler})):
            codex_proxy.install_stop_signals(loop, stop, hurry)
        self.assertIn(signal.SIGINT, installed)
        self.assertIn(signal.SIGTERM, installed)
        installed[signal.SIGINT](signal.SIGINT, None)  # what Ctrl-C does there
        loop.run_until_complete(asyncio.wait_for(stop.wait(), 2))
        installed[signal.SIGTERM](signal.SIGTERM, None)
        loop.run_until_complete(asyncio.wait_for(hurry.wait(), 2))


class OffTheLoopTest(ProxyTestCase):
    def test_counting_a_large_request_runs_in_a_worker_thread(self):
        threads = []
        original = codex_proxy.estimate_request_tokens

        def recording(body):
            threads.append(threading.current_thread())
            return original(body)
        big = "word " * 100000  # 500 KB
        with mock.patch.object(codex_proxy, "estimate_request_tokens", recording):
            status, _, body = self.json_request("POST", "/v1/messages/count_tokens", {
                "model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": big}]})
        self.assertEqual(status, 200, body)
        self.assertNotEqual(threads[0], self.proxy.thread)  # the event loop's thread

    def test_a_failed_catalog_fetch_is_not_repeated_by_every_waiting_request(self):
        catalog_before, self.fake.catalog = self.fake.catalog, None  # makes the fake's /models fail
        original = self.fake._codex_models

        def failing(h, rec):
            h.send_json(503, {"error": {"code": "server_is_overloaded", "message": "busy"}})
        self.fake._routes[("GET", "/backend-api/codex/models")] = failing
        self.addCleanup(self.fake._routes.__setitem__, ("GET", "/backend-api/codex/models"), original)
        results = []
        threads = [threading.Thread(target=lambda: results.append(self.json_request("GET", "/v1/models")[0]))
                   for _ in range(5)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        self.assertEqual(results, [503] * 5)
        self.assertEqual(self.json_request("GET", "/v1/models")[0], 503)
        self.assertEqual(len(self.fake.requests_to("/models")), 1)
        # The failure it keeps is raised anew each time, not with a traceback that grows.
        catalog = self.proxy.app.catalog
        depths = []
        for _ in range(3):
            try:
                catalog.remembered(self.proxy.app.upstream.mode())
            except codex_proxy.UpstreamError as exc:
                depths.append(len(traceback.extract_tb(exc.__traceback__)))
        self.assertEqual(depths, depths[:1] * 3)
        self.fake._routes[("GET", "/backend-api/codex/models")] = original
        self.fake.catalog = catalog_before
        catalog.failures[self.proxy.app.upstream.mode()] = (0, None)  # as if it had failed long ago
        self.assertEqual(self.json_request("GET", "/v1/models")[0], 200)
        self.assertEqual(catalog.failures, {})  # forgotten once a fetch worked


class ClientFaultTest(ProxyTestCase):
    def test_a_client_reset_in_the_middle_of_a_request_is_not_an_error(self):
        with self.assertLogs("codex_proxy", "DEBUG") as logs:
            codex_proxy.log.info("start")  # assertLogs needs one record at least
            sock = socket.create_connection(("127.0.0.1", self.proxy.port), timeout=5)
            sock.sendall(b"POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n{")
            time.sleep(0.1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()  # a reset, not a close
            self.assertTrue(wait_for(lambda: not self.proxy.server.connections, 3))
        self.assertEqual([r.getMessage() for r in logs.records if r.levelno >= logging.ERROR], [])

    def test_what_a_client_sends_during_an_answer_is_kept_within_a_bound(self):
        self.fake.script.append({"text": "x" * 100, "delay": 0.1})  # an answer of ten seconds, left early
        sock = socket.create_connection(("127.0.0.1", self.proxy.port), timeout=5)
        self.addCleanup(sock.close)
        sock.sendall(raw_request("/v1/chat/completions", CHAT))  # one JSON answer: nothing written meanwhile
        sock.settimeout(0.5)
        sent = 0
        try:
            while sent < 8 * 1024 * 1024:
                sent += sock.send(b"x" * 65536)
        except socket.timeout:  # the proxy stopped reading: the kernel's buffers are full
            pass
        buffered = max(len(conn.input.buf) for conn in list(self.proxy.server.connections))
        self.assertLessEqual(buffered, codex_proxy.MAX_HEADER_BYTES + 65536)
        # Past the bound what it sends is dropped, and its leaving still ends the upstream request.
        sock.close()
        self.assertTrue(self.fake.stream_closed_early.wait(5), "the upstream request outlived the client")

    def test_an_upstream_thread_that_cannot_start_is_a_prompt_503(self):
        with mock.patch.object(codex_proxy._thread, "start_new_thread", side_effect=RuntimeError("can't start")):
            status, headers, body = self.json_request("POST", "/v1/chat/completions", CHAT)
        self.assertEqual(status, 503, body)
        self.assertEqual(headers.get("retry-after"), "1")
        self.assertEqual(self.proxy.app.upstream.workers.busy, 0)
        self.assertEqual(self.request("POST", "/v1/chat/completions", CHAT)[0], 200)


class GuardBeforeBodyTest(ProxyTestCase):
    config_overrides = {"api_key": "local-key"}

    def test_a_refused_request_is_answered_before_its_body_is_read(self):
        # A page in the browser could otherwise make the proxy take in 64 MB it then refuses.
        for refused, status in ((b"Origin: https://evil.example\r\nx-api-key: local-key\r\n", 403),
                                (b"Host: evil.example\r\nx-api-key: local-key\r\n", 403),
                                (b"", 401)):
            with self.subTest(refused=refused):
                sock = socket.create_connection(("127.0.0.1", self.proxy.port), timeout=5)
                self.addCleanup(sock.close)
                host = b"" if refused.startswith(b"Host") else b"Host: 127.0.0.1\r\n"
                sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\n" + host + refused
                             + b"Content-Type: application/json\r\nContent-Length: 60000000\r\n\r\n")
                head = sock.recv(65536)  # with no body byte sent: an answer now, or a timeout
                self.assertTrue(head.startswith(b"HTTP/1.1 %d " % status), head[:60])
        self.assertEqual(self.request("POST", "/v1/chat/completions", CHAT, {"x-api-key": "local-key"})[0], 200)


class ChunkSizeTest(unittest.TestCase):
    def test_only_plain_hex_sizes_are_taken(self):
        for size in (b"-5", b"+5", b"5_0", b" ", b"0x5", b"g"):
            reader = codex_proxy.HTTPReader.body_of(chunked=True, length=None)
            with self.assertRaises(codex_proxy.HTTPError, msg=size):
                reader.body_bytes(size + b"\r\nabcde\r\n0\r\n\r\n")
        reader = codex_proxy.HTTPReader.body_of(chunked=True, length=None)
        self.assertEqual(reader.body_bytes(b"5;ext=1\r\nabcde\r\nA\r\n0123456789\r\n0\r\n\r\n"),
                         (b"abcde0123456789", True))


if __name__ == "__main__":
    unittest.main()
