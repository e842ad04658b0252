"""/v1/chat/completions end to end: the real proxy against the strict fake backend,
over raw HTTP and, where it is installed, through the official openai SDK."""

import json
import os
import unittest

from fake_upstream import usage_limit_reply
from support import ProxyTestCase

try:
    import openai
except ImportError:  # the core suite runs without it
    if os.environ.get("CODEX_PROXY_REQUIRE_OPTIONAL"):
        raise
    openai = None

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                          "required": ["city"]}}}]
WEATHER_CALLS = [{"name": "get_weather", "arguments": '{"city": "Paris"}', "call_id": "call_a"},
                 {"name": "get_weather", "arguments": '{"city": "Tokyo", "units": "metric"}', "call_id": "call_b"}]


class ChatOverHTTPTests(ProxyTestCase):
    def chat(self, **fields):
        body = {"model": "gpt-5.5", "messages": [{"role": "user", "content": "Hi"}]}
        body.update(fields)
        return body

    def stream(self, body):
        status, events, raw = self.sse_request("/v1/chat/completions", body)
        self.assertEqual(status, 200, raw)
        return [data for _, data in events], raw

    def test_streamed_text_with_usage(self):
        self.fake.script.append({"text": "Hello there", "reasoning": "Let me think",
                                 "usage": {"input_tokens": 100, "cached_tokens": 40, "output_tokens": 30,
                                           "reasoning_tokens": 12}})
        chunks, raw = self.stream(self.chat(stream=True, stream_options={"include_usage": True}))
        self.assertEqual(chunks[-1], "[DONE]")
        chunks = chunks[:-1]
        self.assertEqual(chunks[0]["choices"][0]["delta"]["role"], "assistant")
        content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        reasoning = "".join(c["choices"][0]["delta"].get("reasoning_content") or "" for c in chunks if c["choices"])
        self.assertEqual((content, reasoning), ("Hello there", "Let me think"))
        finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
        self.assertEqual(finishes, ["stop"])
        self.assertEqual(chunks[-1]["choices"], [])
        self.assertEqual(chunks[-1]["usage"], {"prompt_tokens": 100, "completion_tokens": 30, "total_tokens": 130,
                                               "prompt_tokens_details": {"cached_tokens": 40},
                                               "completion_tokens_details": {"reasoning_tokens": 12}})

    def test_two_turn_tool_conversation(self):
        self.fake.script.append({"tool_calls": WEATHER_CALLS[:1]})
        status, _, answer = self.json_request("POST", "/v1/chat/completions", self.chat(tools=TOOLS))
        self.assertEqual(status, 200)
        choice = answer["choices"][0]
        self.assertEqual(choice["finish_reason"], "tool_calls")
        self.assertIsNone(choice["message"]["content"])
        call = choice["message"]["tool_calls"][0]
        self.assertEqual((call["id"], call["function"]["name"], json.loads(call["function"]["arguments"])),
                         ("call_a", "get_weather", {"city": "Paris"}))
        sent_tools = self.fake.requests_to("/responses")[-1].json["tools"]
        self.assertEqual(sent_tools[0]["name"], "get_weather")
        self.assertFalse(sent_tools[0]["strict"])

        self.fake.script.append({"text": "It is sunny in Paris."})
        history = [{"role": "user", "content": "Hi"}, choice["message"],
                   {"role": "tool", "tool_call_id": "call_a", "content": "sunny, 21C"}]
        status, _, answer = self.json_request("POST", "/v1/chat/completions", self.chat(messages=history, tools=TOOLS))
        self.assertEqual(status, 200)
        self.assertEqual(answer["choices"][0]["message"]["content"], "It is sunny in Paris.")
        items = self.fake.requests_to("/responses")[-1].json["input"]
        self.assertEqual([i["type"] for i in items], ["message", "function_call", "function_call_output"])
        self.assertEqual((items[1]["call_id"], items[2]["call_id"], items[2]["output"]),
                         ("call_a", "call_a", "sunny, 21C"))

    def test_parallel_tool_calls_stream_reassembled(self):
        self.fake.script.append({"text": "Checking both.", "tool_calls": WEATHER_CALLS})
        chunks, _ = self.stream(self.chat(stream=True, tools=TOOLS))
        calls = {}
        for chunk in chunks[:-1]:
            for piece in chunk["choices"][0]["delta"].get("tool_calls") or ():
                call = calls.setdefault(piece["index"], {"id": None, "name": "", "arguments": ""})
                call["id"] = piece.get("id") or call["id"]
                call["name"] += piece.get("function", {}).get("name") or ""
                call["arguments"] += piece.get("function", {}).get("arguments") or ""
        self.assertEqual(calls, {0: {"id": "call_a", "name": "get_weather", "arguments": WEATHER_CALLS[0]["arguments"]},
                                 1: {"id": "call_b", "name": "get_weather", "arguments": WEATHER_CALLS[1]["arguments"]}})
        self.assertEqual(chunks[-2]["choices"][0]["finish_reason"], "tool_calls")

    def test_stop_sequence_cuts_the_answer(self):
        self.fake.script.append({"text": "one two STOP three four"})
        status, _, answer = self.json_request("POST", "/v1/chat/completions", self.chat(stop=["STOP"]))
        self.assertEqual(answer["choices"][0]["message"]["content"], "one two ")
        self.assertEqual(answer["choices"][0]["finish_reason"], "stop")

    def test_a_stop_sequence_ends_the_answer_and_the_upstream_request(self):
        # Upstream would take ~12 s (120 pieces 0.1 s apart); the stop comes in its first ones.
        for stream in (False, True):
            with self.subTest(stream=stream):
                self.fake.stream_closed_early.clear()
                self.fake.script.append({"text": "one STOP two ", "events_repeat": 40, "delay": 0.1})
                status, _, raw = self.request("POST", "/v1/chat/completions",
                                              self.chat(stop=["STOP"], stream=stream), timeout=5)
                self.assertEqual(status, 200)
                self.assertIn(b'"finish_reason":"stop"', raw)
                self.assertTrue(self.fake.stream_closed_early.wait(5), "the upstream request stayed open")

    def test_length_and_refused_parameters(self):
        self.fake.script.append({"text": "partial", "incomplete": "max_output_tokens"})
        status, _, answer = self.json_request("POST", "/v1/chat/completions", self.chat(
            max_tokens=5, temperature=0.1, top_p=0.5, seed=1, user="u", presence_penalty=0.2))
        self.assertEqual((status, answer["choices"][0]["finish_reason"]), (200, "length"))
        self.assertEqual(answer["usage"]["total_tokens"], 19)

    def test_client_errors(self):
        for body, param in (({"messages": [{"role": "user", "content": "x"}]}, "model"),
                            (self.chat(messages=[]), "messages"),
                            (self.chat(n=2), "n")):
            status, _, answer = self.json_request("POST", "/v1/chat/completions", body)
            self.assertEqual(status, 400, body)
            self.assertEqual(answer["error"]["param"], param)
            self.assertEqual(answer["error"]["type"], "invalid_request_error")
        status, _, answer = self.json_request("POST", "/v1/chat/completions", self.chat(
            messages=[{"role": "tool", "tool_call_id": "nope", "content": "x"}]))
        self.assertEqual(status, 400)
        self.assertIn("nope", answer["error"]["message"])

    def test_usage_limit_becomes_429_with_retry_after(self):
        self.fake.script.append(usage_limit_reply(resets_in_seconds=90))
        status, headers, answer = self.json_request("POST", "/v1/chat/completions", self.chat())
        self.assertEqual(status, 429)
        # The backend's own type and reset times: what the Codex CLI needs to stop and say when.
        self.assertEqual((answer["error"]["type"], answer["error"]["code"]), ("usage_limit_reached",) * 2)
        self.assertEqual((answer["error"]["plan_type"], answer["error"]["resets_in_seconds"]), ("plus", 90))
        self.assertIsInstance(answer["error"]["resets_at"], int)
        self.assertIn("usage limit", answer["error"]["message"])
        self.assertIn(headers["retry-after"], ("89", "90"))

    def test_upstream_400_text_is_surfaced(self):
        status, _, answer = self.json_request("POST", "/v1/chat/completions", self.chat(model="gpt-unknown"))
        self.assertEqual(status, 400)
        self.assertIn("The 'gpt-unknown' model is not supported", answer["error"]["message"])

    def test_failure_after_the_stream_started(self):
        self.fake.script.append({"text": "partial answer", "fail": {"code": "server_error", "message": "boom"}})
        chunks, raw = self.stream(self.chat(stream=True))
        self.assertNotIn(b"[DONE]", raw)
        self.assertEqual(chunks[-1]["error"]["message"], "boom")
        self.fake.script.append({"text": "partial answer", "cut": True})
        chunks, raw = self.stream(self.chat(stream=True))
        self.assertNotIn(b"[DONE]", raw)
        self.assertIn("ended before", chunks[-1]["error"]["message"])

    def test_failure_of_a_non_stream_request(self):
        self.fake.script.append({"fail": {"code": "server_is_overloaded", "message": "busy"}})
        status, _, answer = self.json_request("POST", "/v1/chat/completions", self.chat())
        self.assertEqual((status, answer["error"]["message"]), (503, "busy"))


