"""Chat Completions <-> Responses translator: request mapping and answer streams."""
import json
import unittest

from support import codex_proxy, run_stream  # noqa: F401  (support puts the repo on sys.path)
from codex_proxy import (
    DEFAULT_INSTRUCTIONS, TOOL_NAME_RE, ClientError, ResponsesToChatStream,
    chat_completion_from_chunks, chat_request_to_responses,
)
from fake_upstream import KNOWN_FIELDS, codex_request_error, default_catalog, sse_events_for

MODEL_INFO = {"slug": "gpt-5.5", "default_reasoning_level": "medium",
              "supported_reasoning_levels": [{"effort": e} for e in ("low", "medium", "high", "xhigh")]}
LONG_NAME = "mcp__filesystem_server__" + "read_a_really_long_file_name_" * 3  # > 64 chars
USER = {"role": "user", "content": "Hi"}


def opts(**extra):
    base = {"model": "gpt-5.5", "client_model": "gpt-4o", "model_info": MODEL_INFO, "chatgpt_mode": True,
            "defaults": {"reasoning_effort": None, "verbosity": None, "service_tier": None}, "session_id": None}
    base.update(extra)
    return codex_proxy.RequestOptions(**base)


def translate(messages=None, **fields):
    body = {"model": "gpt-4o", "messages": messages or [USER]}
    body.update(fields)
    return chat_request_to_responses(body, opts())


def accepted(test, upstream):
    """The strict fake backend takes the body as the real one would."""
    test.assertLessEqual(set(upstream), KNOWN_FIELDS)
    test.assertIsNone(codex_request_error(json.loads(json.dumps(upstream)), default_catalog()))


def ctx_for(**fields):
    return translate(**fields)[1]


def run(ctx, events, finish=True):
    return run_stream(ResponsesToChatStream(ctx), events, finish)


def deltas(chunks):
    return [c["choices"][0]["delta"] for c in chunks if c.get("choices")]


def joined(chunks, key):
    return "".join(d.get(key) or "" for d in deltas(chunks))


def finishes(chunks):
    return [c["choices"][0]["finish_reason"] for c in chunks
            if c.get("choices") and c["choices"][0]["finish_reason"]]


# Hand-built events (exact SDK shapes) for cases the fake does not script.
def text_events(pieces, output_index=0, item_id="msg_1", annotations=()):
    common = {"item_id": item_id, "output_index": output_index, "content_index": 0}
    text = "".join(pieces)
    part = {"type": "output_text", "annotations": list(annotations), "text": text}
    return ([{"type": "response.output_item.added", "output_index": output_index,
              "item": {"id": item_id, "type": "message", "role": "assistant", "status": "in_progress", "content": []}},
             dict(common, type="response.content_part.added", part=dict(part, text=""))]
            + [dict(common, type="response.output_text.delta", delta=p, logprobs=[]) for p in pieces]
            + [dict(common, type="response.output_text.done", text=text, logprobs=[]),
               dict(common, type="response.content_part.done", part=part),
               {"type": "response.output_item.done", "output_index": output_index,
                "item": {"id": item_id, "type": "message", "role": "assistant", "status": "completed",
                         "content": [part]}}])


def created():
    return {"type": "response.created", "response": {"id": "resp_1", "status": "in_progress", "output": []}}


def completed(usage=None, kind="response.completed", **response):
    response.update(status="completed", output=[], usage=usage)
    return {"type": kind, "response": response}


