"""The WebSocket protocol (RFC 6455) without sockets: the handshake, the reader of a client's
frames, the server's frame writer.

Every case of the reader's table is fed whole, byte by byte, and split in two at every point;
each way must give the same events. Client frames are built here (masked_frame: masking is
the client's job, so codex_proxy.py has no masking encoder); where the `websockets` package is
installed, its sans-IO client speaks to the same functions.

Run: python3 -m unittest tests.test_websocket -v
"""

import os
import struct
import time
import unittest

from support import MASK, codex_proxy, masked, masked_frame, optional_module, splits
from codex_proxy import (CLOSE_NO_STATUS, OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT,
                         BinaryMessage, CloseReceived, Ping, Pong, ProtocolFailure, TextMessage, WebSocketReader,
                         WebSocketRefused, close_frame, parse_request_head, ping_frame, pong_frame, text_frame,
                         websocket_accept, websocket_frame, websocket_upgrade)

websockets = optional_module("websockets")  # the core suite runs without it
if websockets is not None:
    from websockets.client import ClientProtocol
    from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
    from websockets.frames import Opcode
    from websockets.http11 import Response
    from websockets.protocol import State
    from websockets.uri import parse_uri

MAX_MESSAGE = 70000  # the readers of the table take messages up to this size


def text(value, fin=True, **options):
    return masked_frame(OP_TEXT, value.encode("utf-8"), fin, **options)


def continuation(payload, fin=True):
    return masked_frame(OP_CONTINUATION, payload, fin)


def close(code, reason=b""):
    return masked_frame(OP_CLOSE, struct.pack("!H", code) + reason)


def failure(code, reason):
    return ProtocolFailure(code, reason)


PROTOCOL_ERROR, INVALID_DATA, TOO_BIG = 1002, 1007, 1009
SIXTY_FOUR_K = bytes(range(256)) * 256  # 65536 bytes

