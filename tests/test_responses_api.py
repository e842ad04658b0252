"""The Responses API on a backend that stores nothing: whole final events, allowlists all
the way down, the in-memory response store (previous_response_id, retrieve, input_items,
delete), /v1/responses/compact, /v1/responses/input_tokens, keep-alives on every stream
dialect, sub-agent prompt cache keys and custom (freeform) tools.

The real proxy against the strict fake backend, over raw HTTP and, where they are
installed, through the official openai and anthropic SDKs (and the o200k_base tokenizer
of bpe-openai as an oracle for input_tokens); those tests skip without them unless
CODEX_PROXY_REQUIRE_OPTIONAL is set.
"""

import gzip
import json
import os
import re
import socket
import threading
import time
import unittest
from unittest import mock

import fake_upstream
from fake_upstream import COMPACT_FIELDS, compaction_content, fake_input_tokens, render_sse, usage_limit_reply
from support import ProxyTestCase, codex_proxy, read_all, sse_data, sse_events, streamed_text

REQUIRE = bool(os.environ.get("CODEX_PROXY_REQUIRE_OPTIONAL"))

try:
    import openai
except ImportError:  # the core suite runs without it
    if REQUIRE:
        raise
    openai = None

try:
    import anthropic
except ImportError:
    if REQUIRE:
        raise
    anthropic = None

try:
    import bpe_openai
except ImportError:
    if REQUIRE:
        raise
    bpe_openai = None

SESSION = "154b6957-a6bf-4dd6-a578-711c942ce84a"
WEATHER = {"type": "function", "name": "get_weather", "description": "Weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
           "strict": False}
PATCH = "*** Begin Patch\n*** Add File: hello.txt\n+hello from the fake\n*** End Patch\n"
APPLY_PATCH = {"type": "custom", "name": "apply_patch",
               "description": "Use the `apply_patch` tool to edit files. This is a FREEFORM tool.",
               "format": {"type": "grammar", "syntax": "lark", "definition": (
                   'start: begin_patch hunk+ end_patch\nbegin_patch: "*** Begin Patch" LF\n'
                   'end_patch: "*** End Patch" LF?\nhunk: add_hunk\nadd_hunk: "*** Add File: " filename LF add_line+\n'
                   'filename: /(.+)/\nadd_line: "+" /(.*)/ LF -> line\n%import common.LF\n')}}
KEEPALIVE = re.compile(rb": keep-alive\n\n?")
STALL = 1.0  # seconds of upstream silence mid-answer in the keep-alive tests (interval 0.3 s)


def user(text):
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def item_text(item):
    """The text of a message item (string or parts), else None."""
    content = item.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content and isinstance(content[0], dict):
        return content[0].get("text")
    return None


def summary(items):
    """What identifies each item of a conversation: (type, role or call id, text or content)."""
    out = []
    for item in items:
        kind = item.get("type", "message")
        if kind == "message":
            out.append(("message", item.get("role"), item_text(item)))
        elif kind == "reasoning":
            out.append(("reasoning", None, item.get("encrypted_content")))
        elif kind in ("function_call", "custom_tool_call"):
            out.append((kind, item.get("call_id"), item.get("arguments", item.get("input"))))
        elif kind in ("function_call_output", "custom_tool_call_output"):
            out.append((kind, item.get("call_id"), item.get("output")))
        elif kind == "compaction":
            out.append(("compaction", None, item.get("encrypted_content")))
        else:
            out.append((kind, None, None))
    return out


class ResponsesTestCase(ProxyTestCase):
    def upstream(self):
        """The bodies of the Codex backend's /responses requests, oldest first."""
        return [r.json for r in self.fake.requests if r.path == "/backend-api/codex/responses"]

    def create(self, body, headers=None, proxy=None):
        status, _, answer = self.json_request("POST", "/v1/responses", dict({"model": "gpt-5.5"}, **body),
                                              headers, proxy)
        self.assertEqual(status, 200, answer)
        return answer

    def stream(self, body, proxy=None):
        """(events, raw bytes) of a streamed /v1/responses answer."""
        status, _, raw = self.request("POST", "/v1/responses", dict({"model": "gpt-5.5", "stream": True}, **body),
                                      proxy=proxy)
        self.assertEqual(status, 200, raw)
        return sse_data(raw), raw

    def get(self, response_id, suffix="", proxy=None):
        return self.json_request("GET", "/v1/responses/%s%s" % (response_id, suffix), proxy=proxy)

    def assert_openai_error(self, status, answer, want_status, param=None):
        self.assertEqual(status, want_status, answer)
        self.assertIsInstance(answer.get("error"), dict, answer)
        self.assertIsInstance(answer["error"].get("message"), str)
        self.assertIn("type", answer["error"])
        if param is not None:
            self.assertEqual(answer["error"].get("param"), param, answer)


# ---------------------------------------------------------------------------
# Whole final events

class WholeFinalEventTests(ResponsesTestCase):
    def assert_rebuilt(self, events, raw, terminal_type):
        terminal = events[-1]
        self.assertEqual(terminal["type"], terminal_type)
        done = [e["item"] for e in events if e["type"] == "response.output_item.done"]
        self.assertTrue(done)
        self.assertEqual(terminal["response"]["output"], done)
        # Every other event is passed on byte for byte; the terminal event is one event after them.
        head = render_sse(events[:-1])
        self.assertTrue(raw.startswith(head), raw[:2000])
        self.assertEqual(sse_data(raw[len(head):]), [terminal])
        # The rest of the terminal event is the backend's.
        self.assertEqual(terminal["response"]["id"], events[0]["response"]["id"])
        self.assertEqual(terminal["sequence_number"], events[-2]["sequence_number"] + 1)
        return terminal["response"]

    def test_completed_with_empty_output_gets_the_streamed_items(self):
        self.fake.script.append({"reasoning": "Thinking.", "text": "Hello whole", "empty_completed_output": True,
                                 "tool_calls": [{"name": "get_weather", "arguments": '{"city":"Paris"}',
                                                 "call_id": "call_1"}],
                                 "usage": {"input_tokens": 30, "cached_tokens": 4, "output_tokens": 9,
                                           "reasoning_tokens": 2}})
        events, raw = self.stream({"input": "hi", "tools": [WEATHER]})
        response = self.assert_rebuilt(events, raw, "response.completed")
        self.assertEqual([i["type"] for i in response["output"]], ["reasoning", "message", "function_call"])
        self.assertEqual(response["output"][1]["content"][0]["text"], "Hello whole")
        self.assertEqual((response["status"], response["usage"]["total_tokens"]), ("completed", 39))
        self.assertEqual(response["usage"]["input_tokens_details"]["cached_tokens"], 4)

    def test_incomplete_and_failed_terminals_too(self):
        self.fake.script.append({"text": "partial", "incomplete": "max_output_tokens", "empty_completed_output": True})
        events, raw = self.stream({"input": "hi"})
        response = self.assert_rebuilt(events, raw, "response.incomplete")
        self.assertEqual(response["incomplete_details"], {"reason": "max_output_tokens"})
        self.fake.script.append({"text": "partial", "fail": {"code": "server_error", "message": "boom"},
                                 "empty_completed_output": True})
        events, raw = self.stream({"input": "hi"})
        response = self.assert_rebuilt(events, raw, "response.failed")
        self.assertEqual(response["error"]["message"], "boom")

    def test_a_filled_terminal_event_is_passed_unchanged(self):
        self.fake.script.append({"reasoning": "Thinking.", "text": "Hello whole"})
        events, raw = self.stream({"input": "hi"})
        self.assertEqual(render_sse(events), raw)
        self.assertEqual(len(events[-1]["response"]["output"]), 2)


