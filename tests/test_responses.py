"""/v1/responses and /v1/models in ChatGPT mode, and the request normalisation."""

import inspect
import unittest

import fake_upstream
from support import ProxyTestCase, codex_proxy, run_stream, sse_data, streamed_text

OPTS = {"model": "gpt-5.5", "client_model": "gpt-5.5", "model_info": None, "chatgpt_mode": True,
        "defaults": {}, "session_id": None}


def normalise(body, **opts):
    return codex_proxy.responses_request_for_codex(body, codex_proxy.RequestOptions(**dict(OPTS, **opts)))[0]


class NormalisationTests(unittest.TestCase):
    """responses_request_for_codex is pure: body in, body the backend accepts out."""

    def test_codex_cli_request_is_accepted_unchanged_where_it_can_be(self):
        body = {"model": "gpt-5.5", "stream": True, "store": False, "instructions": "",
                "input": [{"type": "message", "id": "msg_1", "role": "developer",
                           "content": [{"type": "input_text", "text": "base prompt"}]},
                          {"type": "message", "id": "msg_2", "role": "user",
                           "content": [{"type": "input_text", "text": "Reply with exactly: pong"}]}],
                "tools": [{"type": "function", "name": "exec_command", "strict": False,
                           "parameters": {"type": "object", "properties": {}}}, {"type": "web_search"}],
                "tool_choice": "auto", "parallel_tool_calls": True, "reasoning": {"effort": "medium"},
                "include": ["reasoning.encrypted_content"], "prompt_cache_key": "thread-1",
                "text": {"verbosity": "low"}, "client_metadata": {"thread_id": "thread-1"}}
        out = normalise(body)
        self.assertIsNone(fake_upstream.codex_request_error(out))
        self.assertEqual(out["input"][0], {"type": "message", "role": "developer",
                                           "content": [{"type": "input_text", "text": "base prompt"}]})
        self.assertEqual(out["prompt_cache_key"], "thread-1")
        self.assertEqual(out["instructions"], codex_proxy.DEFAULT_INSTRUCTIONS)
        self.assertEqual(out["tools"], body["tools"])
        self.assertEqual(out["client_metadata"], {"thread_id": "thread-1"})

    def test_refused_parameters_are_left_out_and_required_ones_set(self):
        out = normalise({"model": "x", "input": "hi", "stream": False, "store": True, "temperature": 0.2,
                         "top_p": 0.9, "max_output_tokens": 50, "truncation": "auto", "user": "u", "metadata": {}})
        self.assertEqual(set(out) - fake_upstream.KNOWN_FIELDS, set())
        self.assertEqual((out["stream"], out["store"], out["model"]), (True, False, "gpt-5.5"))
        self.assertEqual(out["input"], [{"type": "message", "role": "user",
                                         "content": [{"type": "input_text", "text": "hi"}]}])
        self.assertIsNone(fake_upstream.codex_request_error(out))

    def test_system_becomes_developer_and_output_only_keys_are_stripped(self):
        out = normalise({"model": "x", "instructions": "Be brief.", "input": [
            {"role": "system", "content": "sys text"},
            {"type": "message", "role": "assistant", "id": "msg_9", "status": "completed", "content": "earlier"},
            {"type": "function_call", "id": "fc_1", "status": "completed", "call_id": "c1", "name": "f",
             "arguments": "{}"},
            {"type": "function_call_output", "id": "fco_1", "call_id": "c1", "output": "42"},
            {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "enc"},
            {"type": "reasoning", "id": "rs_2", "summary": [{"type": "summary_text", "text": "lost"}]}]})
        self.assertEqual(out["instructions"], "Be brief.")
        self.assertEqual(out["input"], [
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "sys text"}]},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "earlier"}]},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "42"},
            {"type": "reasoning", "summary": [], "encrypted_content": "enc"}])

    def test_function_tools_default_to_non_strict_and_chat_shaped_tools_are_flattened(self):
        out = normalise({"model": "x", "input": "hi", "tools": [
            {"type": "function", "name": "a", "parameters": {"type": "object"}},
            {"type": "function", "name": "b", "strict": True, "parameters": {"type": "object"}},
            {"type": "function", "function": {"name": "c", "parameters": {"type": "object"}}}]})
        self.assertEqual([(t["name"], t["strict"]) for t in out["tools"]], [("a", False), ("b", True), ("c", False)])
        self.assertNotIn("function", out["tools"][2])

    def test_stored_state_is_refused_clearly(self):
        for field in ("previous_response_id", "conversation"):
            with self.assertRaises(codex_proxy.ClientError) as caught:
                normalise({"model": "x", "input": "hi", field: "resp_1"})
            self.assertEqual(caught.exception.param, field)
        with self.assertRaises(codex_proxy.ClientError):
            normalise({"model": "x", "input": 5})

    def test_prompt_cache_key_is_stable_across_turns_and_prefers_the_session(self):
        turn1 = {"model": "x", "instructions": "I", "input": [{"role": "user", "content": "first"}]}
        turn2 = {"model": "x", "instructions": "I", "input": [
            {"role": "user", "content": "first"}, {"role": "assistant", "content": "a"},
            {"role": "user", "content": "second"}]}
        other = {"model": "x", "instructions": "I", "input": [{"role": "user", "content": "different"}]}
        self.assertEqual(normalise(turn1)["prompt_cache_key"], normalise(turn2)["prompt_cache_key"])
        self.assertNotEqual(normalise(turn1)["prompt_cache_key"], normalise(other)["prompt_cache_key"])
        self.assertEqual(normalise(turn1, session_id="sess-9")["prompt_cache_key"], "sess-9")

    def test_server_defaults_apply_only_where_the_client_did_not_say(self):
        levels = {"supported_reasoning_levels": [{"effort": "low"}, {"effort": "medium"}, {"effort": "high"}]}
        defaults = {"reasoning_effort": "minimal", "verbosity": "low", "service_tier": "priority"}
        out = normalise({"model": "x", "input": "hi"}, defaults=defaults, model_info=levels)
        self.assertEqual(out["reasoning"], {"effort": "low"})  # minimal is not offered: nearest level
        self.assertEqual(out["text"], {"verbosity": "low"})
        self.assertEqual(out["service_tier"], "priority")
        out = normalise({"model": "x", "input": "hi", "reasoning": {"effort": "high"}, "text": {"verbosity": "high"},
                         "service_tier": "flex"}, defaults=defaults, model_info=levels)
        self.assertEqual((out["reasoning"]["effort"], out["text"]["verbosity"], out["service_tier"]),
                         ("high", "high", "flex"))

    def test_fold_rebuilds_output_when_completed_carries_none(self):
        events = fake_upstream.sse_events_for({"text": "abc", "tool_calls": [
            {"name": "f", "arguments": "{}", "call_id": "c1"}], "empty_completed_output": True}, "gpt-5.5")
        result = codex_proxy.response_from_events(events, None)
        self.assertEqual([item["type"] for item in result["output"]], ["message", "function_call"])
        self.assertEqual(result["output"][0]["content"][0]["text"], "abc")
        self.assertEqual(codex_proxy.response_from_events(events[:1], None), {})  # no terminal event

    def test_stream_reports_failures_and_cut_streams(self):
        failed = fake_upstream.sse_events_for({"fail": {"code": "server_is_overloaded", "message": "busy"}}, "m")
        stream, _ = run_stream(codex_proxy.ResponsesStream(None), failed)
        self.assertEqual((stream.error["status"], stream.error["message"]), (503, "busy"))
        stream = codex_proxy.ResponsesStream(None)
        stream.feed(fake_upstream.sse_events_for({"text": "x"}, "m")[0])
        self.assertEqual(stream.finish()[0]["type"], "error")
        self.assertEqual(stream.error["status"], 502)

    def test_every_dialect_reads_an_error_event_alike(self):
        # The Responses API puts code and message on the event; some backends nest them in `error`.
        for event in ({"type": "error", "code": "rate_limit_exceeded", "message": "slow down"},
                      {"type": "error", "error": {"code": "rate_limit_exceeded", "message": "slow down"}},
                      {"type": "response.failed", "response": {"error": {"code": "rate_limit_exceeded",
                                                                         "message": "slow down"}}}):
            for translator in (codex_proxy.ResponsesStream(None),
                               codex_proxy.OPENAI_CHAT.stream(codex_proxy.AnswerContext("c", "m", stream=True)),
                               codex_proxy.ANTHROPIC_MESSAGES.stream(codex_proxy.AnswerContext("m", "m", stream=True))):
                with self.subTest(event=event, translator=type(translator).__name__):
                    translator.feed(event)
                    self.assertEqual((translator.error["status"], translator.error["code"],
                                      translator.error["message"]), (429, "rate_limit_exceeded", "slow down"))


