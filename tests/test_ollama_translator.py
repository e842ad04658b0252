"""The Ollama translators on their own (no sockets): requests to Responses requests, upstream events to
Ollama's answer lines, and those lines folded into one answer."""

import base64
import json
import unittest

import codex_proxy as cp
from fake_upstream import sse_events_for
from support import run_stream

LEVELS = [{"effort": "low"}, {"effort": "medium"}, {"effort": "high"}]


def options(model="gpt-5.5", chatgpt_mode=True):
    return cp.RequestOptions(model, model, {"supported_reasoning_levels": LEVELS}, chatgpt_mode=chatgpt_mode,
                             started=100.0)


class FakeClock:
    """A clock that says what the test sets."""

    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now


class OllamaRequestTests(unittest.TestCase):
    def chat(self, **fields):
        body = {"model": "gpt-5.5", "messages": [{"role": "user", "content": "Hi"}]}
        body.update(fields)
        return cp.ollama_chat_to_responses(body, options())

    def test_a_plain_chat(self):
        upstream, ctx = self.chat()
        self.assertEqual(upstream["input"], [{"type": "message", "role": "user",
                                              "content": [{"type": "input_text", "text": "Hi"}]}])
        self.assertEqual((upstream["stream"], upstream["store"], upstream["model"]), (True, False, "gpt-5.5"))
        self.assertNotIn("reasoning", upstream)
        self.assertTrue(ctx.stream)  # Ollama streams unless told not to
        self.assertTrue(ctx.chat)
        self.assertEqual(ctx.started, 100.0)
        self.assertFalse(self.chat(stream=False)[1].stream)

    def test_think_levels(self):
        self.assertEqual(self.chat(think=True)[0]["reasoning"], {"summary": "auto"})
        self.assertEqual(self.chat(think="medium")[0]["reasoning"], {"effort": "medium", "summary": "auto"})
        self.assertNotIn("reasoning", self.chat(think=False)[0])
        self.assertEqual(self.chat(think="high")[1].thinking, "summarized")
        self.assertIsNone(self.chat(think=False)[1].thinking)
        with self.assertRaises(cp.ClientError) as caught:
            self.chat(think="max")
        self.assertEqual(caught.exception.param, "think")

    def test_images_are_typed_by_their_first_bytes(self):
        signatures = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff\xe0", "image/jpeg"),
                      (b"GIF89a", "image/gif"), (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "image/webp"))
        for head, kind in signatures:
            data = base64.b64encode(head + b"\x01" * 50).decode()
            part = self.chat(messages=[{"role": "user", "content": "", "images": [data]}])[0]["input"][0]["content"]
            self.assertEqual(part, [{"type": "input_image", "image_url": "data:%s;base64,%s" % (kind, data),
                                     "detail": "auto"}])
        with self.assertRaises(cp.ClientError):
            self.chat(messages=[{"role": "user", "content": "x", "images": ["////not base64"]}])

    def test_tool_outputs_pair_with_calls_by_name_then_in_order(self):
        calls = [{"function": {"name": "a", "arguments": {"n": 1}}}, {"function": {"name": "b", "arguments": {}}},
                 {"function": {"name": "a", "arguments": {"n": 2}}}]
        items = self.chat(messages=[
            {"role": "user", "content": "go"}, {"role": "assistant", "tool_calls": calls},
            {"role": "tool", "tool_name": "b", "content": "B"}, {"role": "tool", "content": "A1"},
            {"role": "tool", "tool_name": "a", "content": "A2"}])[0]["input"]
        called = {item["call_id"]: (item["name"], json.loads(item["arguments"])) for item in items
                  if item["type"] == "function_call"}
        answers = [(called[item["call_id"]], item["output"]) for item in items
                   if item["type"] == "function_call_output"]
        self.assertEqual(answers, [(("b", {}), "B"), (("a", {"n": 1}), "A1"), (("a", {"n": 2}), "A2")])
        self.assertEqual(len(called), 3)

    def test_schema_closed_or_open(self):
        closed = {"type": "object", "additionalProperties": False, "required": ["a"],
                  "properties": {"a": {"type": "array", "items": {
                      "type": "object", "properties": {"b": {"type": "string"}}, "required": ["b"],
                      "additionalProperties": False}}}}
        self.assertTrue(cp.schema_is_closed(closed))
        inner_open = json.loads(json.dumps(closed))
        del inner_open["properties"]["a"]["items"]["additionalProperties"]
        self.assertFalse(cp.schema_is_closed(inner_open))
        self.assertFalse(cp.schema_is_closed({"type": "object", "properties": {"a": {}}, "required": [],
                                              "additionalProperties": False}))
        self.assertTrue(cp.schema_is_closed({"type": "string", "enum": [{"type": "object"}]}))  # enum is data

    def test_api_key_mode_takes_length_and_sampling(self):
        body = {"model": "gpt-5", "messages": [{"role": "user", "content": "Hi"}],
                "options": {"num_predict": 50, "temperature": 0.1, "top_p": 0.5, "top_k": 3, "seed": 1}}
        upstream, _ = cp.ollama_chat_to_responses(body, options("gpt-5", chatgpt_mode=False))
        self.assertEqual((upstream["max_output_tokens"], upstream["temperature"], upstream["top_p"]), (50, 0.1, 0.5))
        upstream, _ = cp.ollama_chat_to_responses(body, options("gpt-5"))
        self.assertFalse({"max_output_tokens", "temperature", "top_p", "top_k", "seed"} & set(upstream))

    def test_generate(self):
        upstream, ctx = cp.ollama_generate_to_responses(
            {"model": "gpt-5.5", "prompt": "Go", "system": "Sys", "format": "json", "think": "low"}, options())
        self.assertEqual((upstream["instructions"], upstream["text"]["format"], upstream["reasoning"]["effort"]),
                         ("Sys", {"type": "json_object"}, "low"))
        self.assertFalse(ctx.chat)


