"""/v1/messages end to end: the real proxy against the strict fake backend, over raw
HTTP and, where it is installed, through the official anthropic SDK."""

import json
import os
import re
import unittest

from fake_upstream import overloaded_reply, usage_limit_reply
from support import ProxyTestCase, optional_module

anthropic = optional_module("anthropic")  # the core suite runs without it

SESSION = "154b6957-a6bf-4dd6-a578-711c942ce84a"
WRITE_TOOL = {"name": "Write", "description": "Writes a file",
              "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"},
                                                                "content": {"type": "string"}},
                               "required": ["file_path", "content"], "additionalProperties": False}}
WRITE_ARGS = {"file_path": "/tmp/hello.txt", "content": "line one\nline \"two\"\n"}
HEADERS = {"anthropic-version": "2023-06-01", "x-api-key": "anything",
           "X-Claude-Code-Session-Id": SESSION}


def claude_code_body(**fields):
    """Shaped like Claude Code 2.1.328's first request (see shared/reference)."""
    body = {"model": "claude-opus-5-5", "max_tokens": 128000, "stream": True,
            "system": [{"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.328;"},
                       {"type": "text", "text": "You are a Claude agent.", "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Write hello.txt"}]},
                         {"role": "system", "content": [{"type": "text", "text": "# Environment\ncwd: /tmp",
                                                         "cache_control": {"type": "ephemeral"}}]}],
            "tools": [WRITE_TOOL, {"name": "Deferred", "input_schema": {"type": "object", "properties": {}},
                                   "defer_loading": True}],
            "metadata": {"user_id": json.dumps({"device_id": "d", "session_id": SESSION})},
            "thinking": {"type": "adaptive"}, "output_config": {"effort": "medium"},
            "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]}}
    body.update(fields)
    return body