# ---------------------------------------------------------------------------
# Allowlists all the way down

class AllowlistTests(ResponsesTestCase):
    def test_extra_keys_inside_reasoning_text_and_tools_are_dropped(self):
        body = {"input": "hi",
                "reasoning": {"effort": "low", "summary": "auto", "context": "all_turns"},
                "text": {"verbosity": "low", "format": {"type": "text"}, "extra": True},
                "tools": [dict(WEATHER, defer_loading=True, cache_control={"type": "ephemeral"}),
                          dict(APPLY_PATCH, defer_loading=False, strict=True)]}
        self.create(body)
        sent = self.upstream()[-1]
        self.assertEqual(sent["reasoning"], {"effort": "low", "summary": "auto"})
        self.assertEqual(sent["text"], {"verbosity": "low", "format": {"type": "text"}})
        self.assertEqual(sent["tools"], [WEATHER, APPLY_PATCH])
        self.assertIsNone(fake_upstream.codex_request_error(sent, self.fake.catalog))

    def test_a_wrong_type_inside_text_format_is_a_400_naming_it(self):
        for path in ("/v1/responses", "/v1/responses/input_tokens", "/v1/responses/compact"):
            status, _, answer = self.json_request("POST", path, {"model": "gpt-5.5", "input": "hi",
                                                                 "text": {"format": {"type": []}}})
            self.assertEqual(status, 400, (path, answer))
            self.assertIn("'text.format.type'", answer["error"]["message"])

    def test_pydantic_ai_reasoning_context(self):
        self.create({"input": "hi", "reasoning": {"effort": "low", "context": "all_turns"}})
        self.assertEqual(self.upstream()[-1]["reasoning"], {"effort": "low"})
        events, _ = self.stream({"input": "hi", "reasoning": {"effort": "low", "context": "all_turns"}})
        self.assertEqual(events[-1]["type"], "response.completed")


# ---------------------------------------------------------------------------
# The response store