class ChatApiKeyModeTests(ProxyTestCase):
    config_overrides = {"openai_api_key": "sk-test-key", "auth": "apikey"}

    def test_requests_are_forwarded_unchanged(self):
        body = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "Hi"}], "temperature": 0.3,
                "max_tokens": 20}
        status, _, answer = self.json_request("POST", "/v1/chat/completions", body)
        self.assertEqual((status, answer["object"]), (200, "chat.completion"))
        sent = self.fake.requests_to("/v1/chat/completions")[-1]
        self.assertEqual(sent.json, body)
        self.assertEqual(sent.headers["authorization"], "Bearer sk-test-key")
        status, events, raw = self.sse_request("/v1/chat/completions", dict(body, stream=True))
        self.assertEqual(events[-1][1], "[DONE]")

    def test_server_defaults_apply_where_the_client_did_not_say(self):
        proxy = self.start_proxy(reasoning_effort="high", verbosity="low", service_tier="flex")
        body = {"model": "gpt-5.5", "messages": [{"role": "user", "content": "Hi"}], "verbosity": "high"}
        status, _, answer = self.json_request("POST", "/v1/chat/completions", body, proxy=proxy)
        self.assertEqual(status, 200, answer)
        self.assertEqual(self.fake.requests_to("/v1/chat/completions")[-1].json,
                         dict(body, reasoning_effort="high", service_tier="flex"))

    def test_a_cut_passthrough_stream_ends_with_an_error_chunk(self):
        self.fake.script.append({"text": "partial", "cut": True})
        status, events, raw = self.sse_request("/v1/chat/completions", {
            "model": "gpt-4.1", "stream": True, "messages": [{"role": "user", "content": "Hi"}]})
        self.assertEqual(status, 200)
        self.assertNotIn(b"[DONE]", raw)
        self.assertEqual(events[-1][1]["error"]["code"], "stream_interrupted")
        self.assertEqual(events[0][1]["object"], "chat.completion.chunk")


