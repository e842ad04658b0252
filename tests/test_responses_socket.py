"""The Responses API over WebSocket (GET /v1/responses with Upgrade: websocket): the handshake
and its refusals, the guard before it, each response.create answered as POST /v1/responses
with stream: true is, chaining on the socket, generate: false, errors that leave the socket
usable, the frame rules, the close handshake and shutdown; then the openai SDK's
responses.connect(), where it is installed.

The real proxy against the strict fake backend, over a plain socket (support.WebSocketClient).

Run: python3 -m unittest tests.test_responses_socket -v
"""

import asyncio
import json
import logging
import struct
import time
import unittest

from fake_upstream import DEFAULT_TEXT, usage_limit_reply
from support import DumpDirTestCase, ProxyTestCase, WebSocketClient, codex_proxy, masked_frame, optional_module, output_text, wait_for

openai = optional_module("openai")

MODEL = "gpt-5.5"
WEATHER = {"type": "function", "name": "get_weather", "description": "Weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
           "strict": False}
TERMINAL = ("response.completed", "response.failed", "response.incomplete", "error")


def create(**fields):
    return dict({"type": "response.create", "model": MODEL}, **fields)


def user_texts(body):
    """The user's texts in an upstream request's input, in order."""
    return [part.get("text") for item in body["input"] if item.get("role") == "user"
            for part in item.get("content") or () if isinstance(part, dict)]


class SocketTestCase(ProxyTestCase):
    def socket(self, path="/v1/responses", headers=None, proxy=None):
        """A WebSocket to the proxy, its upgrade answered with a 101."""
        client = WebSocketClient(self, (proxy or self.proxy).port, path, headers)
        status, answer = client.answer_head()
        if status != 101:
            self.fail("the upgrade was answered %d: %r" % (status, client.rest()))
        self.assertEqual(answer["sec-websocket-accept"], codex_proxy.websocket_accept(client.key))
        return client

    def refused(self, headers=None, path="/v1/responses", proxy=None):
        """(status, headers, parsed body) of an upgrade the proxy refuses."""
        client = WebSocketClient(self, (proxy or self.proxy).port, path, headers)
        status, answer = client.answer_head()
        self.assertNotEqual(status, 101)
        return status, answer, json.loads(client.read_exactly(int(answer["content-length"])))

    def upstream_bodies(self):
        return [r.json for r in self.fake.requests_to("/backend-api/codex/responses")]

    def socket_answering(self, reply, proxy=None):
        """A socket whose first answer (the fake's `reply`) has begun."""
        self.fake.script.append(reply)
        client = self.socket(proxy=proxy)
        client.send_json(create(input="x"))
        self.assertEqual(client.read_message()["type"], "response.created")
        return client

    def shut_down(self, grace):
        """Begin the proxy's shutdown (a future of its end)."""
        return asyncio.run_coroutine_threadsafe(self.proxy.server.shutdown(grace), self.proxy.loop)


class HandshakeTests(SocketTestCase):
    def test_the_upgrade_is_answered_101_without_an_extension(self):
        client = self.socket(headers={"Connection": "keep-alive, Upgrade", "Upgrade": "WebSocket",
                                      "Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits"})
        client.send_json(create(input="hi"))
        events = client.read_response()
        self.assertEqual(events[-1]["type"], "response.completed")
        # The 101 agreed no extension (so frames are never compressed).
        client2 = WebSocketClient(self, self.proxy.port, headers={
            "Sec-WebSocket-Extensions": "permessage-deflate"})
        status, answer = client2.answer_head()
        self.assertEqual(status, 101)
        self.assertNotIn("sec-websocket-extensions", answer)
        self.assertNotIn("sec-websocket-protocol", answer)

    def test_responses_without_v1_upgrades_too(self):
        client = self.socket("/responses")
        client.send_json(create(input="hi"))
        self.assertEqual(client.read_response()[-1]["type"], "response.completed")

    def test_a_wrong_version_is_a_426_naming_13(self):
        status, answer, body = self.refused({"Sec-WebSocket-Version": "8"})
        self.assertEqual(status, 426)
        self.assertEqual(answer["sec-websocket-version"], "13")
        self.assertIn("13", body["error"]["message"])

    def test_a_missing_key_is_a_400(self):
        status, _, body = self.refused({"Sec-WebSocket-Key": None})
        self.assertEqual(status, 400)
        self.assertIn("Sec-WebSocket-Key", body["error"]["message"])

    def test_a_plain_get_is_told_to_upgrade(self):
        status, headers, body = self.json_request("GET", "/v1/responses")
        self.assertEqual(status, 426)
        self.assertIn("WebSocket", body["error"]["message"])


