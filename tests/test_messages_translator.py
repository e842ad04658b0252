"""Tests of the Anthropic Messages <-> Responses translator (pure: dicts in, dicts out)."""

import copy
import json
import unittest

from support import codex_proxy, run_stream  # noqa: F401  (support puts the repo on sys.path)
from codex_proxy import (ClientError, ResponsesToMessagesStream, anthropic_error_type,
                         message_from_events, messages_request_to_responses)

from fake_upstream import KNOWN_FIELDS, codex_request_error, sse_events_for

SESSION = "154b6957-a6bf-4dd6-a578-711c942ce84a"
LEVELS = [{"effort": e, "description": e} for e in ("low", "medium", "high", "xhigh")]
OPTS = {"model": "gpt-5.5", "client_model": "claude-opus-5-5", "chatgpt_mode": True, "session_id": None,
        "model_info": {"slug": "gpt-5.5", "supported_reasoning_levels": LEVELS, "default_reasoning_level": "medium"},
        "defaults": {"reasoning_effort": None, "verbosity": None, "service_tier": None}}
SYSTEM_TEXT = "You are an agent working with the user toward their goals."
ENV_TEXT = "# Environment\nYou have been invoked in the following environment:\n - Platform: linux"
SKILL_SCHEMA = {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
                "properties": {"skill": {"type": "string"}, "args": {"type": "string"}},
                "required": ["skill"], "additionalProperties": False}