@unittest.skipIf(openai is None, "the openai package is not installed (CI installs it)")
class OpenAISDKTests(ProxyTestCase):
    def client(self):
        return self.sdk_client(openai.OpenAI, "/v1")

    def test_sdk_non_stream_and_stream(self):
        self.fake.script.append({"text": "Hello SDK", "usage": {"input_tokens": 10, "cached_tokens": 2,
                                                                "output_tokens": 3, "reasoning_tokens": 1}})
        answer = self.client().chat.completions.create(model="gpt-5.5", messages=[{"role": "user", "content": "Hi"}])
        self.assertEqual(answer.choices[0].message.content, "Hello SDK")
        self.assertEqual(answer.usage.prompt_tokens_details.cached_tokens, 2)
        self.fake.script.append({"text": "Streamed", "tool_calls": WEATHER_CALLS})
        stream = self.client().chat.completions.create(model="gpt-5.5", messages=[{"role": "user", "content": "Hi"}],
                                                       tools=TOOLS, stream=True,
                                                       stream_options={"include_usage": True})
        text, args, finish, usage = "", {}, None, None
        for chunk in stream:
            usage = chunk.usage or usage
            for choice in chunk.choices:
                text += choice.delta.content or ""
                for call in choice.delta.tool_calls or ():
                    args[call.index] = args.get(call.index, "") + (call.function.arguments or "")
                finish = choice.finish_reason or finish
        self.assertEqual((text, finish), ("Streamed", "tool_calls"))
        self.assertEqual([json.loads(args[i]) for i in (0, 1)], [json.loads(c["arguments"]) for c in WEATHER_CALLS])
        self.assertEqual(usage.total_tokens, 19)

    def test_sdk_tool_round_trip_and_stop(self):
        self.fake.script.append({"tool_calls": WEATHER_CALLS[:1]})
        messages = [{"role": "user", "content": "Weather in Paris?"}]
        first = self.client().chat.completions.create(model="gpt-5.5", messages=messages, tools=TOOLS)
        call = first.choices[0].message.tool_calls[0]
        self.assertEqual((first.choices[0].finish_reason, call.id, call.function.name),
                         ("tool_calls", "call_a", "get_weather"))
        messages += [first.choices[0].message.model_dump(exclude_none=True),
                     {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
        self.fake.script.append({"text": "Sunny. STOP here"})
        second = self.client().chat.completions.create(model="gpt-5.5", messages=messages, tools=TOOLS, stop="STOP")
        self.assertEqual((second.choices[0].message.content, second.choices[0].finish_reason), ("Sunny. ", "stop"))
        items = self.fake.requests_to("/responses")[-1].json["input"]
        self.assertEqual([(i["type"], i.get("call_id")) for i in items[1:]],
                         [("function_call", "call_a"), ("function_call_output", "call_a")])

    def test_sdk_web_search_annotations(self):
        self.fake.script.append({"text": "Python 3.14 is out.",
                                 "citations": [{"url": "https://python.org", "title": "Python", "start": 0, "end": 11}]})
        answer = self.client().chat.completions.create(model="gpt-5.5", web_search_options={},
                                                       messages=[{"role": "user", "content": "News?"}])
        note = answer.choices[0].message.annotations[0]
        self.assertEqual((note.type, note.url_citation.url, note.url_citation.title, note.url_citation.start_index,
                          note.url_citation.end_index), ("url_citation", "https://python.org", "Python", 0, 11))
        self.assertEqual(self.fake.requests_to("/responses")[-1].json["tools"], [{"type": "web_search"}])

    def test_sdk_raises_the_proxys_errors(self):
        self.fake.script.append(usage_limit_reply())
        with self.assertRaises(openai.RateLimitError):
            self.client().chat.completions.create(model="gpt-5.5", messages=[{"role": "user", "content": "Hi"}])
        with self.assertRaises(openai.BadRequestError):
            self.client().chat.completions.create(model="gpt-5.5", messages=[])

    def test_sdk_responses_api(self):
        self.fake.script.append({"text": "Via responses"})
        answer = self.client().responses.create(model="gpt-5.5", input="Hi", temperature=0.2)
        self.assertEqual(answer.output_text, "Via responses")
        self.fake.script.append({"text": "Streamed responses"})
        with self.client().responses.stream(model="gpt-5.5", input="Hi") as stream:
            final = stream.get_final_response()
        self.assertEqual(final.output_text, "Streamed responses")
        self.assertEqual([m.id for m in self.client().models.list()], ["gpt-5.5", "gpt-5.4", "gpt-5.5-mini"])


if __name__ == "__main__":
    unittest.main()
