"""Tests of the fake Codex backend itself: if the fake is wrong, every proxy test is wrong."""

import base64
import http.client
import json
import os
import socket
import threading
import time
import unittest

from fake_upstream import (FakeCodexBackend, codex_request_error, compact_request_error, compaction_content,
                           fake_input_tokens, render_sse, sse_events_for, usage_limit_reply)
import fake_upstream
from support import read_until, sse_events, streamed_text

HERE = os.path.dirname(os.path.abspath(__file__))
REFERENCE = os.path.join(os.path.dirname(os.path.dirname(HERE)), "shared", "reference")
if not os.path.isdir(REFERENCE):
    REFERENCE = "/work/shared/reference"
PATCH = "*** Begin Patch\n*** Add File: hello.txt\n+hello from the fake\n*** End Patch\n"


def good_body(**overrides):
    body = {"model": "gpt-5.5", "instructions": "Be brief.", "stream": True, "store": False,
            "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}]}
    body.update(overrides)
    return body


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

    def test_each_accounts_usage_in_its_answers_and_at_wham_usage(self):
        self.fake.valid_access_tokens.add("access-b")
        self.fake.accounts["access-b"] = "acct-b"
        self.fake.used_percents = {"acct-b": {"primary": 100, "secondary": 40}}
        body = {"model": "gpt-5.4", "instructions": "x", "input": [], "stream": True, "store": False}
        status, resp, _ = self.post_codex(body, token="access-b", account="acct-b")
        self.assertEqual((status, resp.getheader("x-codex-primary-used-percent"),
                          resp.getheader("x-codex-secondary-used-percent")), (200, "100", "40"))
        self.fake.script.append(usage_limit_reply())
        status, resp, _ = self.post_codex(body, token="access-b", account="acct-b")  # a 429 reports it too
        self.assertEqual((status, resp.getheader("x-codex-primary-used-percent")), (429, "100"))
        status, resp, _ = self.post_codex(body)  # an account the knob does not name: the default headers
        self.assertEqual(resp.getheader("x-codex-primary-used-percent"), "12")
        status, _, data = self.request("GET", "/backend-api/wham/usage", token="access-b", account="acct-b")
        limits = json.loads(data)["rate_limit"]
        self.assertEqual((status, limits["primary_window"]["used_percent"], limits["secondary_window"]["used_percent"],
                          limits["limit_reached"], limits["allowed"]), (200, 100, 40, True, False))
        status, _, data = self.request("GET", "/backend-api/wham/usage")
        self.assertEqual(json.loads(data)["rate_limit"]["limit_reached"], False)
        # Strict: only with the account's own token and account id.
        for token, account, refused in (("access-b", "acct-123", 401), ("access-b", None, 400),
                                        ("nope", "acct-b", 401)):
            self.assertEqual(self.request("GET", "/backend-api/wham/usage", token=token, account=account)[0], refused)

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

    def test_nested_strictness(self):
        user = good_body()["input"][0]
        ctc = {"type": "custom_tool_call", "call_id": "p1", "name": "apply_patch", "input": PATCH}
        ctco = {"type": "custom_tool_call_output", "call_id": "p1", "output": "Done"}
        custom = {"type": "custom", "name": "apply_patch", "description": "Edit files",
                  "format": {"type": "grammar", "syntax": "lark", "definition": "start: /.+/"}}
        function = {"type": "function", "name": "f", "description": "d", "parameters": {}, "strict": False}
        cases = [
            (good_body(reasoning={"effort": "low", "context": "all_turns"}), "Unknown parameter: 'reasoning.context'"),
            (good_body(reasoning={"effort": "low", "generate_summary": "auto"}),
             "Unknown parameter: 'reasoning.generate_summary'"),
            (good_body(reasoning="low"), "Invalid type for 'reasoning'"),
            (good_body(text={"verbosity": "low", "type": "text"}), "Unknown parameter: 'text.type'"),
            (good_body(text="low"), "Invalid type for 'text'"),
            (good_body(tools=[function, dict(function, name="g", defer_loading=True)]),
             "Unknown parameter: 'tools[1].defer_loading'"),
            (good_body(tools=[dict(custom, strict=True)]), "Unknown parameter: 'tools[0].strict'"),
            (good_body(tools=[dict(custom, parameters={})]), "Unknown parameter: 'tools[0].parameters'"),
            (good_body(tools=[{"type": "custom", "description": "no name"}]), "tools[].name"),
            (good_body(tools=[dict(custom, name="apply patch")]), "Invalid tool name"),
            (good_body(input=[user, {"type": "compaction"}]),
             "Missing required parameter: 'input[1].encrypted_content'"),
            (good_body(input=[user, {"type": "compaction", "encrypted_content": 5}]),
             "Invalid type for 'input[1].encrypted_content'"),
            (good_body(input=[user, {"type": "compaction", "encrypted_content": ""}]), "encrypted_content"),
            (good_body(input=[user, ctc]), "No tool output found for function call p1"),
            (good_body(input=[user, ctco]), "No tool call found for function call output with call_id p1"),
        ]
        for body, fragment in cases:
            with self.subTest(fragment=fragment):
                self.assert_detail(body, 400, fragment)
                self.assertIn(fragment, codex_request_error(body))
        ok = good_body(input=[{"type": "compaction", "encrypted_content": "enc-compaction-1"}, user, ctc, ctco],
                       tools=[function, custom, {"type": "web_search", "external_web_access": True}],
                       reasoning={"effort": "low", "summary": "auto"},
                       text={"verbosity": "low", "format": {"type": "text"}})
        self.assertIsNone(codex_request_error(ok))
        self.assertEqual(self.post_codex(ok)[0], 200)
        # The real Codex CLI request (trimmed recording) is accepted as it is sent.
        path = os.path.join(REFERENCE, "codex-cli-0.169-responses-request.json")
        if os.path.exists(path):
            with open(path) as handle:
                recorded = dict(json.load(handle)["body"], instructions="x")
            self.assertIsNone(codex_request_error(recorded))

    def test_custom_tool_call_stream(self):
        self.fake.script.append({"text": "Patching.", "custom_tool_calls": [
            {"name": "apply_patch", "input": PATCH, "call_id": "call_p1"}, {"name": "apply_patch", "input": "x"}]})
        status, _, data = self.post_codex(good_body())
        self.assertEqual(status, 200)
        events = sse_events(data, json.loads)
        types = [t for t, _ in events]
        dedup = [t for i, t in enumerate(types) if i == 0 or t != types[i - 1]]
        custom = ["response.output_item.added", "response.custom_tool_call_input.delta",
                  "response.custom_tool_call_input.done", "response.output_item.done"]
        self.assertEqual(dedup[-9:], custom + custom + ["response.completed"])
        self.assertGreater(types.count("response.custom_tool_call_input.delta"), 2)
        added = [ev for t, ev in events if t == "response.output_item.added"][1]
        self.assertEqual(added["output_index"], 1)
        item_id = added["item"]["id"]
        self.assertTrue(item_id.startswith("ctc_"))
        self.assertEqual(added["item"], {"id": item_id, "type": "custom_tool_call", "status": "in_progress",
                                         "call_id": "call_p1", "name": "apply_patch", "input": ""})
        deltas = [ev for t, ev in events if t == "response.custom_tool_call_input.delta" and ev["item_id"] == item_id]
        for ev in deltas:
            self.assertEqual(set(ev), {"type", "item_id", "output_index", "delta", "sequence_number"})
            self.assertEqual(ev["output_index"], 1)
        self.assertEqual("".join(ev["delta"] for ev in deltas), PATCH)
        done = [ev for t, ev in events if t == "response.custom_tool_call_input.done"][0]
        self.assertEqual(set(done), {"type", "item_id", "output_index", "input", "sequence_number"})
        self.assertEqual((done["item_id"], done["output_index"], done["input"]), (item_id, 1, PATCH))
        items = [ev["item"] for t, ev in events if t == "response.output_item.done"]
        self.assertEqual(items[1], {"id": item_id, "type": "custom_tool_call", "status": "completed",
                                    "call_id": "call_p1", "name": "apply_patch", "input": PATCH})
        self.assertTrue(items[2]["call_id"])  # generated when the script gives none
        self.assertNotEqual(items[2]["call_id"], "call_p1")
        self.assertEqual(events[-1][1]["response"]["output"], items)
        # The follow-up turn carries the call and its output.
        follow = good_body(input=[good_body()["input"][0], dict(items[1]),
                                  {"type": "custom_tool_call_output", "call_id": "call_p1", "output": "Done!"}])
        self.assertEqual(self.post_codex(follow)[0], 200)

    def test_empty_output_on_every_terminal_and_stall(self):
        for extra, terminal in (({}, "response.completed"),
                                ({"incomplete": "max_output_tokens"}, "response.incomplete"),
                                ({"fail": {"message": "boom"}}, "response.failed")):
            events = sse_events_for(dict(extra, text="abc", empty_completed_output=True), "m")
            self.assertEqual((events[-1]["type"], events[-1]["response"]["output"]), (terminal, []))
        self.fake.script.append({"text": "abc", "stall": 0.5})
        payload = json.dumps(good_body()).encode()
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        self.addCleanup(sock.close)
        started = time.monotonic()
        sock.sendall(b"POST /backend-api/codex/responses HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer access-1\r\n"
                     b"ChatGPT-Account-ID: acct-123\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(payload), payload))
        data = read_until(sock, b"response.output_text.delta")
        self.assertLess(time.monotonic() - started, 0.4)  # up to the first delta: no waiting
        self.assertIn(b"response.output_text.delta", data)
        data = read_until(sock, b"response.completed", data)
        self.assertIn(b"response.completed", data)
        self.assertGreaterEqual(time.monotonic() - started, 0.5)  # then one silence
        self.assertLess(time.monotonic() - started, 1.5)

    # -- remote compaction
    def post_compact(self, body, **kw):
        return self.request("POST", "/backend-api/codex/responses/compact", body, **kw)

    def compact_body(self, **overrides):
        body = {"model": "gpt-5.5", "instructions": "You are Codex.", "input": [
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "dev"}]},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "first"}]},
            {"type": "reasoning", "summary": [], "encrypted_content": "enc-r1"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "answer"}]},
            {"role": "user", "content": "second"}],
            "tools": [{"type": "function", "name": "f", "parameters": {}, "strict": False}],
            "parallel_tool_calls": True, "reasoning": {"effort": "medium", "summary": "auto"},
            "text": {"verbosity": "low"}, "prompt_cache_key": "thread-1"}
        body.update(overrides)
        return body

    def test_compact(self):
        body = self.compact_body()
        status, resp, data = self.post_compact(body)
        self.assertEqual(status, 200, data)
        self.assertEqual(resp.getheader("Content-Type"), "application/json")
        self.assertEqual(resp.getheader("x-codex-primary-used-percent"), "12")
        answer = json.loads(data)
        self.assertEqual(set(answer), {"id", "object", "created_at", "output", "usage"})
        self.assertTrue(answer["id"].startswith("resp_"))
        self.assertEqual(answer["object"], "response.compaction")
        self.assertIsInstance(answer["created_at"], int)
        self.assertEqual(answer["usage"]["total_tokens"], 19)
        users, compaction = answer["output"][:-1], answer["output"][-1]
        self.assertEqual([(m["type"], m["role"], m["content"][0]["text"]) for m in users],
                         [("message", "user", "first"), ("message", "user", "second")])
        self.assertEqual(users[1]["content"], [{"type": "input_text", "text": "second"}])
        self.assertTrue(all(m["id"].startswith("msg_") for m in users))
        self.assertEqual(set(compaction), {"id", "type", "encrypted_content"})
        self.assertTrue(compaction["id"].startswith("cmp_"))
        self.assertEqual(compaction["type"], "compaction")
        self.assertEqual(compaction["encrypted_content"], compaction_content(body["input"]))
        self.assertTrue(compaction["encrypted_content"].startswith("enc-compaction-"))
        # Another input compacts to other content; the same input to the same.
        other = json.loads(self.post_compact(self.compact_body(input=body["input"][:2]))[2])
        self.assertNotEqual(other["output"][-1]["encrypted_content"], compaction["encrypted_content"])
        again = json.loads(self.post_compact(self.compact_body())[2])
        self.assertEqual(again["output"][-1]["encrypted_content"], compaction["encrypted_content"])
        # The compacted window is accepted as the input of the next turn.
        follow = good_body(input=[{"type": m["type"], "role": m["role"], "content": m["content"]} for m in users] + [
            {"type": "compaction", "encrypted_content": compaction["encrypted_content"]},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "third"}]}])
        self.assertEqual(self.post_codex(follow)[0], 200)
        # Minimal body: model and input only.
        self.assertEqual(self.post_compact({"model": "gpt-5.4", "input": []})[0], 200)

    def test_compact_refusals(self):
        body = self.compact_body()
        cases = [
            (dict(body, stream=True), "Unsupported parameter: stream"),
            (dict(body, store=False), "Unsupported parameter: store"),
            (dict(body, include=["reasoning.encrypted_content"]), "Unsupported parameter: include"),
            (dict(body, tool_choice="auto"), "Unsupported parameter: tool_choice"),
            (dict(body, client_metadata={}), "Unsupported parameter: client_metadata"),
            (dict(body, temperature=0.1), "Unsupported parameter: temperature"),
            (dict(body, model="gpt-4o"),
             "The 'gpt-4o' model is not supported when using Codex with a ChatGPT account."),
            ({k: v for k, v in body.items() if k != "model"}, "Model is required"),
            (dict(body, input="hi"), "Input must be a list"),
            ({k: v for k, v in body.items() if k != "input"}, "Missing required parameter: 'input'"),
            (dict(body, input=[{"role": "system", "content": "x"}]), "System messages are not allowed"),
            (dict(body, input=[{"type": "reasoning", "summary": []}]), "encrypted_content"),
            (dict(body, input=[{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}]),
             "No tool output found for function call c"),
            (dict(body, input=[{"type": "compaction"}]), "input[0].encrypted_content"),
            (dict(body, reasoning={"effort": "low", "context": "all_turns"}), "Unknown parameter: 'reasoning.context'"),
            (dict(body, reasoning={"effort": "minimal"}), "not supported"),
            (dict(body, tools=[{"type": "function", "name": "f", "extra": 1}]), "Unknown parameter: 'tools[0].extra'"),
        ]
        for case, fragment in cases:
            with self.subTest(fragment=fragment):
                status, _, data = self.post_compact(case)
                self.assertEqual(status, 400, data)
                self.assertIn(fragment, json.loads(data)["detail"])
                self.assertIn(fragment, compact_request_error(case, self.fake.catalog))
        status, _, data = self.post_compact(None, raw=b"[1]")
        self.assertEqual((status, json.loads(data)["detail"]), (400, "Request body must be a JSON object"))
        self.assertEqual(self.post_compact(body, token="nope")[0], 401)
        self.assertEqual(self.post_compact(body, account=None)[0], 400)
        # A scripted HTTP reply still answers there, and the next entry is the next request's.
        self.fake.script.append({"status": 429, "body": {"error": {"type": "usage_limit_reached"}}})
        self.fake.script.append({"compaction": "enc-compaction-scripted"})
        status, _, data = self.post_compact(body)
        self.assertEqual((status, json.loads(data)["error"]["type"]), (429, "usage_limit_reached"))
        status, _, data = self.post_compact(body)
        self.assertEqual(json.loads(data)["output"][-1]["encrypted_content"], "enc-compaction-scripted")
        recorded = self.fake.requests_to("/responses/compact")
        self.assertEqual(recorded[-1].json, body)

    # -- API-key mode extras
    def api(self, method, path, body=None):
        status, resp, data = self.request(method, path, body, token="sk-test-key", account=None)
        return status, json.loads(data) if data else None

    def test_api_key_mode_response_resources(self):
        self.fake.script.append({"text": "Stored answer", "reasoning": "r"})
        status, created = self.api("POST", "/v1/responses", {"model": "gpt-4.1", "input": [
            {"role": "developer", "content": "be brief"}, {"role": "user", "content": "one"},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "two"}]}]})
        self.assertEqual(status, 200)
        rid = created["id"]
        status, got = self.api("GET", "/v1/responses/" + rid)
        self.assertEqual((status, got["id"], got["object"], got["status"]), (200, rid, "response", "completed"))
        self.assertEqual([i["type"] for i in got["output"]], ["reasoning", "message"])
        # Input items: newest first by default, each with an id; pages by limit/after.
        status, page = self.api("GET", "/v1/responses/%s/input_items" % rid)
        self.assertEqual((status, page["object"], page["has_more"]), (200, "list", False))
        self.assertEqual([i["content"] if isinstance(i["content"], str) else i["content"][0]["text"]
                          for i in page["data"]], ["two", "one", "be brief"])
        self.assertTrue(all(i["id"] for i in page["data"]))
        self.assertEqual((page["first_id"], page["last_id"]), (page["data"][0]["id"], page["data"][-1]["id"]))
        status, first = self.api("GET", "/v1/responses/%s/input_items?limit=2&order=asc" % rid)
        self.assertEqual((len(first["data"]), first["has_more"]), (2, True))
        status, second = self.api("GET", "/v1/responses/%s/input_items?limit=2&order=asc&after=%s"
                                  % (rid, first["last_id"]))
        self.assertEqual((len(second["data"]), second["has_more"]), (1, False))
        self.assertEqual(second["data"][0]["id"], page["data"][0]["id"])
        self.assertEqual(self.api("GET", "/v1/responses/%s/input_items?limit=0" % rid)[0], 400)
        self.assertEqual(self.api("GET", "/v1/responses/%s/input_items?order=up" % rid)[0], 400)
        self.assertEqual(self.request("GET", "/v1/responses/" + rid, token="access-1")[0], 401)
        # Streamed responses are kept too, with their output, before the stream is read.
        self.fake.script.append({"text": "streamed", "empty_completed_output": True})
        status, _, data = self.request("POST", "/v1/responses", {"model": "gpt-4.1", "input": "hi", "stream": True},
                                       token="sk-test-key")
        streamed = sse_events(data, json.loads)[-1][1]["response"]
        self.assertEqual(streamed["output"], [])
        status, got = self.api("GET", "/v1/responses/" + streamed["id"])
        self.assertEqual(got["output"][0]["content"][0]["text"], "streamed")
        # store: false keeps nothing; delete; unknown ids.
        status, unstored = self.api("POST", "/v1/responses", {"model": "gpt-4.1", "input": "hi", "store": False})
        self.assertEqual(self.api("GET", "/v1/responses/" + unstored["id"])[0], 404)
        status, deleted = self.api("DELETE", "/v1/responses/" + rid)
        self.assertEqual((status, deleted), (200, {"id": rid, "object": "response", "deleted": True}))
        status, missing = self.api("GET", "/v1/responses/" + rid)
        self.assertEqual(status, 404)
        self.assertEqual(missing["error"]["type"], "invalid_request_error")
        self.assertEqual(self.api("DELETE", "/v1/responses/" + rid)[0], 404)
        self.assertEqual(self.api("GET", "/v1/responses/resp_unknown/input_items")[0], 404)
        self.assertEqual([r.method for r in self.fake.requests_to(rid)], ["GET", "GET", "DELETE", "GET", "DELETE"])

    def test_api_key_mode_compact_and_input_tokens(self):
        body = {"model": "gpt-4.1", "input": [{"role": "user", "content": "hello"}], "instructions": "i",
                "store": False}  # lenient: what the backend refuses passes here
        status, answer = self.api("POST", "/v1/responses/compact", body)
        self.assertEqual((status, answer["object"]), (200, "response.compaction"))
        self.assertEqual([i["type"] for i in answer["output"]], ["message", "compaction"])
        self.assertEqual(answer["output"][-1]["encrypted_content"], compaction_content(body["input"]))
        status, counted = self.api("POST", "/v1/responses/input_tokens", body)
        self.assertEqual((status, counted), (200, {"object": "response.input_tokens",
                                                   "input_tokens": fake_input_tokens(body)}))
        self.assertGreater(fake_input_tokens({"input": "x" * 400}), fake_input_tokens({"input": "x"}))
        self.assertEqual(self.request("POST", "/v1/responses/compact", body, token="access-1")[0], 401)
        self.assertEqual(self.api("POST", "/v1/responses/input_tokens", None)[0], 400)
        self.assertEqual([r.json for r in self.fake.requests_to("/input_tokens")][0], body)

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
        events = sse_events(data, json.loads)
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
        text = streamed_text(ev for _, ev in events)
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


