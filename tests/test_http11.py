"""The HTTP/1.1 reader and the connection state, without sockets (as h11's tests do).

Every case of the table is fed whole, byte by byte, and split in two at every
point, then the end of the input; each way must give the same events (body
bytes joined) and the same error."""

import os
import sys
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import codex_proxy  # noqa: E402
from codex_proxy import (BODY_DATA, MESSAGE_END, MESSAGE_HEAD, NEED_DATA, PAUSED, PEER_CLOSED, HTTPError,
                         HTTPReader)  # noqa: E402
from support import splits  # noqa: E402

MAX_BODY = 1024 * 1024  # the readers of this table take bodies up to 1 MB
MAX_CHUNKS = 4  # and up to four chunks


def request(head, body=b""):
    return head.replace(b"\n", b"\r\n") + body


GET = request(b"GET /v1/models HTTP/1.1\nHost: a\n\n")
POST = request(b"POST /v1/responses HTTP/1.1\nHost: a\nContent-Length: 5\n\n", b"hello")
CHUNKED = request(b"POST /v1/responses HTTP/1.1\nHost: a\nTransfer-Encoding: chunked\n\n")
OK_GET = [("head", "GET", "/v1/models", "1.1"), ("end", [])]
OK_POST = [("head", "POST", "/v1/responses", "1.1"), ("data", b"hello"), ("end", [])]
POSTED = ("head", "POST", "/v1/responses", "1.1")


def head_of_size(size):
    """A GET whose head (up to its blank line) takes `size` bytes."""
    head = b"GET / HTTP/1.1\r\n" + (b"X-A: " + b"a" * 1017 + b"\r\n") * 63
    return head + b"X-B: " + b"a" * (size - len(head) - 5) + b"\r\n\r\n"


def refused(status, message):
    return ("error", status, message)


# (name, bytes, the events (then "closed" if the input ended cleanly, or the error))
REQUESTS = [
    ("GET, no body", GET, OK_GET + [("closed",)]),
    ("Content-Length", POST, OK_POST + [("closed",)]),
    ("Content-Length: 0", request(b"POST /v1/responses HTTP/1.1\nContent-Length: 0\n\n"),
     [POSTED, ("end", []), ("closed",)]),
    ("the same Content-Length twice", request(b"POST /v1/responses HTTP/1.1\nContent-Length: 5, 5\n\n", b"hello"),
     OK_POST + [("closed",)]),
    ("HTTP/1.0", b"GET /v1/models HTTP/1.0\r\n\r\n", [("head", "GET", "/v1/models", "1.0"), ("end", []), ("closed",)]),
    ("bare LF", b"GET /v1/models HTTP/1.1\nHost: a\n\n", OK_GET + [("closed",)]),
    ("blank lines before a request", b"\r\n\n\r\n" + GET, OK_GET + [("closed",)]),
    ("chunked, extensions and trailers",
     CHUNKED + b"5;name=value\r\nhello\r\na\r\n, world!!!\r\n0;last\r\nX-Trailer: yes\r\nnot a field\r\n\r\n",
     [POSTED, ("data", b"hello, world!!!"), ("end", [("X-Trailer", "yes")]), ("closed",)]),
    ("chunked, bare LF", CHUNKED + b"5\nhello\n0\n\n", [POSTED, ("data", b"hello"), ("end", []), ("closed",)]),
    ("chunked, upper-case hex", CHUNKED + b"A\r\n0123456789\r\n0\r\n\r\n",
     [POSTED, ("data", b"0123456789"), ("end", []), ("closed",)]),
    ("pipelined", GET + POST + GET, OK_GET + OK_POST + OK_GET + [("closed",)]),
    ("pipelined after chunked", CHUNKED + b"5\r\nhello\r\n0\r\n\r\n" + GET,
     [POSTED, ("data", b"hello"), ("end", [])] + OK_GET + [("closed",)]),
    ("trailing bytes, then the end", GET + b"GET /", OK_GET + [refused(400, "Incomplete message")]),
    ("a body cut short", POST[:-2], [POSTED, ("data", b"hel"), refused(400, "Incomplete message")]),
    ("a chunked body cut short", CHUNKED + b"5\r\nhel", [POSTED, ("data", b"hel"), refused(400, "Incomplete message")]),
    ("a trailer cut short", CHUNKED + b"0\r\nX-T: 1\r\n", [POSTED, refused(400, "Incomplete message")]),
    ("closed at once", b"", [("closed",)]),
]