# (name, bytes, the events)
FRAMES = [
    ("a masked text", text("Hello"), [TextMessage("Hello")]),
    ("RFC 6455 5.7's masked Hello", b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58", [TextMessage("Hello")]),
    ("a zero mask", text("Hello", mask=b"\0\0\0\0"), [TextMessage("Hello")]),
    ("a mask of ones", masked_frame(OP_BINARY, b"\0\xff" * 7, mask=b"\xff\xff\xff\xff"),
     [BinaryMessage(b"\0\xff" * 7)]),
    ("an empty text", text(""), [TextMessage("")]),
    ("UTF-8 text", text("h\u00e9llo \u2603 \U0001F600"), [TextMessage("h\u00e9llo \u2603 \U0001F600")]),
    ("a binary message", masked_frame(OP_BINARY, b"\0\1\2"), [BinaryMessage(b"\0\1\2")]),
    ("ping and pong", masked_frame(OP_PING, b"p1") + masked_frame(OP_PONG, b""), [Ping(b"p1"), Pong(b"")]),
    ("messages one after another", text("a") + text("b") + masked_frame(OP_BINARY, b"c"),
     [TextMessage("a"), TextMessage("b"), BinaryMessage(b"c")]),
] + [
    ("a %d-byte payload" % size, masked_frame(OP_BINARY, SIXTY_FOUR_K[:size]), [BinaryMessage(SIXTY_FOUR_K[:size])])
    for size in (125, 126, 65535, 65536)
] + [
    ("a 65537-byte text", text("x" * 65537), [TextMessage("x" * 65537)]),
    ("a 125-byte ping", masked_frame(OP_PING, b"p" * 125), [Ping(b"p" * 125)]),
]

FRAGMENTS = [
    ("text in 3 frames, a ping between them",
     text("Hel", fin=False) + masked_frame(OP_PING, b"?") + continuation(b"lo, ", fin=False) + continuation(b"world"),
     [Ping(b"?"), TextMessage("Hello, world")]),
    ("a character split across fragments",
     masked_frame(OP_TEXT, "\u2603".encode("utf-8")[:1], fin=False) + continuation("\u2603".encode("utf-8")[1:]),
     [TextMessage("\u2603")]),
    ("binary in 2 frames", masked_frame(OP_BINARY, b"ab", fin=False) + continuation(b"cd"), [BinaryMessage(b"abcd")]),
    ("empty fragments", text("", fin=False) + continuation(b"", fin=False) + continuation(b""), [TextMessage("")]),
    ("a pong and a close between fragments", text("a", fin=False) + masked_frame(OP_PONG, b"") + close(1000),
     [Pong(b""), CloseReceived(1000)]),
    ("a continuation and no message begun", continuation(b"x"),
     [failure(PROTOCOL_ERROR, "A continuation frame, and no message was begun.")]),
    ("a continuation after a whole message", text("a") + continuation(b"x"),
     [TextMessage("a"), failure(PROTOCOL_ERROR, "A continuation frame, and no message was begun.")]),
    ("a new message before the fragmented one ended", text("a", fin=False) + text("b"),
     [failure(PROTOCOL_ERROR, "A new message before the fragmented one ended.")]),
    ("binary inside a text message", text("a", fin=False) + masked_frame(OP_BINARY, b"b"),
     [failure(PROTOCOL_ERROR, "A new message before the fragmented one ended.")]),
]

CONTROL = "A control frame's payload over 125 bytes."
BROKEN = [
    ("unmasked", text("Hello", mask=None), [failure(PROTOCOL_ERROR, "An unmasked frame (a client masks every frame).")]),
    ("unmasked, after a message", text("a") + text("b", mask=None),
     [TextMessage("a"), failure(PROTOCOL_ERROR, "An unmasked frame (a client masks every frame).")]),
    ("a ping of 126 bytes", masked_frame(OP_PING, b"p" * 126), [failure(PROTOCOL_ERROR, CONTROL)]),
    ("a close of 126 bytes", close(1000, b"r" * 124), [failure(PROTOCOL_ERROR, CONTROL)]),
    ("a pong of 200 bytes, 2-byte length", masked_frame(OP_PONG, b"p" * 200), [failure(PROTOCOL_ERROR, CONTROL)]),
    ("a fragmented ping", masked_frame(OP_PING, b"p", fin=False), [failure(PROTOCOL_ERROR, "A fragmented control frame.")]),
    ("a fragmented close", masked_frame(OP_CLOSE, b"", fin=False),
     [failure(PROTOCOL_ERROR, "A fragmented control frame.")]),
    ("a 16-bit length for 125 bytes", masked_frame(OP_BINARY, b"x" * 125, length_bytes=2),
     [failure(PROTOCOL_ERROR, "A frame length not in the fewest bytes it fits.")]),
    ("a 64-bit length for 65535 bytes", masked_frame(OP_BINARY, b"x" * 65535, length_bytes=8),
     [failure(PROTOCOL_ERROR, "A frame length not in the fewest bytes it fits.")]),
    ("a 64-bit length for 5 bytes", masked_frame(OP_BINARY, b"x" * 5, length_bytes=8),
     [failure(PROTOCOL_ERROR, "A frame length not in the fewest bytes it fits.")]),
    ("a 64-bit length with its top bit set", masked_frame(OP_BINARY, b"", length=1 << 63)[:10],
     [failure(PROTOCOL_ERROR, "A frame length with its most significant bit set.")]),
    ("invalid UTF-8", masked_frame(OP_TEXT, b"\xc3\x28"), [failure(INVALID_DATA, "A text message that is not UTF-8.")]),
    ("UTF-8 cut short at the message's end", masked_frame(OP_TEXT, b"ok\xe2\x98"),
     [failure(INVALID_DATA, "A text message that is not UTF-8.")]),
    ("invalid UTF-8 across fragments", masked_frame(OP_TEXT, b"\xe2", fin=False) + continuation(b"\x28\xa1"),
     [failure(INVALID_DATA, "A text message that is not UTF-8.")]),
    ("a surrogate in UTF-8", masked_frame(OP_TEXT, b"\xed\xa0\x80"),
     [failure(INVALID_DATA, "A text message that is not UTF-8.")]),
    ("invalid UTF-8 in a binary message is no matter", masked_frame(OP_BINARY, b"\xc3\x28"),
     [BinaryMessage(b"\xc3\x28")]),
    ("a message of the largest size", masked_frame(OP_BINARY, b"x" * MAX_MESSAGE), [BinaryMessage(b"x" * MAX_MESSAGE)]),
    # Only the frame's header: the failure comes before any of its payload.
    ("too big, by its header alone", masked_frame(OP_BINARY, b"", length=MAX_MESSAGE + 1)[:10],
     [failure(TOO_BIG, "A message over 70000 bytes.")]),
    ("too big, a 64-bit length", masked_frame(OP_BINARY, b"", length=1 << 40)[:10],
     [failure(TOO_BIG, "A message over 70000 bytes.")]),
    ("too big, in fragments", masked_frame(OP_BINARY, b"x" * 40000, fin=False)
     + masked_frame(OP_CONTINUATION, b"", length=30001)[:4], [failure(TOO_BIG, "A message over 70000 bytes.")]),
    ("fragments of the largest size", masked_frame(OP_BINARY, b"x" * 40000, fin=False) + continuation(b"y" * 30000),
     [BinaryMessage(b"x" * 40000 + b"y" * 30000)]),
    ("nothing is read after a failure", text("a", mask=None) + text("b"),
     [failure(PROTOCOL_ERROR, "An unmasked frame (a client masks every frame).")]),
] + [
    ("RSV bits %d" % rsv, text("a", rsv=rsv), [failure(PROTOCOL_ERROR, "RSV bits set, and no extension was agreed.")])
    for rsv in (1, 2, 4, 7)
] + [
    ("opcode %#x" % opcode, masked_frame(opcode, b""), [failure(PROTOCOL_ERROR, "Unknown opcode %#x." % opcode)])
    for opcode in (0x3, 0x7, 0xB, 0xF)
]

CLOSES = [
    ("a close with a code and a reason", close(1000, b"bye") + text("after"), [CloseReceived(1000, "bye")]),
    ("a close with a UTF-8 reason", close(1001, "\u00e0 plus".encode("utf-8")), [CloseReceived(1001, "\u00e0 plus")]),
    ("a close without a code", masked_frame(OP_CLOSE, b""), [CloseReceived(CLOSE_NO_STATUS, "")]),
    ("a close of 1 byte", masked_frame(OP_CLOSE, b"\x03"),
     [failure(PROTOCOL_ERROR, "A close frame's payload of 1 byte (a code takes 2).")]),
    ("a close reason not UTF-8", close(1000, b"\xff"), [failure(INVALID_DATA, "A close reason that is not UTF-8.")]),
] + [
    ("close code %d" % code, close(code), [CloseReceived(code)])
    for code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999)
] + [
    ("invalid close code %d" % code, close(code), [failure(PROTOCOL_ERROR, "Invalid close code %d." % code)])
    for code in (0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535)
]