class GuardTests(SocketTestCase):
    def test_a_foreign_origin_is_refused_before_the_handshake(self):
        for origin in ("http://evil.example", "null"):
            status, _, body = self.refused({"Origin": origin})
            self.assertEqual(status, 403, origin)
            self.assertEqual(body["error"]["code"], "origin_not_allowed")
        self.assertEqual(self.upstream_bodies(), [])

    def test_a_foreign_host_is_refused(self):
        status, _, body = self.refused({"Host": "attacker.example:8765"})
        self.assertEqual(status, 403)
        self.assertEqual(body["error"]["code"], "host_not_allowed")

    def test_an_allowed_origin_may_upgrade(self):
        proxy = self.start_proxy(allow_origins=("http://app.example",))
        client = self.socket(headers={"Origin": "http://app.example"}, proxy=proxy)
        client.send_json(create(input="hi"))
        self.assertEqual(client.read_response()[-1]["type"], "response.completed")

    def test_the_local_key_is_needed_before_the_handshake(self):
        proxy = self.start_proxy(api_key="local-key")
        status, _, _ = self.refused(proxy=proxy)
        self.assertEqual(status, 401)
        status, _, _ = self.refused({"Authorization": "Bearer wrong"}, proxy=proxy)
        self.assertEqual(status, 401)
        for headers in ({"Authorization": "Bearer local-key"}, {"x-api-key": "local-key"}):
            client = self.socket(headers=headers, proxy=proxy)
            client.send_json(create(input="hi"))
            self.assertEqual(client.read_response()[-1]["type"], "response.completed")