class ResponseStoreTests(ResponsesTestCase):
    def test_previous_response_id_replays_that_responses_input_and_output(self):
        self.fake.script.append({"reasoning": "Think one.", "text": "Answer one."})
        first = self.create({"instructions": "Be brief.", "input": [
            {"role": "developer", "content": "Answer in English."}, {"role": "user", "content": "Question one"}]})
        self.assertEqual([i["type"] for i in first["output"]], ["reasoning", "message"])
        self.fake.script.append({"text": "Answer two."})
        second = self.create({"instructions": "Be brief.", "previous_response_id": first["id"],
                              "input": "Question two"})
        self.assertNotEqual(second["id"], first["id"])
        sent_first, sent = self.upstream()[0]["input"], self.upstream()[1]["input"]
        # That response's input, exactly as it went upstream, then its output, then the new input.
        self.assertEqual(sent[:len(sent_first)], sent_first)
        self.assertEqual(summary(sent[len(sent_first):]), [
            ("reasoning", None, first["output"][0]["encrypted_content"]),
            ("message", "assistant", "Answer one."),
            ("message", "user", "Question two")])
        self.assertTrue(first["output"][0]["encrypted_content"].startswith("enc-"))

    def test_an_answer_is_stored_before_the_client_has_it(self):
        # A client may chain on a response the moment it ends: it must already be in the store.
        # At each put, the client's socket is peeked (loopback delivers a write at once).
        for stream in (True, False):
            with self.subTest(stream=stream):
                self.fake.script.append({"text": "Stored first."})
                sock = socket.create_connection(("127.0.0.1", self.proxy.port), timeout=5)
                self.addCleanup(sock.close)
                peeker = socket.socket(fileno=os.dup(sock.fileno()))  # never waits, as the proxy's loop must not
                peeker.setblocking(False)
                self.addCleanup(peeker.close)
                seen, stored = [], threading.Event()
                store = self.proxy.app.responses.store
                put = store.put

                def peeking_put(response, *args, **kwargs):
                    try:
                        seen.append(peeker.recv(1 << 20, socket.MSG_PEEK))
                    except BlockingIOError:
                        seen.append(b"")
                    stored.set()
                    return put(response, *args, **kwargs)
                store.put = peeking_put
                self.addCleanup(setattr, store, "put", put)
                body = json.dumps({"model": "gpt-5.5", "input": "hi", "stream": stream}).encode()
                sock.sendall(b"POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                             b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                self.assertTrue(stored.wait(5))  # the client reads nothing before the put
                self.assertIn(b"Stored first.", read_all(sock, 5))
                self.assertEqual(len(seen), 1)
                self.assertNotIn(b"response.completed" if stream else b"Stored first.", seen[0])
                store.put = put

    def test_three_turns_with_a_streamed_one_in_the_middle(self):
        self.fake.script.append({"reasoning": "Think one.", "text": "Answer one."})
        first = self.create({"input": "Question one"})
        self.fake.script.append({"reasoning": "Think two.", "text": "Answer two.", "empty_completed_output": True})
        events, _ = self.stream({"input": "Question two", "previous_response_id": first["id"]})
        second_id = events[0]["response"]["id"]  # the id the client saw
        streamed = [e["item"] for e in events if e["type"] == "response.output_item.done"]
        self.fake.script.append({"text": "Answer three."})
        third = self.create({"input": [{"role": "user", "content": "Question three"}],
                             "previous_response_id": second_id})
        self.assertEqual(third["output"][-1]["content"][0]["text"], "Answer three.")
        self.assertEqual(summary(self.upstream()[-1]["input"]), [
            ("message", "user", "Question one"),
            ("reasoning", None, first["output"][0]["encrypted_content"]),
            ("message", "assistant", "Answer one."),
            ("message", "user", "Question two"),
            ("reasoning", None, streamed[0]["encrypted_content"]),
            ("message", "assistant", "Answer two."),
            ("message", "user", "Question three")])

    def test_a_tool_call_is_answered_through_previous_response_id(self):
        self.fake.script.append({"tool_calls": [{"name": "get_weather", "arguments": '{"city":"Paris"}',
                                                 "call_id": "call_w1"}]})
        first = self.create({"input": "Weather in Paris?", "tools": [WEATHER]})
        self.fake.script.append({"text": "Sunny in Paris."})
        second = self.create({"previous_response_id": first["id"], "tools": [WEATHER], "input": [
            {"type": "function_call_output", "call_id": "call_w1", "output": "sunny, 21C"}]})
        self.assertEqual(second["output"][0]["content"][0]["text"], "Sunny in Paris.")
        self.assertEqual(summary(self.upstream()[-1]["input"]), [
            ("message", "user", "Weather in Paris?"),
            ("function_call", "call_w1", '{"city":"Paris"}'),
            ("function_call_output", "call_w1", "sunny, 21C")])

    def test_unknown_and_unstored_ids_are_404s(self):
        status, _, answer = self.json_request("POST", "/v1/responses", {
            "model": "gpt-5.5", "input": "hi", "previous_response_id": "resp_never_made"})
        self.assert_openai_error(status, answer, 404, "previous_response_id")
        self.assertIn("memory", answer["error"]["message"].lower())
        self.assertEqual(self.upstream(), [])
        status, _, answer = self.json_request("POST", "/v1/responses", {
            "model": "gpt-5.5", "input": "hi", "stream": True, "previous_response_id": "resp_never_made"})
        self.assert_openai_error(status, answer, 404, "previous_response_id")
        for suffix in ("", "/input_items"):
            status, _, answer = self.get("resp_never_made", suffix)
            self.assert_openai_error(status, answer, 404)
        # store: false keeps nothing.
        unstored = self.create({"input": "hi", "store": False})
        self.assertEqual(self.get(unstored["id"])[0], 404)
        status, _, answer = self.json_request("POST", "/v1/responses", {
            "model": "gpt-5.5", "input": "again", "previous_response_id": unstored["id"]})
        self.assert_openai_error(status, answer, 404, "previous_response_id")
        self.assertEqual(len(self.upstream()), 1)

    def test_retrieve_gives_the_stored_response(self):
        self.fake.script.append({"reasoning": "Hm.", "text": "Kept.", "usage": {"input_tokens": 20}})
        created = self.create({"input": "hi"})
        status, _, got = self.get(created["id"])
        self.assertEqual(status, 200)
        self.assertEqual((got["id"], got["object"], got["status"]), (created["id"], "response", "completed"))
        self.assertEqual((got["output"], got["usage"]), (created["output"], created["usage"]))
        # A streamed one is stored under the id the client saw, with its output even when
        # the backend's final event had none.
        self.fake.script.append({"text": "Streamed and kept.", "empty_completed_output": True})
        events, _ = self.stream({"input": "hi"})
        status, _, got = self.get(events[0]["response"]["id"])
        self.assertEqual((status, got["status"]), (200, "completed"))
        self.assertEqual(got["output"], [e["item"] for e in events if e["type"] == "response.output_item.done"])
        self.assertEqual(got["output"][0]["content"][0]["text"], "Streamed and kept.")
        # Incomplete answers are finished answers; failed ones are not kept.
        self.fake.script.append({"text": "cut short", "incomplete": "max_output_tokens"})
        events, _ = self.stream({"input": "hi"})
        status, _, got = self.get(events[0]["response"]["id"])
        self.assertEqual((status, got["status"]), (200, "incomplete"))
        self.fake.script.append({"text": "partial", "fail": {"code": "server_error", "message": "boom"}})
        events, _ = self.stream({"input": "hi"})
        self.assertEqual(self.get(events[0]["response"]["id"])[0], 404)

    def test_input_items_are_listed_like_the_api(self):
        texts = ["m0", "m1", "m2", "m3", "m4"]
        created = self.create({"input": [{"role": "developer", "content": "m0"}, {"role": "user", "content": "m1"},
                                         {"role": "assistant", "content": "m2"}, {"role": "user", "content": "m3"},
                                         {"role": "user", "content": "m4"}]})
        rid = created["id"]
        status, _, page = self.get(rid, "/input_items")
        self.assertEqual(status, 200)
        self.assertEqual(set(page), {"object", "data", "first_id", "last_id", "has_more"})
        self.assertEqual((page["object"], page["has_more"]), ("list", False))
        self.assertEqual([item_text(i) for i in page["data"]], texts[::-1])  # newest first by default
        ids = [i.get("id") for i in page["data"]]
        self.assertTrue(all(isinstance(i, str) and i for i in ids), ids)
        self.assertEqual(len(set(ids)), len(ids))
        self.assertEqual((page["first_id"], page["last_id"]), (ids[0], ids[-1]))

        def walk(order):
            seen, after, pages = [], None, 0
            while True:
                suffix = "/input_items?limit=2&order=%s" % order + ("&after=%s" % after if after else "")
                status, _, page = self.get(rid, suffix)
                self.assertEqual(status, 200, page)
                self.assertLessEqual(len(page["data"]), 2)
                seen += [item_text(i) for i in page["data"]]
                pages += 1
                if not page["has_more"]:
                    return seen, pages
                after = page["last_id"]
                self.assertEqual(after, page["data"][-1]["id"])
        self.assertEqual(walk("asc"), (texts, 3))
        self.assertEqual(walk("desc"), (texts[::-1], 3))
        status, _, page = self.get(rid, "/input_items?limit=1")
        self.assertEqual(([item_text(i) for i in page["data"]], page["has_more"]), (["m4"], True))
        for bad in ("limit=0", "limit=101", "order=sideways"):
            status, _, answer = self.get(rid, "/input_items?" + bad)
            self.assert_openai_error(status, answer, 400)

    def test_input_items_of_a_chained_response_hold_the_whole_conversation(self):
        self.fake.script.append({"reasoning": "Hm.", "text": "First answer."})
        first = self.create({"input": "first question"})
        second = self.create({"input": "second question", "previous_response_id": first["id"]})
        status, _, page = self.get(second["id"], "/input_items?order=asc")
        self.assertEqual(status, 200)
        self.assertEqual([(i["type"], item_text(i)) for i in page["data"]], [
            ("message", "first question"), ("reasoning", None), ("message", "First answer."),
            ("message", "second question")])

    def test_delete(self):
        created = self.create({"input": "hi"})
        status, _, answer = self.json_request("DELETE", "/v1/responses/" + created["id"])
        self.assertEqual((status, answer), (200, {"id": created["id"], "object": "response", "deleted": True}))
        self.assertEqual(self.get(created["id"])[0], 404)
        self.assertEqual(self.get(created["id"], "/input_items")[0], 404)
        status, _, answer = self.json_request("POST", "/v1/responses", {
            "model": "gpt-5.5", "input": "hi", "previous_response_id": created["id"]})
        self.assert_openai_error(status, answer, 404, "previous_response_id")

    def test_oldest_responses_go_first_beyond_the_count(self):
        proxy = self.start_proxy(store_max_responses=2)
        ids = [self.create({"input": "turn %d" % n}, proxy=proxy)["id"] for n in range(3)]
        self.assertEqual([self.get(rid, proxy=proxy)[0] for rid in ids], [404, 200, 200])
        status, _, answer = self.json_request("POST", "/v1/responses", {
            "model": "gpt-5.5", "input": "hi", "previous_response_id": ids[0]}, proxy=proxy)
        self.assert_openai_error(status, answer, 404, "previous_response_id")
        self.create({"input": "next", "previous_response_id": ids[2]}, proxy=proxy)

    def test_a_long_conversation_is_counted_whole_and_goes_on(self):
        # Each turn holds the whole conversation (the earlier items are shared, not copied, but
        # counted again): memory stays within the bound once early turns are gone, and the
        # conversation goes on from its latest turn.
        proxy = self.start_proxy(store_max_bytes=60000)
        ids = [self.create({"input": "turn 0 " + "a" * 4000}, proxy=proxy)["id"]]
        for n in range(1, 10):
            ids.append(self.create({"input": "turn %d " % n + "a" * 4000, "previous_response_id": ids[-1]},
                                   proxy=proxy)["id"])
        kept = [self.get(rid, proxy=proxy)[0] for rid in ids]
        self.assertEqual((kept[0], kept[-1]), (404, 200))
        store = proxy.app.responses.store
        self.assertLessEqual(store.size, 60000)
        self.assertGreater(store.held(ids[-1]), 10 * 4000)  # the whole conversation

    def test_a_small_request_continuing_a_large_one_is_translated_off_the_loop(self):
        first = self.create({"input": "a" * 100000})["id"]
        threads = []
        translate = codex_proxy.OPENAI_RESPONSES.translate

        def recording(*args):
            threads.append(threading.current_thread() is self.proxy.thread)
            return translate(*args)
        with mock.patch.object(codex_proxy.OPENAI_RESPONSES, "translate", recording):
            self.create({"input": "tiny"})
            self.create({"input": "tiny", "previous_response_id": first})
        self.assertEqual(threads, [True, False])  # on the loop, then in a worker: the history is large

    def test_a_compressed_request_is_counted_as_decoded(self):
        proxy = self.start_proxy(store_max_bytes=60000)
        body = gzip.compress(json.dumps({"model": "gpt-5.5", "input": "a" * 100000}).encode())
        status, _, answer = self.json_request("POST", "/v1/responses", body, {"Content-Encoding": "gzip"}, proxy)
        self.assertEqual(status, 200)
        self.assertEqual(self.get(answer["id"], proxy=proxy)[0], 404)  # 100 kB decoded: over the bound

    def test_store_max_responses_0_keeps_none_quietly(self):
        proxy = self.start_proxy(store_max_responses=0)
        with self.assertLogs("codex_proxy", "INFO") as logs:
            created = self.create({"input": "hi"}, proxy=proxy)  # stored (or not) before the answer is sent
            codex_proxy.log.info("the request is done")  # assertLogs wants one line at least
        self.assertEqual(self.get(created["id"], proxy=proxy)[0], 404)
        self.assertFalse([line for line in logs.output if "too large" in line], logs.output)

    def test_oldest_responses_go_first_beyond_the_byte_budget(self):
        # Each response holds ~10 kB of input: one fits in 15 kB, two do not.
        proxy = self.start_proxy(store_max_bytes=15000)
        first = self.create({"input": "a" * 10000}, proxy=proxy)
        self.assertEqual(self.get(first["id"], proxy=proxy)[0], 200)
        second = self.create({"input": "b" * 10000}, proxy=proxy)
        self.assertEqual(self.get(first["id"], proxy=proxy)[0], 404)
        self.assertEqual(self.get(second["id"], proxy=proxy)[0], 200)

    def test_conversation_and_background_stay_refused(self):
        for field, value in (("conversation", "conv_123"), ("conversation", {"id": "conv_123"}), ("background", True)):
            status, _, answer = self.json_request("POST", "/v1/responses", {"model": "gpt-5.5", "input": "hi",
                                                                            field: value})
            self.assert_openai_error(status, answer, 400, field)
        self.assertEqual(self.upstream(), [])


class ResponseStoreSettingsTests(unittest.TestCase):
    def test_settings(self):
        config = codex_proxy.Config()
        self.assertEqual((config.store_max_responses, config.heartbeat_interval), (1000, 15))
        self.assertIsInstance(config.store_max_bytes, int)
        config = codex_proxy.config_from_args(["--store-max-responses", "7", "--keepalive-interval", "2.5"])
        self.assertEqual((config.store_max_responses, config.heartbeat_interval), (7, 2.5))


# ---------------------------------------------------------------------------
# Remote compaction and input token counts

def compact_body(**fields):
    body = {"model": "gpt-5.5", "instructions": "You are Codex.",
            "input": [user("first"), {"type": "message", "role": "assistant",
                                      "content": [{"type": "output_text", "text": "answer"}]}, user("second")]}
    body.update(fields)
    return body


class CompactTests(ResponsesTestCase):
    def compact(self, body, proxy=None):
        status, _, answer = self.json_request("POST", "/v1/responses/compact", body, proxy=proxy)
        self.assertEqual(status, 200, answer)
        return answer

    def test_compact_goes_upstream_with_only_the_fields_it_takes(self):
        body = compact_body(tools=[WEATHER], parallel_tool_calls=True, reasoning={"effort": "medium"},
                            text={"verbosity": "low"}, prompt_cache_key="thread-1", service_tier="priority",
                            stream=False, store=False, include=["reasoning.encrypted_content"], temperature=0.2,
                            metadata={"a": "b"}, tool_choice="auto", truncation="auto")
        answer = self.compact(body)
        sent = self.fake.requests_to("/backend-api/codex/responses/compact")
        self.assertEqual(len(sent), 1)
        self.assertEqual(set(sent[0].json) - COMPACT_FIELDS, set())
        self.assertEqual((sent[0].json["model"], sent[0].json["prompt_cache_key"]), ("gpt-5.5", "thread-1"))
        self.assertEqual(summary(sent[0].json["input"]), [("message", "user", "first"),
                                                          ("message", "assistant", "answer"),
                                                          ("message", "user", "second")])
        self.assertEqual(self.upstream(), [])  # no /responses call
        # The backend's answer, relayed.
        self.assertEqual(answer["object"], "response.compaction")
        self.assertTrue(answer["id"].startswith("resp_"))
        self.assertEqual([(i["type"], item_text(i)) for i in answer["output"]],
                         [("message", "first"), ("message", "second"), ("compaction", None)])
        self.assertEqual(answer["output"][-1]["encrypted_content"], compaction_content(sent[0].json["input"]))
        self.assertEqual(answer["usage"]["total_tokens"], 19)

    def test_compact_request_is_allowlisted_all_the_way_down(self):
        self.compact(compact_body(reasoning={"effort": "medium", "context": "all_turns"},
                                  tools=[dict(WEATHER, defer_loading=True), dict(APPLY_PATCH, strict=True)]))
        sent = self.fake.requests_to("/responses/compact")[-1].json
        self.assertEqual((sent["reasoning"], sent["tools"]), ({"effort": "medium"}, [WEATHER, APPLY_PATCH]))

    def test_the_compaction_item_is_accepted_in_a_later_turn(self):
        compacted = self.compact(compact_body())
        compaction = compacted["output"][-1]
        self.assertTrue(compaction["encrypted_content"].startswith("enc-compaction-"))
        self.fake.script.append({"text": "After compaction."})
        answer = self.create({"input": compacted["output"] + [user("third")]})  # items as the API returned them
        self.assertEqual(answer["output"][0]["content"][0]["text"], "After compaction.")
        sent = self.upstream()[-1]["input"]
        self.assertEqual(summary(sent), [("message", "user", "first"), ("message", "user", "second"),
                                         ("compaction", None, compaction["encrypted_content"]),
                                         ("message", "user", "third")])
        self.assertEqual(sent[2], {"type": "compaction", "encrypted_content": compaction["encrypted_content"]})

    def test_the_compaction_item_with_previous_response_id(self):
        first = self.create({"input": "hello"})
        compaction = self.compact(compact_body())["output"][-1]
        self.create({"previous_response_id": first["id"], "input": [compaction, user("after")]})
        sent = self.upstream()[-1]["input"]
        self.assertEqual(summary(sent), [("message", "user", "hello"),
                                         ("message", "assistant", fake_upstream.DEFAULT_TEXT),
                                         ("compaction", None, compaction["encrypted_content"]),
                                         ("message", "user", "after")])
        self.assertEqual(sent[2], {"type": "compaction", "encrypted_content": compaction["encrypted_content"]})

    def test_backend_errors_are_relayed(self):
        status, _, answer = self.json_request("POST", "/v1/responses/compact", compact_body(model="gpt-nope"))
        self.assert_openai_error(status, answer, 400)
        self.assertIn("not supported when using Codex with a ChatGPT account", answer["error"]["message"])
        self.fake.script.append(usage_limit_reply())
        status, _, answer = self.json_request("POST", "/v1/responses/compact", compact_body())
        self.assert_openai_error(status, answer, 429)

    def test_input_tokens_is_the_local_estimate(self):
        body = {"model": "gpt-5.5", "instructions": "Be brief.", "tools": [WEATHER],
                "input": [{"role": "user", "content": "Count the tokens of this sentence, all of them, please."}]}
        status, _, answer = self.json_request("POST", "/v1/responses/input_tokens", body)
        self.assertEqual(status, 200, answer)
        self.assertEqual(set(answer), {"object", "input_tokens"})
        self.assertEqual(answer["object"], "response.input_tokens")
        self.assertIsInstance(answer["input_tokens"], int)
        converted = {"instructions": "Be brief.", "tools": [WEATHER],
                     "input": [user("Count the tokens of this sentence, all of them, please.")]}
        self.assertLessEqual(abs(answer["input_tokens"] - codex_proxy.estimate_request_tokens(converted)), 2)
        self.assertEqual([r.path for r in self.fake.requests if not r.path.endswith("/models")], [])
        longer = dict(body, input=body["input"] + [{"role": "user", "content": "More words " * 50}])
        self.assertGreater(self.json_request("POST", "/v1/responses/input_tokens", longer)[2]["input_tokens"],
                           answer["input_tokens"] + 50)

    def test_input_tokens_counts_the_previous_response_too(self):
        self.fake.script.append({"text": "A long answer " * 40})
        first = self.create({"input": "hello"})
        alone = self.json_request("POST", "/v1/responses/input_tokens", {"model": "gpt-5.5", "input": "next"})[2]
        status, _, chained = self.json_request("POST", "/v1/responses/input_tokens", {
            "model": "gpt-5.5", "input": "next", "previous_response_id": first["id"]})
        self.assertEqual(status, 200, chained)
        self.assertGreater(chained["input_tokens"], alone["input_tokens"] + 80)


class ApiKeyModeTests(ResponsesTestCase):
    config_overrides = {"openai_api_key": "sk-test-key", "auth": "apikey"}

    def test_compact_and_input_tokens_are_forwarded(self):
        body = {"model": "gpt-4.1", "input": [{"role": "user", "content": "hello"}], "instructions": "Be brief."}
        status, _, answer = self.json_request("POST", "/v1/responses/compact", body)
        self.assertEqual((status, answer["object"]), (200, "response.compaction"))
        sent = self.fake.requests_to("/v1/responses/compact")
        self.assertEqual(len(sent), 1)
        self.assertEqual((sent[0].json["model"], sent[0].json["input"]), (body["model"], body["input"]))
        self.assertEqual(sent[0].headers["authorization"], "Bearer sk-test-key")
        self.assertEqual(answer["output"][-1]["encrypted_content"], compaction_content(sent[0].json["input"]))
        status, _, answer = self.json_request("POST", "/v1/responses/input_tokens", body)
        sent = self.fake.requests_to("/v1/responses/input_tokens")
        self.assertEqual(len(sent), 1)
        self.assertEqual((status, answer), (200, {"object": "response.input_tokens",
                                                  "input_tokens": fake_input_tokens(sent[0].json)}))

    def test_retrieve_input_items_and_delete_are_forwarded(self):
        self.fake.script.append({"text": "Stored upstream."})
        created = self.create({"model": "gpt-4.1", "input": [{"role": "user", "content": "one"},
                                                              {"role": "user", "content": "two"}]})
        rid = created["id"]
        self.assertIn(rid, self.fake.api_store)
        status, _, got = self.get(rid)
        self.assertEqual((status, got["id"], got["output"][0]["content"][0]["text"]), (200, rid, "Stored upstream."))
        status, _, page = self.get(rid, "/input_items?limit=1&order=asc")
        self.assertEqual((status, [item_text(i) for i in page["data"]], page["has_more"]), (200, ["one"], True))
        listed = self.fake.requests_to("/input_items")
        self.assertEqual(listed[-1].query, {"limit": "1", "order": "asc"})
        status, _, answer = self.json_request("DELETE", "/v1/responses/" + rid)
        self.assertEqual((status, answer), (200, {"id": rid, "object": "response", "deleted": True}))
        status, _, answer = self.get(rid)
        self.assert_openai_error(status, answer, 404)
        self.assertEqual([(r.method, r.path) for r in self.fake.requests_to(rid)],
                         [("GET", "/v1/responses/" + rid), ("DELETE", "/v1/responses/" + rid),
                          ("GET", "/v1/responses/" + rid)])
        self.assertTrue(all(r.headers["authorization"] == "Bearer sk-test-key" for r in self.fake.requests))

    def test_a_model_call_goes_to_the_api_without_the_clients_query(self):
        # A query on a model call is not the API's to read (a client may put its local key there).
        for path, body in (("/v1/chat/completions", {"model": "gpt-4.1", "messages": [{"role": "user",
                                                                                         "content": "Hi"}]}),
                           ("/v1/responses", {"model": "gpt-4.1", "input": "Hi"})):
            with self.subTest(path=path):
                status, _, _ = self.json_request("POST", path + "?api_key=local-secret&x=1", body)
                self.assertEqual(status, 200)
                sent = self.fake.requests_to(path[len("/v1"):])[-1]
                self.assertEqual((sent.path, sent.query), (path, {}))


# ---------------------------------------------------------------------------
# Keep-alives

def chat_body(**fields):
    return dict({"model": "gpt-5.5", "messages": [{"role": "user", "content": "Hi"}]}, **fields)


def messages_body(**fields):
    return dict({"model": "claude-opus-5-5", "max_tokens": 1000, "messages": [{"role": "user", "content": "Hi"}]},
                **fields)


MESSAGES_HEADERS = {"anthropic-version": "2023-06-01", "x-api-key": "anything"}


class KeepAliveTests(ResponsesTestCase):
    config_overrides = {"heartbeat_interval": 0.3}

    def slow(self, text="Slow answer"):
        self.fake.script.append({"text": text, "stall": STALL})

    def assert_between_events(self, raw):
        """Each keep-alive stands alone between two events; (how many, the stream without them)."""
        found = list(KEEPALIVE.finditer(raw))
        for match in found:
            before = KEEPALIVE.sub(b"", raw[:match.start()])
            self.assertTrue(before == b"" or before.endswith(b"\n\n"), raw[max(0, match.start() - 80):match.end() + 20])
        return len(found), KEEPALIVE.sub(b"", raw)

    def test_responses_stream(self):
        self.slow()
        started = time.monotonic()
        status, _, raw = self.request("POST", "/v1/responses", {"model": "gpt-5.5", "input": "hi", "stream": True})
        self.assertGreaterEqual(time.monotonic() - started, STALL)
        self.assertEqual(status, 200)
        count, clean = self.assert_between_events(raw)
        self.assertGreaterEqual(count, 2, raw)
        events = sse_data(clean)
        self.assertEqual(render_sse(events), clean)  # nothing else added or changed
        self.assertEqual(streamed_text(events), "Slow answer")

    def test_chat_stream(self):
        self.slow()
        status, _, raw = self.request("POST", "/v1/chat/completions", chat_body(stream=True))
        self.assertEqual(status, 200)
        count, clean = self.assert_between_events(raw)
        self.assertGreaterEqual(count, 2, raw)
        chunks = [data for _, data in sse_events(clean)]
        self.assertEqual(chunks[-1], "[DONE]")
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in map(json.loads, chunks[:-1])
                       if c["choices"])
        self.assertEqual(text, "Slow answer")

    def test_messages_stream_gets_ping_events(self):
        self.fake.script.append({"text": "no stall"})
        events = self.sse_request("/v1/messages", messages_body(stream=True), MESSAGES_HEADERS)[1]
        baseline = [name for name, _ in events].count("ping")
        self.slow()
        status, events, raw = self.sse_request("/v1/messages", messages_body(stream=True), MESSAGES_HEADERS)
        self.assertEqual(status, 200)
        names = [name for name, _ in events]
        self.assertGreaterEqual(names.count("ping"), baseline + 2, names)
        self.assertEqual(names[0], "message_start")
        self.assertEqual(names[-1], "message_stop")
        self.assertTrue(all(data == {"type": "ping"} for name, data in events if name == "ping"))
        self.assertNotIn(b"keep-alive", raw)
        text = "".join(d["delta"].get("text") or "" for n, d in events if n == "content_block_delta")
        self.assertEqual(text, "Slow answer")

    def test_never_inside_a_json_answer(self):
        for path, body, headers in (("/v1/responses", {"model": "gpt-5.5", "input": "hi"}, None),
                                    ("/v1/chat/completions", chat_body(), None),
                                    ("/v1/messages", messages_body(), MESSAGES_HEADERS)):
            with self.subTest(path=path):
                self.slow()
                status, hdrs, raw = self.request("POST", path, body, headers)
                self.assertEqual(status, 200, raw)
                self.assertTrue(hdrs["content-type"].startswith("application/json"))
                self.assertIn("Slow answer", json.dumps(json.loads(raw.decode())))
                self.assertNotIn(b"keep-alive", raw)
                self.assertNotIn(b"ping", raw)

    def test_only_after_the_interval(self):
        proxy = self.start_proxy(heartbeat_interval=15)
        self.slow()
        status, _, raw = self.request("POST", "/v1/responses", {"model": "gpt-5.5", "input": "hi", "stream": True},
                                      proxy=proxy)
        self.assertEqual(status, 200)
        self.assertNotIn(b"keep-alive", raw)
        self.assertEqual(render_sse(sse_data(raw)), raw)