def claude_code_request():
    """A trimmed copy of Claude Code 2.1.328's first request (shape kept, texts shortened)."""
    return {
        "model": "claude-opus-5-5",
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "<system-reminder>\nAttribution for git commits.\n</system-reminder>"},
                {"type": "text", "text": "Reply with exactly: pong"}]},
            {"role": "system", "content": [{"type": "text", "text": ENV_TEXT, "cache_control": {"type": "ephemeral"}}],
             "output_config": {"effort": "medium"}},
        ],
        "system": [
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.328.7de; cc_entrypoint=sdk-cli;"},
            {"type": "text", "text": "You are a Claude agent, built on Anthropic's Claude Agent SDK.",
             "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": SYSTEM_TEXT, "cache_control": {"type": "ephemeral"}},
        ],
        "tools": [
            {"name": "Skill", "description": "Invoke a skill.", "input_schema": json.dumps(SKILL_SCHEMA)},
            {"name": "Bash", "description": "Executes a bash command.", "input_schema": {
                "type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}},
            {"name": "DeferredToolPlaceholder", "description": "Reserved placeholder; never call this tool.",
             "input_schema": "{\"type\": \"object\", \"properties\": {}}", "defer_loading": True},
        ],
        "metadata": {"user_id": json.dumps({"device_id": "e95d", "account_uuid": "", "session_id": SESSION})},
        "max_tokens": 128000,
        "thinking": {"type": "adaptive", "display": "omitted"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "output_config": {"effort": "medium"},
        "stream": True,
    }


def translate(body, **opts):
    merged = copy.deepcopy(OPTS)
    merged.update(opts)
    return messages_request_to_responses(body, codex_proxy.RequestOptions(**merged))


def simple(messages, **extra):
    body = {"model": "claude-opus-5-5", "max_tokens": 100, "messages": messages}
    body.update(extra)
    return body


def user_text(text):
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


# ---- Responses event fixtures (shapes of the openai SDK's response_*_event types) ----

class Upstream:
    """Builds a Responses event stream item by item."""

    def __init__(self):
        self.events = [{"type": "response.created", "sequence_number": 0, "response": {
            "id": "resp_1", "object": "response", "status": "in_progress", "output": [], "usage": None}}]
        self.count = 0

    def emit(self, kind, **fields):
        fields.update(type=kind, sequence_number=len(self.events))
        self.events.append(fields)
        return self

    def item(self, item, deltas=()):
        at = self.count
        self.count += 1
        added = dict(item, status="in_progress")
        if item["type"] == "function_call":
            added["arguments"] = ""
        elif item["type"] == "reasoning":
            added.update(summary=[], encrypted_content=None)
        elif item["type"] == "message":
            added["content"] = []
        self.emit("response.output_item.added", output_index=at, item=added)
        for kind, fields in deltas:
            self.emit(kind, output_index=at, item_id=item["id"], **fields)
        return self.emit("response.output_item.done", output_index=at, item=dict(item, status="completed"))

    def reasoning(self, parts, encrypted="enc-1", stream=True):
        deltas = [("response.reasoning_summary_text.delta", {"summary_index": i, "delta": piece})
                  for i, part in enumerate(parts) for piece in part] if stream else []
        return self.item({"id": "rs_%d" % self.count, "type": "reasoning", "encrypted_content": encrypted,
                          "summary": [{"type": "summary_text", "text": "".join(p)} for p in parts]}, deltas)

    def message(self, pieces, stream=True):
        text = "".join(pieces)
        deltas = [("response.output_text.delta", {"content_index": 0, "delta": p, "logprobs": []})
                  for p in pieces] if stream else []
        return self.item({"id": "msg_%d" % self.count, "type": "message", "role": "assistant", "content": [
            {"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}, deltas)

    def call(self, name, pieces, call_id, stream=True):
        deltas = [("response.function_call_arguments.delta", {"delta": p}) for p in pieces] if stream else []
        return self.item({"id": "fc_%d" % self.count, "type": "function_call", "name": name, "call_id": call_id,
                          "arguments": "".join(pieces)}, deltas)

    def search(self, query, sources=None):
        action = {"type": "search", "query": query}
        if sources is not None:
            action["sources"] = [{"type": "url", "url": url} for url in sources]
        return self.item({"id": "ws_%d" % self.count, "type": "web_search_call", "action": action})

    def completed(self, input_tokens=10, cached=0, output=5, reasoning=0, kind="response.completed", **response):
        usage = {"input_tokens": input_tokens, "input_tokens_details": {"cached_tokens": cached},
                 "output_tokens": output, "output_tokens_details": {"reasoning_tokens": reasoning},
                 "total_tokens": input_tokens + output}
        response.update(id="resp_1", object="response", output=[], usage=usage,
                        status="completed" if kind == "response.completed" else "incomplete")
        return self.emit(kind, response=response).events


def run(ctx, events, finish=True):
    return run_stream(ResponsesToMessagesStream(ctx), events, finish)


def names(out):
    return [event["type"] for event in out]


def deltas_of(out, kind, field):
    return "".join(data["delta"][field] for data in out
                   if data["type"] == "content_block_delta" and data["delta"]["type"] == kind)


def ctx_for(**body_extra):
    return translate(simple([{"role": "user", "content": "hi"}], **body_extra))[1]


THINKING = {"type": "adaptive"}


# ---- request ----------------------------------------------------------------

class ClaudeCodeRequestTest(unittest.TestCase):
    def test_claude_code_request_converts(self):
        upstream, ctx = translate(claude_code_request())
        self.assertEqual(upstream["model"], "gpt-5.5")
        self.assertEqual(upstream["instructions"],
                         "You are a Claude agent, built on Anthropic's Claude Agent SDK.\n\n" + SYSTEM_TEXT)
        self.assertEqual(upstream["input"], [
            {"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "<system-reminder>\nAttribution for git commits.\n</system-reminder>"},
                {"type": "input_text", "text": "Reply with exactly: pong"}]},
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": ENV_TEXT}]},
        ])
        self.assertEqual(upstream["reasoning"], {"effort": "medium"})  # display omitted: no summaries
        self.assertEqual(upstream["include"], ["reasoning.encrypted_content"])
        self.assertIs(upstream["stream"], True)
        self.assertIs(upstream["store"], False)
        self.assertEqual(upstream["tool_choice"], "auto")
        self.assertIs(upstream["parallel_tool_calls"], True)
        self.assertEqual(upstream["prompt_cache_key"], SESSION)
        self.assertLessEqual(set(upstream), KNOWN_FIELDS)
        self.assertNotIn("cache_control", json.dumps(upstream))
        self.assertEqual(ctx.model, "claude-opus-5-5")
        self.assertTrue(ctx.id.startswith("msg_"))
        self.assertIs(ctx.stream, True)
        self.assertEqual(ctx.stops, [])
        self.assertFalse(ctx.web_search)
        if codex_request_error:
            self.assertIsNone(codex_request_error(upstream))

    def test_tools_flat_with_string_and_object_schemas_and_deferred(self):
        tools = translate(claude_code_request())[0]["tools"]
        self.assertEqual(tools, [
            {"type": "function", "name": "Skill", "description": "Invoke a skill.", "parameters": SKILL_SCHEMA,
             "strict": False},
            {"type": "function", "name": "Bash", "description": "Executes a bash command.", "parameters": {
                "type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]},
             "strict": False},
            {"type": "function", "name": "DeferredToolPlaceholder",
             "description": "Reserved placeholder; never call this tool.",
             "parameters": {"type": "object", "properties": {}}, "strict": False},
        ])

    def test_bad_schema_string_is_a_client_error(self):
        body = simple([{"role": "user", "content": "hi"}],
                      tools=[{"name": "T", "input_schema": "{\"type\": \"obj"}])
        with self.assertRaises(ClientError) as caught:
            translate(body)
        self.assertIn("tools.0.input_schema", caught.exception.message)

    def test_prompt_cache_key_sources(self):
        body = claude_code_request()
        self.assertEqual(translate(body, session_id="header-session")[0]["prompt_cache_key"], "header-session")
        self.assertEqual(translate(body)[0]["prompt_cache_key"], SESSION)
        old_session = "9d3c6a2e-0000-4000-8000-1234567890ab"
        body["metadata"] = {"user_id": "user_abc123_account_%s_session_%s" % ("1" * 36, old_session)}
        self.assertEqual(translate(body)[0]["prompt_cache_key"], old_session)
        del body["metadata"]
        first = translate(body)[0]["prompt_cache_key"]
        later = copy.deepcopy(body)
        later["messages"] += [{"role": "assistant", "content": "pong"}, {"role": "user", "content": "again"}]
        self.assertEqual(translate(later)[0]["prompt_cache_key"], first)  # same conversation, same cache
        other = copy.deepcopy(body)
        other["messages"][0]["content"][1]["text"] = "Something else"
        self.assertNotEqual(translate(other)[0]["prompt_cache_key"], first)

    def test_no_system_gets_default_instructions_in_chatgpt_mode(self):
        upstream = translate(simple([{"role": "user", "content": "hi"}]))[0]
        self.assertTrue(upstream["instructions"])
        self.assertEqual(upstream["input"], [user_text("hi")])
        self.assertNotIn("tools", upstream)
        self.assertNotIn("tool_choice", upstream)

    def test_system_string(self):
        upstream = translate(simple([{"role": "user", "content": "hi"}], system="Be terse."))[0]
        self.assertEqual(upstream["instructions"], "Be terse.")

    def test_chatgpt_mode_drops_sampling_and_anthropic_only_fields(self):
        body = simple([{"role": "user", "content": "hi"}], temperature=0.2, top_p=0.9, top_k=5,
                      service_tier="auto", container="cont_1", stop_sequences=["END"], metadata={"user_id": "x"})
        upstream, ctx = translate(body)
        self.assertLessEqual(set(upstream), KNOWN_FIELDS)
        self.assertEqual(ctx.stops, ["END"])

    def test_api_key_mode_keeps_length_and_sampling(self):
        body = simple([{"role": "user", "content": "hi"}], temperature=0.2, top_p=0.9, top_k=5)
        upstream = translate(body, chatgpt_mode=False)[0]
        self.assertEqual(upstream["max_output_tokens"], 100)
        self.assertEqual(upstream["temperature"], 0.2)
        self.assertEqual(upstream["top_p"], 0.9)
        self.assertNotIn("top_k", upstream)
        self.assertNotIn("instructions", upstream)  # not forced outside ChatGPT mode
        self.assertIs(upstream["store"], False)

    def test_count_tokens_body(self):
        upstream, ctx = translate({"model": "claude-opus-5-5", "messages": [{"role": "user", "content": "hi"}]})
        self.assertEqual(upstream["input"], [user_text("hi")])
        self.assertIs(ctx.stream, False)

    def test_defaults_apply_only_where_the_client_did_not_say(self):
        defaults = {"reasoning_effort": "high", "verbosity": "low", "service_tier": "priority"}
        upstream = translate(simple([{"role": "user", "content": "hi"}]), defaults=defaults)[0]
        self.assertEqual(upstream["reasoning"], {"effort": "high"})
        self.assertEqual(upstream["text"], {"verbosity": "low"})
        self.assertEqual(upstream["service_tier"], "priority")
        upstream = translate(simple([{"role": "user", "content": "hi"}], service_tier="standard_only",
                                    output_config={"effort": "low"}), defaults=defaults)[0]
        self.assertNotIn("service_tier", upstream)
        self.assertEqual(upstream["reasoning"]["effort"], "low")

    def test_structured_output_format(self):
        schema = {"type": "object", "properties": {"a": {"type": "string"}}}
        upstream = translate(simple([{"role": "user", "content": "hi"}],
                                    output_config={"format": {"type": "json_schema", "schema": schema}}))[0]
        self.assertEqual(upstream["text"], {"format": {"type": "json_schema", "name": "output", "schema": schema,
                                                       "strict": False}})


class EffortTest(unittest.TestCase):
    def effort(self, levels=LEVELS, **body_extra):
        info = {"slug": "m", "supported_reasoning_levels": levels}
        upstream = translate(simple([{"role": "user", "content": "hi"}], **body_extra), model_info=info)[0]
        return upstream.get("reasoning", {}).get("effort")

    def test_budget_tokens_thresholds(self):
        for budget, want in ((1024, "low"), (1025, "medium"), (8192, "medium"), (8193, "high"), (32000, "high")):
            self.assertEqual(self.effort(thinking={"type": "enabled", "budget_tokens": budget}), want, budget)

    def test_output_config_effort_wins_over_budget_and_is_clamped(self):
        self.assertEqual(self.effort(thinking={"type": "enabled", "budget_tokens": 2000},
                                     output_config={"effort": "high"}), "high")
        self.assertEqual(self.effort(output_config={"effort": "max"}), "xhigh")
        self.assertEqual(self.effort(levels=["low", "medium", "high"], output_config={"effort": "max"}), "high")

    def test_disabled_thinking_takes_the_lowest_level(self):
        self.assertEqual(self.effort(thinking={"type": "disabled"}), "low")
        self.assertEqual(self.effort(levels=["minimal", "low", "medium", "high"], thinking={"type": "disabled"}),
                         "minimal")
        self.assertEqual(self.effort(levels=["none", "low"], thinking={"type": "disabled"},
                                     output_config={"effort": "high"}), "none")

    def test_adaptive_without_effort_leaves_it_to_upstream(self):
        upstream = translate(simple([{"role": "user", "content": "hi"}], thinking={"type": "adaptive"}))[0]
        self.assertEqual(upstream["reasoning"], {"summary": "auto"})


class HistoryTest(unittest.TestCase):
    def test_tool_round_trip(self):
        messages = [
            {"role": "user", "content": "list files"},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Listing."},
                {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": "ls"}},
                {"type": "tool_use", "id": "toolu_2", "name": "Read", "input": {"file_path": "/a"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "a\nb",
                 "cache_control": {"type": "ephemeral"}},
                {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": True,
                 "content": [{"type": "text", "text": "File does not exist."}]},
                {"type": "text", "text": "go on"}]},
        ]
        items = translate(simple(messages))[0]["input"]
        self.assertEqual(items, [
            user_text("list files"),
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Listing."}]},
            {"type": "function_call", "call_id": "toolu_1", "name": "Bash", "arguments": "{\"command\": \"ls\"}"},
            {"type": "function_call", "call_id": "toolu_2", "name": "Read", "arguments": "{\"file_path\": \"/a\"}"},
            {"type": "function_call_output", "call_id": "toolu_1", "output": "a\nb"},
            {"type": "function_call_output", "call_id": "toolu_2", "output": "Error: File does not exist."},
            user_text("go on"),
        ])

    def test_text_before_results_goes_after_the_outputs(self):
        messages = [
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Bash", "input": {}}]},
            {"role": "system", "content": "Reminder."},
            {"role": "user", "content": [{"type": "text", "text": "note"},
                                         {"type": "tool_result", "tool_use_id": "t1", "content": "ok"}]},
        ]
        items = translate(simple(messages))[0]["input"]
        self.assertEqual([(i["type"], i.get("role")) for i in items], [
            ("message", "user"), ("function_call", None), ("function_call_output", None),
            ("message", "developer"), ("message", "user")])
        self.assertEqual(items[4], user_text("note"))

    def test_image_in_tool_result(self):
        messages = [
            {"role": "user", "content": "shot"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Screenshot", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [
                {"type": "text", "text": "here"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}}]}]},
        ]
        items = translate(simple(messages))[0]["input"]
        self.assertEqual(items[-1], {"type": "function_call_output", "call_id": "t1", "output": [
            {"type": "input_text", "text": "here"},
            {"type": "input_image", "detail": "auto", "image_url": "data:image/png;base64,iVBO"}]})

    def test_tool_reference_in_tool_result(self):
        messages = [
            {"role": "user", "content": "find"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "ToolSearch",
                                               "input": {"query": "select:Deploy", "max_results": 5}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [
                {"type": "tool_reference", "tool_name": "Deploy"}]}]},
        ]
        items = translate(simple(messages))[0]["input"]
        self.assertEqual(items[-1], {"type": "function_call_output", "call_id": "t1",
                                     "output": "Tool Deploy is available."})

    def test_pairing_errors(self):
        def fails(messages, fragment):
            with self.assertRaises(ClientError) as caught:
                translate(simple(messages))
            self.assertIn(fragment, caught.exception.message)
            self.assertEqual(caught.exception.status, 400)
        call = {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Bash", "input": {}}]}
        result = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}]}
        fails([{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "tX", "content": "x"}]}], "'tX'")
        fails([{"role": "user", "content": "go"}, call], "t1")  # never answered
        fails([{"role": "user", "content": "go"}, call, {"role": "user", "content": "next"},
               {"role": "assistant", "content": "done"}], "t1")
        fails([{"role": "user", "content": "go"}, call, result, result], "already answered")

    def test_thinking_replay_only_for_signatures_from_this_proxy(self):
        events = Upstream().reasoning([["Plan."]], encrypted="enc-42").call("Bash", ["{}"], "call_1").completed()
        ctx = ctx_for(tools=[{"name": "Bash", "input_schema": {"type": "object"}}], thinking=THINKING)
        answer = message_from_events(run(ctx, events)[1], ctx)
        thinking = answer["content"][0]
        self.assertEqual(thinking["type"], "thinking")
        self.assertTrue(thinking["signature"].endswith("enc-42"))
        messages = [{"role": "user", "content": "go"}, {"role": "assistant", "content": answer["content"]},
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "ok"}]}]
        items = translate(simple(messages))[0]["input"]
        self.assertEqual(items[1], {"type": "reasoning", "encrypted_content": "enc-42",
                                    "summary": [{"type": "summary_text", "text": "Plan."}]})
        self.assertEqual(items[2]["type"], "function_call")
        claude = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "Claude's own.", "signature": "EqQBCkgIARABGAIiQL"},
            {"type": "thinking", "thinking": "No signature.", "signature": ""},
            {"type": "redacted_thinking", "data": "EmwKAhgBEgy"},
            {"type": "redacted_thinking", "data": thinking["signature"]},
            {"type": "text", "text": "Hello."}]}]
        items = translate(simple(claude))[0]["input"]
        self.assertEqual(items[1:], [
            {"type": "reasoning", "encrypted_content": "enc-42", "summary": []},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hello."}]}])

    def test_server_tool_history_is_skipped(self):
        messages = [{"role": "user", "content": "news?"}, {"role": "assistant", "content": [
            {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"query": "news"}},
            {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []},
            {"type": "text", "text": "Nothing new."}]}]
        items = translate(simple(messages))[0]["input"]
        self.assertEqual(items[1:], [{"type": "message", "role": "assistant",
                                      "content": [{"type": "output_text", "text": "Nothing new."}]}])

    def test_user_media_blocks(self):
        content = [
            {"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}},
            {"type": "document", "title": "spec.pdf",
             "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0"}},
            {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "plain doc"}},
            {"type": "text", "text": "summarize"},
        ]
        items = translate(simple([{"role": "user", "content": content}]))[0]["input"]
        self.assertEqual(items, [{"type": "message", "role": "user", "content": [
            {"type": "input_image", "detail": "auto", "image_url": "https://x.test/a.png"},
            {"type": "input_file", "filename": "spec.pdf", "file_data": "data:application/pdf;base64,JVBERi0"},
            {"type": "input_text", "text": "plain doc"},
            {"type": "input_text", "text": "summarize"}]}])
        for source, fragment in (({"type": "file", "file_id": "file_1"}, "'file'"),
                                 ({"type": "base64", "media_type": "image/png"}, "needs media_type and data")):
            with self.assertRaises(ClientError) as caught:
                translate(simple([{"role": "user", "content": [{"type": "image", "source": source}]}]))
            self.assertIn(fragment, caught.exception.message)

    def test_long_tool_names_are_shortened_consistently(self):
        long_name = "mcp__very_long_server_name__" + "x" * 60
        messages = [{"role": "user", "content": "go"},
                    {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": long_name,
                                                       "input": {}}]},
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}]}]
        upstream, ctx = translate(simple(messages, tools=[{"name": long_name, "input_schema": {"type": "object"}}]))
        short = upstream["tools"][0]["name"]
        self.assertLessEqual(len(short), 64)
        self.assertEqual(upstream["input"][1]["name"], short)
        self.assertEqual(ctx.tool_names.client(short), long_name)