class ResponseTests(SocketTestCase):
    def test_events_are_the_http_routes_in_order_with_the_whole_final_response(self):
        reply = {"reasoning": "Think.", "text": "Hello there, socket.", "tool_calls": [
            {"name": "get_weather", "arguments": '{"city": "Paris"}', "call_id": "call_1"}]}
        self.fake.script.append(dict(reply))
        _, over_http, _ = self.sse_request("/v1/responses", {"model": MODEL, "input": "hi", "stream": True,
                                                             "tools": [WEATHER]})
        self.fake.script.append(dict(reply))
        client = self.socket()
        client.send_json(create(input="hi", tools=[WEATHER]))
        events = client.read_response()
        self.assertEqual([e["type"] for e in events], [event for event, _ in over_http])
        final = events[-1]["response"]
        self.assertEqual([item["type"] for item in final["output"]], ["reasoning", "message", "function_call"])
        self.assertEqual(output_text(final), "Hello there, socket.")
        self.assertGreater(final["usage"]["input_tokens"], 0)
        # Sent upstream as the HTTP route sends it.
        http_body, socket_body = self.upstream_bodies()
        self.assertEqual(socket_body["input"], http_body["input"])
        self.assertEqual(socket_body["tools"], http_body["tools"])
        self.assertTrue(socket_body["stream"])

    def test_two_responses_on_one_socket_the_second_without_the_first(self):
        client = self.socket()
        self.fake.script.extend([{"text": "one"}, {"text": "two"}])
        client.send_json(create(input="first"))
        self.assertEqual(output_text(client.read_response()[-1]["response"]), "one")
        client.send_json(create(input="second"))
        self.assertEqual(output_text(client.read_response()[-1]["response"]), "two")
        self.assertEqual(user_texts(self.upstream_bodies()[1]), ["second"])

    def test_store_false_chains_on_its_socket_and_nowhere_else(self):
        client = self.socket()
        self.fake.script.extend([{"text": "one"}, {"text": "two"}])
        client.send_json(create(input="first", store=False))
        first = client.read_response()[-1]["response"]
        client.send_json(create(input="second", store=False, previous_response_id=first["id"]))
        self.assertEqual(output_text(client.read_response()[-1]["response"]), "two")
        chained = self.upstream_bodies()[1]
        self.assertEqual(user_texts(chained), ["first", "second"])
        self.assertIn("one", json.dumps(chained["input"]))
        # Kept nowhere else: not over HTTP, not on another socket (and nothing goes upstream).
        status, _, _ = self.json_request("GET", "/v1/responses/%s" % first["id"])
        self.assertEqual(status, 404)
        other = self.socket()
        other.send_json(create(input="third", previous_response_id=first["id"]))
        error = other.read_message()
        self.assertEqual((error["type"], error["status"]), ("error", 404))
        self.assertEqual(error["error"]["code"], "previous_response_not_found")
        self.assertEqual(len(self.upstream_bodies()), 2)

    def test_stored_responses_are_in_the_usual_store(self):
        client = self.socket()
        client.send_json(create(input="first"))
        first = client.read_response()[-1]["response"]
        status, _, stored = self.json_request("GET", "/v1/responses/%s" % first["id"])
        self.assertEqual((status, stored["id"]), (200, first["id"]))
        status, _, _ = self.sse_request("/v1/responses", {"model": MODEL, "input": "more", "stream": True,
                                                          "previous_response_id": first["id"]})
        self.assertEqual(status, 200)
        self.assertEqual(user_texts(self.upstream_bodies()[1]), ["first", "more"])

    def test_what_a_socket_keeps_goes_when_it_closes(self):
        client = self.socket()
        client.send_json(create(input="first", store=False))
        client.read_response()
        store = self.proxy.app.responses.store
        self.assertEqual(len(store.entries), 1)
        client.send(masked_frame(0x8, struct.pack("!H", 1000)))
        self.assertEqual(client.closed_with(), 1000)
        wait_for(lambda: not store.entries)
        self.assertEqual((len(store.entries), store.size), (0, 0))

    def test_generate_false_is_answered_here_and_its_items_continue(self):
        client = self.socket()
        developer = {"type": "message", "role": "developer", "content": [
            {"type": "input_text", "text": "You are warmed up."}]}
        client.send_json(create(input=[developer], tools=[WEATHER], store=False, generate=False,
                                instructions="Be brief."))
        created, completed = client.read_response()
        self.assertEqual((created["type"], completed["type"]), ("response.created", "response.completed"))
        warm = completed["response"]
        self.assertEqual((warm["status"], warm["output"]), ("completed", []))
        self.assertEqual(created["response"]["id"], warm["id"])
        self.assertTrue(warm["id"].startswith("resp_"))
        self.assertEqual(self.upstream_bodies(), [])
        client.send_json(create(input="hello", store=False, previous_response_id=warm["id"], tools=[WEATHER],
                                instructions="Be brief."))
        self.assertEqual(client.read_response()[-1]["type"], "response.completed")
        body = self.upstream_bodies()[0]
        self.assertEqual(body["input"][0]["role"], "developer")
        self.assertIn("You are warmed up.", json.dumps(body["input"][0]))
        self.assertEqual(user_texts(body), ["hello"])

    def test_a_tool_round_trip_sends_only_the_new_items(self):
        client = self.socket()
        self.fake.script.extend([{"tool_calls": [{"name": "get_weather", "arguments": '{"city": "Oslo"}',
                                                  "call_id": "call_7"}]}, {"text": "Cold."}])
        client.send_json(create(input="weather in Oslo?", tools=[WEATHER], store=False))
        first = client.read_response()[-1]["response"]
        client.send_json(create(input=[{"type": "function_call_output", "call_id": "call_7", "output": "-3C"}],
                                tools=[WEATHER], store=False, previous_response_id=first["id"]))
        self.assertEqual(output_text(client.read_response()[-1]["response"]), "Cold.")
        kinds = [item["type"] for item in self.upstream_bodies()[1]["input"]]
        self.assertEqual(kinds, ["message", "function_call", "function_call_output"])