BAD_REQUESTS = [
    ("bad chunk size %r" % size, CHUNKED + size + b"\r\nhello\r\n0\r\n\r\n",
     [POSTED, refused(400, "Malformed chunk size")])
    for size in (b"-5", b"+5", b"5_0", b"0x5", b"g", b" ", b"", b"1" * 17)
] + [
    ("no CRLF after a chunk", CHUNKED + b"5\r\nhelloXY\r\n0\r\n\r\n",
     [POSTED, ("data", b"hello"), refused(400, "Malformed chunked body")]),
    ("a chunk-size line too long", CHUNKED + b"5;" + b"x" * 4096 + b"\r\nhello\r\n0\r\n\r\n",
     [POSTED, refused(400, "Malformed chunked body")]),
    ("a chunk-size line at the limit", CHUNKED + b"5;" + b"x" * 4093 + b"\r\nhello\r\n0\r\n\r\n",
     [POSTED, ("data", b"hello"), ("end", []), ("closed",)]),
    ("too many chunks", CHUNKED + b"1\r\na\r\n" * 5 + b"0\r\n\r\n",
     [POSTED, ("data", b"aaaa"), refused(400, "Chunked body in too many chunks (more than 4)")]),
    ("a chunked body too large", CHUNKED + b"100001\r\n" + b"x" * 10,
     [POSTED, refused(413, "Request body too large (limit 1 MB)")]),
    ("a Content-Length too large", request(b"POST /v1/responses HTTP/1.1\nContent-Length: 1048577\n\n"),
     [POSTED, refused(413, "Request body too large (limit 1 MB)")]),
    ("a malformed Content-Length", request(b"POST /v1/responses HTTP/1.1\nContent-Length: 5x\n\n", b"hello"),
     [POSTED, refused(400, "Malformed Content-Length")]),
    ("two Content-Lengths", request(b"POST /v1/responses HTTP/1.1\nContent-Length: 5, 6\n\n", b"hello"),
     [POSTED, refused(400, "Malformed Content-Length")]),
    ("Content-Length and chunked", request(b"POST /v1/responses HTTP/1.1\nContent-Length: 5\n"
                                           b"Transfer-Encoding: chunked\n\n"),
     [POSTED, refused(400, "Both Content-Length and Transfer-Encoding given")]),
    ("gzip transfer coding", request(b"POST /v1/responses HTTP/1.1\nTransfer-Encoding: gzip\n\n"),
     [POSTED, refused(501, "Unsupported Transfer-Encoding (only chunked)")]),
    ("obs-fold", request(b"GET /v1/models HTTP/1.1\nX-A: one\n two\n\n"), [refused(400, "Malformed header line")]),
    ("a space before the colon", request(b"GET /v1/models HTTP/1.1\nX-A : one\n\n"),
     [refused(400, "Malformed header line")]),
    ("a control character", request(b"GET /v1/models HTTP/1.1\nX-A: o\x01ne\n\n"),
     [refused(400, "Control character in the value of header X-A")]),
    ("a malformed request line", request(b"GET /v1/models\n\n"), [refused(400, "Malformed request line")]),
    ("HTTP/2.0", request(b"GET /v1/models HTTP/2.0\n\n"), [refused(505, "HTTP version not supported")]),
    ("a request line at the limit", request(b"GET /" + b"a" * 8178 + b" HTTP/1.1\n\n"),
     [("head", "GET", "/" + "a" * 8178, "1.1"), ("end", []), ("closed",)]),
    ("a request line too long", request(b"GET /" + b"a" * 8179 + b" HTTP/1.1\n\n"),
     [refused(431, "Request line too long (limit 8192 bytes)")]),
    ("a request line too long, never ended", b"GET /" + b"a" * 9000,
     [refused(431, "Request line too long (limit 8192 bytes)")]),
    ("too many header fields", request(b"GET /v1/models HTTP/1.1\n" + b"X-A: 1\n" * 129 + b"\n"),
     [refused(431, "Too many header fields (limit 128)")]),
    ("header fields too large", request(b"GET /v1/models HTTP/1.1\n" + (b"X-A: " + b"a" * 999 + b"\n") * 66 + b"\n"),
     [refused(431, "Request headers too large (limit 65536 bytes)")]),
    ("header fields at the limit", head_of_size(65536), [("head", "GET", "/", "1.1"), ("end", []), ("closed",)]),
    ("header fields one byte over", head_of_size(65537),
     [refused(431, "Request headers too large (limit 65536 bytes)")]),
]