def read_all(pieces, max_message=MAX_MESSAGE):
    """The events a new reader gives for `pieces`, fed one after another."""
    reader, events = WebSocketReader(max_message), []
    for piece in pieces:
        events.extend(reader.feed(piece))
    return events


class ReaderTableTest(unittest.TestCase):
    def check(self, cases):
        for name, data, expected in cases:
            with self.subTest(name):
                self.assertEqual(read_all([data]), expected)
                for way, pieces in splits(data):
                    got = read_all(pieces)
                    if got != expected:
                        self.fail("%s, fed %s: %r" % (name, way, [repr(event)[:100] for event in got]))

    def test_frames_masks_and_lengths(self):
        self.check(FRAMES)

    def test_fragmented_messages(self):
        self.check(FRAGMENTS)

    def test_broken_frames_and_limits(self):
        self.check(BROKEN)

    def test_close_frames(self):
        self.check(CLOSES)


class ReaderTest(unittest.TestCase):
    def test_a_message_too_big_fails_before_its_payload_is_sent(self):
        reader = WebSocketReader(1000)
        self.assertEqual(reader.feed(masked_frame(OP_TEXT, b"", length=5 * 1024 * 1024)[:10]),
                         [ProtocolFailure(1009, "A message over 1000 bytes.")])
        self.assertEqual(reader.feed(b"x" * 1000), [])  # nothing is read after the failure
        self.assertEqual(reader.buf, b"")

    def test_nothing_is_read_after_a_close(self):
        reader = WebSocketReader(1000)
        self.assertEqual(reader.feed(close(1000) + text("a")), [CloseReceived(1000)])
        self.assertEqual(reader.feed(text("b")), [])

    def test_many_small_frames_in_one_piece(self):
        # What one socket read may hold: every frame in it is read, in order, by one feed.
        data = b"".join(text("%d" % number) for number in range(20000)) + text("last", fin=False)
        reader = WebSocketReader(1000)
        self.assertEqual(reader.feed(data), [TextMessage("%d" % number) for number in range(20000)])
        self.assertEqual(reader.feed(continuation(b"!")), [TextMessage("last!")])

    def test_a_large_frame_is_unmasked_at_c_speed(self):
        # A 10 MB frame, in 64 KB reads, against a Python loop over 2 MB of it: a reader that
        # unmasked byte by byte would take 5 times as long as the loop, this one a fraction (0.3 to
        # 0.5 of it on a quiet machine, 1.2 seen on a busy one: under 2.5 leaves room, and still
        # fails a loop's 5).
        payload = os.urandom(10 * 1024 * 1024)
        frame = masked_frame(OP_BINARY, payload)
        reader, events = WebSocketReader(len(payload)), []
        started = time.perf_counter()
        for at in range(0, len(frame), 65536):
            events.extend(reader.feed(frame[at:at + 65536]))
        elapsed = time.perf_counter() - started
        started = time.perf_counter()
        bytes(value ^ MASK[at & 3] for at, value in enumerate(payload[:2 * 1024 * 1024]))
        loop = time.perf_counter() - started
        self.assertEqual(events, [BinaryMessage(payload)])
        self.assertLess(elapsed, 2.5 * loop, "10 MB read in %.3f s; a Python loop over 2 MB: %.3f s" % (elapsed, loop))

    def test_unmask_is_its_own_inverse_and_masks_as_the_rfc_does(self):
        self.assertEqual(codex_proxy.unmask(b"Hello", MASK), b"\x7f\x9f\x4d\x51\x58")  # RFC 6455 5.7
        for size in (0, 1, 3, 4, 5, 1000, 1001):
            payload = os.urandom(size)
            self.assertEqual(codex_proxy.unmask(payload, MASK), masked(payload, MASK), size)
            self.assertEqual(codex_proxy.unmask(codex_proxy.unmask(payload, MASK), MASK), payload, size)