# ---------------------------------------------------------------------------
# Sub-agents of Claude Code

class SubAgentCacheKeyTests(ResponsesTestCase):
    def cache_key(self, agent=None, session=SESSION, turns=1):
        messages = [{"role": "user", "content": "Task"}]
        for n in range(1, turns):
            messages += [{"role": "assistant", "content": "Answer %d" % n}, {"role": "user", "content": "More %d" % n}]
        headers = dict(MESSAGES_HEADERS, **{"X-Claude-Code-Session-Id": session})
        if agent:
            headers["x-claude-code-agent-id"] = agent
        status, _, answer = self.json_request("POST", "/v1/messages", messages_body(messages=messages), headers)
        self.assertEqual(status, 200, answer)
        return self.upstream()[-1]["prompt_cache_key"]

    def test_each_sub_agent_has_its_own_stable_key(self):
        self.assertEqual(self.cache_key(), SESSION)  # the main conversation: the session, as before
        first, second = self.cache_key("agent-a1b2"), self.cache_key("agent-c3d4")
        self.assertNotEqual(first, second)
        self.assertNotIn(SESSION, (first, second))
        self.assertEqual(self.cache_key("agent-a1b2", turns=2), first)  # every turn of that agent
        self.assertEqual(self.cache_key("agent-a1b2", turns=3), first)
        self.assertEqual(self.cache_key("agent-c3d4", turns=2), second)
        other_session = self.cache_key("agent-a1b2", session="0a3e2f51-7d4c-4b7e-9d38-2f1c9b7a6e55")
        self.assertNotIn(other_session, (first, second))
        self.assertEqual(self.cache_key(turns=2), SESSION)


