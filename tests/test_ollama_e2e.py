"""Ollama's API (/api/...) end to end over raw HTTP (http.client): the real proxy against the strict
fake backend. What the real ollama client does is in test_ollama_client.py; this file covers the
same ground with the standard library only, so that every Python the suite runs on covers it."""

import base64
import http.client
import json
import socket
import time
import unittest

from fake_upstream import png, usage_limit_reply
from support import DumpDirTestCase, ProxyTestCase, wait_for

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


    def test_latest_of_a_mapped_name_resolves_like_the_name(self):
        proxy = self.start_proxy(model_map=[("llama3", "gpt-5.5")])
        for name in ("llama3", "llama3:latest"):
            status, _, raw = self.request("POST", "/api/chat", self.chat(model=name, stream=False), proxy=proxy)
            self.assertEqual(status, 200, raw)
            self.assertEqual(self.upstream()["model"], "gpt-5.5")
        status, _, raw = self.request("POST", "/api/show", {"model": "llama3:latest"}, proxy=proxy)
        self.assertEqual(status, 200, raw)


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


class OllamaGenerateTests(OllamaTestCase):
    def test_generate_streamed_and_not(self):
        for stream in (None, False):
            with self.subTest(stream=stream):
                self.fake.script.append({"text": "Generated text", "usage": {"input_tokens": 9, "output_tokens": 3}})
                body = {"model": "gpt-5.5", "prompt": "Write", "system": "Be terse.", "raw": False,
                        "context": [1, 2, 3], "keep_alive": 0, "options": {"temperature": 0.5}}
                if stream is False:
                    body["stream"] = False
                    answer = self.json_answer("POST", "/api/generate", body)
                    lines = [answer]
                else:
                    lines, headers = self.lines("/api/generate", body)
                    self.assertEqual(headers["content-type"], "application/x-ndjson")
                    self.assertGreaterEqual(len(lines), 2)
                    self.assertEqual({line["done"] for line in lines[:-1]}, {False})
                self.assertEqual("".join(line["response"] for line in lines), "Generated text")
                last = lines[-1]
                self.assertEqual((last["done"], last["done_reason"], last["prompt_eval_count"], last["eval_count"]),
                                 (True, "stop", 9, 3))
                self.assertNotIn("message", last)
                sent = self.upstream()
                self.assertEqual(sent["instructions"], "Be terse.")
                self.assertEqual(sent["input"], [{"type": "message", "role": "user",
                                                  "content": [{"type": "input_text", "text": "Write"}]}])
                self.assertNotIn("temperature", sent)

    def test_an_empty_prompt_loads_the_model(self):
        for body in ({"model": "gpt-5.5"}, {"model": "gpt-5.5", "prompt": "", "stream": False}):
            status, _, raw = self.request("POST", "/api/generate", body)
            answer = ndjson(raw)[0] if body.get("stream") is None else json.loads(raw)
            self.assertEqual((status, answer["done"], answer["done_reason"], answer["response"]),
                             (200, True, "load", ""))
        self.assertEqual(self.fake.requests_to("/responses"), [])

    def test_generate_with_an_image(self):
        self.json_answer("POST", "/api/generate", {"model": "gpt-5.5", "prompt": "What is this?",
                                                   "images": [PNG_BASE64], "stream": False})
        content = self.upstream()["input"][0]["content"]
        self.assertEqual(content[1], {"type": "input_image", "image_url": "data:image/png;base64," + PNG_BASE64,
                                      "detail": "auto"})