def request(head):
    return parse_request_head(head.rstrip(b"\n").replace(b"\n", b"\r\n"))


RFC_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
HANDSHAKE = (b"GET /v1/responses HTTP/1.1\nHost: 127.0.0.1\nUpgrade: websocket\nConnection: Upgrade\n"
             b"Sec-WebSocket-Key: " + RFC_KEY.encode() + b"\nSec-WebSocket-Version: 13\n")


def head_lines(head):
    assert head.endswith(b"\r\n\r\n"), head
    return head[:-4].decode("latin-1").split("\r\n")


class HandshakeTest(unittest.TestCase):
    def refusal(self, head):
        with self.assertRaises(WebSocketRefused) as caught:
            websocket_upgrade(request(head))
        self.assertIsInstance(caught.exception, codex_proxy.HTTPError)  # answered as every refused request is
        self.assertEqual(caught.exception.target, "/v1/responses")
        return caught.exception

    def test_rfc_6455_example_key(self):
        self.assertEqual(websocket_accept(RFC_KEY), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")

    def test_the_101_head(self):
        lines = head_lines(websocket_upgrade(request(HANDSHAKE)))
        self.assertEqual(lines[0], "HTTP/1.1 101 Switching Protocols")
        self.assertEqual(sorted(lines[2:]), ["Connection: Upgrade", "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
                                             "Upgrade: websocket"])  # no body framing, no extension, no protocol

    def test_an_offered_extension_and_protocol_are_not_taken(self):
        head = HANDSHAKE + b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\n" \
                           b"Sec-WebSocket-Protocol: chat\n"
        answer = websocket_upgrade(request(head)).lower()
        self.assertNotIn(b"sec-websocket-extensions", answer)
        self.assertNotIn(b"sec-websocket-protocol", answer)

    def test_upgrade_and_connection_are_token_lists_of_any_case(self):
        for upgrade, connection in (("WebSocket", "keep-alive, Upgrade"), ("websocket", "UPGRADE"),
                                    ("h2c, websocket", "Upgrade,keep-alive")):
            head = HANDSHAKE.replace(b"Upgrade: websocket", b"Upgrade: " + upgrade.encode()) \
                .replace(b"Connection: Upgrade", b"Connection: " + connection.encode())
            with self.subTest(upgrade=upgrade, connection=connection):
                self.assertIn(b" 101 ", websocket_upgrade(request(head)))
        split = HANDSHAKE.replace(b"Connection: Upgrade", b"Connection: keep-alive\nConnection: upgrade")
        self.assertIn(b" 101 ", websocket_upgrade(request(split)))  # the field given twice

    def test_no_upgrade_is_426(self):
        for old, new in ((b"Upgrade: websocket\n", b""), (b"Connection: Upgrade", b"Connection: keep-alive"),
                         (b"Upgrade: websocket", b"Upgrade: websockets"), (b"Connection: Upgrade\n", b"")):
            with self.subTest(old=old, new=new):
                refused = self.refusal(HANDSHAKE.replace(old, new))
                self.assertEqual((refused.status, refused.answer_headers), (426, {"Upgrade": "websocket"}))

    def test_versions_other_than_13_are_426_naming_13(self):
        for version in (b"8", b"12", b"14", b"13, 8", b""):
            with self.subTest(version=version):
                head = HANDSHAKE.replace(b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Version: " + version)
                refused = self.refusal(head)
                self.assertEqual((refused.status, refused.answer_headers), (426, {"Sec-WebSocket-Version": "13"}))
        refused = self.refusal(HANDSHAKE.replace(b"Sec-WebSocket-Version: 13\n", b""))
        self.assertEqual((refused.status, refused.answer_headers), (426, {"Sec-WebSocket-Version": "13"}))

    def test_a_missing_or_invalid_key_is_400(self):
        for key in (None, b"", b"c2hvcnQ=", b"AAAAAAAAAAAAAAAAAAAAAAAAAAAA", b"dGhlIHNhbXBsZSBub25jZQ", b"dGhlIHNhbXBsZSBub25jZ!==",
                    RFC_KEY.encode() + b"\nSec-WebSocket-Key: " + RFC_KEY.encode()):
            with self.subTest(key=key):
                line = b"" if key is None else b"Sec-WebSocket-Key: " + key + b"\n"
                refused = self.refusal(HANDSHAKE.replace(b"Sec-WebSocket-Key: " + RFC_KEY.encode() + b"\n", line))
                self.assertEqual((refused.status, refused.answer_headers), (400, {}))

    def test_only_get_over_http_1_1(self):
        refused = self.refusal(HANDSHAKE.replace(b"GET", b"POST"))
        self.assertEqual((refused.status, refused.answer_headers), (405, {"Allow": "GET"}))
        refused = self.refusal(HANDSHAKE.replace(b"HTTP/1.1", b"HTTP/1.0"))
        self.assertEqual(refused.status, 400)


class WriterTest(unittest.TestCase):
    def test_lengths_in_the_fewest_bytes(self):
        for size, head in ((0, b"\x82\x00"), (125, b"\x82\x7d"), (126, b"\x82\x7e\x00\x7e"),
                           (65535, b"\x82\x7e\xff\xff"), (65536, b"\x82\x7f" + (65536).to_bytes(8, "big"))):
            with self.subTest(size=size):
                self.assertEqual(websocket_frame(OP_BINARY, b"x" * size), head + b"x" * size)

    def test_frames(self):
        self.assertEqual(text_frame("Hello"), b"\x81\x05Hello")  # RFC 6455 5.7's unmasked Hello
        self.assertEqual(websocket_frame(OP_TEXT, b"Hel", fin=False), b"\x01\x03Hel")  # 5.7's fragments
        self.assertEqual(websocket_frame(OP_CONTINUATION, b"lo"), b"\x80\x02lo")
        self.assertEqual(ping_frame(b"Hello"), b"\x89\x05Hello")
        self.assertEqual(pong_frame(b"Hello"), b"\x8a\x05Hello")
        self.assertEqual(close_frame(1000, "bye"), b"\x88\x05\x03\xe8bye")
        self.assertEqual(close_frame(1009), b"\x88\x02\x03\xf1")
        self.assertEqual(close_frame(CLOSE_NO_STATUS), b"\x88\x00")  # the echo of a close that gave no code

    def test_a_long_close_reason_is_cut_at_a_character(self):
        frame = close_frame(1011, "\u00e9" * 100)  # 200 bytes of UTF-8
        self.assertEqual(frame[:4], b"\x88\x7c\x03\xf3")  # a payload of 124 bytes
        self.assertEqual(frame[4:].decode("utf-8"), "\u00e9" * 61)  # 122 bytes: the 123rd would split one

    def test_control_frames_are_whole_and_short(self):
        with self.assertRaises(ValueError):
            ping_frame(b"p" * 126)
        with self.assertRaises(ValueError):
            websocket_frame(OP_CLOSE, b"", fin=False)

    def test_the_reader_reads_what_the_writer_wrote_once_masked(self):
        # The server's frames are unmasked; masked the way a client masks, they read back the same.
        for frame, event in ((text_frame("h\u00e9"), TextMessage("h\u00e9")), (ping_frame(b"1"), Ping(b"1")),
                             (close_frame(1000, "ok"), CloseReceived(1000, "ok"))):
            first, size = frame[0], frame[1]
            client_frame = bytes([first, 0x80 | size]) + MASK + masked(frame[2:], MASK)
            self.assertEqual(WebSocketReader(100).feed(client_frame), [event])


@unittest.skipIf(websockets is None, "the websockets package is not installed (CI installs it)")
class WebsocketsClientTest(unittest.TestCase):
    """The `websockets` library's sans-IO client (what the openai SDK's realtime client runs on)
    against the handshake, the reader and the writer."""

    def connect(self, **options):
        client = ClientProtocol(parse_uri("ws://127.0.0.1:8765/v1/responses"), max_size=None, **options)
        client.send_request(client.connect())
        reader = codex_proxy.HTTPReader()
        reader.feed(b"".join(client.data_to_send()))
        kind, handshake = reader.next_event()
        self.assertEqual(kind, codex_proxy.MESSAGE_HEAD)
        client.receive_data(websocket_upgrade(handshake))
        [response] = client.events_received()
        self.assertIsInstance(response, Response)
        self.assertEqual((response.status_code, client.state), (101, State.OPEN), client.handshake_exc)
        return client

    def test_handshake_with_an_offer_of_permessage_deflate(self):
        client = self.connect(extensions=[ClientPerMessageDeflateFactory()])
        self.assertEqual(client.extensions, [])  # answered without it, so the client does not compress

    def test_client_frames_read(self):
        client, reader = self.connect(), WebSocketReader(2 * 1024 * 1024)
        large = os.urandom(1024 * 1024)
        client.send_text("h\u00e9llo".encode("utf-8"))
        client.send_binary(large)
        client.send_text(b"frag", fin=False)
        client.send_ping(b"between")
        client.send_continuation("mented \u2603".encode("utf-8"), fin=True)
        client.send_pong(b"unasked")
        client.send_close(1000, "done")
        events = []
        for data in client.data_to_send():
            events.extend(reader.feed(data))
        self.assertEqual(events, [TextMessage("h\u00e9llo"), BinaryMessage(large), Ping(b"between"),
                                  TextMessage("fragmented \u2603"), Pong(b"unasked"), CloseReceived(1000, "done")])

    def test_server_frames_read_by_the_client(self):
        client = self.connect()
        large = "x" * 70000
        for frame in (text_frame("h\u00e9llo"), text_frame(large), websocket_frame(OP_BINARY, b"\0\1"),
                      websocket_frame(OP_TEXT, b"frag", fin=False), websocket_frame(OP_CONTINUATION, b"ment"),
                      ping_frame(b"are you there"), pong_frame(b"yes"), close_frame(1009, "too big")):
            client.receive_data(frame)
        frames = [(frame.opcode, bytes(frame.data), frame.fin) for frame in client.events_received()]
        self.assertEqual(frames, [(Opcode.TEXT, "h\u00e9llo".encode("utf-8"), True),
                                  (Opcode.TEXT, large.encode("ascii"), True), (Opcode.BINARY, b"\0\1", True),
                                  (Opcode.TEXT, b"frag", False), (Opcode.CONT, b"ment", True),
                                  (Opcode.PING, b"are you there", True), (Opcode.PONG, b"yes", True),
                                  (Opcode.CLOSE, b"\x03\xf1too big", True)])
        self.assertEqual((client.close_rcvd.code, client.close_rcvd.reason), (1009, "too big"))
        self.assertIsNone(client.parser_exc)


if __name__ == "__main__":
    unittest.main()