class ValidationTest(unittest.TestCase):
    def fails(self, body, fragment):
        with self.assertRaises(ClientError) as caught:
            translate(body)
        self.assertIn(fragment, caught.exception.message)
        self.assertEqual(caught.exception.status, 400)

    def test_bad_requests(self):
        self.fails({"messages": [{"role": "user", "content": "hi"}]}, "model")
        self.fails({"model": "m", "messages": []}, "messages")
        self.fails({"model": "m"}, "messages")
        self.fails(simple([{"role": "tool", "content": "hi"}]), "'tool'")
        self.fails(simple([{"role": "user", "content": [{"type": "video", "url": "x"}]}]), "'video'")
        self.fails(simple([{"role": "assistant", "content": [{"type": "container_upload", "file_id": "f"}]}]),
                   "'container_upload'")
        self.fails(simple([{"role": "user", "content": 5}]), "messages.0.content")
        self.fails(simple([{"role": "user", "content": "hi"}], stop_sequences="END"), "stop_sequences")
        # Each piece of text is checked against every stop: their number and length are bounded.
        self.fails(simple([{"role": "user", "content": "hi"}], stop_sequences=["s%d" % n for n in range(33)]),
                   "at most 32")
        self.fails(simple([{"role": "user", "content": "hi"}], stop_sequences=["x" * 257]), "at most 256 characters")
        translate(simple([{"role": "user", "content": "hi"}], stop_sequences=["s%d" % n for n in range(32)]))
        self.fails(simple([{"role": "user", "content": "hi"}], mcp_servers=[{"type": "url", "url": "x"}]),
                   "mcp_servers")
        self.fails(simple([{"role": "user", "content": "hi"}, {"role": "assistant", "content": [
            {"type": "tool_use", "id": "t1", "name": "Bash", "input": "ls"}]}]), "messages.1.content.0: tool_use input")

    def test_unknown_server_tools_are_named(self):
        for kind in ("bash_20250124", "text_editor_20250728", "code_execution_20250825", "computer_20250124"):
            self.fails(simple([{"role": "user", "content": "hi"}], tools=[{"type": kind, "name": "x"}]), kind)


