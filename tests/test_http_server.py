"""The hand-written HTTP/1.1 server: parsing, limits, keep-alive, local auth."""

import gzip
import json
import re
import socket
import time
import unittest

from support import ProxyTestCase, codex_proxy, read_all


def split_responses(raw):
    """Status codes of the HTTP responses in `raw` (a keep-alive byte stream)."""
    return [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", raw)]


def body_of(raw):
    return json.loads(raw.split(b"\r\n\r\n", 1)[1].decode())


class ParserTests(ProxyTestCase):
    config_overrides = {"max_body_bytes": 4096, "header_timeout": 0.4}

    def test_keep_alive_serves_sequential_requests_on_one_connection(self):
        raw = self.raw_exchange(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                                b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                                b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        self.assertEqual(split_responses(raw), [200, 200, 200])
        self.assertIn(b"Connection: close", raw.rsplit(b"HTTP/1.1 ", 1)[1])

    def test_connection_close_closes(self):
        sock = socket.create_connection(("127.0.0.1", self.proxy.port), timeout=5)
        self.addCleanup(sock.close)
        sock.sendall(b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n")
        self.assertEqual(split_responses(read_all(sock, 5)), [200])
        self.assertEqual(sock.recv(1), b"")  # closed by the proxy (a read that timed out raises)

    def test_a_stream_to_a_closing_http_1_1_client_is_not_chunked(self):
        # With Connection: close the stream ends with the connection: its head says no
        # Transfer-Encoding, so its body must not be chunk-framed either (it once was).
        body = json.dumps({"model": "gpt-5.5", "input": "hi", "stream": True}).encode()
        raw = self.raw_exchange(b"POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                                b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        head, _, rest = raw.partition(b"\r\n\r\n")
        self.assertIn(b"HTTP/1.1 200", head)
        self.assertIn(b"Connection: close", head)
        self.assertNotIn(b"transfer-encoding", head.lower())
        self.assertTrue(rest.startswith(b"event: response.created\n"), rest[:80])
        self.assertIn(b"event: response.completed\n", rest)

    def test_http_1_0_closes_by_default(self):
        raw = self.raw_exchange(b"GET /health HTTP/1.0\r\n\r\n")
        self.assertEqual(split_responses(raw), [200])
        self.assertIn(b"Connection: close", raw)

    def test_chunked_request_body(self):
        body = json.dumps({"model": "gpt-5.5", "input": "chunked hello"}).encode()
        chunks = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(body[i:i + 7]), body[i:i + 7]) for i in range(0, len(body), 7))
        raw = self.raw_exchange(b"POST /v1/responses HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"
                                b"Content-Type: application/json\r\nConnection: close\r\n\r\n"
                                + chunks + b"0\r\nX-Trailer: 1\r\n\r\n")
        self.assertEqual(split_responses(raw), [200])
        sent = self.fake.requests_to("/responses")[-1].json
        self.assertEqual(sent["input"][0]["content"][0]["text"], "chunked hello")

    def test_expect_100_continue(self):
        body = json.dumps({"model": "gpt-5.5", "input": "hi"}).encode()
        sock = socket.create_connection(("127.0.0.1", self.proxy.port), timeout=5)
        self.addCleanup(sock.close)
        sock.sendall(b"POST /v1/responses HTTP/1.1\r\nContent-Length: %d\r\nExpect: 100-continue\r\n"
                     b"Connection: close\r\n\r\n" % len(body))
        self.assertTrue(sock.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n"))
        sock.sendall(body)
        self.assertEqual(split_responses(read_all(sock, 5)), [200])

    def test_header_block_too_large_is_431(self):
        raw = self.raw_exchange(b"GET /health HTTP/1.1\r\n" + b"X-Big: " + b"a" * 70000 + b"\r\n\r\n")
        self.assertEqual(split_responses(raw), [431])
        self.assertIn("too large", body_of(raw)["error"]["message"])

    def test_request_line_too_long_is_431(self):
        raw = self.raw_exchange(b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n")
        self.assertEqual(split_responses(raw), [431])

    def test_body_over_limit_is_413_before_reading_it(self):
        raw = self.raw_exchange(b"POST /v1/responses HTTP/1.1\r\nContent-Length: 5000\r\n\r\n")
        self.assertEqual(split_responses(raw), [413])
        self.assertIn("too large", body_of(raw)["error"]["message"])

    def test_a_client_still_sending_its_body_reads_the_413(self):
        # Closing with the body's bytes unread would send a reset, and the client would see that
        # instead of the answer: the proxy stops writing, then reads and drops what comes a while.
        sock = socket.create_connection(("127.0.0.1", self.proxy.port), timeout=5)
        self.addCleanup(sock.close)
        try:
            sock.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 4000000\r\n\r\n"
                         + b"x" * 4000000)
        except OSError:  # the proxy may stop reading before all of it is sent
            pass
        try:
            raw = read_all(sock, 5)
        except ConnectionResetError:
            self.fail("the client got a reset, not the 413")
        self.assertEqual(split_responses(raw), [413])
        self.assertEqual(body_of(raw)["error"]["type"], "request_too_large")

    def test_limit_errors_on_anthropic_paths_use_the_anthropic_shape(self):
        raw = self.raw_exchange(b"POST /v1/messages?beta=true HTTP/1.1\r\nContent-Length: 5000\r\n\r\n")
        self.assertEqual(split_responses(raw), [413])
        self.assertEqual(body_of(raw)["error"]["type"], "request_too_large")

    def test_chunked_body_over_limit_is_413(self):
        chunk = b"a" * 3000
        raw = self.raw_exchange(b"POST /v1/responses HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                                + (b"%x\r\n%s\r\n" % (len(chunk), chunk)) * 2 + b"0\r\n\r\n")
        self.assertEqual(split_responses(raw), [413])

    def test_malformed_requests_are_400_and_server_survives(self):
        for bad in (b"GARBAGE\r\n\r\n",
                    b"GET /health HTTP/1.1\r\nNo colon here\r\n\r\n",
                    b"POST /v1/responses HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
                    b"POST /v1/responses HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                    b"POST /v1/responses HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                    b"GET /health HTTP/1.1\r\n folded: header\r\n\r\n"):
            raw = self.raw_exchange(bad)
            self.assertEqual(split_responses(raw), [400], bad)
            self.assertEqual(body_of(raw)["error"]["type"], "invalid_request_error")
        self.assertEqual(self.request("GET", "/health")[0], 200)

    def test_unsupported_transfer_encoding_and_version(self):
        self.assertEqual(split_responses(self.raw_exchange(
            b"POST /v1/responses HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n")), [501])
        self.assertEqual(split_responses(self.raw_exchange(b"GET /health HTTP/2.0\r\n\r\n")), [505])

    def test_slow_headers_get_408_and_close(self):
        sock = socket.create_connection(("127.0.0.1", self.proxy.port), timeout=5)
        self.addCleanup(sock.close)
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        started = time.monotonic()
        data = read_all(sock, 5)
        self.assertEqual(split_responses(data), [408])
        self.assertLess(time.monotonic() - started, 3)

    def test_gzip_request_bodies_are_decoded(self):
        body = gzip.compress(json.dumps({"model": "gpt-5.5", "input": "zipped hello"}).encode())
        status, _, answer = self.json_request("POST", "/v1/responses", body, {"Content-Encoding": "gzip"})
        self.assertEqual((status, answer["status"]), (200, "completed"))
        self.assertEqual(self.fake.requests_to("/responses")[-1].json["input"][0]["content"][0]["text"],
                         "zipped hello")
        answer = self.json_answer("POST", "/v1/responses", b"not gzip", {"Content-Encoding": "gzip"}, status=400)
        self.assertIn("corrupt", answer["error"]["message"])
        self.json_answer("POST", "/v1/responses", b"{}", {"Content-Encoding": "zstd"}, status=415)
        bomb = gzip.compress(b" " * 10000)  # over this test's 4 KB limit once inflated
        self.json_answer("POST", "/v1/responses", bomb, {"Content-Encoding": "gzip"}, status=413)

    def test_bad_json_is_400_in_the_openai_shape(self):
        body = self.json_answer("POST", "/v1/responses", b"{not json", status=400)
        self.assertEqual(set(body["error"]), {"message", "type", "param", "code"})
        self.assertIn("not valid JSON", body["error"]["message"])

    def test_anthropic_paths_answer_errors_in_the_anthropic_shape(self):
        body = self.json_answer("GET", "/v1/messages/nothing-here", status=404)
        self.assertEqual(body["type"], "error")
        self.assertEqual(body["error"]["type"], "not_found_error")

    def test_unknown_route_and_wrong_method(self):
        self.assertEqual(self.json_request("GET", "/v1/nothing")[0], 404)
        body = self.json_answer("POST", "/v1/models", {}, status=405)
        self.assertIn("not allowed", body["error"]["message"])

    def test_paths_without_v1_and_query_strings(self):
        self.assertEqual(self.json_request("GET", "/models?beta=true")[0], 200)
        self.assertEqual(self.json_request("GET", "/v1/models/?x=1")[0], 200)
        status, _, body = self.json_request("POST", "/responses?beta=true", {"model": "gpt-5.5", "input": "hi"})
        self.assertEqual((status, body["status"]), (200, "completed"))


class LocalApiKeyTests(ProxyTestCase):
    config_overrides = {"api_key": "local-secret"}

    def test_every_endpoint_but_health_needs_the_key(self):
        self.assertEqual(self.request("GET", "/health")[0], 200)
        body = self.json_answer("GET", "/v1/models", status=401)
        self.assertIn("API key", body["error"]["message"])
        self.assertEqual(self.request("GET", "/v1/models", headers={"Authorization": "Bearer wrong"})[0], 401)
        self.assertEqual(self.request("GET", "/v1/models", headers={"Authorization": "Bearer local-secret"})[0], 200)
        self.assertEqual(self.request("GET", "/v1/models", headers={"x-api-key": "local-secret"})[0], 200)

    def test_anthropic_401_shape(self):
        body = self.json_answer("POST", "/v1/messages", {}, status=401)
        self.assertEqual(body["error"]["type"], "authentication_error")


class ChunkCountTests(ProxyTestCase):
    def test_a_body_in_too_many_chunks_is_refused(self):
        # One-byte chunks cost the loop time a byte and memory a chunk: past MAX_CHUNKS, a 400.
        tiny = b"1\r\n \r\n" * (codex_proxy.MAX_CHUNKS + 1)
        raw = self.raw_exchange(b"POST /v1/responses HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + tiny
                                + b"0\r\n\r\n")
        self.assertEqual(split_responses(raw), [400])
        self.assertIn("too many chunks", body_of(raw)["error"]["message"])


class HeadersTests(unittest.TestCase):
    def test_headers_are_case_insensitive_and_repeatable(self):
        headers = codex_proxy.Headers([("X-A", "1"), ("x-a", "2"), ("Content-Type", "text/plain")])
        self.assertEqual(headers.get_all("X-a"), ["1", "2"])
        self.assertEqual(headers.get("CONTENT-TYPE"), "text/plain")
        self.assertIn("content-type", headers)
        self.assertIsNone(headers.get("missing"))


class SSETests(unittest.TestCase):
    def test_parser_handles_split_crlf_comments_and_multiline_data(self):
        parser = codex_proxy.SSEParser()
        stream = b": comment\r\nevent: a\r\ndata: {\"x\":\r\ndata: 1}\r\n\r\nevent: b\ndata: two\n\n"
        events = []
        for i in range(len(stream)):  # one byte at a time: every split point
            events += parser.feed(stream[i:i + 1])
        self.assertEqual(events, [("a", '{"x":\n1}'), ("b", "two")])

    def test_a_long_event_in_many_chunks_is_joined_once(self):
        data = json.dumps({"type": "response.completed", "text": "x" * 200000}).encode()
        raw = b"event: response.completed\ndata: " + data + b"\n\nevent: e\ndata: {}\n\n"
        for size in (1, 7, 4096):
            with self.subTest(chunk=size):
                parser, events = codex_proxy.SSEParser(), []
                pieces = [raw[i:i + size] for i in range(0, len(raw), size)]
                for n, piece in enumerate(pieces):
                    events += parser.feed(piece)
                    if 1000 < n * size and (n + 1) * size < len(data):  # inside the long event: kept, not joined
                        self.assertGreater(len(parser.more), 0)
                self.assertEqual(events, [("response.completed", data.decode()), ("e", "{}")])
                self.assertEqual((parser.buf, parser.more), (b"", []))

    def test_writer_round_trips_through_the_parser(self):
        raw = codex_proxy.sse_event({"type": "x", "text": "line1\nline2"}, "x") + codex_proxy.sse_event("[DONE]")
        self.assertEqual(raw.count(b"\n\n"), 2)
        events = codex_proxy.SSEParser().feed(raw)
        self.assertEqual(json.loads(events[0][1])["text"], "line1\nline2")
        self.assertEqual(events[1], (None, "[DONE]"))


if __name__ == "__main__":
    unittest.main()