class AnswerStreamInterfaceTests(unittest.TestCase):
    """Every dialect's stream implements AnswerStream, and a translated one every hook
    StreamTranslator asks for (DialectHooks' required ones raise NotImplementedError)."""

    DIALECTS = (codex_proxy.OPENAI_RESPONSES, codex_proxy.OPENAI_CHAT, codex_proxy.ANTHROPIC_MESSAGES)

    REQUIRED_HOOKS = ("opening", "emit_text", "refusal", "start_call", "call_arguments", "closing")

    def test_each_dialect_supplies_the_whole_interface(self):
        hooks = codex_proxy.DialectHooks()
        for name in self.REQUIRED_HOOKS:
            hook = getattr(hooks, name)
            with self.assertRaises(NotImplementedError):
                hook(*[None] * len(inspect.signature(hook).parameters))
        for dialect in self.DIALECTS:
            with self.subTest(dialect=dialect.name):
                self.assertTrue(issubclass(dialect.stream, codex_proxy.AnswerStream))
                for name in ("feed", "finish", "fail", "error_event"):
                    self.assertIsNot(getattr(dialect.stream, name), getattr(codex_proxy.AnswerStream, name))
                if issubclass(dialect.stream, codex_proxy.StreamTranslator):
                    for name in self.REQUIRED_HOOKS:
                        self.assertIsNot(getattr(dialect.stream, name), getattr(codex_proxy.DialectHooks, name))

    def test_a_missing_hook_says_so(self):
        class Half(codex_proxy.StreamTranslator):
            error_event = staticmethod(lambda error: {"type": "error"})
        with self.assertRaises(NotImplementedError):
            Half(codex_proxy.AnswerContext("x", "m")).feed({"type": "response.created"})

    def test_every_client_event_is_a_dict(self):
        events = fake_upstream.sse_events_for({"text": "Hi."}, "gpt-5.5")
        for dialect in self.DIALECTS:
            _, out = run_stream(dialect.stream(codex_proxy.AnswerContext("x", "m", stream=True)), events)
            with self.subTest(dialect=dialect.name):
                self.assertTrue(out)
                self.assertTrue(all(isinstance(client_event, dict) for client_event in out), out)
                self.assertTrue(all(dialect.encode(client_event).endswith(b"\n\n") for client_event in out))