class OllamaRequestShapeTests(OllamaTestCase):
    def test_images_are_input_images_with_their_base64_kept(self):
        jpeg = base64.b64encode(b"\xff\xd8\xff\xe0" + b"\x00" * 40).decode()
        self.json_answer("POST", "/api/chat", self.chat(stream=False, messages=[
            {"role": "user", "content": "Compare", "images": [PNG_BASE64, jpeg]}]))
        content = self.upstream()["input"][0]["content"]
        self.assertEqual(content, [{"type": "input_text", "text": "Compare"},
                                   {"type": "input_image", "image_url": "data:image/png;base64," + PNG_BASE64,
                                    "detail": "auto"},
                                   {"type": "input_image", "image_url": "data:image/jpeg;base64," + jpeg,
                                    "detail": "auto"}])

    def test_tools_and_calls_coming_back_with_object_arguments(self):
        self.fake.script.append({"tool_calls": [{"name": "get_weather", "arguments": '{"city": "Paris"}'},
                                                {"name": "get_weather", "arguments": '{"city": "Tokyo"}'}]})
        lines, _ = self.lines("/api/chat", self.chat(tools=TOOLS))
        calls = [call for line in lines for call in line["message"].get("tool_calls") or ()]
        self.assertEqual(calls, [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
                                 {"function": {"name": "get_weather", "arguments": {"city": "Tokyo"}}}])
        self.assertEqual(lines[-1]["done_reason"], "stop")
        self.assertEqual(self.upstream()["tools"], [{"type": "function", "name": "get_weather",
                                                     "description": "Weather for a city", "strict": False,
                                                     "parameters": TOOLS[0]["function"]["parameters"]}])
        self.fake.script.append({"tool_calls": [{"name": "get_weather", "arguments": '{"city": "Oslo"}'}]})
        answer = self.json_answer("POST", "/api/chat", self.chat(tools=TOOLS, stream=False))
        self.assertEqual(answer["message"]["tool_calls"],
                         [{"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}])
        self.assertEqual(answer["message"]["content"], "")

    def test_a_replayed_turn_pairs_calls_and_outputs_in_order(self):
        calls = [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
                 {"function": {"name": "get_time", "arguments": {"city": "Paris"}}}]
        for outputs in ([{"role": "tool", "content": "sunny", "tool_name": "get_weather"},
                         {"role": "tool", "content": "noon", "tool_name": "get_time"}],
                        [{"role": "tool", "content": "sunny"}, {"role": "tool", "content": "noon"}],
                        [{"role": "tool", "content": "noon", "tool_name": "get_time"},
                         {"role": "tool", "content": "sunny", "tool_name": "get_weather"}]):
            with self.subTest(outputs=outputs):
                self.json_answer("POST", "/api/chat", self.chat(tools=TOOLS, stream=False, messages=[
                    {"role": "user", "content": "Weather and time in Paris?"},
                    {"role": "assistant", "content": "", "tool_calls": calls}] + outputs))
                items = self.upstream()["input"]
                self.assertEqual([item["type"] for item in items], ["message", "function_call", "function_call",
                                                                    "function_call_output", "function_call_output"])
                by_id = {item["call_id"]: item["name"] for item in items if item["type"] == "function_call"}
                answered = {by_id[item["call_id"]]: item["output"] for item in items
                            if item["type"] == "function_call_output"}
                self.assertEqual(answered, {"get_weather": "sunny", "get_time": "noon"})
                self.assertEqual(json.loads(items[1]["arguments"]), {"city": "Paris"})

    def test_think(self):
        for think, effort, shown in ((True, None, True), ("low", "low", True), ("high", "high", True),
                                     (False, None, False), (None, None, False)):
            with self.subTest(think=think):
                self.fake.script.append({"reasoning": "Pondering", "text": "Answer"})
                body = self.chat(stream=False)
                if think is not None:
                    body["think"] = think
                message = self.json_answer("POST", "/api/chat", body)["message"]
                self.assertEqual(message["content"], "Answer")
                self.assertEqual(message.get("thinking"), "Pondering" if shown else None)
                reasoning = self.upstream().get("reasoning") or {}
                self.assertEqual(reasoning.get("summary"), "auto" if shown else None)
                self.assertEqual(reasoning.get("effort"), effort)
        self.fake.script.append({"reasoning": "Pondering", "text": "Answer"})
        lines, _ = self.lines("/api/chat", self.chat(think=True))
        self.assertEqual("".join(line["message"].get("thinking") or "" for line in lines), "Pondering")
        self.assertEqual("".join(line["message"]["content"] for line in lines), "Answer")

    def test_a_think_level_is_clamped_to_the_models_levels(self):
        self.json_answer("POST", "/api/chat", self.chat(model="gpt-5.5-mini", think="low", stream=False))
        self.assertEqual(self.upstream()["reasoning"]["effort"], "low")
        self.fake.catalog["models"][1]["supported_reasoning_levels"] = [{"effort": "medium"}, {"effort": "high"}]
        self.proxy.app.catalog.cache.clear()
        self.json_answer("POST", "/api/chat", self.chat(model="gpt-5.5-mini", think="low", stream=False))
        self.assertEqual(self.upstream()["reasoning"]["effort"], "medium")

    def test_format(self):
        open_schema = {"type": "object", "properties": {"name": {"type": "string"}}}
        closed = dict(open_schema, required=["name"], additionalProperties=False)
        for fmt, expected in (("json", {"type": "json_object"}),
                              (open_schema, {"type": "json_schema", "name": "response", "schema": open_schema,
                                             "strict": False}),
                              (closed, {"type": "json_schema", "name": "response", "schema": closed,
                                        "strict": True})):
            with self.subTest(format=fmt):
                self.fake.script.append({"text": '{"name": "Ada"}'})
                answer = self.json_answer("POST", "/api/chat", self.chat(format=fmt, stream=False))
                self.assertEqual(json.loads(answer["message"]["content"]), {"name": "Ada"})
                self.assertEqual(self.upstream()["text"]["format"], expected)


class OllamaErrorTests(OllamaTestCase):
    def assert_ollama_error(self, method, path, body, status, *words):
        got, headers, raw = self.request(method, path, body)
        self.assertEqual(got, status, raw)
        self.assertTrue(headers["content-type"].startswith("application/json"), headers)
        answer = json.loads(raw)
        self.assertEqual(list(answer), ["error"])
        self.assertIsInstance(answer["error"], str)
        for word in words:
            self.assertIn(word, answer["error"])
        return headers

    def test_bad_requests_are_400s_naming_the_field(self):
        for body, field in ((b"{not json", "JSON"), ({"messages": [{"role": "user", "content": "x"}]}, "model"),
                            (self.chat(stream="yes"), "stream"), (self.chat(messages="hi"), "messages"),
                            (self.chat(options={"temperature": "hot"}), "options.temperature"),
                            (self.chat(options={"num_predict": 1.5}), "options.num_predict"),
                            (self.chat(options={"stop": [1]}), "options.stop"),
                            (self.chat(think="very"), "think"), (self.chat(format="yaml"), "format"),
                            (self.chat(format=["json"]), "format"), (self.chat(tools={"a": 1}), "tools"),
                            (self.chat(messages=[{"role": "user", "content": ["x"]}]), "messages[0].content"),
                            (self.chat(messages=[{"role": "user", "content": "x", "images": "abc"}]),
                             "messages[0].images"),
                            (self.chat(messages=[{"role": "user", "content": "x", "images": ["bm90IGFuIGltYWdl"]}]),
                             "messages[0].images[0]"),
                            (self.chat(messages=[{"role": "user", "content": "x", "images": [5]}]),
                             "messages[0].images[0]"),
                            (self.chat(messages=[{"role": "robot", "content": "x"}]), "role"),
                            (self.chat(messages=[{"role": "tool", "content": "x"}]), "tool"),
                            (self.chat(messages=[{"role": "assistant", "tool_calls": [{"function": {}}]}]),
                             "tool_calls[0]"),
                            (self.chat(messages=[{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [
                                {"function": {"name": "f", "arguments": {}}}]}]),
                             "call to f in messages[1] has no result"),
                            ({"model": "gpt-5.5", "prompt": 5}, "prompt")):
            with self.subTest(body=body):
                path = "/api/generate" if isinstance(body, dict) and "prompt" in body else "/api/chat"
                self.assert_ollama_error("POST", path, body, 400, field)
        self.assertEqual(self.fake.requests_to("/responses"), [])

    def test_refused_endpoints_say_why(self):
        for method, path, word in (("POST", "/api/embed", "embed"), ("POST", "/api/embeddings", "embed"),
                                   ("POST", "/api/pull", "pull"), ("POST", "/api/push", "push"),
                                   ("POST", "/api/create", "create"), ("POST", "/api/copy", "--model-map"),
                                   ("DELETE", "/api/delete", "delete"), ("POST", "/api/blobs/sha256:abc", "blobs")):
            with self.subTest(path=path):
                self.assert_ollama_error(method, path, {"model": "gpt-5.5"}, 501, word)
        got, _, raw = self.request("HEAD", "/api/blobs/sha256:abc")
        self.assertEqual((got, raw), (501, b""))

    def test_unknown_paths_and_methods_answer_in_ollamas_shape(self):
        self.assert_ollama_error("POST", "/api/nothing", {}, 404, "/api/nothing")
        self.assert_ollama_error("GET", "/api/chat", None, 405, "POST")

    def test_upstream_errors_before_the_stream_keep_their_status(self):
        self.fake.script.append(usage_limit_reply(resets_in_seconds=30))
        headers = self.assert_ollama_error("POST", "/api/chat", self.chat(), 429, "usage limit")
        self.assertIn(headers["retry-after"], ("29", "30"))
        self.fake.script.append({"status": 400, "body": {"detail": "Something about the input"}})
        self.assert_ollama_error("POST", "/api/generate", {"model": "gpt-5.5", "prompt": "x", "stream": False}, 400,
                                 "Something about the input")

    def test_a_failure_after_the_stream_started_ends_it_with_an_error_line(self):
        for reply, words in (({"text": "partial", "fail": {"code": "server_error", "message": "boom"}}, "boom"),
                             ({"text": "partial", "cut": True}, "ended before")):
            with self.subTest(reply=reply):
                self.fake.script.append(reply)
                lines, _ = self.lines("/api/chat", self.chat())
                self.assertEqual(lines[-1], {"error": lines[-1]["error"]})
                self.assertIn(words, lines[-1]["error"])
                self.assertFalse(any(line.get("done") for line in lines[:-1]))
        self.fake.script.append({"text": "partial", "fail": {"code": "server_error", "message": "boom"}})
        self.assert_ollama_error("POST", "/api/chat", self.chat(stream=False), 502, "boom")


class OllamaDumpTests(DumpDirTestCase, OllamaTestCase):
    def test_images_are_dumped_as_their_stand_in_never_their_bytes(self):
        image = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8).decode()
        self.json_answer("POST", "/api/chat", self.chat(stream=False, messages=[
            {"role": "user", "content": "What is it?", "images": [image]}]))
        self.json_answer("POST", "/api/generate", {"model": "gpt-5.5", "prompt": "And this?", "images": [image],
                                                   "stream": False})
        wait_for(lambda: len(self.dumps()) == 2)
        for name, text in self.dumps():
            self.assertNotIn(image[:64], text, name)
            self.assertIn("[image: %d base64 chars" % len(image), text, name)


class OllamaKeepAliveTests(OllamaTestCase):
    config_overrides = {"heartbeat_interval": 0.2}

    def test_a_silent_upstream_gets_empty_lines_every_client_can_read(self):
        self.fake.script.append({"text": "After a pause", "stall": 1.0})
        lines, _ = self.lines("/api/chat", self.chat())
        empty = [line for line in lines[:-1] if line["message"]["content"] == ""]
        self.assertGreaterEqual(len(empty), 2)
        for line in empty:
            self.assertEqual((line["done"], line["model"], line["message"]["role"]), (False, "gpt-5.5", "assistant"))
        self.assertEqual("".join(line["message"]["content"] for line in lines), "After a pause")


class OllamaGuardTests(OllamaTestCase):
    def test_a_foreign_host_or_origin_is_a_403_in_ollamas_shape_and_nothing_goes_upstream(self):
        for header in (b"Host: evil.example\r\n", b"Host: 127.0.0.1\r\nOrigin: https://evil.example\r\n"):
            with self.subTest(header=header):
                body = json.dumps(self.chat()).encode()
                raw = self.raw_exchange(b"POST /api/chat HTTP/1.1\r\n" + header + b"Content-Type: application/json"
                                        b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
                head, _, payload = raw.partition(b"\r\n\r\n")
                self.assertTrue(head.startswith(b"HTTP/1.1 403 "), head[:40])
                self.assertIn(b"application/json", head)
                answer = json.loads(payload)
                self.assertEqual(list(answer), ["error"])
                self.assertIn("refused", answer["error"])
        self.assertEqual(self.fake.requests_to("/responses"), [])


class OllamaApiKeyTests(OllamaTestCase):
    config_overrides = {"api_key": "local-key"}

    def test_api_needs_the_key_but_version(self):
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            for method, path, body in (("POST", "/api/chat", self.chat()), ("GET", "/api/tags", None),
                                       ("POST", "/api/show", {"model": "gpt-5.5"})):
                with self.subTest(headers=headers, path=path):
                    status, _, answer = self.json_request(method, path, body, headers)
                    self.assertEqual(status, 401)
                    self.assertEqual(list(answer), ["error"])
                    self.assertIn("API key", answer["error"])
        self.assertEqual(self.fake.requests_to("/responses"), [])
        self.assertEqual(self.request("GET", "/api/version")[0], 200)
        lines, _ = self.lines("/api/chat", self.chat(), headers={"Authorization": "Bearer local-key"})
        self.assertTrue(lines[-1]["done"])


class OllamaApiKeyModeTests(OllamaTestCase):
    """With an OpenAI API key upstream, which takes the length and sampling the Codex backend refuses."""

    def test_num_predict_becomes_max_output_tokens(self):
        proxy = self.start_proxy(openai_api_key="sk-test-key", auth="apikey")
        status, _, raw = self.request("POST", "/api/chat", self.chat(model="gpt-5", stream=False, options={
            "num_predict": 64, "temperature": 0.3, "top_k": 5}), proxy=proxy)
        self.assertEqual(status, 200, raw)
        sent = self.fake.requests_to("/v1/responses")[-1].json
        self.assertEqual((sent["max_output_tokens"], sent["temperature"]), (64, 0.3))
        self.assertNotIn("top_k", sent)


class OllamaSocketTests(OllamaTestCase):
    def test_one_connection_serves_several_streams(self):
        sock = socket.create_connection(("127.0.0.1", self.proxy.port), timeout=10)
        self.addCleanup(sock.close)
        for _ in range(2):
            body = json.dumps(self.chat()).encode()
            sock.sendall(b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(body) + body)
            received = b""
            while not received.endswith(b"0\r\n\r\n"):
                chunk = sock.recv(65536)
                self.assertTrue(chunk, "the connection closed")
                received += chunk
            self.assertIn(b"Transfer-Encoding: chunked", received)
            self.assertIn(b'"done":true', received)


if __name__ == "__main__":
    unittest.main()