class ErrorTests(SocketTestCase):
    def assert_still_usable(self, client):
        self.fake.script.append({"text": "still here"})
        client.send_json(create(input="again"))
        self.assertEqual(output_text(client.read_response()[-1]["response"]), "still here")

    def test_not_json_and_unknown_types_are_400_events(self):
        client = self.socket()
        for message in ("not json", json.dumps({"type": "session.update"}), json.dumps([1, 2]),
                        json.dumps(create(input="x", generate="no"))):
            client.send_text(message)
            error = client.read_message()
            self.assertEqual((error["type"], error["status"]), ("error", 400), message)
            self.assertEqual(error["error"]["type"], "invalid_request_error")
        self.assertEqual(self.upstream_bodies(), [])
        self.assert_still_usable(client)

    def test_a_request_the_route_refuses_has_its_error_object(self):
        _, _, over_http = self.json_request("POST", "/v1/responses", {"model": MODEL, "input": 42, "stream": True})
        client = self.socket()
        client.send_json(create(input=42))
        error = client.read_message()
        self.assertEqual(error, {"type": "error", "status": 400, "error": over_http["error"]})
        self.assertEqual(self.upstream_bodies(), [])
        self.assert_still_usable(client)

    def test_a_usage_limit_is_a_429_event(self):
        self.fake.script.append(usage_limit_reply(resets_in_seconds=3600))
        _, _, over_http = self.json_request("POST", "/v1/responses", {"model": MODEL, "input": "x", "stream": True})
        self.fake.script.append(usage_limit_reply(resets_in_seconds=3600))
        client = self.socket()
        client.send_json(create(input="x"))
        error = client.read_message()
        self.assertEqual((error["type"], error["status"]), ("error", 429))
        self.assertEqual(error["error"]["code"], over_http["error"]["code"])
        self.assert_still_usable(client)

    def test_an_upstream_failure_is_relayed(self):
        self.fake.script.append({"text": "partial", "fail": {"code": "server_error", "message": "boom"}})
        client = self.socket()
        client.send_json(create(input="x"))
        failed = client.read_response()[-1]
        self.assertEqual(failed["type"], "response.failed")
        self.assertEqual(failed["response"]["error"]["message"], "boom")
        self.assert_still_usable(client)