# ---------------------------------------------------------------------------
# Custom (freeform) tools

class CustomToolTests(ResponsesTestCase):
    def test_custom_tool_call_streams_through_and_its_output_goes_back(self):
        self.fake.script.append({"text": "Patching.", "custom_tool_calls": [
            {"name": "apply_patch", "input": PATCH, "call_id": "call_patch_1"}]})
        events, raw = self.stream({"input": "Add hello.txt", "tools": [APPLY_PATCH]})
        self.assertEqual(render_sse(events), raw)
        self.assertEqual(self.upstream()[-1]["tools"], [APPLY_PATCH])
        self.assertEqual("".join(e["delta"] for e in events if e["type"] == "response.custom_tool_call_input.delta"),
                         PATCH)
        call = [e["item"] for e in events if e["type"] == "response.output_item.done"][-1]
        self.assertEqual((call["type"], call["call_id"], call["input"]), ("custom_tool_call", "call_patch_1", PATCH))
        self.fake.script.append({"text": "Done."})
        answer = self.create({"tools": [APPLY_PATCH], "input": [
            user("Add hello.txt"), {"role": "assistant", "content": "Patching."}, call,
            {"type": "custom_tool_call_output", "call_id": "call_patch_1",
             "output": "Success. Updated the following files:\nA hello.txt\n"}]})
        self.assertEqual(answer["output"][0]["content"][0]["text"], "Done.")
        sent = self.upstream()[-1]["input"]
        self.assertEqual(summary(sent)[2:], [("custom_tool_call", "call_patch_1", PATCH),
                                             ("custom_tool_call_output", "call_patch_1",
                                              "Success. Updated the following files:\nA hello.txt\n")])
        self.assertEqual(sent[2]["name"], "apply_patch")

    def test_custom_tool_call_in_a_json_answer_and_through_previous_response_id(self):
        self.fake.script.append({"custom_tool_calls": [{"name": "apply_patch", "input": PATCH, "call_id": "call_p2"}]})
        first = self.create({"input": "Add hello.txt", "tools": [APPLY_PATCH]})
        self.assertEqual([(i["type"], i["input"]) for i in first["output"]], [("custom_tool_call", PATCH)])
        self.create({"previous_response_id": first["id"], "tools": [APPLY_PATCH], "input": [
            {"type": "custom_tool_call_output", "call_id": "call_p2", "output": "Done!"}]})
        self.assertEqual(summary(self.upstream()[-1]["input"]), [
            ("message", "user", "Add hello.txt"), ("custom_tool_call", "call_p2", PATCH),
            ("custom_tool_call_output", "call_p2", "Done!")])