class ResponsesEndpointTests(ProxyTestCase):
    def test_stream_is_relayed_byte_for_byte(self):
        status, hdrs, raw = self.request("POST", "/v1/responses", {
            "model": "gpt-5.5", "input": "hi", "stream": True, "temperature": 0.5, "max_output_tokens": 9,
            "top_p": 1})
        self.assertEqual(status, 200)
        self.assertTrue(hdrs["content-type"].startswith("text/event-stream"))
        self.assertEqual(hdrs.get("x-codex-primary-used-percent"), "12")
        events = sse_data(raw)
        self.assertEqual(fake_upstream.render_sse(events), raw)  # nothing added, dropped or reordered
        self.assertEqual(events[-1]["type"], "response.completed")
        self.assertEqual(streamed_text(events), fake_upstream.DEFAULT_TEXT)

    def test_non_stream_answer_is_one_response_object(self):
        self.fake.script.append({"text": "Done.", "reasoning": "thought", "empty_completed_output": True,
                                 "usage": {"input_tokens": 50, "cached_tokens": 10, "output_tokens": 5,
                                           "reasoning_tokens": 2}})
        status, _, body = self.json_request("POST", "/v1/responses", {"model": "gpt-5.5", "input": "hi"})
        self.assertEqual(status, 200)
        self.assertEqual(body["object"], "response")
        self.assertEqual([item["type"] for item in body["output"]], ["reasoning", "message"])
        self.assertEqual(body["output"][1]["content"][0]["text"], "Done.")
        self.assertEqual(body["usage"]["input_tokens_details"]["cached_tokens"], 10)

    def test_upstream_request_carries_codex_headers_and_session(self):
        self.request("POST", "/v1/responses", {"model": "gpt-5.5", "input": "hi"},
                     headers={"session_id": "sess-1", "x-codex-turn-metadata": "{}", "x-other": "no"})
        sent = self.fake.requests_to("/responses")[-1]
        self.assertEqual(sent.headers["session_id"], "sess-1")
        self.assertEqual(sent.headers["x-codex-turn-metadata"], "{}")
        self.assertNotIn("x-other", sent.headers)
        self.assertEqual(sent.headers["chatgpt-account-id"], "acct-123")
        self.assertEqual(sent.headers["originator"], codex_proxy.CODEX_ORIGINATOR)
        self.assertEqual(sent.json["prompt_cache_key"], "sess-1")

    def test_incomplete_answer_is_returned_with_its_status(self):
        self.fake.script.append({"text": "partial", "incomplete": "max_output_tokens"})
        status, _, body = self.json_request("POST", "/v1/responses", {"model": "gpt-5.5", "input": "hi"})
        self.assertEqual((status, body["status"]), (200, "incomplete"))
        self.assertEqual(body["incomplete_details"]["reason"], "max_output_tokens")

    def test_model_names_outside_the_catalog_get_the_backends_message(self):
        status, _, body = self.json_request("POST", "/v1/responses", {"model": "gpt-nope", "input": "hi"})
        self.assertEqual(status, 400)
        self.assertIn("not supported when using Codex with a ChatGPT account", body["error"]["message"])

    def test_missing_model_is_400(self):
        status, _, body = self.json_request("POST", "/v1/responses", {"input": "hi"})
        self.assertEqual((status, body["error"]["param"]), (400, "model"))