# (name, chunked, length, bytes, the events; "trailing": bytes left after the end of the body)
BODIES = [
    ("SSE in small chunks", True, None,
     b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in [b"data: {\"delta\":\"hi\"}\n\n"] * 6) + b"0\r\n\r\n",
     [("data", b"data: {\"delta\":\"hi\"}\n\n" * 6), ("end", [])]),
    ("chunked, then trailing bytes", True, None, b"3\r\nabc\r\n0\r\n\r\nextra",
     [("data", b"abc"), ("end", []), ("trailing", b"extra")]),
    ("Content-Length, then trailing bytes", False, 3, b"abcdef", [("data", b"abc"), ("end", []), ("trailing", b"def")]),
    ("Content-Length: 0", False, 0, b"", [("end", [])]),
    ("to the end of the connection", False, None, b"abcdef", [("data", b"abcdef"), ("end", [])]),
    ("many chunks (no limit on an answer)", True, None, b"1\r\na\r\n" * 2000 + b"0\r\n\r\n",
     [("data", b"a" * 2000), ("end", [])]),
    ("broken off", True, None, b"5\r\nab", [("data", b"ab"), refused(400, "Incomplete message")]),
    ("malformed", True, None, b"5\r\nabcdeX\r\n", [("data", b"abcde"), refused(400, "Malformed chunked body")]),
]


def drain(reader, events, body_only):
    """Read events until the reader needs bytes; False once the input is over (closed, an error, a body's end)."""
    while True:
        try:
            kind, value = reader.next_event()
        except HTTPError as exc:
            events.append(refused(exc.status, exc.message))
            return False
        if kind is NEED_DATA:
            return True
        if kind is MESSAGE_HEAD:
            events.append(("head", value.method, value.target, value.version))
        elif kind is BODY_DATA:
            assert value, "an empty DATA event"
            if events and events[-1][0] == "data":
                events[-1] = ("data", events[-1][1] + value)
            else:
                events.append(("data", value))
        elif kind is MESSAGE_END:
            events.append(("end", value.pairs))
        elif kind is PAUSED:
            if body_only:  # what comes after a body is left in the reader
                return not reader.eof
            reader.next_message()
        else:
            assert kind is PEER_CLOSED, kind
            events.append(("closed",))
            return False


def run(make_reader, pieces, body_only=False):
    reader, events = make_reader(), []
    for piece in list(pieces) + [b""]:  # b"": the end of the input
        reader.feed(piece)
        if not drain(reader, events, body_only):
            break
    if body_only and reader.buf and events[-1][0] == "end":
        events.append(("trailing", reader.buf))
    for at, event in enumerate(events):  # an error message is matched by its start
        if event[0] == "error":
            events[at] = event[:2] + (event[2][:len("Incomplete message")],) \
                if event[2].startswith("Incomplete message") else event
    return events