# ---------------------------------------------------------------------------
# Through the official SDKs

def sdk_text(item):
    return item_text(item.to_dict())


@unittest.skipIf(openai is None, "the openai package is not installed (CI installs it)")
class OpenAISDKResponsesTests(ResponsesTestCase):
    def client(self):
        return self.sdk_client(openai.OpenAI, "/v1")

    def test_stream_final_response_is_whole(self):
        self.fake.script.append({"reasoning": "Plan.", "text": "Streamed in full.", "empty_completed_output": True,
                                 "usage": {"input_tokens": 40, "cached_tokens": 8, "output_tokens": 9,
                                           "reasoning_tokens": 3}})
        with self.client().responses.stream(model="gpt-5.5", input="Hi") as stream:
            final = stream.get_final_response()
        self.assertEqual([item.type for item in final.output], ["reasoning", "message"])
        self.assertEqual(final.output_text, "Streamed in full.")
        self.assertTrue(final.output[0].encrypted_content.startswith("enc-"))
        usage = final.usage
        self.assertEqual((usage.input_tokens, usage.input_tokens_details.cached_tokens, usage.output_tokens,
                          usage.output_tokens_details.reasoning_tokens, usage.total_tokens), (40, 8, 9, 3, 49))

    def test_three_turn_conversation_by_previous_response_id(self):
        client = self.client()
        self.fake.script.append({"reasoning": "Think one.", "text": "Answer one."})
        first = client.responses.create(model="gpt-5.5", instructions="Be brief.", input="Question one")
        self.fake.script.append({"reasoning": "Think two.", "text": "Answer two.", "empty_completed_output": True})
        with client.responses.stream(model="gpt-5.5", instructions="Be brief.", input="Question two",
                                     previous_response_id=first.id) as stream:
            second = stream.get_final_response()
        self.fake.script.append({"text": "Answer three."})
        third = client.responses.create(model="gpt-5.5", instructions="Be brief.", previous_response_id=second.id,
                                        input=[{"role": "user", "content": "Question three"}])
        self.assertEqual(third.output_text, "Answer three.")
        self.assertEqual(summary(self.upstream()[-1]["input"]), [
            ("message", "user", "Question one"),
            ("reasoning", None, first.output[0].encrypted_content),
            ("message", "assistant", "Answer one."),
            ("message", "user", "Question two"),
            ("reasoning", None, second.output[0].encrypted_content),
            ("message", "assistant", "Answer two."),
            ("message", "user", "Question three")])
        self.assertNotEqual(first.output[0].encrypted_content, second.output[0].encrypted_content)

    def test_retrieve_input_items_and_delete(self):
        client = self.client()
        texts = ["m0", "m1", "m2", "m3", "m4"]
        self.fake.script.append({"text": "Stored."})
        created = client.responses.create(model="gpt-5.5", input=[{"role": "developer", "content": "m0"}] + [
            {"role": "user", "content": t} for t in texts[1:]])
        got = client.responses.retrieve(created.id)
        self.assertEqual((got.id, got.status, got.output_text), (created.id, "completed", "Stored."))
        page = client.responses.input_items.list(created.id, limit=2, order="asc")
        self.assertEqual(([sdk_text(i) for i in page.data], page.has_more), (texts[:2], True))
        every = list(client.responses.input_items.list(created.id, limit=2, order="asc"))  # pages by `after`
        self.assertEqual([sdk_text(i) for i in every], texts)
        self.assertEqual([sdk_text(i) for i in client.responses.input_items.list(created.id)], texts[::-1])
        self.assertIsNone(client.responses.delete(created.id))
        with self.assertRaises(openai.NotFoundError):
            client.responses.retrieve(created.id)

    def test_unknown_ids_raise_not_found(self):
        client = self.client()
        with self.assertRaises(openai.NotFoundError):
            client.responses.retrieve("resp_never_made")
        with self.assertRaises(openai.NotFoundError) as caught:
            client.responses.create(model="gpt-5.5", input="hi", previous_response_id="resp_never_made")
        self.assertEqual(caught.exception.param, "previous_response_id")
        with self.assertRaises(openai.NotFoundError):
            list(client.responses.input_items.list("resp_never_made"))
        with self.assertRaises(openai.NotFoundError):
            client.responses.delete("resp_never_made")

    def test_compact_then_continue_from_the_compaction(self):
        client = self.client()
        compacted = client.responses.compact(model="gpt-5.5", instructions="Be brief.", input=[
            {"role": "user", "content": "first"}, {"role": "assistant", "content": "answer"},
            {"role": "user", "content": "second"}])
        self.assertEqual(compacted.object, "response.compaction")
        self.assertEqual([item.type for item in compacted.output], ["message", "message", "compaction"])
        compaction = compacted.output[-1]
        self.assertTrue(compaction.encrypted_content.startswith("enc-compaction-"))
        self.assertEqual(compacted.usage.total_tokens, 19)
        sent = self.fake.requests_to("/responses/compact")[-1].json
        self.assertEqual(set(sent) - COMPACT_FIELDS, set())
        self.fake.script.append({"text": "After compaction."})
        answer = client.responses.create(model="gpt-5.5", input=[compaction.model_dump(exclude_none=True),
                                                                 {"role": "user", "content": "third"}])
        self.assertEqual(answer.output_text, "After compaction.")
        sent = self.upstream()[-1]["input"]
        self.assertEqual(sent[0], {"type": "compaction", "encrypted_content": compaction.encrypted_content})
        self.assertEqual(summary(sent[1:]), [("message", "user", "third")])

    @unittest.skipIf(bpe_openai is None, "bpe_openai is not installed: no o200k_base oracle")
    def test_input_tokens_count_is_close_to_o200k(self):
        encoding = bpe_openai.get_encoding("o200k_base")

        def true_count(text):
            return len(encoding.encode_ordinary(text))
        instructions = "You are a careful assistant. Answer briefly and cite the files you read."
        text = ("The proxy accepts requests in one wire format, rewrites them into another, and streams the answer "
                "back as if nothing had happened in between. Most of the work is bookkeeping: every message, tool "
                "call and tool result keeps its identity across the translation, and every streamed event arrives "
                "in the order the client expects. When a conversation grows long, the client asks how many tokens "
                "its next request holds, and compacts the history before it reaches the context window. ") * 3
        question = "Which files define the request translation, and where are tool calls paired with outputs?"
        count = self.client().responses.input_tokens.count(model="gpt-5.5", instructions=instructions, tools=[WEATHER],
                                                            input=[{"role": "user", "content": text},
                                                                   {"role": "user", "content": question}])
        self.assertEqual(count.object, "response.input_tokens")
        # The oracle: exact counts plus the same chat framing as tests/test_count_tokens_oracle.py
        # (3 of reply priming, 4 per instructions block and input item, 8 per tool).
        oracle = 3 + (4 + true_count(instructions)) + (4 + true_count(text)) + (4 + true_count(question)) + (
            8 + true_count(WEATHER["name"]) + true_count(WEATHER["description"])
            + true_count(json.dumps(WEATHER["parameters"], separators=(",", ":"))))
        error = (count.input_tokens - oracle) / float(oracle)
        self.assertLessEqual(abs(error), 0.15, "estimate %d vs o200k %d" % (count.input_tokens, oracle))
        self.assertEqual([r.path for r in self.fake.requests if not r.path.endswith("/models")], [])