class ToolChoiceTest(unittest.TestCase):
    TOOLS = [{"name": "Bash", "input_schema": {"type": "object"}}]

    def choice(self, tool_choice):
        upstream = translate(simple([{"role": "user", "content": "hi"}], tools=self.TOOLS, tool_choice=tool_choice))[0]
        return upstream["tool_choice"], upstream["parallel_tool_calls"]

    def test_mapping(self):
        self.assertEqual(self.choice({"type": "auto"}), ("auto", True))
        self.assertEqual(self.choice({"type": "any"}), ("required", True))
        self.assertEqual(self.choice({"type": "none"}), ("none", True))
        self.assertEqual(self.choice({"type": "tool", "name": "Bash", "disable_parallel_tool_use": True}),
                         ({"type": "function", "name": "Bash"}, False))
        self.assertEqual(self.choice({"type": "auto", "disable_parallel_tool_use": True}), ("auto", False))
        with self.assertRaises(ClientError):
            self.choice({"type": "tool", "name": "Nope"})


class WebSearchRequestTest(unittest.TestCase):
    def test_web_search_tools_map_to_hosted_search(self):
        tools = [{"type": "web_search_20250305", "name": "web_search", "max_uses": 8,
                  "allowed_domains": ["docs.python.org"],
                  "user_location": {"type": "approximate", "city": "Paris", "country": "FR"}},
                 {"type": "web_search_20260318", "name": "web_search"}]
        upstream, ctx = translate(simple([{"role": "user", "content": "news"}], tools=tools))
        self.assertEqual(upstream["tools"], [
            {"type": "web_search", "filters": {"allowed_domains": ["docs.python.org"]},
             "user_location": {"type": "approximate", "city": "Paris", "country": "FR"}},
            {"type": "web_search"}])
        self.assertTrue(ctx.web_search)


