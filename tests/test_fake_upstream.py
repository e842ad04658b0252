"""Tests of the fake Codex backend itself: if the fake is wrong, every proxy test is wrong."""

import http.client
import json
import threading
import time
import unittest

from fake_upstream import FakeCodexBackend, codex_request_error, render_sse, sse_events_for


def good_body(**overrides):
    body = {"model": "gpt-5.5", "instructions": "Be brief.", "stream": True, "store": False,
            "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}]}
    body.update(overrides)
    return body


def parse_sse(data):
    """[(event_name, data_dict)] from Responses-style SSE bytes."""
    out = []
    for block in data.decode().split("\n\n"):
        if not block.strip():
            continue
        fields = dict(line.split(": ", 1) for line in block.split("\n"))
        out.append((fields["event"], json.loads(fields["data"])))
    return out


class FakeBackendTest(unittest.TestCase):
    def setUp(self):
        self.fake = FakeCodexBackend().start()
        self.addCleanup(self.fake.stop)
        self.port = int(self.fake.base_url.rsplit(":", 1)[1])

    def request(self, method, path, body=None, token="access-1", account="acct-123", raw=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        self.addCleanup(conn.close)
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = "Bearer " + token
        if account:
            headers["ChatGPT-Account-ID"] = account
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp, resp.read()

    def post_codex(self, body, **kw):
        return self.request("POST", "/backend-api/codex/responses", body, **kw)

    def assert_detail(self, body, status, fragment):
        code, _, data = self.post_codex(body)
        self.assertEqual(code, status, data)
        self.assertIn(fragment, json.loads(data)["detail"])

    # -- strictness
    def test_strict_rules(self):
        fc = {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}
        fco = {"type": "function_call_output", "call_id": "c1", "output": "ok"}
        user = good_body()["input"][0]
        cases = [
            (good_body(stream=False), "Stream must be set to true"),
            (good_body(store=True), "Store must be set to false"),
            ({k: v for k, v in good_body().items() if k != "store"}, "Store must be set to false"),
            (good_body(instructions=""), "Instructions are required"),
            ({k: v for k, v in good_body().items() if k != "instructions"}, "Instructions are required"),
            (good_body(max_output_tokens=100), "Unsupported parameter: max_output_tokens"),
            (good_body(temperature=0.2), "Unsupported parameter: temperature"),
            (good_body(top_p=0.9), "Unsupported parameter: top_p"),
            (good_body(input="hi"), "Input must be a list"),
            (good_body(input=[{"role": "system", "content": "x"}, user]), "System messages are not allowed"),
            (good_body(input=[user, fco]), "No tool call found for function call output with call_id c1"),
            (good_body(input=[user, fc]), "No tool output found for function call c1"),
            (good_body(input=[user, {"type": "reasoning", "summary": []}]), "encrypted_content"),
            (good_body(tools=[{"type": "function", "function": {"name": "f"}}]), "name"),
            (good_body(tools=[{"type": "function", "name": "bad name!"}]), "Invalid tool name"),
            (good_body(model="gpt-4o"), "The 'gpt-4o' model is not supported when using Codex with a ChatGPT account."),
            (good_body(reasoning={"effort": "minimal"}), "not supported"),
        ]
        for body, fragment in cases:
            with self.subTest(fragment=fragment):
                self.assert_detail(body, 400, fragment)
        self.assert_detail(None, 400, "JSON object")
        self.assertEqual(self.fake.requests_to("/responses")[0].json["stream"], False)
        # Valid shapes pass: paired tool call, reasoning with encrypted_content, developer role, listed effort.
        ok = good_body(input=[{"role": "developer", "content": "d"}, user,
                              {"type": "reasoning", "summary": [], "encrypted_content": "enc-x"}, fc, fco],
                       tools=[{"type": "function", "name": "f", "parameters": {}, "strict": False},
                              {"type": "web_search"}],
                       reasoning={"effort": "xhigh", "summary": "auto"}, include=["reasoning.encrypted_content"])
        self.assertIsNone(codex_request_error(ok, self.fake.catalog))
        self.assertEqual(self.post_codex(ok)[0], 200)

    def test_auth(self):
        self.assertEqual(self.post_codex(good_body(), token="nope")[0], 401)
        status, _, data = self.post_codex(good_body(), account="acct-other")
        self.assertEqual(status, 401)
        self.assertIn("detail", json.loads(data))
        self.assertEqual(self.post_codex(good_body(), account=None)[0], 400)
        self.assertEqual(self.request("GET", "/v1/models", token="access-1")[0], 401)
        self.assertEqual(self.request("GET", "/v1/models", token="sk-test-key")[0], 200)
        # API-key mode is lenient about sampling parameters.
        status, _, data = self.request("POST", "/v1/responses", {"model": "gpt-4.1", "input": "hi", "temperature": 0},
                                       token="sk-test-key")
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(data)["output"][0]["content"][0]["text"], "Hello from the fake backend.")

    # -- streaming
    def test_sse_order(self):
        self.fake.script.append({"text": "Hello there world", "reasoning": "Let me think.",
                                 "tool_calls": [{"name": "get_weather", "arguments": '{"city":"Paris"}',
                                                 "call_id": "call_1"}],
                                 "usage": {"input_tokens": 100, "cached_tokens": 20, "output_tokens": 30,
                                           "reasoning_tokens": 10}})
        status, resp, data = self.post_codex(good_body())
        self.assertEqual(status, 200)
        self.assertEqual(resp.getheader("Content-Type"), "text/event-stream")
        self.assertEqual(resp.getheader("Transfer-Encoding"), "chunked")
        self.assertEqual(resp.getheader("x-codex-primary-used-percent"), "12")
        events = parse_sse(data)
        for name, ev in events:
            self.assertEqual(name, ev["type"])
        self.assertEqual([ev["sequence_number"] for _, ev in events], list(range(len(events))))
        types = [t for t, _ in events]
        dedup = [t for i, t in enumerate(types) if i == 0 or t != types[i - 1]]
        self.assertEqual(dedup, [
            "response.created", "response.in_progress",
            "response.output_item.added", "response.reasoning_summary_part.added",
            "response.reasoning_summary_text.delta", "response.reasoning_summary_text.done",
            "response.reasoning_summary_part.done", "response.output_item.done",
            "response.output_item.added", "response.content_part.added", "response.output_text.delta",
            "response.output_text.done", "response.content_part.done", "response.output_item.done",
            "response.output_item.added", "response.function_call_arguments.delta",
            "response.function_call_arguments.done", "response.output_item.done", "response.completed"])
        text = "".join(ev["delta"] for t, ev in events if t == "response.output_text.delta")
        self.assertEqual(text, "Hello there world")
        self.assertGreater(types.count("response.output_text.delta"), 1)
        args = "".join(ev["delta"] for t, ev in events if t == "response.function_call_arguments.delta")
        self.assertEqual(json.loads(args), {"city": "Paris"})
        done = [ev["item"] for t, ev in events if t == "response.output_item.done"]
        self.assertTrue(done[0]["encrypted_content"].startswith("enc-"))
        self.assertEqual(done[2]["call_id"], "call_1")
        final = events[-1][1]["response"]
        self.assertEqual((final["status"], final["model"], len(final["output"])), ("completed", "gpt-5.5", 3))
        self.assertEqual(final["usage"]["input_tokens_details"]["cached_tokens"], 20)
        self.assertEqual(final["usage"]["output_tokens_details"]["reasoning_tokens"], 10)
        self.assertEqual(final["usage"]["total_tokens"], 130)

    def test_terminal_variants_and_http_errors(self):
        self.assertEqual(sse_events_for({"text": "x", "incomplete": "max_output_tokens"}, "m")[-1]["response"]
                         ["incomplete_details"], {"reason": "max_output_tokens"})
        self.assertEqual(sse_events_for({"fail": {"code": "server_error", "message": "boom"}}, "m")[-1]["response"]
                         ["error"]["code"], "server_error")
        self.assertEqual(sse_events_for({"error_event": {"code": "e", "message": "m"}}, "m")[-1]["type"], "error")
        self.assertEqual(sse_events_for({"text": "abc", "cut": True}, "m")[-1]["type"], "response.output_text.delta")
        self.assertEqual(sse_events_for({"text": "a", "empty_completed_output": True}, "m")[-1]["response"]["output"],
                         [])
        self.assertTrue(render_sse(sse_events_for({}, "m")).startswith(b"event: response.created\ndata: {"))
        self.fake.script.append({"status": 429, "body": {"error": {"type": "usage_limit_reached"}}})
        status, _, data = self.post_codex(good_body())
        self.assertEqual((status, json.loads(data)["error"]["type"]), (429, "usage_limit_reached"))
        # A rejected request does not consume the script.
        self.fake.script.append({"text": "kept"})
        self.assertEqual(self.post_codex(good_body(store=True))[0], 400)
        self.assertIn(b"kept", self.post_codex(good_body())[2])

    def test_client_disconnect_sets_event(self):
        self.fake.script.append({"text": "x" * 30, "delay": 0.005, "events_repeat": 400})
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        conn.request("POST", "/backend-api/codex/responses", body=json.dumps(good_body()),
                     headers={"Authorization": "Bearer access-1", "ChatGPT-Account-ID": "acct-123"})
        resp = conn.getresponse()
        resp.read(200)
        conn.sock.close()
        conn.close()
        self.assertTrue(self.fake.stream_closed_early.wait(2))

    # -- catalog and tokens
    def test_catalog(self):
        self.assertEqual(self.request("GET", "/backend-api/codex/models")[0], 400)
        status, _, data = self.request("GET", "/backend-api/codex/models?client_version=0.169.0")
        self.assertEqual(status, 200)
        models = {m["slug"]: m for m in json.loads(data)["models"]}
        self.assertEqual(models["gpt-5-hidden"]["visibility"], "hide")
        self.assertFalse(models["gpt-5-internal"]["supported_in_api"])
        self.assertEqual([lv["effort"] for lv in models["gpt-5.5"]["supported_reasoning_levels"]],
                         ["low", "medium", "high", "xhigh"])
        self.assertEqual(self.fake.requests_to("/models")[-1].query, {"client_version": "0.169.0"})

    def refresh(self, token, client_id="app_EMoamEEZ73f0CkXaXp7hrann"):
        status, _, data = self.request("POST", "/oauth/token", {"client_id": client_id, "grant_type": "refresh_token",
                                                                "refresh_token": token}, token=None, account=None)
        return status, json.loads(data)

    def test_refresh_rotation(self):
        self.assertEqual(self.refresh("refresh-1", client_id="other")[0], 400)
        status, data = self.refresh("refresh-1")
        self.assertEqual((status, data["access_token"], data["refresh_token"]), (200, "access-2", "refresh-2"))
        self.assertEqual(data["id_token"].count("."), 2)
        self.assertEqual(self.fake.refresh_count, 1)
        self.assertEqual(self.post_codex(good_body(), token="access-1")[0], 401)
        self.assertEqual(self.post_codex(good_body(), token="access-2")[0], 200)
        status, data = self.refresh("refresh-1")
        self.assertEqual((status, data["error"]["code"]), (401, "refresh_token_reused"))
        status, data = self.refresh("never-issued")
        self.assertEqual((status, data["error"]["code"]), (401, "refresh_token_invalidated"))
        self.assertEqual(self.refresh("refresh-2")[0], 200)  # issued tokens keep rotating
        self.assertEqual(self.fake.refresh_count, 2)

    def test_concurrent_refresh_of_one_token(self):
        self.fake.refresh_delay = 0.2
        results = []
        threads = [threading.Thread(target=lambda: results.append(self.refresh("refresh-1")[0])) for _ in range(2)]
        started = time.time()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(sorted(results), [200, 401])
        self.assertLess(time.time() - started, 1.0)
        self.fake.reset()
        self.assertEqual((self.fake.refresh_count, self.fake.requests), (0, []))


if __name__ == "__main__":
    unittest.main()