class RequestMapping(unittest.TestCase):
    def test_minimal_request_is_a_complete_codex_body(self):
        upstream, ctx = translate(stream=True)
        self.assertEqual(upstream["model"], "gpt-5.5")
        self.assertEqual(upstream["instructions"], DEFAULT_INSTRUCTIONS)
        self.assertEqual(upstream["input"], [{"type": "message", "role": "user",
                                              "content": [{"type": "input_text", "text": "Hi"}]}])
        self.assertIs(upstream["stream"], True)
        self.assertIs(upstream["store"], False)
        self.assertEqual(upstream["reasoning"], {"summary": "auto"})
        self.assertEqual(upstream["include"], ["reasoning.encrypted_content"])
        accepted(self, upstream)
        self.assertTrue(ctx.id.startswith("chatcmpl-"))
        self.assertEqual((ctx.model, ctx.stream, ctx.include_usage, ctx.legacy_functions),
                         ("gpt-4o", True, False, False))

    def test_system_messages_become_instructions_and_later_ones_developer_messages(self):
        upstream, _ = translate([
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use metric"},
                                              {"type": "text", "text": "units."}]},
            USER,
            {"role": "system", "content": "Now answer in French."},
            {"role": "user", "content": "Bye"},
        ])
        self.assertEqual(upstream["instructions"], "Be brief.\n\nUse metric\nunits.")
        self.assertEqual([(i["role"], i["content"][0]["text"]) for i in upstream["input"]],
                         [("user", "Hi"), ("developer", "Now answer in French."), ("user", "Bye")])
        accepted(self, upstream)

    def test_user_parts_images_and_files(self):
        upstream, _ = translate([{"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR", "detail": "high"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
            {"type": "file", "file": {"file_data": "JVBERi0x", "filename": "a.pdf"}},
        ]}])
        self.assertEqual(upstream["input"][0]["content"], [
            {"type": "input_text", "text": "What is this?"},
            {"type": "input_image", "image_url": "data:image/png;base64,iVBOR", "detail": "high"},
            {"type": "input_image", "image_url": "https://example.com/cat.jpg", "detail": "auto"},
            {"type": "input_file", "filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0x"},
        ])

    def test_unsupported_parts_are_refused_by_name(self):
        for part, word in (({"type": "input_audio", "input_audio": {"data": "AA", "format": "wav"}}, "input_audio"),
                           ({"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}, "image_url"),
                           ({"type": "file", "file": {"file_id": "file-1"}}, "file_data"),
                           ({"type": "video"}, "video")):
            with self.assertRaises(ClientError) as caught:
                translate([{"role": "user", "content": [part]}])
            self.assertIn(word, caught.exception.message)

    def test_two_turn_tool_conversation(self):
        upstream, _ = translate([
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {"role": "assistant", "content": "Checking.", "reasoning_content": "echoed, dropped", "tool_calls": [
                {"id": "call_a", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
                {"id": "call_b", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}}]},
            {"role": "tool", "tool_call_id": "call_a", "content": "18C"},
            {"role": "tool", "tool_call_id": "call_b", "content": [{"type": "text", "text": "25C"}]},
        ], tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}])
        self.assertEqual(upstream["input"][1:], [
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
            {"type": "function_call", "call_id": "call_a", "name": "get_weather", "arguments": '{"city":"Paris"}'},
            {"type": "function_call", "call_id": "call_b", "name": "get_weather", "arguments": '{"city":"Rome"}'},
            {"type": "function_call_output", "call_id": "call_a", "output": "18C"},
            {"type": "function_call_output", "call_id": "call_b", "output": "25C"},
        ])
        self.assertEqual(upstream["tools"], [{"type": "function", "name": "get_weather", "description": "",
                                              "parameters": {"type": "object"}, "strict": False}])
        accepted(self, upstream)

    def test_tools_are_flat_and_long_names_shortened_consistently(self):
        upstream, ctx = translate([
            USER,
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": LONG_NAME, "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "ok"},
        ], tools=[{"type": "function", "function": {"name": LONG_NAME, "description": "Reads", "strict": True}}],
            tool_choice={"type": "function", "function": {"name": LONG_NAME}})
        short = upstream["tools"][0]["name"]
        self.assertTrue(TOOL_NAME_RE.match(short))
        self.assertEqual(upstream["tools"][0], {"type": "function", "name": short, "description": "Reads",
                                                "parameters": {"type": "object", "properties": {}}, "strict": True})
        self.assertEqual(upstream["input"][1]["name"], short)
        self.assertEqual(upstream["tool_choice"], {"type": "function", "name": short})
        self.assertEqual(ctx.tool_names.client(short), LONG_NAME)
        accepted(self, upstream)

    def test_tool_choice_and_parallel_calls_pass(self):
        for choice in ("none", "auto", "required"):
            self.assertEqual(translate(tool_choice=choice, parallel_tool_calls=False)[0]["tool_choice"], choice)
        self.assertIs(translate(parallel_tool_calls=False)[0]["parallel_tool_calls"], False)
        with self.assertRaises(ClientError) as caught:
            translate(tool_choice={"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": []}})
        self.assertEqual(caught.exception.param, "tool_choice")

    def test_non_function_tools_are_refused_by_type(self):
        with self.assertRaises(ClientError) as caught:
            translate(tools=[{"type": "custom", "custom": {"name": "x"}}])
        self.assertIn("custom", caught.exception.message)

    def test_legacy_functions(self):
        upstream, ctx = translate([
            USER,
            {"role": "assistant", "content": None, "function_call": {"name": "lookup", "arguments": '{"q":1}'}},
            {"role": "function", "name": "lookup", "content": "found"},
        ], functions=[{"name": "lookup", "parameters": {"type": "object", "properties": {"q": {"type": "integer"}}}}],
            function_call={"name": "lookup"})
        call, output = upstream["input"][1:]
        self.assertEqual((call["type"], call["name"], call["arguments"]), ("function_call", "lookup", '{"q":1}'))
        self.assertEqual(output, {"type": "function_call_output", "call_id": call["call_id"], "output": "found"})
        again = translate([USER, {"role": "assistant", "content": None, "function_call": {"name": "lookup"}},
                           {"role": "function", "name": "lookup", "content": "x"}])[0]
        self.assertEqual(again["input"][1]["call_id"], call["call_id"])  # stable: the prompt cache keeps matching
        self.assertEqual(upstream["tools"][0]["name"], "lookup")
        self.assertEqual(upstream["tool_choice"], {"type": "function", "name": "lookup"})
        self.assertIs(upstream["parallel_tool_calls"], False)
        self.assertTrue(ctx.legacy_functions)
        accepted(self, upstream)

    def test_response_format(self):
        schema = {"type": "object", "properties": {"a": {"type": "string"}}}
        fmt = translate(response_format={"type": "json_schema", "json_schema": {
            "name": "answer", "schema": schema, "strict": True, "description": "The answer"}})[0]["text"]["format"]
        self.assertEqual(fmt, {"type": "json_schema", "name": "answer", "schema": schema, "strict": True,
                               "description": "The answer"})
        self.assertEqual(translate(response_format={"type": "json_object"})[0]["text"],
                         {"format": {"type": "json_object"}})
        self.assertNotIn("text", translate(response_format={"type": "text"})[0])

    def test_defaults_apply_only_where_the_client_did_not_say(self):
        server = opts(defaults={"reasoning_effort": "high", "verbosity": "low", "service_tier": "priority"},
                      session_id="sess-1")
        plain = chat_request_to_responses({"model": "m", "messages": [USER]}, server)[0]
        self.assertEqual((plain["reasoning"], plain["text"], plain["service_tier"], plain["prompt_cache_key"]),
                         ({"effort": "high", "summary": "auto"}, {"verbosity": "low"}, "priority", "sess-1"))
        said = chat_request_to_responses({"model": "m", "messages": [USER], "reasoning_effort": "low",
                                          "verbosity": "high", "service_tier": "flex", "prompt_cache_key": "k"},
                                         server)[0]
        self.assertEqual((said["reasoning"], said["text"], said["service_tier"], said["prompt_cache_key"]),
                         ({"effort": "low", "summary": "auto"}, {"verbosity": "high"}, "flex", "k"))
        standard = chat_request_to_responses({"model": "m", "messages": [USER], "service_tier": "default"}, server)[0]
        self.assertNotIn("service_tier", standard)
        nested = chat_request_to_responses({"model": "m", "messages": [USER], "reasoning": {"effort": "medium"}},
                                           server)[0]
        self.assertEqual(nested["reasoning"]["effort"], "medium")

    def test_derived_cache_key_is_stable_across_turns(self):
        first = translate([{"role": "system", "content": "S"}, USER])[0]["prompt_cache_key"]
        later = translate([{"role": "system", "content": "S"}, USER, {"role": "assistant", "content": "Yo"},
                           {"role": "user", "content": "More"}])[0]["prompt_cache_key"]
        self.assertEqual(first, later)
        self.assertNotEqual(first, translate([{"role": "system", "content": "T"}, USER])[0]["prompt_cache_key"])

    def test_effort_is_clamped_to_the_model_levels(self):
        for asked, sent in (("minimal", "low"), ("none", "low"), ("max", "xhigh"), ("high", "high")):
            self.assertEqual(translate(reasoning_effort=asked)[0]["reasoning"]["effort"], sent)

    def test_sampling_params_are_dropped(self):
        upstream, ctx = translate(max_tokens=5, max_completion_tokens=5, temperature=0.2, top_p=0.9,
                                  presence_penalty=1, frequency_penalty=1, logit_bias={"1": 2}, seed=3, user="u",
                                  metadata={"a": "b"}, store=True, modalities=["text"], stop=["END", "\n\n"],
                                  stream_options={"include_usage": True}, stream=True)
        accepted(self, upstream)
        self.assertEqual(ctx.stops, ["END", "\n\n"])
        self.assertTrue(ctx.include_usage)
        self.assertEqual(translate(stop="X")[1].stops, ["X"])

    def test_client_errors(self):
        cases = [
            ({"messages": [USER]}, "model"),
            ({"model": "m"}, "messages"),
            ({"model": "m", "messages": []}, "messages"),
            ({"model": "m", "messages": "hi"}, "messages"),
            ({"model": "m", "messages": [USER], "n": 2}, "n"),
            ({"model": "m", "messages": [USER], "logprobs": True}, "logprobs"),
            ({"model": "m", "messages": [{"role": "robot", "content": "x"}]}, "messages"),
            ({"model": "m", "messages": [USER], "stop": ["a", "b", "c", "d", "e"]}, "stop"),
            ({"model": "m", "messages": [USER], "response_format": {"type": "xml"}}, "response_format"),
        ]
        for body, param in cases:
            with self.assertRaises(ClientError) as caught:
                chat_request_to_responses(body, opts())
            self.assertEqual((caught.exception.param, caught.exception.status), (param, 400), body)

    def test_dangling_and_orphan_tool_calls_are_refused(self):
        call = {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_x", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}
        with self.assertRaises(ClientError) as caught:
            translate([USER, call, {"role": "user", "content": "and?"}])
        self.assertIn("call_x", caught.exception.message)
        with self.assertRaises(ClientError) as caught:
            translate([USER, {"role": "tool", "tool_call_id": "call_y", "content": "r"}])
        self.assertIn("call_y", caught.exception.message)


class StreamAnswers(unittest.TestCase):
    def test_text_only(self):
        ctx = ctx_for(stream=True)
        stream, chunks = run(ctx, sse_events_for({"text": "Hello there, world"}, "gpt-5.5"))
        self.assertEqual(chunks[0], {"id": ctx.id, "object": "chat.completion.chunk", "created": ctx.created,
                                     "model": "gpt-4o", "system_fingerprint": None,
                                     "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                  "logprobs": None, "finish_reason": None}]})
        self.assertEqual(joined(chunks, "content"), "Hello there, world")
        self.assertEqual(chunks[-1]["choices"], [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}])
        self.assertEqual(finishes(chunks), ["stop"])
        self.assertTrue(all("usage" not in c for c in chunks))
        self.assertEqual((stream.done, stream.error), (True, None))

    def test_reasoning_is_separate_from_content(self):
        _, chunks = run(ctx_for(), sse_events_for({"reasoning": ["Think A.", "Think B."], "text": "Answer"}, "m"))
        self.assertEqual(joined(chunks, "reasoning_content"), "Think A.\n\nThink B.")
        self.assertEqual(joined(chunks, "content"), "Answer")
        self.assertTrue(all(not (d.get("content") and d.get("reasoning_content")) for d in deltas(chunks)))

    def test_parallel_tool_calls_reassemble_exactly(self):
        calls = [{"name": "get_weather", "arguments": '{"city": "Paris", "unit": "c"}', "call_id": "call_p"},
                 {"name": "get_time", "arguments": '{"tz": "Europe/Rome"}', "call_id": "call_r"}]
        _, chunks = run(ctx_for(), sse_events_for({"text": "Let me check.", "tool_calls": calls}, "m"))
        heads = [d["tool_calls"][0] for d in deltas(chunks) if d.get("tool_calls") and "id" in d["tool_calls"][0]]
        self.assertEqual(heads, [
            {"index": 0, "id": "call_p", "type": "function", "function": {"name": "get_weather", "arguments": ""}},
            {"index": 1, "id": "call_r", "type": "function", "function": {"name": "get_time", "arguments": ""}}])
        for index, call in enumerate(calls):
            pieces = [d["tool_calls"][0]["function"]["arguments"] for d in deltas(chunks)
                      if d.get("tool_calls") and d["tool_calls"][0]["index"] == index]
            self.assertGreater(len(pieces), 2)
            self.assertEqual("".join(pieces), call["arguments"])
        self.assertEqual(finishes(chunks), ["tool_calls"])

    def test_long_tool_name_maps_back_to_the_client_name(self):
        upstream, ctx = translate(tools=[{"type": "function", "function": {"name": LONG_NAME}}])
        short = upstream["tools"][0]["name"]
        _, chunks = run(ctx, sse_events_for({"tool_calls": [{"name": short, "arguments": "{}"}]}, "m"))
        names = [d["tool_calls"][0]["function"].get("name") for d in deltas(chunks) if d.get("tool_calls")]
        self.assertEqual(names[0], LONG_NAME)
        self.assertEqual(chat_completion_from_chunks(chunks, ctx)["choices"][0]["message"]["tool_calls"][0]
                         ["function"]["name"], LONG_NAME)

    def test_arguments_only_on_item_done(self):
        item = {"id": "fc_1", "type": "function_call", "call_id": "call_1", "name": "f", "arguments": ""}
        events = [created(), {"type": "response.output_item.added", "output_index": 0, "item": item},
                  {"type": "response.output_item.done", "output_index": 0, "item": dict(item, arguments='{"a":1}')},
                  completed()]
        _, chunks = run(ctx_for(), events)
        self.assertEqual([d["tool_calls"][0]["function"]["arguments"] for d in deltas(chunks) if d.get("tool_calls")],
                         ["", '{"a":1}'])
        self.assertEqual(finishes(chunks), ["tool_calls"])

    def test_legacy_function_call_answer(self):
        ctx = ctx_for(functions=[{"name": "lookup"}])
        _, chunks = run(ctx, sse_events_for({"tool_calls": [{"name": "lookup", "arguments": '{"q": 1}'}]}, "m"))
        self.assertEqual(deltas(chunks)[1], {"function_call": {"name": "lookup", "arguments": ""}})
        self.assertTrue(all("tool_calls" not in d for d in deltas(chunks)))
        self.assertEqual(finishes(chunks), ["function_call"])
        message = chat_completion_from_chunks(chunks, ctx)["choices"][0]["message"]
        self.assertEqual(message["function_call"], {"name": "lookup", "arguments": '{"q": 1}'})
        self.assertIsNone(message["content"])

    def test_stop_sequence_cut_across_deltas(self):
        ctx = ctx_for(stop=["END"])
        events = [created()] + text_events(["Hello E", "N", "D after", " more"]) + sse_events_for(
            {"tool_calls": [{"name": "f", "arguments": "{}"}]}, "m")[2:]
        stream, chunks = run(ctx, events)
        self.assertEqual(joined(chunks, "content"), "Hello ")
        self.assertTrue(all("tool_calls" not in d for d in deltas(chunks)))
        self.assertEqual(finishes(chunks), ["stop"])
        self.assertTrue(stream.done)

    def test_the_answer_ends_at_the_stop_not_when_upstream_does(self):
        ctx = ctx_for(stop=["END"], stream=True, stream_options={"include_usage": True})
        # The message has not even ended.
        stream, chunks = run(ctx, [created()] + text_events(["Hello E", "ND more"])[:4], finish=False)
        self.assertTrue(stream.done and stream.stopped)
        self.assertEqual((joined(chunks, "content"), finishes(chunks)), ("Hello ", ["stop"]))
        self.assertGreater(chunks[-1]["usage"]["prompt_tokens"], 0)
        self.assertEqual(chunks[-1]["usage"]["completion_tokens"], codex_proxy.estimate_text_tokens("Hello "))

    def test_a_stop_in_the_first_of_two_parts_ends_the_answer_once(self):
        parts = [{"type": "output_text", "annotations": [], "text": "a END b"},
                 {"type": "output_text", "annotations": [], "text": "more END"},
                 {"type": "refusal", "refusal": "no"}]
        item = {"id": "msg_1", "type": "message", "role": "assistant", "status": "completed", "content": parts}
        events = [created(), {"type": "response.output_item.done", "output_index": 0, "item": item}, completed()]
        _, chunks = run(ctx_for(stop=["END"], stream=True, stream_options={"include_usage": True}), events)
        self.assertEqual((joined(chunks, "content"), finishes(chunks)), ("a ", ["stop"]))
        self.assertEqual([c for c in chunks if not c["choices"]], chunks[-1:])  # one usage chunk, last
        self.assertEqual(joined(chunks, "refusal"), "")

    def test_held_back_text_that_was_no_stop_is_sent_when_its_message_ends(self):
        events = [created()] + text_events(["Hello E", "N"]) + sse_events_for(
            {"tool_calls": [{"name": "f", "arguments": "{}"}]}, "m")[2:]
        _, chunks = run(ctx_for(stop=["END"]), events)
        self.assertEqual([d.get("content") for d in deltas(chunks)[1:3]], ["Hello ", "EN"])
        self.assertIn("tool_calls", deltas(chunks)[3])

    def test_stop_hit_wins_over_a_later_length_limit(self):
        limit = completed(kind="response.incomplete", incomplete_details={"reason": "max_output_tokens"})
        events = [created()] + text_events(["a STOP b"]) + [limit]
        _, chunks = run(ctx_for(stop="STOP"), events)
        self.assertEqual((joined(chunks, "content"), finishes(chunks)), ("a ", ["stop"]))

    def test_text_only_on_item_done(self):
        part = {"type": "output_text", "annotations": [], "text": "Whole"}
        item = {"id": "msg_1", "type": "message", "role": "assistant", "status": "completed", "content": [part]}
        events = [created(), {"type": "response.output_item.done", "output_index": 0, "item": item}, completed()]
        _, chunks = run(ctx_for(), events)
        self.assertEqual(joined(chunks, "content"), "Whole")

    def test_separate_messages_do_not_run_together(self):
        events = [created()] + text_events(["First."]) + text_events(["Second."], 1, "msg_2") + [completed()]
        _, chunks = run(ctx_for(), events)
        self.assertEqual(joined(chunks, "content"), "First.\n\nSecond.")

    def test_web_citations_are_annotations_at_their_place_in_the_content(self):
        note = {"type": "url_citation", "start_index": 0, "end_index": 6, "url": "https://a.test", "title": "A"}
        events = [created()] + text_events(["First."]) + text_events(["Second."], 1, "msg_2", [note]) + [completed()]
        for stream in (True, False):
            ctx = ctx_for(stream=stream)
            _, chunks = run(ctx, events)
            want = [{"type": "url_citation", "url_citation": {"start_index": 8, "end_index": 14,
                                                              "url": "https://a.test", "title": "A"}}]
            self.assertEqual([d["annotations"] for d in deltas(chunks) if "annotations" in d], [want])
            content = joined(chunks, "content")
            self.assertEqual(content[8:14], "Second")
            message = chat_completion_from_chunks(chunks, ctx)["choices"][0]["message"]
            self.assertEqual(message["annotations"], want)
        # Past a stop sequence nothing is cited.
        _, chunks = run(ctx_for(stop=["Sec"]), events)
        self.assertEqual([d for d in deltas(chunks) if "annotations" in d], [])

    def test_incomplete_length_and_content_filter(self):
        for reason, finish in (("max_output_tokens", "length"), ("content_filter", "content_filter")):
            stream, chunks = run(ctx_for(), sse_events_for({"text": "Partial", "incomplete": reason}, "m"))
            self.assertEqual((finishes(chunks), joined(chunks, "content"), stream.done), ([finish], "Partial", True))

    def test_usage_with_and_without_include_usage(self):
        reply = {"text": "Hi", "reasoning": "r", "usage": {"input_tokens": 100, "cached_tokens": 60,
                                                           "output_tokens": 40, "reasoning_tokens": 25}}
        usage = {"prompt_tokens": 100, "completion_tokens": 40, "total_tokens": 140,
                 "prompt_tokens_details": {"cached_tokens": 60}, "completion_tokens_details": {"reasoning_tokens": 25}}
        ctx = ctx_for(stream=True, stream_options={"include_usage": True})
        _, chunks = run(ctx, sse_events_for(reply, "m"))
        self.assertEqual((chunks[-1]["choices"], chunks[-1]["usage"]), ([], usage))
        self.assertTrue(all(c["usage"] is None for c in chunks[:-1]))
        self.assertEqual(chunks[-2]["choices"][0]["finish_reason"], "stop")
        ctx = ctx_for(stream=True)
        _, chunks = run(ctx, sse_events_for(reply, "m"))
        self.assertTrue(all("usage" not in c for c in chunks))
        ctx = ctx_for(stream=False)
        _, chunks = run(ctx, sse_events_for(reply, "m"))
        self.assertEqual(chat_completion_from_chunks(chunks, ctx)["usage"], usage)

    def test_missing_usage_fields_count_as_zero(self):
        ctx = ctx_for(stream=False)
        _, chunks = run(ctx, [created()] + text_events(["x"]) + [completed({"input_tokens": 3})])
        self.assertEqual(chat_completion_from_chunks(chunks, ctx)["usage"], {
            "prompt_tokens": 3, "completion_tokens": 0, "total_tokens": 3,
            "prompt_tokens_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0}})

    def test_failures_end_with_an_error_object(self):
        cases = [({"text": "Par", "fail": {"code": "rate_limit_exceeded", "message": "Slow down"}},
                  429, "Slow down", "rate_limit_exceeded"),
                 ({"text": "Par", "error_event": {"code": "server_is_overloaded", "message": "Busy"}},
                  503, "Busy", "server_is_overloaded"),
                 ({"text": "Partial answer", "cut": True}, 502, None, None)]
        for reply, status, message, code in cases:
            stream, chunks = run(ctx_for(stream=True), sse_events_for(reply, "m"))
            error = chunks[-1]["error"]
            self.assertEqual((error["code"], error["param"], stream.error["status"], stream.error["code"]),
                             (code, None, status, code))
            self.assertEqual(error["message"], stream.error["message"])
            if message:
                self.assertEqual(error["message"], message)
            self.assertEqual(finishes(chunks), [])
            self.assertFalse(stream.done)
            self.assertEqual(sum("error" in c for c in chunks), 1)

    def test_events_after_a_failure_or_the_end_are_ignored(self):
        stream = ResponsesToChatStream(ctx_for())
        stream.feed({"type": "error", "code": "server_error", "message": "boom"})
        self.assertEqual(stream.feed(completed()) + stream.finish(), [])
        stream = ResponsesToChatStream(ctx_for())
        stream.feed(completed())
        self.assertEqual(stream.feed({"type": "response.output_text.delta", "output_index": 0, "delta": "x"}), [])
        self.assertEqual(stream.finish(), [])

    def test_refusal(self):
        ctx = ctx_for(stream=False)
        refusal = {"type": "response.refusal.delta", "item_id": "msg_1", "output_index": 0, "content_index": 0,
                   "delta": "I can't help with that."}
        _, chunks = run(ctx, [created(), refusal, completed()])
        self.assertEqual(joined(chunks, "refusal"), "I can't help with that.")
        message = chat_completion_from_chunks(chunks, ctx)["choices"][0]["message"]
        self.assertEqual((message["refusal"], message["content"]), ("I can't help with that.", ""))

    def test_unknown_events_are_ignored(self):
        events = [created(), {"type": "codex.rate_limits", "primary": {}}, {"type": "response.future_thing"},
                  {"no_type": 1}, "garbage"] + text_events(["ok"]) + [completed()]
        stream, chunks = run(ctx_for(), events)
        self.assertEqual((joined(chunks, "content"), finishes(chunks), stream.error), ("ok", ["stop"], None))

    def test_web_search_items_are_ignored(self):
        _, chunks = run(ctx_for(), sse_events_for({"web_search": {"query": "news"}, "text": "Today"}, "m"))
        self.assertEqual((joined(chunks, "content"), finishes(chunks)), ("Today", ["stop"]))
        self.assertEqual(translate(web_search_options={"search_context_size": "low"})[0]["tools"],
                         [{"type": "web_search", "search_context_size": "low"}])

    def test_empty_completed_output_still_yields_the_answer(self):
        reply = {"reasoning": "Hmm", "text": "Done", "tool_calls": [{"name": "f", "arguments": '{"x":1}'}],
                 "empty_completed_output": True}
        ctx = ctx_for(stream=False)
        _, chunks = run(ctx, sse_events_for(reply, "m"))
        message = chat_completion_from_chunks(chunks, ctx)["choices"][0]["message"]
        self.assertEqual((message["content"], message["reasoning_content"]), ("Done", "Hmm"))
        self.assertEqual(message["tool_calls"][0]["function"], {"name": "f", "arguments": '{"x":1}'})


class NonStreamFold(unittest.TestCase):
    def test_text_answer(self):
        ctx = ctx_for(stream=False)
        _, chunks = run(ctx, sse_events_for({"text": "Hello", "usage": {"input_tokens": 5, "output_tokens": 2}}, "m"))
        self.assertEqual(chat_completion_from_chunks(chunks, ctx), {
            "id": ctx.id, "object": "chat.completion", "created": ctx.created, "model": "gpt-4o",
            "system_fingerprint": None,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello", "refusal": None},
                         "logprobs": None, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7,
                      "prompt_tokens_details": {"cached_tokens": 0},
                      "completion_tokens_details": {"reasoning_tokens": 0}}})

    def test_tool_calls_only_has_null_content(self):
        ctx = ctx_for(stream=False)
        calls = [{"name": "a", "arguments": '{"k": [1, 2]}', "call_id": "call_1"},
                 {"name": "b", "arguments": "{}", "call_id": "call_2"}]
        _, chunks = run(ctx, sse_events_for({"tool_calls": calls}, "m"))
        choice = chat_completion_from_chunks(chunks, ctx)["choices"][0]
        self.assertEqual(choice["finish_reason"], "tool_calls")
        self.assertIsNone(choice["message"]["content"])
        self.assertEqual(choice["message"]["tool_calls"], [
            {"id": "call_1", "type": "function", "function": {"name": "a", "arguments": '{"k": [1, 2]}'}},
            {"id": "call_2", "type": "function", "function": {"name": "b", "arguments": "{}"}}])

    def test_fold_equals_the_streamed_content(self):
        replies = [{"text": "Plain"}, {"reasoning": ["A", "B"], "text": "T"},
                   {"text": "x", "tool_calls": [{"name": "f", "arguments": '{"q": "z"}'}]},
                   {"text": "cut short", "incomplete": "max_output_tokens"}]
        for reply in replies:
            ctx = ctx_for(stream=True)
            _, chunks = run(ctx, sse_events_for(reply, "m"))
            choice = chat_completion_from_chunks(chunks, ctx)["choices"][0]
            self.assertEqual(choice["message"]["content"], joined(chunks, "content"))
            self.assertEqual(choice["message"].get("reasoning_content", ""), joined(chunks, "reasoning_content"))
            self.assertEqual([choice["finish_reason"]], finishes(chunks))


if __name__ == "__main__":
    unittest.main()