class DefaultsEndToEndTests(ProxyTestCase):
    config_overrides = {"reasoning_effort": "minimal", "verbosity": "low", "service_tier": "priority"}

    def test_fast_style_defaults_reach_upstream_clamped_to_the_model(self):
        status, _, _ = self.json_request("POST", "/v1/responses", {"model": "gpt-5.5", "input": "hi"})
        self.assertEqual(status, 200)
        sent = self.fake.requests_to("/responses")[-1].json
        self.assertEqual(sent["reasoning"]["effort"], "low")  # gpt-5.5 offers low..xhigh
        self.assertEqual((sent["text"]["verbosity"], sent["service_tier"]), ("low", "priority"))
        self.json_request("POST", "/v1/responses", {"model": "gpt-5.4", "input": "hi"})
        self.assertEqual(self.fake.requests_to("/responses")[-1].json["reasoning"]["effort"], "minimal")


class ModelsTests(ProxyTestCase):
    def test_catalog_lists_visible_api_models_by_priority_and_is_cached(self):
        status, _, body = self.json_request("GET", "/v1/models")
        self.assertEqual(status, 200)
        self.assertEqual(body["object"], "list")
        self.assertEqual([m["id"] for m in body["data"]], ["gpt-5.5", "gpt-5.4", "gpt-5.5-mini"])
        self.assertTrue(all(m["object"] == "model" for m in body["data"]))
        self.json_request("GET", "/v1/models")
        catalog_calls = self.fake.requests_to("/models")
        self.assertEqual(len(catalog_calls), 1)
        self.assertEqual(catalog_calls[0].query.get("client_version"), codex_proxy.CODEX_CLIENT_VERSION)

    def test_single_model_and_anthropic_shape(self):
        status, _, body = self.json_request("GET", "/v1/models/gpt-5.4")
        self.assertEqual((status, body["id"]), (200, "gpt-5.4"))
        status, _, body = self.json_request("GET", "/v1/models/gpt-5-hidden")
        self.assertEqual(status, 404)
        status, _, body = self.json_request("GET", "/v1/models", headers={"anthropic-version": "2023-06-01"})
        self.assertEqual(body["data"][0], {"type": "model", "id": "gpt-5.5", "display_name": "gpt-5.5",
                                           "created_at": "1970-01-01T00:00:00Z"})
        self.assertFalse(body["has_more"])


class CacheExpiryTests(ProxyTestCase):
    config_overrides = {"models_cache_ttl": 0}

    def test_ttl_zero_refetches(self):
        self.json_request("GET", "/v1/models")
        self.json_request("GET", "/v1/models")
        self.assertEqual(len(self.fake.requests_to("/models")), 2)


class ModelResolutionTests(unittest.TestCase):
    slugs = ["gpt-5.5", "gpt-5.4", "gpt-5.5-mini"]

    def test_claude_names_map_to_the_catalog(self):
        resolve = codex_proxy.resolve_model
        self.assertEqual(resolve("claude-opus-5-5", self.slugs), "gpt-5.5")
        self.assertEqual(resolve("claude-haiku-4-5-20251001", self.slugs), "gpt-5.5-mini")
        self.assertEqual(resolve("claude-sonnet-4-5", self.slugs, default_model="gpt-5.4"), "gpt-5.4")
        self.assertEqual(resolve("gpt-5.4", self.slugs), "gpt-5.4")
        self.assertEqual(resolve("gpt-4o", self.slugs), "gpt-4o")
        self.assertEqual(resolve("claude-opus-5-5", self.slugs, [("claude-*", "gpt-5.4")]), "gpt-5.4")
        self.assertEqual(resolve("gpt-4o", self.slugs, [("gpt-4*", "gpt-5.5")]), "gpt-5.5")


if __name__ == "__main__":
    unittest.main()