# ---- answer ------------------------------------------------------------------

class StreamTest(unittest.TestCase):
    def test_text_answer_exact_events(self):
        ctx = ctx_for()
        events = Upstream().message(["Hel", "lo"]).completed(input_tokens=12, output=7)
        stream, out = run(ctx, events)
        self.assertEqual(out, [
            {"type": "message_start", "message": {
                "id": ctx.id, "type": "message", "role": "assistant", "model": "claude-opus-5-5",
                "content": [], "stop_reason": None, "stop_sequence": None,
                "usage": {"input_tokens": 0, "output_tokens": 0, "cache_creation_input_tokens": 0,
                          "cache_read_input_tokens": 0}}},
            {"type": "ping"},
            {"type": "content_block_start", "index": 0,
                                     "content_block": {"type": "text", "text": ""}},
            {"type": "content_block_delta", "index": 0,
                                     "delta": {"type": "text_delta", "text": "Hel"}},
            {"type": "content_block_delta", "index": 0,
                                     "delta": {"type": "text_delta", "text": "lo"}},
            {"type": "content_block_stop", "index": 0},
            {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                               "usage": {"input_tokens": 12, "output_tokens": 7, "cache_read_input_tokens": 0,
                                         "cache_creation_input_tokens": 0}},
            {"type": "message_stop"},
        ])
        self.assertTrue(stream.done)
        self.assertIsNone(stream.error)

    def test_thinking_block_with_signature(self):
        events = Upstream().reasoning([["Think", "ing."], ["Second."]], encrypted="enc-9") \
            .message(["Done."]).completed(reasoning=3)
        ctx = ctx_for(thinking={"type": "enabled", "budget_tokens": 4000})
        out = run(ctx, events)[1]
        self.assertEqual(out[2], {"type": "content_block_start", "index": 0, "content_block": {
            "type": "thinking", "thinking": "", "signature": ""}})
        self.assertEqual(deltas_of(out, "thinking_delta", "thinking"), "Thinking.\n\nSecond.")
        signatures = [d["delta"]["signature"] for d in out
                      if d["type"] == "content_block_delta" and d["delta"]["type"] == "signature_delta"]
        self.assertEqual(len(signatures), 1)
        self.assertTrue(signatures[0].endswith("enc-9"))
        stop_at = names(out).index("content_block_stop")
        self.assertEqual(out[stop_at - 1]["delta"]["type"], "signature_delta")  # just before the stop
        self.assertEqual(out[-2]["usage"]["output_tokens_details"], {"thinking_tokens": 3})
        answer = message_from_events(out, ctx)
        self.assertEqual(answer["content"], [
            {"type": "thinking", "thinking": "Thinking.\n\nSecond.", "signature": signatures[0]},
            {"type": "text", "text": "Done."}])

    def test_omitted_thinking_keeps_only_the_signature(self):
        ctx = ctx_for(thinking={"type": "adaptive", "display": "omitted"})
        out = run(ctx, Upstream().reasoning([["secret"]], encrypted="enc-3").message(["ok"]).completed())[1]
        answer = message_from_events(out, ctx)
        self.assertEqual(answer["content"][0]["thinking"], "")
        self.assertTrue(answer["content"][0]["signature"].endswith("enc-3"))
        # Reasoning with no summary at all still becomes a replayable block.
        out = run(ctx_for(thinking=THINKING), Upstream().reasoning([], encrypted="enc-4").completed())[1]
        self.assertEqual(message_from_events(out, ctx)["content"][0]["thinking"], "")
        # ...and reasoning with neither makes no block.
        out = run(ctx_for(thinking=THINKING), Upstream().reasoning([], encrypted=None).message(["x"]).completed())[1]
        self.assertEqual([b["type"] for b in message_from_events(out, ctx)["content"]], ["text"])

    def test_no_thinking_blocks_unless_the_client_turned_thinking_on(self):
        for extra in ({}, {"thinking": {"type": "disabled"}}):
            upstream, ctx = translate(simple([{"role": "user", "content": "hi"}], **extra))
            self.assertNotIn("summary", upstream.get("reasoning", {}))
            out = run(ctx, Upstream().reasoning([["r"]], encrypted="enc-1").message(["Hi."]).completed())[1]
            self.assertEqual(message_from_events(out, ctx)["content"], [{"type": "text", "text": "Hi."}])

    def test_tool_use_streams_and_reassembles(self):
        long_name = "mcp__server__" + "very_long_tool_name_" * 4
        upstream, ctx = translate(simple([{"role": "user", "content": "go"}], tools=[
            {"name": long_name, "input_schema": {"type": "object"}}, {"name": "Bash", "input_schema": {}}]))
        short = upstream["tools"][0]["name"]
        args = {"path": "/tmp/a b", "lines": [1, 2], "note": "caf\u00e9 \"quoted\""}
        text = json.dumps(args)
        pieces = [text[:7], text[7:20], text[20:]]
        events = Upstream().message(["Calling."]).call(short, pieces, "call_A") \
            .call("Bash", ['{"command": "ls"}'], "call_B", stream=False).completed()
        out = run(ctx, events)[1]
        starts = [d["content_block"] for d in out if d["type"] == "content_block_start"]
        self.assertEqual(starts[1:], [{"type": "tool_use", "id": "call_A", "name": long_name, "input": {}},
                                      {"type": "tool_use", "id": "call_B", "name": "Bash", "input": {}}])
        json_pieces = [d["delta"]["partial_json"] for d in out
                       if d["type"] == "content_block_delta" and d["index"] == 1]
        self.assertEqual(json_pieces, pieces)
        self.assertEqual(json.loads("".join(json_pieces)), args)
        self.assertEqual(out[-2]["delta"]["stop_reason"], "tool_use")
        answer = message_from_events(out, ctx)
        self.assertEqual(answer["content"], [
            {"type": "text", "text": "Calling."},
            {"type": "tool_use", "id": "call_A", "name": long_name, "input": args},
            {"type": "tool_use", "id": "call_B", "name": "Bash", "input": {"command": "ls"}}])
        self.assertEqual(answer["stop_reason"], "tool_use")

    def test_stop_sequence_cut_across_deltas(self):
        ctx = ctx_for(stop_sequences=["STOP", "never"])
        events = Upstream().message(["Hello ST", "OP and more"]).call("Bash", ["{}"], "call_1").completed()
        out = run(ctx, events)[1]
        self.assertEqual(deltas_of(out, "text_delta", "text"), "Hello ")
        self.assertNotIn("tool_use", json.dumps(out))
        self.assertEqual(out[-2]["delta"], {"stop_reason": "stop_sequence", "stop_sequence": "STOP"})
        answer = message_from_events(out, ctx)
        self.assertEqual((answer["stop_reason"], answer["stop_sequence"]), ("stop_sequence", "STOP"))
        self.assertEqual(answer["content"], [{"type": "text", "text": "Hello "}])

    def test_the_answer_ends_at_the_stop_not_when_upstream_does(self):
        ctx = ctx_for(stop_sequences=["STOP"])
        stream, out = run(ctx, Upstream().message(["Hello there ST", "OP and more"]).events, finish=False)  # no end yet
        self.assertTrue(stream.done and stream.stopped)
        self.assertEqual(names(out)[-3:], ["content_block_stop", "message_delta", "message_stop"])
        usage = out[-2]["usage"]
        self.assertGreater(usage["input_tokens"], 0)  # the proxy's estimate: the backend never said
        self.assertEqual(usage["output_tokens"], codex_proxy.estimate_text_tokens("Hello there "))
        self.assertEqual(stream.finish(), [])  # and nothing more once upstream's end comes

    def test_a_stop_in_the_first_of_two_parts_ends_the_answer_once(self):
        ctx = ctx_for(stop_sequences=["STOP"])
        parts = [{"type": "output_text", "text": "a STOP b"}, {"type": "output_text", "text": "more"}]
        item = {"id": "msg_1", "type": "message", "role": "assistant", "status": "completed", "content": parts}
        events = [{"type": "response.created", "response": {"id": "resp_1"}},
                  {"type": "response.output_item.done", "output_index": 0, "item": item}]
        out = run(ctx, events)[1]
        self.assertEqual(names(out).count("message_stop"), 1)
        self.assertEqual(names(out)[-1], "message_stop")
        self.assertEqual(deltas_of(out, "text_delta", "text"), "a ")

    def test_held_back_text_that_was_no_stop_is_sent(self):
        ctx = ctx_for(stop_sequences=["STOP"])
        out = run(ctx, Upstream().message(["abc S", "T"]).completed())[1]
        self.assertEqual(deltas_of(out, "text_delta", "text"), "abc ST")
        self.assertEqual(out[-2]["delta"], {"stop_reason": "end_turn", "stop_sequence": None})

    def test_text_only_in_the_done_item(self):
        ctx = ctx_for()
        out = run(ctx, Upstream().message(["Whole answer."], stream=False).completed())[1]
        self.assertEqual(message_from_events(out, ctx)["content"], [{"type": "text", "text": "Whole answer."}])

    def test_usage_splits_cached_tokens(self):
        out = run(ctx_for(), Upstream().message(["x"]).completed(input_tokens=1000, cached=800, output=42))[1]
        self.assertEqual(out[-2]["usage"], {"input_tokens": 200, "output_tokens": 42,
                                               "cache_read_input_tokens": 800, "cache_creation_input_tokens": 0})

    def test_missing_usage_is_zero(self):
        events = Upstream().message(["x"]).events + [{"type": "response.completed", "response": {"usage": None}}]
        out = run(ctx_for(), events)[1]
        self.assertEqual(out[-2]["usage"], {"input_tokens": 0, "output_tokens": 0,
                                               "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0})

    def test_incomplete_reasons(self):
        for reason, want in (("max_output_tokens", "max_tokens"), ("content_filter", "refusal")):
            events = Upstream().message(["partial"]).completed(
                kind="response.incomplete", incomplete_details={"reason": reason})
            stream, out = run(ctx_for(), events)
            self.assertEqual(out[-2]["delta"]["stop_reason"], want)
            self.assertEqual(names(out)[-1], "message_stop")
            self.assertIsNone(stream.error)

    def test_open_tool_call_cut_by_max_tokens_is_closed(self):
        events = Upstream().emit("response.output_item.added", output_index=0, item={
            "id": "fc_0", "type": "function_call", "name": "Bash", "call_id": "c1", "arguments": ""}) \
            .emit("response.function_call_arguments.delta", output_index=0, item_id="fc_0", delta='{"comm') \
            .completed(kind="response.incomplete", incomplete_details={"reason": "max_output_tokens"})
        out = run(ctx_for(), events)[1]
        self.assertEqual(names(out)[2:], ["content_block_start", "content_block_delta", "content_block_stop",
                                          "message_delta", "message_stop"])
        self.assertEqual(out[-2]["delta"]["stop_reason"], "max_tokens")

    def test_failed_response(self):
        failure = {"code": "rate_limit_exceeded", "message": "Slow down."}
        events = Upstream().message(["par"]).emit("response.failed", response={
            "id": "resp_1", "status": "failed", "error": failure}).events
        stream, out = run(ctx_for(), events)
        self.assertEqual(out[-1], {"type": "error", "error": {"type": "rate_limit_error",
                                                                        "message": "Slow down."}})
        self.assertNotIn("message_stop", names(out))
        self.assertNotIn("message_delta", names(out))
        self.assertEqual(stream.error, {"status": 429, "message": "Slow down.", "code": "rate_limit_exceeded"})
        self.assertFalse(stream.done)  # done: ended as it should; a failure is in .error

    def test_error_event(self):
        events = [{"type": "error", "code": "server_is_overloaded", "message": "Overloaded.", "param": None,
                   "sequence_number": 1}]
        stream, out = run(ctx_for(), events)
        self.assertEqual(out, [{"type": "error", "error": {"type": "overloaded_error",
                                                                     "message": "Overloaded."}}])
        self.assertEqual(stream.error["status"], 503)

    def test_cut_stream_is_an_error(self):
        events = Upstream().message(["never finished"]).events[:-1]
        stream, out = run(ctx_for(), events)
        self.assertEqual(out[-1]["type"], "error")
        self.assertEqual(out[-1]["error"]["type"], "api_error")
        self.assertNotIn("message_stop", names(out))
        self.assertEqual(stream.error["status"], 502)
        self.assertEqual(stream.finish(), [])

    def test_unknown_events_are_ignored_and_finish_after_completion_is_quiet(self):
        events = Upstream().emit("codex.rate_limits", primary={"used_percent": 3}) \
            .emit("response.web_search_call.searching", output_index=7, item_id="ws") \
            .message(["hi"]).completed()
        stream, out = run(ctx_for(), events)
        self.assertEqual(deltas_of(out, "text_delta", "text"), "hi")
        self.assertEqual(stream.finish(), [])
        self.assertEqual(stream.feed({"type": "response.output_text.delta", "output_index": 0, "delta": "late"}), [])

    def test_web_search_blocks(self):
        ctx = translate(simple([{"role": "user", "content": "news"}],
                               tools=[{"type": "web_search_20250305", "name": "web_search"}]))[1]
        events = Upstream().search("python 3.14 release", sources=["https://python.org/a"]) \
            .message(["It is out."]).completed()
        out = run(ctx, events)[1]
        answer = message_from_events(out, ctx)
        use, result, text = answer["content"]
        self.assertEqual(use["type"], "server_tool_use")
        self.assertTrue(use["id"].startswith("srvtoolu_"))
        self.assertEqual((use["name"], use["input"]), ("web_search", {"query": "python 3.14 release"}))
        self.assertEqual(result, {"type": "web_search_tool_result", "tool_use_id": use["id"], "content": [
            {"type": "web_search_result", "url": "https://python.org/a", "title": "https://python.org/a",
             "encrypted_content": "", "page_age": None}]})
        self.assertEqual(text, {"type": "text", "text": "It is out."})
        self.assertEqual(answer["stop_reason"], "end_turn")
        self.assertEqual(answer["usage"]["server_tool_use"], {"web_search_requests": 1, "web_fetch_requests": 0})
        out = run(ctx_for(), Upstream().search("q").message(["x"]).completed())[1]  # search not offered
        self.assertEqual([b["type"] for b in message_from_events(out, ctx)["content"]], ["text"])

    def test_non_stream_fold_matches_the_stream(self):
        ctx = ctx_for(tools=[{"name": "Bash", "input_schema": {"type": "object"}}], thinking=THINKING)
        events = Upstream().reasoning([["Hmm."]], encrypted="enc-5").message(["Run", "ning."]) \
            .call("Bash", ['{"command":', ' "pwd"}'], "call_9").completed(input_tokens=30, cached=10, output=8)
        out = run(ctx, events)[1]
        answer = message_from_events(out, ctx)
        self.assertEqual(answer, {
            "id": ctx.id, "type": "message", "role": "assistant", "model": "claude-opus-5-5",
            "content": [{"type": "thinking", "thinking": "Hmm.", "signature": answer["content"][0]["signature"]},
                        {"type": "text", "text": "Running."},
                        {"type": "tool_use", "id": "call_9", "name": "Bash", "input": {"command": "pwd"}}],
            "stop_reason": "tool_use", "stop_sequence": None,
            "usage": {"input_tokens": 20, "output_tokens": 8, "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": 10}})
        self.assertEqual(deltas_of(out, "text_delta", "text"), answer["content"][1]["text"])
        self.assertEqual(deltas_of(out, "thinking_delta", "thinking"), answer["content"][0]["thinking"])


class FakeBackendStreamTest(unittest.TestCase):
    def test_fake_reply_translates(self):
        ctx = ctx_for(tools=[{"name": "Bash", "input_schema": {"type": "object"}}], thinking=THINKING)
        events = sse_events_for({"reasoning": ["a", "b"], "text": "Hello there.", "tool_calls": [
            {"name": "Bash", "arguments": "{\"command\": \"ls -la\"}", "call_id": "call_f"}],
            "usage": {"input_tokens": 50, "cached_tokens": 20, "output_tokens": 9, "reasoning_tokens": 4},
            "empty_completed_output": True}, "gpt-5.5")
        stream, out = run(ctx, events)
        answer = message_from_events(out, ctx)
        self.assertEqual([b["type"] for b in answer["content"]], ["thinking", "text", "tool_use"])
        self.assertEqual(answer["content"][0]["thinking"], "a\n\nb")
        self.assertEqual(answer["content"][1]["text"], "Hello there.")
        self.assertEqual(answer["content"][2]["input"], {"command": "ls -la"})
        self.assertEqual(answer["usage"]["input_tokens"], 30)
        self.assertEqual(answer["usage"]["cache_read_input_tokens"], 20)
        # The thinking block replays as the reasoning item the fake issued.
        messages = [{"role": "user", "content": "go"}, {"role": "assistant", "content": answer["content"]},
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_f", "content": "x"}]}]
        upstream = translate(simple(messages, tools=[{"name": "Bash", "input_schema": {"type": "object"}}]))[0]
        issued = [e["item"]["encrypted_content"] for e in events
                  if e["type"] == "response.output_item.done" and e["item"]["type"] == "reasoning"]
        self.assertEqual(upstream["input"][1]["encrypted_content"], issued[0])
        self.assertIsNone(codex_request_error(upstream))

    def test_web_citations_become_citations_deltas(self):
        # The Codex backend marks what a web search answer cites as url_citation annotations;
        # Anthropic's shape is a citations_delta on the text block (web_search_result_location).
        ctx = ctx_for(tools=[{"type": "web_search_20250305", "name": "web_search"}])
        text = "Python 3.14 is out. See the notes."
        cite = [{"url": "https://python.org/3.14", "title": "Python 3.14", "start": 0, "end": 19},
                {"url": "https://docs.python.org/whatsnew", "title": "", "start": 20, "end": 999}]
        for extra in ({}, {"citations_in_events_only": True}):
            with self.subTest(**extra):
                events = sse_events_for(dict({"web_search": {"query": "python 3.14"}, "text": text,
                                              "citations": cite}, **extra), "gpt-5.5")
                out = run(ctx, events)[1]
                citations = [data["delta"]["citation"] for data in out if data["type"] == "content_block_delta"
                             and data["delta"]["type"] == "citations_delta"]
                self.assertEqual(citations, [
                    {"type": "web_search_result_location", "url": "https://python.org/3.14", "title": "Python 3.14",
                     "cited_text": "Python 3.14 is out.", "encrypted_index": ""},
                    {"type": "web_search_result_location", "url": "https://docs.python.org/whatsnew", "title": None,
                     "cited_text": "See the notes.", "encrypted_index": ""}])
                answer = message_from_events(out, ctx)
                text_block = [b for b in answer["content"] if b["type"] == "text"][0]
                self.assertEqual((text_block["text"], text_block["citations"]), (text, citations))

    def test_fake_failures(self):
        for reply, status in (({"text": "x", "fail": {"code": "server_is_overloaded", "message": "busy"}}, 503),
                              ({"text": "x", "error_event": {"code": "rate_limit_exceeded", "message": "r"}}, 429),
                              ({"text": "x", "cut": True}, 502)):
            stream, out = run(ctx_for(), sse_events_for(reply, "gpt-5.5"))
            self.assertEqual(out[-1]["type"], "error")
            self.assertNotIn("message_stop", names(out))
            self.assertEqual(stream.error["status"], status)


# Field names of the anthropic SDK models (types/raw_*_event.py, message.py,
# usage.py, message_delta_usage.py, *_block.py, *_delta.py, shared/error_*.py):
# (required, allowed) per shape.
USAGE_FIELDS = {"cache_creation", "cache_creation_input_tokens", "cache_read_input_tokens", "inference_geo",
                "input_tokens", "output_tokens", "output_tokens_details", "server_tool_use", "service_tier", "speed"}
SHAPES = {
    "message_start": ({"type", "message"}, {"type", "message"}),
    "message": ({"id", "type", "role", "model", "content", "usage"},
                {"id", "container", "content", "diagnostics", "model", "role", "stop_details", "stop_reason",
                 "stop_sequence", "type", "usage"}),
    "usage": ({"input_tokens", "output_tokens"}, USAGE_FIELDS),
    "delta_usage": ({"output_tokens"}, USAGE_FIELDS - {"cache_creation", "inference_geo", "service_tier", "speed"}),
    "content_block_start": ({"type", "index", "content_block"}, {"type", "index", "content_block"}),
    "content_block_delta": ({"type", "index", "delta"}, {"type", "index", "delta"}),
    "content_block_stop": ({"type", "index"}, {"type", "index"}),
    "message_delta": ({"type", "delta", "usage"}, {"type", "delta", "usage"}),
    "message_delta.delta": (set(), {"container", "stop_details", "stop_reason", "stop_sequence"}),
    "message_stop": ({"type"}, {"type"}),
    "ping": ({"type"}, {"type"}),
    "error": ({"type", "error"}, {"type", "error", "request_id"}),
    "error.error": ({"type", "message"}, {"type", "message"}),
    "text": ({"type", "text"}, {"type", "text", "citations"}),
    "thinking": ({"type", "thinking", "signature"}, {"type", "thinking", "signature"}),
    "tool_use": ({"type", "id", "name", "input"}, {"type", "id", "name", "input", "caller", "toolset_name"}),
    "server_tool_use": ({"type", "id", "name", "input"}, {"type", "id", "name", "input", "caller"}),
    "web_search_tool_result": ({"type", "tool_use_id", "content"}, {"type", "tool_use_id", "content", "caller"}),
    "web_search_result": ({"type", "url", "title", "encrypted_content"},
                          {"type", "url", "title", "encrypted_content", "page_age"}),
    "text_delta": ({"type", "text"}, {"type", "text"}),
    "citations_delta": ({"type", "citation"}, {"type", "citation"}),
    "web_search_result_location": ({"type", "url", "cited_text", "encrypted_index"},
                                   {"type", "url", "cited_text", "encrypted_index", "title"}),
    "thinking_delta": ({"type", "thinking"}, {"type", "thinking"}),
    "signature_delta": ({"type", "signature"}, {"type", "signature"}),
    "input_json_delta": ({"type", "partial_json"}, {"type", "partial_json"}),
}
STOP_REASONS = {"end_turn", "max_tokens", "stop_sequence", "tool_use", "pause_turn", "refusal",
                "model_context_window_exceeded"}


class WireShapeTest(unittest.TestCase):
    def check(self, shape, data):
        required, allowed = SHAPES[shape]
        self.assertLessEqual(required, set(data), shape)
        self.assertLessEqual(set(data), allowed, shape)

    def check_block(self, block):
        self.check(block["type"], block)
        if block["type"] == "web_search_tool_result":
            for result in block["content"]:
                self.check("web_search_result", result)

    def check_events(self, out):
        for data in out:
            name = data["type"]  # the SSE event name too
            self.check(name, data)
            if name == "message_start":
                self.check("message", data["message"])
                self.check("usage", data["message"]["usage"])
            elif name == "content_block_start":
                self.check_block(data["content_block"])
            elif name == "content_block_delta":
                self.check(data["delta"]["type"], data["delta"])
                if data["delta"]["type"] == "citations_delta":
                    self.check(data["delta"]["citation"]["type"], data["delta"]["citation"])
            elif name == "message_delta":
                self.check("message_delta.delta", data["delta"])
                self.check("delta_usage", data["usage"])
                self.assertIn(data["delta"]["stop_reason"], STOP_REASONS)
            elif name == "error":
                self.check("error.error", data["error"])

    def test_every_event_has_the_sdk_fields(self):
        ctx = translate(simple([{"role": "user", "content": "go"}], tools=[
            {"name": "Bash", "input_schema": {"type": "object"}},
            {"type": "web_search_20250305", "name": "web_search"}], thinking=THINKING))[1]
        events = Upstream().reasoning([["r"]]).search("q", sources=["https://a.test"]).message(["t"]) \
            .call("Bash", ["{}"], "c1").completed(reasoning=1)
        out = run(ctx, events)[1]
        self.assertEqual(set(names(out)), {"message_start", "ping", "content_block_start", "content_block_delta",
                                           "content_block_stop", "message_delta", "message_stop"})
        self.check_events(out)
        answer = message_from_events(out, ctx)
        self.check("message", answer)
        self.check("usage", answer["usage"])
        for block in answer["content"]:
            self.check_block(block)
        self.check_events(run(ctx, Upstream().message(["t"]).events)[1])  # ends in an error event
        cited = sse_events_for({"text": "abc", "citations": [{"url": "https://a.test", "start": 0, "end": 3}]}, "m")
        self.check_events(run(ctx, cited)[1])

    def test_anthropic_error_types(self):
        for status, want in ((400, "invalid_request_error"), (401, "authentication_error"),
                             (403, "permission_error"), (404, "not_found_error"), (413, "request_too_large"),
                             (429, "rate_limit_error"), (500, "api_error"), (502, "api_error"),
                             (503, "overloaded_error"), (529, "overloaded_error"), (422, "invalid_request_error")):
            self.assertEqual(anthropic_error_type(status), want, status)


if __name__ == "__main__":
    unittest.main()