class MessagesOverHTTPTests(ProxyTestCase):
    def stream(self, body, path="/v1/messages?beta=true"):
        status, events, raw = self.sse_request(path, body, HEADERS)
        self.assertEqual(status, 200, raw)
        return events

    def test_claude_code_tool_round_trip(self):
        self.fake.script.append({"reasoning": "I should write the file.", "text": "Writing it now.",
                                 "tool_calls": [{"name": "Write", "arguments": json.dumps(WRITE_ARGS),
                                                 "call_id": "call_w1"}],
                                 "usage": {"input_tokens": 900, "cached_tokens": 800, "output_tokens": 40,
                                           "reasoning_tokens": 10}})
        events = self.stream(claude_code_body())
        names = [name for name, _ in events]
        self.assertEqual(names[:2], ["message_start", "ping"])
        self.assertEqual(names[-2:], ["message_delta", "message_stop"])
        start = events[0][1]["message"]
        self.assertEqual((start["model"], start["role"], start["content"]), ("claude-opus-5-5", "assistant", []))
        blocks = [data["content_block"] for name, data in events if name == "content_block_start"]
        self.assertEqual([b["type"] for b in blocks], ["thinking", "text", "tool_use"])
        tool = blocks[2]
        self.assertEqual((tool["id"], tool["name"], tool["input"]), ("call_w1", "Write", {}))
        pieces = [d["delta"]["partial_json"] for n, d in events
                  if n == "content_block_delta" and d["delta"]["type"] == "input_json_delta"]
        self.assertGreater(len(pieces), 1)
        self.assertEqual(json.loads("".join(pieces)), WRITE_ARGS)
        signature = "".join(d["delta"]["signature"] for n, d in events
                            if n == "content_block_delta" and d["delta"]["type"] == "signature_delta")
        self.assertTrue(signature)
        delta = events[-2][1]
        self.assertEqual(delta["delta"]["stop_reason"], "tool_use")
        self.assertEqual((delta["usage"]["input_tokens"], delta["usage"]["cache_read_input_tokens"],
                          delta["usage"]["output_tokens"]), (100, 800, 40))

        sent = self.fake.requests_to("/responses")[-1]
        self.assertEqual(sent.json["model"], "gpt-5.5")
        self.assertEqual(sent.json["prompt_cache_key"], SESSION)
        self.assertEqual(sent.headers["session_id"], SESSION)
        self.assertEqual(sent.json["instructions"], "You are a Claude agent.")
        self.assertEqual(sent.json["input"][1]["role"], "developer")
        self.assertEqual([t["name"] for t in sent.json["tools"]], ["Write", "Deferred"])

        # Turn two: Claude Code replays thinking, text and tool_use, then the tool_result.
        self.fake.script.append({"text": "Done: wrote /tmp/hello.txt."})
        history = claude_code_body(stream=False)
        history["messages"] += [
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "I should write the file.", "signature": signature},
                {"type": "text", "text": "Writing it now."},
                {"type": "tool_use", "id": "call_w1", "name": "Write", "input": WRITE_ARGS}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_w1",
                                          "content": "File created successfully"}]}]
        status, _, answer = self.json_request("POST", "/v1/messages?beta=true", history, HEADERS)
        self.assertEqual(status, 200, answer)
        self.assertEqual((answer["content"][-1]["type"], answer["content"][-1]["text"]),
                         ("text", "Done: wrote /tmp/hello.txt."))
        self.assertEqual(answer["stop_reason"], "end_turn")
        items = self.fake.requests_to("/responses")[-1].json["input"]
        kinds = [i["type"] for i in items]
        self.assertEqual(kinds[-3:], ["message", "function_call", "function_call_output"])
        self.assertIn("reasoning", kinds)
        reasoning = items[kinds.index("reasoning")]
        self.assertTrue(reasoning["encrypted_content"].startswith("enc-"))
        self.assertIn(reasoning["encrypted_content"], signature)
        self.assertEqual((items[-2]["call_id"], items[-1]["call_id"], items[-1]["output"]),
                         ("call_w1", "call_w1", "File created successfully"))
        self.assertEqual(json.loads(items[-2]["arguments"]), WRITE_ARGS)

    def test_model_mapping_and_stop_sequences(self):
        self.fake.script.append({"text": "alpha beta END gamma"})
        body = {"model": "claude-haiku-4-5", "max_tokens": 100, "stop_sequences": ["END"],
                "messages": [{"role": "user", "content": "Hi"}]}
        status, _, answer = self.json_request("POST", "/v1/messages", body, HEADERS)
        self.assertEqual(status, 200, answer)
        self.assertEqual(self.fake.requests_to("/responses")[-1].json["model"], "gpt-5.5-mini")
        self.assertEqual(answer["model"], "claude-haiku-4-5")
        self.assertEqual(answer["content"][0]["text"], "alpha beta ")
        self.assertEqual((answer["stop_reason"], answer["stop_sequence"]), ("stop_sequence", "END"))

    def test_max_tokens_stop_reason(self):
        self.fake.script.append({"text": "cut", "incomplete": "max_output_tokens"})
        status, _, answer = self.json_request("POST", "/v1/messages", {
            "model": "claude-sonnet-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}]}, HEADERS)
        self.assertEqual((status, answer["stop_reason"]), (200, "max_tokens"))

    def test_errors_in_the_anthropic_shape(self):
        cases = [({"model": "claude-x", "max_tokens": 5, "messages": []}, None, 400, "invalid_request_error"),
                 ({"model": "claude-x", "max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}]},
                  usage_limit_reply(60), 429, "rate_limit_error"),
                 ({"model": "claude-x", "max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}]},
                  overloaded_reply(), 529, "overloaded_error")]
        for body, reply, status, kind in cases:
            if reply:
                self.fake.script.append(reply)
            got, headers, answer = self.json_request("POST", "/v1/messages", body, HEADERS)
            self.assertEqual((got, answer["type"], answer["error"]["type"]), (status, "error", kind), answer)
            self.assertTrue(answer["error"]["message"])
            if status == 429:
                self.assertIn("retry-after", headers)
        status, _, answer = self.json_request("POST", "/v1/messages", b"{oops", HEADERS)
        self.assertEqual((status, answer["error"]["type"]), (400, "invalid_request_error"))

    def test_failure_mid_stream_is_an_error_event_without_message_stop(self):
        for reply in ({"text": "partial", "fail": {"code": "server_error", "message": "boom"}},
                      {"text": "partial", "cut": True}):
            self.fake.script.append(reply)
            events = self.stream({"model": "claude-x", "max_tokens": 5, "stream": True,
                                  "messages": [{"role": "user", "content": "Hi"}]})
            names = [name for name, _ in events]
            self.assertEqual(names[-1], "error")
            self.assertNotIn("message_stop", names)
            self.assertEqual(events[-1][1]["type"], "error")

    def test_context_overflow_speaks_the_words_claude_code_compacts_on(self):
        pattern = r"^prompt is too long: \d+ tokens > 272000 maximum$"
        body = {"model": "claude-x", "max_tokens": 5, "messages": [{"role": "user", "content": "Hi " * 200}]}
        self.fake.script.append({"fail": {"code": "context_length_exceeded",
                                          "message": "Your input exceeds the context window of this model."}})
        status, _, answer = self.json_request("POST", "/v1/messages", body, HEADERS)
        self.assertEqual((status, answer["error"]["type"]), (400, "invalid_request_error"))
        self.assertRegex(answer["error"]["message"], pattern)
        self.fake.script.append({"fail": {"code": "context_length_exceeded", "message": "too long"}})
        events = self.stream(dict(body, stream=True))
        self.assertEqual(events[-1][0], "error")
        self.assertRegex(events[-1][1]["error"]["message"], pattern)
        self.fake.script.append({"status": 400, "body": {"detail": "Your input exceeds the context window."}})
        status, _, answer = self.json_request("POST", "/v1/messages", body, HEADERS)
        self.assertEqual(status, 400)
        self.assertRegex(answer["error"]["message"], pattern)
        # The backend knows best that it overflowed: a low estimate still reads as over the maximum.
        tokens = int(re.match(r"prompt is too long: (\d+)", answer["error"]["message"]).group(1))
        self.assertGreater(tokens, 272000)

    def test_count_tokens(self):
        body = claude_code_body()
        status, _, answer = self.json_request("POST", "/v1/messages/count_tokens?beta=true",
                                              {k: body[k] for k in ("model", "system", "messages", "tools")}, HEADERS)
        self.assertEqual(status, 200, answer)
        self.assertEqual(set(answer), {"input_tokens"})
        self.assertGreater(answer["input_tokens"], 30)
        self.assertEqual(self.fake.requests_to("/responses"), [])  # counted locally

    def test_counting_needs_no_login(self):
        # An estimate is made here: neither a login nor the model catalog is needed for one.
        os.remove(os.path.join(self.home, "auth.json"))
        body = {"model": "claude-opus-5-5", "messages": [{"role": "user", "content": "Hello there"}]}
        status, _, answer = self.json_request("POST", "/v1/messages/count_tokens", body, HEADERS)
        self.assertEqual(status, 200, answer)
        self.assertGreater(answer["input_tokens"], 0)
        status, _, answer = self.json_request("POST", "/v1/responses/input_tokens",
                                              {"model": "gpt-5.5", "input": "Hello there"})
        self.assertEqual((status, answer["object"]), (200, "response.input_tokens"), answer)
        status, _, answer = self.json_request("POST", "/v1/messages", dict(body, max_tokens=5), HEADERS)
        self.assertEqual(status, 401, answer)  # an answer still needs the login


class MessagesApiKeyModeTests(ProxyTestCase):
    config_overrides = {"openai_api_key": "sk-test-key", "auth": "apikey"}

    def test_translated_to_the_public_responses_api_with_sampling_kept(self):
        self.fake.script.append({"text": "Hi from the API"})
        status, _, answer = self.json_request("POST", "/v1/messages", {
            "model": "claude-opus-5-5", "max_tokens": 321, "temperature": 0.4, "top_p": 0.9,
            "system": "Be terse.", "messages": [{"role": "user", "content": "Hi"}]}, HEADERS)
        self.assertEqual(status, 200, answer)
        self.assertEqual((answer["content"][0]["text"], answer["model"]), ("Hi from the API", "claude-opus-5-5"))
        sent = self.fake.requests_to("/v1/responses")[-1]
        self.assertEqual(sent.headers["authorization"], "Bearer sk-test-key")
        self.assertEqual(sent.json["model"], "gpt-5")  # the newest plain gpt model of the API's list
        self.assertEqual((sent.json["max_output_tokens"], sent.json["temperature"], sent.json["top_p"]),
                         (321, 0.4, 0.9))
        self.assertEqual(sent.json["instructions"], "Be terse.")


@unittest.skipIf(anthropic is None, "the anthropic package is not installed (CI installs it)")
class AnthropicSDKTests(ProxyTestCase):
    def client(self):
        return self.sdk_client(anthropic.Anthropic)

    def test_sdk_create_and_stream_helper(self):
        self.fake.script.append({"text": "Hello from Codex"})
        message = self.client().messages.create(model="claude-opus-5-5", max_tokens=100,
                                                messages=[{"role": "user", "content": "Hi"}])
        self.assertEqual(message.content[0].text, "Hello from Codex")
        self.assertEqual(message.stop_reason, "end_turn")
        self.fake.script.append({"reasoning": "thinking hard", "text": "Let me write.",
                                 "tool_calls": [{"name": "Write", "arguments": json.dumps(WRITE_ARGS),
                                                 "call_id": "call_s1"}]})
        with self.client().messages.stream(model="claude-opus-5-5", max_tokens=1000, tools=[WRITE_TOOL],
                                           thinking={"type": "enabled", "budget_tokens": 2000},
                                           messages=[{"role": "user", "content": "Write it"}]) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
        self.assertEqual(text, "Let me write.")
        self.assertEqual([b.type for b in final.content], ["thinking", "text", "tool_use"])
        self.assertEqual(final.content[0].thinking, "thinking hard")
        self.assertEqual((final.content[2].name, final.content[2].input), ("Write", WRITE_ARGS))
        self.assertEqual(final.stop_reason, "tool_use")
        self.assertEqual(self.fake.requests_to("/responses")[-1].json["reasoning"]["effort"], "medium")

    def test_sdk_web_search_with_citations(self):
        self.fake.script.append({"web_search": {"query": "python release"}, "text": "Python 3.14 is out.",
                                 "citations": [{"url": "https://python.org", "title": "Python", "start": 0, "end": 11}]})
        with self.client().messages.stream(model="claude-opus-5-5", max_tokens=100,
                                           tools=[{"type": "web_search_20250305", "name": "web_search"}],
                                           messages=[{"role": "user", "content": "News?"}]) as stream:
            final = stream.get_final_message()
        self.assertEqual([b.type for b in final.content], ["server_tool_use", "web_search_tool_result", "text"])
        citation = final.content[2].citations[0]
        self.assertEqual((citation.type, citation.url, citation.title, citation.cited_text),
                         ("web_search_result_location", "https://python.org", "Python", "Python 3.14"))
        self.assertEqual(final.usage.server_tool_use.web_search_requests, 1)

    def test_sdk_errors_and_count_tokens(self):
        self.fake.script.append(usage_limit_reply())
        with self.assertRaises(anthropic.RateLimitError):
            self.client().messages.create(model="claude-opus-5-5", max_tokens=10,
                                          messages=[{"role": "user", "content": "Hi"}])
        with self.assertRaises(anthropic.BadRequestError):
            self.client().messages.create(model="claude-opus-5-5", max_tokens=10, messages=[])
        count = self.client().messages.count_tokens(model="claude-opus-5-5",
                                                    messages=[{"role": "user", "content": "Hello there"}])
        self.assertGreater(count.input_tokens, 0)


if __name__ == "__main__":
    unittest.main()