class FrameTests(SocketTestCase):
    def test_an_unmasked_frame_closes_with_1002(self):
        client = self.socket()
        client.send(masked_frame(0x1, b'{"type": "response.create"}', mask=None))
        self.assertEqual(client.closed_with(), 1002)
        self.assertEqual(client.rest(), b"")  # then the TCP connection ends

    def test_a_binary_message_closes_with_1003(self):
        client = self.socket()
        client.send(masked_frame(0x2, b"\x00\x01"))
        self.assertEqual(client.closed_with(), 1003)

    def test_a_message_over_the_body_limit_closes_with_1009_and_nothing_goes_upstream(self):
        proxy = self.start_proxy(max_body_bytes=4096)
        client = self.socket(proxy=proxy)
        client.send_json(create(input="x" * 5000))
        self.assertEqual(client.closed_with(), 1009)
        self.assertEqual(self.upstream_bodies(), [])

    def test_a_close_is_answered_with_a_close_then_tcp_ends(self):
        client = self.socket()
        client.send(masked_frame(0x8, struct.pack("!H", 1000) + b"bye"))
        opcode, payload = client.read_frame()
        self.assertEqual((opcode, payload[:2]), (0x8, struct.pack("!H", 1000)))
        self.assertEqual(client.rest(), b"")

    def test_a_ping_is_answered_while_the_upstream_is_silent(self):
        client = self.socket_answering({"text": "slow answer", "stall": 2.0})
        time.sleep(0.3)  # the upstream has gone silent
        sent = time.monotonic()
        client.send(masked_frame(0x9, b"are you there"))
        while True:
            opcode, payload = client.read_frame()
            if opcode == 0xA:
                break
            self.assertNotEqual(opcode, 0x8)
        self.assertEqual(payload, b"are you there")
        self.assertLess(time.monotonic() - sent, 1.0)
        self.assertEqual(client.read_response()[-1]["type"], "response.completed")

    def test_a_fragmented_message_with_a_ping_between_is_read(self):
        client = self.socket()
        text = json.dumps(create(input="in three pieces")).encode()
        client.send(masked_frame(0x1, text[:10], fin=False) + masked_frame(0x9, b"p")
                    + masked_frame(0x0, text[10:20], fin=False) + masked_frame(0x0, text[20:]))
        self.assertEqual(client.read_frame(), (0xA, b"p"))
        self.assertEqual(client.read_response()[-1]["type"], "response.completed")
        self.assertEqual(user_texts(self.upstream_bodies()[0]), ["in three pieces"])

    def test_keep_alives_are_pings_never_text(self):
        proxy = self.start_proxy(heartbeat_interval=0.2)
        self.fake.script.append({"text": "after a silence", "stall": 1.0})
        client = self.socket(proxy=proxy)
        client.send_json(create(input="x"))
        kinds = []
        while True:
            opcode, payload = client.read_frame()
            kinds.append(opcode)
            if opcode == 0x1 and json.loads(payload)["type"] in TERMINAL:
                break
        self.assertIn(0x9, kinds)
        self.assertEqual(set(kinds), {0x1, 0x9})


class LifecycleTests(SocketTestCase):
    def test_metrics_and_one_log_line_per_response_marked_ws(self):
        client = self.socket()
        with self.assertLogs("codex_proxy", logging.INFO) as logs:
            for text in ("one", "two"):
                client.send_json(create(input=text))
                client.read_response()
            wait_for(lambda: sum(" ws -> 200" in line for line in logs.output) == 2)
        lines = [line for line in logs.output if " ws -> " in line]
        self.assertEqual(len(lines), 2, logs.output)
        self.assertTrue(all("POST /v1/responses ws -> 200 openai-responses %s stream" % MODEL in line
                            for line in lines), lines)
        _, _, raw = self.request("GET", "/metrics")
        metrics = raw.decode()
        self.assertIn("codex_proxy_websockets_opened_total 1\n", metrics)
        self.assertIn("codex_proxy_websockets_open 1\n", metrics)
        self.assertIn("codex_proxy_websocket_responses_total 2\n", metrics)
        self.assertIn("codex_proxy_requests_in_flight 1\n", metrics)  # the /metrics request itself

    def test_shutdown_closes_an_idle_socket_with_1001(self):
        client = self.socket()
        client.send_json(create(input="one"))
        client.read_response()
        future = self.shut_down(5)
        self.assertEqual(client.closed_with(), 1001)
        future.result(10)

    def test_shutdown_lets_the_running_response_end_then_closes_with_1001(self):
        client = self.socket_answering({"text": "finishing", "stall": 0.5})
        future = self.shut_down(10)
        events = client.read_response()
        self.assertEqual(output_text(events[-1]["response"]), "finishing")
        self.assertEqual(client.closed_with(), 1001)
        future.result(10)