class ReaderTableTest(unittest.TestCase):
    def check(self, make_reader, cases, body_only=False):
        for name, data, expected in cases:
            with self.subTest(name):
                self.assertEqual(run(make_reader, [data], body_only), expected)
                for way, pieces in splits(data):
                    got = run(make_reader, pieces, body_only)
                    if got != expected:
                        self.fail("%s, fed %s: %r" % (name, way, got[-3:]))

    def test_requests(self):
        self.check(lambda: HTTPReader(MAX_BODY, MAX_CHUNKS), REQUESTS)

    def test_bad_requests_and_limits(self):
        self.check(lambda: HTTPReader(MAX_BODY, MAX_CHUNKS), BAD_REQUESTS)

    def test_answer_bodies(self):
        for name, chunked, length, data, expected in BODIES:
            self.check(lambda: HTTPReader.body_of(chunked, length), [(name, data, expected)], body_only=True)

    def test_answer_bodies_read_as_the_upstream_reader_does(self):
        # BodyReader calls body_bytes (feed and read at once, with a shortcut for the common
        # case), not next_event: the same table, at every split, must give the same bytes, the
        # same end, and the same failure (where the bytes read before it are a part of them: a
        # failed answer is an error to its client whatever came before).
        for name, chunked, length, data, expected in BODIES:
            body = b"".join(event[1] for event in expected if event[0] == "data")
            outcome = "failed" if expected[-1][0] == "error" else "ended" if expected[-1][0] != "data" else "open"
            for way, pieces in splits(data):
                with self.subTest(name=name, way=way):
                    got, got_outcome = body_bytes_run(chunked, length, pieces)
                    self.assertEqual(got_outcome, outcome)
                    self.assertTrue(body.startswith(got) if outcome == "failed" else got == body, got)


def body_bytes_run(chunked, length, pieces):
    """(the body bytes, "ended" or "failed" or "open") that HTTPReader.body_bytes reads from
    `pieces`, then the end of the input."""
    reader, out = HTTPReader.body_of(chunked, length), []
    for piece in list(pieces) + [b""]:
        try:
            data, ended = reader.body_bytes(piece)
        except HTTPError:
            return b"".join(out), "failed"
        out.append(data)
        if ended:
            return b"".join(out), "ended"
    return b"".join(out), "open"


class ReaderTest(unittest.TestCase):
    def test_the_body_is_framed_once_the_head_is_accepted(self):
        # Between the head and the body the server runs its guard: a refused request's body is never framed.
        reader = HTTPReader(MAX_BODY, MAX_CHUNKS)
        reader.feed(request(b"POST /v1/responses HTTP/1.1\nContent-Length: 99999999\n\n"))
        self.assertEqual(reader.next_event()[0], MESSAGE_HEAD)
        with self.assertRaises(HTTPError) as caught:
            reader.start_body()
        self.assertEqual((caught.exception.status, caught.exception.target), (413, "/v1/responses"))

    def test_start_body_says_whether_a_body_comes(self):
        for data, coming in ((GET, False), (POST, True), (CHUNKED, True)):
            reader = HTTPReader(MAX_BODY, MAX_CHUNKS)
            reader.feed(data)
            reader.next_event()
            self.assertEqual(reader.start_body(), coming, data)

    def test_waiting_skips_blank_lines_and_a_lone_cr(self):
        reader = HTTPReader()
        for piece, waiting in ((b"\r\n", True), (b"\r", True), (b"\nG", False)):
            reader.feed(piece)
            self.assertEqual(reader.waiting(), waiting, piece)
        self.assertEqual(reader.buf, b"G")

    def test_an_answer_body_in_one_piece_is_not_copied(self):
        reader = HTTPReader.body_of(False, None)
        data = b"x" * 100
        self.assertIs(reader.body_bytes(data)[0], data)

    def test_discard_drops_what_was_fed(self):
        reader = HTTPReader()
        reader.feed(GET + GET)
        reader.next_event()
        reader.discard()
        self.assertEqual(reader.buf, b"")

    def test_a_long_header_line_is_read_in_linear_time(self):
        # The header line's pattern once tried the rest of a line at each of its characters: this took 12 s.
        reader = HTTPReader()
        reader.feed(b"GET / HTTP/1.1\r\nX-A: a" + b" " * 60000 + b"b \t\r\n\r\n")
        started = time.monotonic()
        kind, head = reader.next_event()
        self.assertLess(time.monotonic() - started, 1.0)
        self.assertEqual((kind, head.headers.get("x-a")), (MESSAGE_HEAD, "a" + " " * 60000 + "b"))