class OllamaAnswerTests(unittest.TestCase):
    def translate(self, reply, chat=True, thinking=None, stream=True, stops=()):
        clock = FakeClock(101.0)
        ctx = cp.OllamaContext("ollama-1", "gpt-5.5:latest", stream=stream, chat=chat, thinking=thinking,
                               started=100.0, clock=clock, stops=stops)
        translator = cp.ResponsesToOllamaStream(ctx)
        lines = []
        for event in sse_events_for(reply, "gpt-5.5"):
            lines.extend(translator.feed(event))
            clock.now += 0.5 if event["type"].endswith(".delta") else 0.25
        lines.extend(translator.finish())
        return translator, lines

    def test_text_lines_then_the_done_line_with_timings_from_the_clock(self):
        translator, lines = self.translate({"text": "Hello world", "usage": {"input_tokens": 30, "output_tokens": 5}})
        self.assertEqual("".join(line["message"]["content"] for line in lines), "Hello world")
        last = lines[-1]
        self.assertEqual((last["done"], last["done_reason"], last["prompt_eval_count"], last["eval_count"]),
                         (True, "stop", 30, 5))
        # The first event came at 101.0 (1 s after the start), the first text four events later
        # (created, in_progress, output_item.added, content_part.added: 1 s); the end some events later.
        self.assertEqual(last["load_duration"], 1000000000)
        self.assertEqual(last["prompt_eval_duration"], 1000000000)
        self.assertGreater(last["eval_duration"], 1000000000)
        self.assertEqual(last["total_duration"],
                         last["load_duration"] + last["prompt_eval_duration"] + last["eval_duration"])
        self.assertEqual({line["model"] for line in lines}, {"gpt-5.5:latest"})
        self.assertEqual(translator.usage["input_tokens"], 30)

    def test_the_folded_answer_is_what_the_lines_say(self):
        reply = {"reasoning": ["First", "Second"], "text": "Done",
                 "tool_calls": [{"name": "f", "arguments": '{"x": [1, 2]}'}, {"name": "g", "arguments": "oops"}]}
        _, lines = self.translate(reply, thinking="summarized", stream=False)
        ctx = cp.OllamaContext("ollama-1", "gpt-5.5", chat=True)
        answer = cp.ollama_answer_from_lines(lines, ctx)
        self.assertEqual(answer["message"], {"role": "assistant", "content": "Done", "thinking": "First\n\nSecond",
                                             "tool_calls": [{"function": {"name": "f", "arguments": {"x": [1, 2]}}},
                                                            {"function": {"name": "g", "arguments": {
                                                                "_raw_arguments": "oops"}}}]})
        self.assertTrue(answer["done"])
        _, lines = self.translate(reply, chat=False, stream=False)
        answer = cp.ollama_answer_from_lines(lines, cp.OllamaContext("ollama-1", "gpt-5.5", chat=False))
        self.assertEqual((answer["response"], answer.get("thinking")), ("Done", None))  # thinking not asked for

    def test_endings(self):
        self.assertEqual(self.translate({"text": "cut", "incomplete": "max_output_tokens"})[1][-1]["done_reason"],
                         "length")
        self.assertEqual(self.translate({"text": "one STOP two"}, stops=["STOP"])[1][-1]["done_reason"], "stop")
        translator, lines = self.translate({"text": "partial", "fail": {"code": "server_error", "message": "boom"}})
        self.assertEqual(lines[-1], {"error": "boom"})
        self.assertEqual(translator.error["message"], "boom")
        _, lines = self.translate({"text": "partial", "cut": True})
        self.assertEqual(lines[-1], {"error": cp.STREAM_CUT})

    def test_load_answer_and_keep_alive(self):
        self.assertEqual(cp.ollama_load_answer("m", chat=True)["message"], {"role": "assistant", "content": ""})
        load = cp.ollama_load_answer("m", chat=False)
        self.assertEqual((load["response"], load["done"], load["done_reason"]), ("", True, "load"))
        translator, _ = run_stream(cp.ResponsesToOllamaStream(cp.OllamaContext("ollama-1", "m")), [], finish=False)
        line = cp.OLLAMA.keep_alive(translator)
        self.assertTrue(line.endswith(b"\n") and line.count(b"\n") == 1)
        self.assertEqual(json.loads(line)["message"], {"role": "assistant", "content": ""})
        self.assertEqual(cp.OLLAMA.error(429, "slow down"), (429, {"error": "slow down"}))


class LatestTagTests(unittest.TestCase):
    def test_latest_is_the_bare_name(self):
        slugs = ["gpt-5.5", "gpt-5.4"]
        self.assertEqual(cp.resolve_model("gpt-5.4:latest", slugs), "gpt-5.4")
        self.assertEqual(cp.resolve_model("other:latest", slugs), "other")
        self.assertEqual(cp.resolve_model("gpt-5.4:latest", slugs, [("gpt-5.4:latest", "gpt-5.5")]), "gpt-5.5")


if __name__ == "__main__":
    unittest.main()