class FakeDrawingTest(unittest.TestCase):
    """The fake draws as the backend does: the image_generation tool's events and a real PNG."""

    REQUEST = {"model": "gpt-5.5", "instructions": "x", "stream": True, "store": False,
               "tools": [{"type": "image_generation", "size": "1536x1024", "partial_images": 2}],
               "tool_choice": {"type": "image_generation"},
               "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "a boat"}]}]}

    def test_the_tool_takes_only_its_keys(self):
        self.assertIsNone(codex_request_error(self.REQUEST))
        bad = dict(self.REQUEST, tools=[{"type": "image_generation", "model": "gpt-image-1"}])
        self.assertEqual(codex_request_error(bad), "Unknown parameter: 'tools[0].model'.")
        bad = dict(self.REQUEST, tools=[{"type": "image_generation", "size": "999x999"}])
        self.assertIn("Invalid value: '999x999'", codex_request_error(bad))

    def test_an_image_call_streams_its_events_and_a_png_of_the_size_asked(self):
        events = fake_upstream.sse_events_for({"image": {}}, "gpt-5.5", self.REQUEST)
        kinds = [event["type"] for event in events]
        self.assertEqual(kinds[2:-1], [
            "response.output_item.added", "response.image_generation_call.in_progress",
            "response.image_generation_call.generating"] + ["response.image_generation_call.partial_image"] * 2 + [
            "response.image_generation_call.completed", "response.output_item.done"])
        partials = [event for event in events if event["type"].endswith("partial_image")]
        self.assertEqual([p["partial_image_index"] for p in partials], [0, 1])
        item = events[-2]["item"]
        self.assertEqual((item["status"], item["size"], item["action"]), ("completed", "1536x1024", "generate"))
        self.assertEqual(fake_upstream.png_size(base64.b64decode(item["result"])), (1536, 1024))
        self.assertEqual(item["revised_prompt"], "A drawing of: a boat")

    def test_an_image_item_in_input_only_with_its_id_status_and_result(self):
        shown = {"type": "image_generation_call", "id": "ig_1", "status": "completed", "result": "iVBORw0KGgo="}
        self.assertIsNone(codex_request_error(dict(self.REQUEST, input=[shown])))
        for item, error in ((dict(shown, revised_prompt="a boat"), "Unknown parameter: 'input[0].revised_prompt'."),
                            ({"type": "image_generation_call", "id": "ig_1", "status": "completed"},
                             "Missing required parameter: 'input[0].result'."),
                            (dict(shown, result=None), "Invalid type for 'input[0].result': expected a string.")):
            self.assertEqual(codex_request_error(dict(self.REQUEST, input=[item])), error)

    def test_an_edit_draws_at_the_first_inputs_size_and_a_failure_has_its_error(self):
        picture = base64.b64encode(fake_upstream.png(32, 16)).decode()
        request = dict(self.REQUEST, input=[{"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "bluer"}, {"type": "input_image", "image_url": "data:image/png;base64," + picture}]}])
        item = fake_upstream.sse_events_for({"image": {}}, "gpt-5.5", request)[-2]["item"]
        self.assertEqual((item["size"], item["action"]), ("32x16", "edit"))
        failed = fake_upstream.sse_events_for({"image": {"fail": {"code": "moderation_blocked", "message": "No."}}},
                                              "gpt-5.5", request)[-2]["item"]
        self.assertEqual((failed["status"], failed["error"]["code"], failed["result"]), ("failed", "moderation_blocked", None))