class ConnectionStateTest(unittest.TestCase):
    """Every keep-alive decision, from what the connection tells its state."""

    def exchange(self, version, connection=None, streamed=False, steps=(), finished=True):
        state = codex_proxy.ConnectionState()
        self.assertTrue(state.idle())
        state.request_begun()
        self.assertEqual(state.phase, state.IN_REQUEST)
        self.assertFalse(state.idle())
        fields = [("Connection", connection)] if connection else []
        state.head_received(codex_proxy.Request("GET", "/", version, codex_proxy.Headers(fields)))
        self.assertEqual(state.phase, state.IN_REQUEST)
        chunked = state.streamed(codex_proxy.Request("GET", "/", version, codex_proxy.Headers(fields))) \
            if streamed else None
        for step in steps:
            getattr(state, step)()
        said = state.keep_alive
        go_on = state.answered(finished)
        self.assertEqual(state.phase, state.IDLE if go_on else state.CLOSED)
        return said, go_on, chunked

    def test_the_table(self):
        cases = [  # (version, Connection, streamed, steps, finished) -> (head says keep-alive, go on, chunked)
            (("1.1", None, False, (), True), (True, True, None)),
            (("1.1", "close", False, (), True), (False, False, None)),
            (("1.1", "Keep-Alive, Upgrade", False, (), True), (True, True, None)),
            (("1.1", "foo, CLOSE", False, (), True), (False, False, None)),
            (("1.0", None, False, (), True), (False, False, None)),
            (("1.0", "keep-alive", False, (), True), (True, True, None)),
            (("1.0", "keep-alive", True, (), True), (False, False, False)),  # ends with the connection
            (("1.1", None, True, (), True), (True, True, True)),
            (("1.1", "close", True, (), True), (False, False, False)),  # its head says no chunking either
            (("1.1", None, False, ("close_after_answer",), True), (False, False, None)),  # draining, sent on
            (("1.1", None, False, ("hung_up",), True), (False, False, None)),
            (("1.1", None, False, (), False), (True, False, None)),  # the answer was cut short
        ]
        for given, expected in cases:
            with self.subTest(given):
                self.assertEqual(self.exchange(*given), expected)

    def test_a_refused_request_closes_the_connection(self):
        # An HTTP-level refusal comes before (or in the middle of) the body: what follows cannot be trusted.
        state = codex_proxy.ConnectionState()
        state.request_begun()
        state.close_after_answer()
        self.assertFalse(state.keep_alive)
        self.assertFalse(state.answered(True))

    def test_closing_is_kept_across_the_next_head(self):
        # Shutdown marks a connection while its head is read: the head it then reads must not undo that.
        state = codex_proxy.ConnectionState()
        state.request_begun()
        state.close_after_answer()
        state.head_received(codex_proxy.Request("GET", "/", "1.1", codex_proxy.Headers()))
        self.assertFalse(state.keep_alive)

    def test_a_client_gone_is_remembered(self):
        state = codex_proxy.ConnectionState()
        state.hung_up()
        self.assertTrue(state.client_gone)
        state.closed()
        self.assertEqual(state.phase, state.CLOSED)


if __name__ == "__main__":
    unittest.main()
