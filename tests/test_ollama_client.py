"""The real `ollama` Python client against the proxy (and the proxy against the strict fake backend):
list, show, chat and generate, streamed and not, with images, tools, thinking and JSON; and its errors.
Skipped where the client is not installed, required where CODEX_PROXY_REQUIRE_OPTIONAL is set (CI)."""

import base64
import json
import os
import unittest
from unittest import mock

from fake_upstream import png, usage_limit_reply
from support import ProxyTestCase, optional_module

ollama = optional_module("ollama")

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


@unittest.skipIf(ollama is None, "the ollama client is not installed (pip install ollama)")
class OllamaClientTests(ProxyTestCase):
    def client(self, **kwargs):
        client = ollama.Client(host="http://127.0.0.1:%d" % self.proxy.port, **kwargs)
        self.addCleanup(client.close)
        return client

    def upstream(self):
        return self.fake.requests_to("/responses")[-1].json

    def test_list_and_show(self):
        client = self.client()
        models = client.list().models
        self.assertEqual([model.model for model in models], ["gpt-5.5", "gpt-5.4", "gpt-5.5-mini"])
        self.assertTrue(all(model.digest and model.modified_at and model.size == 0 for model in models))
        shown = client.show("gpt-5.5:latest")
        self.assertEqual(shown.capabilities, ["completion", "tools", "thinking", "vision"])
        self.assertEqual(shown.modelinfo["gpt.context_length"], 272000)
        self.assertEqual(client.ps().models, [])
        with self.assertRaises(ollama.ResponseError) as caught:
            client.show("llama3")
        self.assertEqual(caught.exception.status_code, 404)
        self.assertIn("llama3", caught.exception.error)

    def test_ollama_host_points_the_client_at_the_proxy(self):
        with mock.patch.dict(os.environ, {"OLLAMA_HOST": "http://127.0.0.1:%d" % self.proxy.port}):
            client = ollama.Client()
        self.addCleanup(client.close)
        self.assertEqual(client.list().models[0].model, "gpt-5.5")

    def test_chat_streamed_and_not(self):
        client = self.client()
        self.fake.script.append({"text": "Hello there", "usage": {"input_tokens": 31, "output_tokens": 3}})
        answer = client.chat(model="gpt-5.5", messages=[{"role": "user", "content": "Hi"}])
        self.assertEqual((answer.message.content, answer.done, answer.done_reason), ("Hello there", True, "stop"))
        self.assertEqual((answer.prompt_eval_count, answer.eval_count), (31, 3))
        self.assertGreater(answer.total_duration, 0)
        self.fake.script.append({"text": "Hello there", "usage": {"input_tokens": 31, "output_tokens": 3}})
        parts = list(client.chat(model="gpt-5.5:latest", messages=[{"role": "user", "content": "Hi"}], stream=True))
        self.assertGreaterEqual(len(parts), 2)
        self.assertEqual("".join(part.message.content or "" for part in parts), "Hello there")
        self.assertEqual((parts[-1].done, parts[-1].eval_count, parts[-1].model), (True, 3, "gpt-5.5:latest"))
        self.assertEqual(self.upstream()["model"], "gpt-5.5")

    def test_generate_streamed_and_not(self):
        client = self.client()
        self.fake.script.append({"text": "Once upon a time"})
        answer = client.generate(model="gpt-5.5", prompt="Tell a story", system="Be short.")
        self.assertEqual((answer.response, answer.done_reason), ("Once upon a time", "stop"))
        self.assertEqual(self.upstream()["instructions"], "Be short.")
        self.fake.script.append({"text": "Once upon a time"})
        parts = list(client.generate(model="gpt-5.5", prompt="Tell a story", stream=True))
        self.assertEqual("".join(part.response for part in parts), "Once upon a time")
        self.assertTrue(parts[-1].done)

    def test_load(self):
        client = self.client()
        self.assertEqual(client.generate(model="gpt-5.5").done_reason, "load")
        self.assertEqual(client.chat(model="gpt-5.5", messages=[]).done_reason, "load")
        self.assertEqual(self.fake.requests_to("/responses"), [])

    def test_images(self):
        image = png(3, 3)
        self.fake.script.append({"text": "A blue square."})
        answer = self.client().chat(model="gpt-5.5", messages=[
            {"role": "user", "content": "What is this?", "images": [image]}])
        self.assertEqual(answer.message.content, "A blue square.")
        part = self.upstream()["input"][0]["content"][1]
        self.assertEqual(part["type"], "input_image")
        self.assertTrue(part["image_url"].startswith("data:image/png;base64,"))
        self.assertEqual(base64.b64decode(part["image_url"].split(",", 1)[1]), image)

    def test_tools_with_a_replayed_turn(self):
        client = self.client()
        self.fake.script.append({"tool_calls": [{"name": "get_weather", "arguments": '{"city": "Paris"}'}]})
        history = [{"role": "user", "content": "Weather in Paris?"}]
        answer = client.chat(model="gpt-5.5", messages=history, tools=[WEATHER])
        calls = answer.message.tool_calls
        self.assertEqual([(call.function.name, dict(call.function.arguments)) for call in calls],
                         [("get_weather", {"city": "Paris"})])
        self.assertFalse(self.upstream()["tools"][0]["strict"])
        self.fake.script.append({"text": "Sunny, 21C."})
        history += [answer.message, {"role": "tool", "content": "sunny, 21C", "tool_name": "get_weather"}]
        parts = list(client.chat(model="gpt-5.5", messages=history, tools=[WEATHER], stream=True))
        self.assertEqual("".join(part.message.content or "" for part in parts), "Sunny, 21C.")
        items = self.upstream()["input"]
        self.assertEqual([item["type"] for item in items], ["message", "function_call", "function_call_output"])
        self.assertEqual(items[1]["call_id"], items[2]["call_id"])
        self.assertEqual((json.loads(items[1]["arguments"]), items[2]["output"]), ({"city": "Paris"}, "sunny, 21C"))

    def test_think_levels(self):
        client = self.client()
        for think, effort in ((True, None), ("low", "low"), ("high", "high"), (False, None)):
            with self.subTest(think=think):
                self.fake.script.append({"reasoning": "Let me see", "text": "42"})
                answer = client.chat(model="gpt-5.5", messages=[{"role": "user", "content": "?"}], think=think)
                self.assertEqual(answer.message.content, "42")
                self.assertEqual(answer.message.thinking, "Let me see" if think else None)
                self.assertEqual((self.upstream().get("reasoning") or {}).get("effort"), effort)
        self.fake.script.append({"reasoning": "Let me see", "text": "42"})
        parts = list(client.generate(model="gpt-5.5", prompt="?", think=True, stream=True))
        self.assertEqual("".join(part.thinking or "" for part in parts), "Let me see")
        self.assertEqual("".join(part.response for part in parts), "42")

    def test_format_json_and_schema(self):
        client = self.client()
        schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"],
                  "additionalProperties": False}
        for fmt, expected in (("json", {"type": "json_object"}),
                              (schema, {"type": "json_schema", "name": "response", "schema": schema, "strict": True})):
            with self.subTest(format=fmt):
                self.fake.script.append({"text": '{"name": "Ada"}'})
                answer = client.chat(model="gpt-5.5", messages=[{"role": "user", "content": "Name?"}], format=fmt)
                self.assertEqual(json.loads(answer.message.content), {"name": "Ada"})
                self.assertEqual(self.upstream()["text"]["format"], expected)

    def test_errors(self):
        client = self.client()
        cases = [(lambda: client._request_raw("POST", "/api/chat", content=b"{not json"), 400, "JSON"),
                 (lambda: client.chat(model="llama3", messages=[{"role": "user", "content": "x"}]), 404, "llama3")]
        for call, status, words in cases:
            with self.assertRaises(ollama.ResponseError) as caught:
                call()
            self.assertEqual(caught.exception.status_code, status)
            self.assertIn(words, caught.exception.error)
        self.fake.script.append(usage_limit_reply(resets_in_seconds=60))
        with self.assertRaises(ollama.ResponseError) as caught:
            list(client.chat(model="gpt-5.5", messages=[{"role": "user", "content": "x"}], stream=True))
        self.assertEqual(caught.exception.status_code, 429)
        self.assertIn("usage limit", caught.exception.error)
        self.fake.script.append({"text": "partial", "fail": {"code": "server_error", "message": "boom"}})
        received = []
        with self.assertRaises(ollama.ResponseError) as caught:
            for part in client.chat(model="gpt-5.5", messages=[{"role": "user", "content": "x"}], stream=True):
                received.append(part.message.content)
        self.assertEqual(caught.exception.error, "boom")
        self.assertEqual("".join(received), "partial")  # what came before the failure
        with self.assertRaises(ollama.ResponseError) as caught:
            client.embed(model="gpt-5.5", input="x")
        self.assertEqual(caught.exception.status_code, 501)

    def test_the_guard_refuses_a_web_pages_origin(self):
        client = self.client(headers={"Origin": "https://evil.example"})
        with self.assertRaises(ollama.ResponseError) as caught:
            client.chat(model="gpt-5.5", messages=[{"role": "user", "content": "x"}])
        self.assertEqual(caught.exception.status_code, 403)
        self.assertIn("Origin https://evil.example", caught.exception.error)
        self.assertEqual(self.fake.requests_to("/responses"), [])


@unittest.skipIf(ollama is None, "the ollama client is not installed (pip install ollama)")
class OllamaClientApiKeyTests(ProxyTestCase):
    config_overrides = {"api_key": "local-key"}

    def client(self, **kwargs):
        client = ollama.Client(host="http://127.0.0.1:%d" % self.proxy.port, **kwargs)
        self.addCleanup(client.close)
        return client

    def test_the_key_from_headers_or_ollama_api_key(self):
        with mock.patch.dict(os.environ, {"OLLAMA_API_KEY": ""}):
            for client in (self.client(), self.client(headers={"Authorization": "Bearer wrong"})):
                with self.assertRaises(ollama.ResponseError) as caught:
                    client.list()
                self.assertEqual(caught.exception.status_code, 401)
                self.assertIn("API key", caught.exception.error)
        self.assertEqual(self.client(headers={"Authorization": "Bearer local-key"}).chat(
            model="gpt-5.5", messages=[{"role": "user", "content": "x"}]).done_reason, "stop")
        with mock.patch.dict(os.environ, {"OLLAMA_API_KEY": "local-key"}):
            client = self.client()
        self.assertEqual([model.model for model in client.list().models][:1], ["gpt-5.5"])


if __name__ == "__main__":
    unittest.main()