@unittest.skipIf(openai is None and anthropic is None, "neither openai nor anthropic is installed (CI installs both)")
class SDKKeepAliveTests(ResponsesTestCase):
    """The SDKs parse streams that carry keep-alives (comments; Anthropic ping events)."""

    config_overrides = {"heartbeat_interval": 0.3}

    def slow(self, text):
        self.fake.script.append({"text": text, "stall": STALL})

    @unittest.skipIf(openai is None, "the openai package is not installed")
    def test_openai_chat_and_responses_streams(self):
        client = openai.OpenAI(base_url="http://127.0.0.1:%d/v1" % self.proxy.port, api_key="unused", max_retries=0)
        self.addCleanup(client.close)
        self.slow("Slow chat")
        started = time.monotonic()
        stream = client.chat.completions.create(model="gpt-5.5", messages=[{"role": "user", "content": "Hi"}],
                                                stream=True)
        self.assertEqual("".join(c.choices[0].delta.content or "" for c in stream if c.choices), "Slow chat")
        self.assertGreaterEqual(time.monotonic() - started, STALL)
        self.slow("Slow responses")
        with client.responses.stream(model="gpt-5.5", input="Hi") as stream:
            kinds = [event.type for event in stream]
            final = stream.get_final_response()
        self.assertEqual(final.output_text, "Slow responses")
        self.assertEqual(kinds[-1], "response.completed")

    @unittest.skipIf(anthropic is None, "the anthropic package is not installed")
    def test_anthropic_messages_stream(self):
        client = anthropic.Anthropic(base_url="http://127.0.0.1:%d" % self.proxy.port, api_key="unused",
                                     max_retries=0)
        self.addCleanup(client.close)
        self.slow("Slow message")
        with client.messages.stream(model="claude-opus-5-5", max_tokens=1000,
                                    messages=[{"role": "user", "content": "Hi"}]) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
        self.assertEqual(text, "Slow message")
        self.assertEqual((final.content[-1].text, final.stop_reason), ("Slow message", "end_turn"))


if __name__ == "__main__":
    unittest.main()
