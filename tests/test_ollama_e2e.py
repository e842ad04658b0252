"""Ollama's API (/api/...) end to end over raw HTTP (http.client): the real proxy against the strict
fake backend. What the real ollama client does is in test_ollama_client.py; this file covers the
same ground with the standard library only, so that every Python the suite runs on covers it."""

import base64
import http.client
import json
import time
import unittest

from fake_upstream import png
from support import ProxyTestCase

PNG_BASE64 = base64.b64encode(png(2, 2)).decode("ascii")
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                          "required": ["city"]}}}]


def ndjson(raw):
    """The objects of an NDJSON body, each line parsed on its own (every line must be whole)."""
    text = raw.decode("utf-8")
    if text:
        assert text.endswith("\n"), "the last line is not ended: %r" % text[-40:]
    return [json.loads(line) for line in text.split("\n")[:-1]]


class OllamaTestCase(ProxyTestCase):
    def chat(self, **fields):
        body = {"model": "gpt-5.5", "messages": [{"role": "user", "content": "Hi"}]}
        body.update(fields)
        return body

    def lines(self, path, body, status=200, headers=None):
        """(the answer's lines, its headers) for a streamed request."""
        got, hdrs, raw = self.request("POST", path, body, headers)
        self.assertEqual(got, status, raw)
        return ndjson(raw), hdrs

    def upstream(self):
        """The last request that reached the fake backend's /responses."""
        return self.fake.requests_to("/responses")[-1].json