class LimitsTests(SocketTestCase):
    def test_too_many_waiting_messages_close_the_socket_and_pings_are_answered_meanwhile(self):
        client = self.socket_answering({"text": "slow", "stall": 1.0})
        client.send(b"".join(masked_frame(0x1, json.dumps(create(input="more")).encode()) for _ in range(10))
                    + masked_frame(0x9, b"ping"))
        sent = time.monotonic()
        while True:  # the pong comes while the first answer still streams
            opcode, payload = client.read_frame()
            if opcode == 0xA:
                break
        self.assertEqual(payload, b"ping")
        self.assertLess(time.monotonic() - sent, 0.8)
        flood = b"".join(masked_frame(0x1, json.dumps(create(input="more")).encode())
                         for _ in range(codex_proxy.WebSocketSession.MAX_WAITING))
        client.send(flood)
        self.assertEqual(client.closed_with(), 1008)

    def test_a_running_response_counts_against_max_streams(self):
        proxy = self.start_proxy(max_streams=1)
        client = self.socket_answering({"text": "slow", "stall": 1.0}, proxy=proxy)
        status, _, body = self.json_request("POST", "/v1/responses", {"model": MODEL, "input": "y"}, proxy=proxy)
        self.assertEqual(status, 503, body)
        self.assertEqual(client.read_response()[-1]["type"], "response.completed")
        # Between responses the socket holds no stream.
        status, _, _ = self.json_request("POST", "/v1/responses", {"model": MODEL, "input": "y"}, proxy=proxy)
        self.assertEqual(status, 200)

    def test_shutdown_past_its_grace_ends_the_answer_with_an_error_then_1001(self):
        client = self.socket_answering({"text": "never finished", "stall": 5.0})
        future = self.shut_down(0.3)
        last = client.read_response()[-1]
        self.assertEqual(last["type"], "error")
        self.assertEqual(last["code"], "server_is_overloaded")
        self.assertEqual(client.closed_with(), 1001)
        future.result(10)


