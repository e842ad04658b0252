"""Tool schemas the backend would refuse: it compiles every `pattern` in a function tool's
parameters with Python's re and refuses the whole request over one it cannot (Claude Code's
Artifact tool has \\p{Cc}). The proxy leaves those patterns out, in every dialect, and keeps
all else. Also Claude Code's fast mode (`speed: "fast"`) as the priority tier.

Run: python3 -m unittest tests.test_tool_schemas -v
"""

import copy
import json
import unittest

from support import ProxyTestCase, codex_proxy
from fake_upstream import uncompilable_pattern  # noqa: E402 (support puts tests/ on the path)

ARTIFACT_PATTERN = "^(?!__.*__$)[^\\p{Cc}\\p{Cf}\\p{Zl}\\p{Zp}\"\\\\./[\\]]{1,200}$"  # Claude Code's Artifact
LOOKAHEAD_ONLY = "(?=.*[0-9])"
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "pattern": ARTIFACT_PATTERN},
        "pattern": {"type": "string", "description": "a glob (a property named pattern, as in Glob and Grep)"},
        "code": {"type": "string", "pattern": "^[A-Z]{3}$"},
        "tags": {"type": "array", "items": {"anyOf": [{"type": "string", "pattern": "^\\p{L}+$"},
                                                      {"type": "string", "pattern": LOOKAHEAD_ONLY}]}},
        "ref": {"$ref": "#/$defs/word"},
    },
    "$defs": {"word": {"type": "string", "pattern": "\\p{Lu}\\w*", "default": "\\p{L} stays: it is data"}},
    "required": ["name"],
}
# What reaches the backend: the three patterns re cannot compile are gone, nothing else changed.
CLEANED = copy.deepcopy(SCHEMA)
del CLEANED["properties"]["name"]["pattern"]
del CLEANED["properties"]["tags"]["items"]["anyOf"][0]["pattern"]
del CLEANED["$defs"]["word"]["pattern"]


class BackendSchemaTests(unittest.TestCase):
    def test_only_the_patterns_re_cannot_compile_are_left_out(self):
        self.assertEqual(codex_proxy.backend_schema(copy.deepcopy(SCHEMA)), CLEANED)
        self.assertIsNone(uncompilable_pattern(CLEANED))
        self.assertEqual(uncompilable_pattern(SCHEMA), ARTIFACT_PATTERN)  # the fake refuses what the backend does

    def test_a_schema_with_nothing_to_leave_out_is_the_same_object(self):
        schema = {"type": "object", "properties": {"pattern": {"type": "string", "pattern": "^a+$"}}}
        self.assertIs(codex_proxy.backend_schema(schema), schema)

    def test_a_repeated_schema_is_cleaned_once(self):
        codex_proxy.schema_without_bad_patterns.cache_clear()
        for _ in range(3):
            self.assertEqual(codex_proxy.backend_schema(copy.deepcopy(SCHEMA)), CLEANED)
        info = codex_proxy.schema_without_bad_patterns.cache_info()
        self.assertEqual((info.misses, info.hits), (1, 2))


class ToolSchemasOverHTTPTests(ProxyTestCase):
    def sent_parameters(self):
        sent = self.fake.requests_to("/responses")[-1].json
        return [tool["parameters"] for tool in sent["tools"]]

    def check(self, path, body, headers=None):
        for stream in (False, True):
            with self.subTest(path=path, stream=stream):
                status, _, raw = self.request("POST", path, dict(body, stream=stream), headers)
                self.assertEqual(status, 200, raw[:300])
                self.assertEqual(self.sent_parameters(), [CLEANED])

    def test_chat_completions(self):
        self.check("/v1/chat/completions", {"model": "gpt-5.5", "messages": [{"role": "user", "content": "Hi"}],
                                            "tools": [{"type": "function", "function": {
                                                "name": "Artifact", "parameters": copy.deepcopy(SCHEMA)}}]})

    def test_responses(self):
        self.check("/v1/responses", {"model": "gpt-5.5", "input": "Hi", "tools": [
            {"type": "function", "name": "Artifact", "parameters": copy.deepcopy(SCHEMA)}]})

    def test_messages(self):
        self.check("/v1/messages", {"model": "claude-opus-5-5", "max_tokens": 100,
                                    "messages": [{"role": "user", "content": "Hi"}],
                                    "tools": [{"name": "Artifact", "input_schema": copy.deepcopy(SCHEMA)}]},
                   {"anthropic-version": "2023-06-01", "x-api-key": "unused"})

    def test_the_artifact_tool_stays_callable(self):
        self.fake.script.append({"tool_calls": [{"name": "Artifact", "arguments": json.dumps({"name": "notes"})}]})
        status, _, answer = self.json_request("POST", "/v1/messages", {
            "model": "claude-opus-5-5", "max_tokens": 100, "messages": [{"role": "user", "content": "Hi"}],
            "tools": [{"name": "Artifact", "input_schema": copy.deepcopy(SCHEMA)}]},
            {"anthropic-version": "2023-06-01", "x-api-key": "unused"})
        self.assertEqual(status, 200, answer)
        self.assertEqual([(b["type"], b["name"], b["input"]) for b in answer["content"] if b["type"] == "tool_use"],
                         [("tool_use", "Artifact", {"name": "notes"})])


class FastModeTests(ProxyTestCase):
    HEADERS = {"anthropic-version": "2023-06-01", "x-api-key": "unused"}

    def tier_sent(self, **fields):
        body = dict({"model": "claude-opus-5-5", "max_tokens": 100, "messages": [{"role": "user", "content": "Hi"}]},
                    **fields)
        status, _, answer = self.json_request("POST", "/v1/messages", body, self.HEADERS)
        self.assertEqual(status, 200, answer)
        return self.fake.requests_to("/responses")[-1].json.get("service_tier")

    def test_fast_is_the_priority_tier(self):
        self.assertEqual(self.tier_sent(speed="fast"), "priority")
        self.assertIsNone(self.tier_sent(speed="standard"))
        self.assertIsNone(self.tier_sent())

    def test_the_servers_tier_stands_where_the_client_asks_for_no_speed(self):
        self.proxy = self.start_proxy(service_tier="flex")
        self.assertEqual(self.tier_sent(speed="standard"), "flex")
        self.assertEqual(self.tier_sent(speed="fast"), "priority")

    def test_a_speed_of_the_wrong_type_is_a_400_naming_it(self):
        status, _, answer = self.json_request("POST", "/v1/messages", {
            "model": "claude-opus-5-5", "max_tokens": 100, "messages": [{"role": "user", "content": "Hi"}],
            "speed": 1}, self.HEADERS)
        self.assertEqual(status, 400, answer)
        self.assertIn("speed", answer["error"]["message"])


if __name__ == "__main__":
    unittest.main()