class OllamaModelsTests(OllamaTestCase):
    def test_version_and_ps(self):
        version = self.json_answer("GET", "/api/version")["version"]
        self.assertRegex(version, r"^\d+\.\d+\.\d+$")
        self.assertEqual(self.json_answer("GET", "/api/ps"), {"models": []})

    def test_tags_lists_what_v1_models_lists(self):
        models = self.json_answer("GET", "/api/tags")["models"]
        listed = [model["id"] for model in self.json_answer("GET", "/v1/models")["data"]]
        self.assertEqual([model["name"] for model in models], listed)
        for model in models:
            self.assertEqual(model["model"], model["name"])
            self.assertRegex(model["modified_at"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
            self.assertIsInstance(model["size"], int)
            self.assertTrue(model["digest"])
            self.assertEqual(model["details"]["family"], "gpt")
        again = self.json_answer("GET", "/api/tags")["models"]
        self.assertEqual([model["digest"] for model in again], [model["digest"] for model in models])  # stable
        self.assertEqual(len({model["digest"] for model in models}), len(models))

    def test_show(self):
        for name in ("gpt-5.5", "gpt-5.5:latest"):
            shown = self.json_answer("POST", "/api/show", {"model": name})
            self.assertEqual(shown["capabilities"], ["completion", "tools", "thinking", "vision"])
            info = shown["model_info"]
            self.assertEqual([key for key in info if key.endswith(".context_length")],
                             [info["general.architecture"] + ".context_length"])
            self.assertEqual(info["gpt.context_length"], 272000)  # the catalog's context window
            self.assertEqual(shown["details"]["family"], "gpt")
        self.fake.catalog["models"][1]["supported_reasoning_levels"] = []
        self.fake.catalog["models"][1]["input_modalities"] = ["text"]
        self.proxy.app.catalog.cache.clear()
        self.assertEqual(self.json_answer("POST", "/api/show", {"model": "gpt-5.5-mini"})["capabilities"],
                         ["completion", "tools"])

    def test_an_unknown_model_is_a_404_naming_the_available_ones(self):
        for path, body in (("/api/show", {"model": "llama3"}), ("/api/chat", self.chat(model="llama3")),
                           ("/api/generate", {"model": "llama3:latest", "prompt": "hi"}),
                           ("/api/chat", self.chat(model="llama3", messages=[]))):
            with self.subTest(path=path, body=body):
                answer = self.json_answer("POST", path, body, status=404)
                self.assertEqual(list(answer), ["error"])
                self.assertIn("llama3", answer["error"])
                self.assertIn("gpt-5.5, gpt-5.4, gpt-5.5-mini", answer["error"])
        self.assertEqual(self.fake.requests_to("/responses"), [])

    def test_latest_resolves_to_the_bare_slug_upstream(self):
        lines, _ = self.lines("/api/chat", self.chat(model="gpt-5.5:latest"))
        self.assertEqual(self.upstream()["model"], "gpt-5.5")
        self.assertEqual({line["model"] for line in lines}, {"gpt-5.5:latest"})  # the name asked for


class OllamaChatTests(OllamaTestCase):
    def test_streaming_is_the_default_and_is_ndjson(self):
        self.fake.script.append({"text": "Hello there", "usage": {"input_tokens": 21, "output_tokens": 4}})
        status, headers, raw = self.request("POST", "/api/chat", self.chat())
        self.assertEqual(status, 200)
        self.assertEqual(headers["content-type"], "application/x-ndjson")
        lines = ndjson(raw)
        self.assertGreaterEqual(len(lines), 2)
        for line in lines[:-1]:
            self.assertEqual((line["done"], line["message"]["role"], line["model"]), (False, "assistant", "gpt-5.5"))
            self.assertIn("created_at", line)
        self.assertEqual("".join(line["message"]["content"] for line in lines), "Hello there")
        last = lines[-1]
        self.assertEqual((last["done"], last["done_reason"]), (True, "stop"))
        self.assertEqual((last["prompt_eval_count"], last["eval_count"]), (21, 4))
        for name in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
            self.assertIsInstance(last[name], int, name)
            self.assertGreaterEqual(last[name], 0, name)
        self.assertGreater(last["total_duration"], 0)
        self.assertLessEqual(last["load_duration"] + last["prompt_eval_duration"] + last["eval_duration"],
                             last["total_duration"])

    def test_not_streamed_is_one_json_object(self):
        self.fake.script.append({"text": "Hello there", "usage": {"input_tokens": 21, "output_tokens": 4}})
        status, headers, raw = self.request("POST", "/api/chat", self.chat(stream=False))
        self.assertEqual((status, headers["content-type"]), (200, "application/json"))
        answer = json.loads(raw)
        self.assertEqual(answer["message"], {"role": "assistant", "content": "Hello there"})
        self.assertEqual((answer["done"], answer["done_reason"], answer["model"]), (True, "stop", "gpt-5.5"))
        self.assertEqual((answer["prompt_eval_count"], answer["eval_count"]), (21, 4))
        self.assertIsInstance(answer["total_duration"], int)

    def test_lines_leave_as_the_deltas_arrive(self):
        # ~6 s of answer (60 pieces, 0.1 s apart): the first text must not wait for the rest.
        self.fake.script.append({"text": "abcdefghij", "events_repeat": 20, "delay": 0.1})
        conn = http.client.HTTPConnection("127.0.0.1", self.proxy.port, timeout=15)
        self.addCleanup(conn.close)
        started = time.monotonic()
        conn.request("POST", "/api/chat", json.dumps(self.chat()), {"Content-Type": "application/json"})
        response = conn.getresponse()
        first = json.loads(response.readline())
        self.assertLess(time.monotonic() - started, 3.0)
        self.assertTrue(first["message"]["content"])
        self.assertFalse(first["done"])
        rest = ndjson(response.read())
        self.assertGreater(time.monotonic() - started, 4.0)  # the answer did take its time
        self.assertTrue(rest[-1]["done"])

    def test_system_messages_are_the_instructions(self):
        self.request("POST", "/api/chat", self.chat(messages=[
            {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "system", "content": "Answer in French."}], stream=False))
        sent = self.upstream()
        self.assertEqual(sent["instructions"], "Be brief.\n\nAnswer in French.")
        self.assertEqual([item["role"] for item in sent["input"]], ["user"])

    def test_options_are_accepted_and_nothing_refused_goes_upstream(self):
        self.fake.script.append({"text": "one two STOP three"})
        answer = self.json_answer("POST", "/api/chat", self.chat(stream=False, keep_alive="5m", options={
            "temperature": 0.2, "top_p": 0.9, "top_k": 40, "num_predict": 100, "seed": 7, "num_ctx": 8192,
            "repeat_penalty": 1.1, "stop": ["STOP"]}))
        self.assertEqual((answer["message"]["content"], answer["done_reason"]), ("one two ", "stop"))
        sent = self.upstream()
        for refused in ("temperature", "top_p", "max_output_tokens", "seed", "top_k", "options", "keep_alive"):
            self.assertNotIn(refused, sent)

    def test_incomplete_for_length(self):
        self.fake.script.append({"text": "partial", "incomplete": "max_output_tokens"})
        answer = self.json_answer("POST", "/api/chat", self.chat(stream=False))
        self.assertEqual((answer["message"]["content"], answer["done_reason"]), ("partial", "length"))

    def test_empty_messages_load_the_model_with_no_upstream_request(self):
        lines, headers = self.lines("/api/chat", self.chat(messages=[]))
        self.assertEqual(len(lines), 1)
        self.assertEqual((lines[0]["done"], lines[0]["done_reason"], lines[0]["model"]), (True, "load", "gpt-5.5"))
        answer = self.json_answer("POST", "/api/chat", self.chat(messages=[], stream=False))
        self.assertEqual((answer["done"], answer["done_reason"]), (True, "load"))
        self.assertEqual(self.fake.requests_to("/responses"), [])


if __name__ == "__main__":
    unittest.main()