class APIKeyModeTests(SocketTestCase):
    def test_messages_go_to_the_api_with_a_warm_up_inlined(self):
        api = self.start_proxy(openai_api_key="sk-test-key", auth="apikey")
        client = self.socket(proxy=api)
        developer = {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Warm."}]}
        client.send_json(create(input=[developer], generate=False, store=False))
        warm = client.read_response()[-1]["response"]
        client.send_json(create(input="hi", previous_response_id=warm["id"], store=False))
        events = client.read_response()
        self.assertEqual(events[-1]["type"], "response.completed")
        self.assertEqual(output_text(events[-1]["response"]), DEFAULT_TEXT)
        sent = [r.json for r in self.fake.requests_to("/v1/responses")]
        self.assertEqual(len(sent), 1)
        self.assertNotIn("previous_response_id", sent[0])
        self.assertNotIn("type", sent[0])
        self.assertNotIn("generate", sent[0])
        self.assertTrue(sent[0]["stream"])
        self.assertEqual([item.get("role") for item in sent[0]["input"]], ["developer", "user"])
        self.assertEqual(self.upstream_bodies(), [])


    def test_codex_s_three_messages_chain_on_the_socket_whatever_the_api_kept(self):
        """Codex's sequence, all store: false (which the API keeps nowhere): a warm-up, the turn
        continuing it, then only the tool's output continuing the turn."""
        api = self.start_proxy(openai_api_key="sk-test-key", auth="apikey")
        self.fake.script.extend([{"tool_calls": [{"name": "get_weather", "arguments": '{"city": "Oslo"}',
                                                  "call_id": "call_9"}]}, {"text": "Cold."}])
        client = self.socket(proxy=api)
        developer = {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Warm."}]}
        client.send_json(create(input=[developer], tools=[WEATHER], generate=False, store=False))
        warm = client.read_response()[-1]["response"]
        client.send_json(create(input="weather?", tools=[WEATHER], store=False, previous_response_id=warm["id"]))
        turn = client.read_response()[-1]["response"]
        client.send_json(create(input=[{"type": "function_call_output", "call_id": "call_9", "output": "-3C"}],
                                tools=[WEATHER], store=False, previous_response_id=turn["id"]))
        last = client.read_response()[-1]
        self.assertEqual((last["type"], output_text(last["response"])), ("response.completed", "Cold."))
        sent = [r.json for r in self.fake.requests_to("/v1/responses")]
        self.assertEqual([item.get("role") or item["type"] for item in sent[1]["input"]],
                         ["developer", "user", "function_call", "function_call_output"])
        self.assertNotIn("previous_response_id", sent[1])


class DumpTests(DumpDirTestCase, SocketTestCase):
    def test_each_message_is_dumped_as_it_came_with_no_credential(self):
        client = self.socket(headers={"Authorization": "Bearer secret-local-key"})
        client.send_json(create(input="warm", generate=False, store=False))
        warm = client.read_response()[-1]["response"]
        client.send_json(create(input="go", store=False, previous_response_id=warm["id"]))
        client.read_response()
        wait_for(lambda: len(self.dumps()) == 2)
        # (in the order they were made: their names begin with the time, to the second only)
        first, second = sorted((json.loads(text) for _, text in self.dumps()),
                               key=lambda dump: "previous_response_id" in dump["request"]["body"])
        self.assertEqual((first["request"]["body"]["type"], first["request"]["body"]["generate"]),
                         ("response.create", False))
        self.assertEqual(second["request"]["body"]["previous_response_id"], warm["id"])
        self.assertEqual(second["upstream_request"]["input"][0]["content"][0]["text"], "warm")
        self.assertNotIn("secret-local-key", json.dumps([first, second]))


@unittest.skipIf(openai is None, "the openai SDK is not installed (pip install openai)")
class OpenAISDKTests(SocketTestCase):
    """client.responses.connect(), openai 3.x, as its users call it."""

    def connect(self):
        client = self.sdk_client(openai.OpenAI, "/v1")
        return client.responses.connect(max_retries=0)

    @staticmethod
    def until_done(connection):
        events = []
        for event in connection:
            events.append(event)
            if event.type in TERMINAL:
                return events

    def test_text_chaining_and_a_tool_round_trip(self):
        self.fake.script.extend([{"text": "First answer."}, {"tool_calls": [
            {"name": "get_weather", "arguments": '{"city": "Rome"}', "call_id": "call_r"}]}, {"text": "Sunny."}])
        with self.connect() as connection:
            connection.response.create(model=MODEL, input="hello")
            events = self.until_done(connection)
            deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
            self.assertEqual(deltas, "First answer.")
            first = events[-1].response
            self.assertEqual(first.output_text, "First answer.")
            connection.response.create(model=MODEL, input="weather in Rome?", tools=[WEATHER], store=False,
                                       previous_response_id=first.id)
            second = self.until_done(connection)[-1].response
            call = [item for item in second.output if item.type == "function_call"][0]
            self.assertEqual((call.name, json.loads(call.arguments)), ("get_weather", {"city": "Rome"}))
            connection.response.create(model=MODEL, store=False, tools=[WEATHER], previous_response_id=second.id,
                                       input=[{"type": "function_call_output", "call_id": call.call_id,
                                               "output": "22C"}])
            self.assertEqual(self.until_done(connection)[-1].response.output_text, "Sunny.")
        last = self.upstream_bodies()[-1]
        self.assertEqual(user_texts(last), ["hello", "weather in Rome?"])
        self.assertEqual([i["type"] for i in last["input"]][-2:], ["function_call", "function_call_output"])

    def test_generate_false_then_an_error_event_and_the_socket_still_works(self):
        self.fake.script.append({"text": "Warm answer."})
        with self.connect() as connection:
            connection.response.create(model=MODEL, input=[{"type": "message", "role": "developer", "content": [
                {"type": "input_text", "text": "Warm-up developer note."}]}], store=False, generate=False)
            warm = self.until_done(connection)[-1]
            self.assertEqual((warm.type, warm.response.output), ("response.completed", []))
            connection.send({"type": "response.create", "model": MODEL, "input": 42})
            error = self.until_done(connection)[-1]
            self.assertEqual(error.type, "error")
            self.assertEqual(error.status, 400)
            connection.response.create(model=MODEL, input="now", store=False, previous_response_id=warm.response.id)
            self.assertEqual(self.until_done(connection)[-1].response.output_text, "Warm answer.")
        self.assertIn("Warm-up developer note.", json.dumps(self.upstream_bodies()[0]["input"]))
