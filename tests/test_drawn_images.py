"""Images the backend draws (the image_generation tool) in the dialects the proxy already speaks:
/v1/responses passes the tool and every image event on and keeps the item for
previous_response_id; /v1/chat/completions gives the image in OpenRouter's shape
(message.images, delta.images); /v1/messages refuses the tool, naming where to draw. The log
says an image's size, --dump-dir a stand-in, never the image.

Translators without sockets first, then the real proxy against the strict fake backend (which
refuses the tool's unknown keys and an image item in input with more than id, status and result),
and, where it is installed, the official openai SDK (skipped without it unless
CODEX_PROXY_REQUIRE_OPTIONAL is set).
"""

import base64
import hashlib
import json
import re
import time
import tracemalloc
import unittest

import fake_upstream
from fake_upstream import codex_request_error, default_catalog, render_sse, sse_events_for, usage_limit_reply
from support import (DumpDirTestCase, ProxyTestCase, codex_proxy, optional_module, run_stream, sse_data,
                     streamed_text, wait_for)
from codex_proxy import ClientError

openai = optional_module("openai")

PROMPT = "a lighthouse at dusk"
IMAGE_TOOL = {"type": "image_generation", "size": "1536x1024", "quality": "low", "output_format": "png"}
DRAW = {"type": "image_generation"}
MODERATED = {"code": "moderation_blocked", "message": "Your request was rejected by the safety system."}
STALL = 1.0  # seconds the fake stays silent while it draws (keep-alives every 0.3 s)


def opts():
    return codex_proxy.RequestOptions("gpt-5.5")


def drawn(width=1536, height=1024, colour=(40, 120, 200)):
    """The base64 PNG the fake draws at that size (fake_upstream.drawn_image)."""
    return base64.b64encode(fake_upstream.png(width, height, colour)).decode("ascii")


def accepted(test, upstream):
    """The strict fake backend takes the body as the real one would."""
    test.assertIsNone(codex_request_error(json.loads(json.dumps(upstream)), default_catalog()))


def image_request(tool=None, text=PROMPT):
    """A Responses request to the backend that draws (what the fake's events are made for)."""
    return {"model": "gpt-5.5", "tools": [tool or IMAGE_TOOL], "tool_choice": DRAW,
            "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}]}


def image_events(spec=None, text=None, tool=None):
    """The fake backend's events for an answer that draws (and then says `text`)."""
    reply = {"image": spec or {}}
    if text:
        reply["text"] = text
    return sse_events_for(reply, "gpt-5.5", image_request(tool))


def image_item(events):
    return next(e["item"] for e in events if e.get("type") == "response.output_item.done"
                and e["item"]["type"] == "image_generation_call")


def chat_ctx(stream=False):
    return codex_proxy.chat_request_to_responses(
        {"model": "gpt-5.5", "messages": [{"role": "user", "content": PROMPT}], "tools": [IMAGE_TOOL],
         "stream": stream}, opts())[1]


# ---------------------------------------------------------------------------
# Translators

class RequestTranslationTests(unittest.TestCase):
    def test_the_image_tool_goes_with_its_keys_only_mask_included(self):
        tool = dict(IMAGE_TOOL, model="gpt-image-1", n=2, partial_images=1,
                    input_image_mask={"image_url": "data:image/png;base64,AAAA", "detail": "high"})
        upstream, _ = codex_proxy.responses_request_for_codex(dict(image_request(tool), input=PROMPT), opts())
        self.assertEqual(upstream["tools"], [dict(IMAGE_TOOL, partial_images=1,
                                                  input_image_mask={"image_url": "data:image/png;base64,AAAA"})])
        self.assertEqual(upstream["tool_choice"], DRAW)
        accepted(self, upstream)
        self.assertIn("tools[0].model", codex_request_error(dict(upstream, tools=[tool])))  # what was saved

    def test_an_image_item_in_input_goes_as_the_backend_takes_it_and_a_failed_one_not_at_all(self):
        item = image_item(image_events())
        failed = image_item(image_events({"fail": MODERATED}))
        self.assertGreater(set(item), {"type", "id", "status", "result"})  # size, revised_prompt, action...
        upstream, _ = codex_proxy.responses_request_for_codex(
            {"model": "gpt-5.5", "input": [{"role": "user", "content": PROMPT}, item, failed,
                                           {"role": "user", "content": "Now in winter"}]}, opts())
        self.assertEqual(upstream["input"][1], {key: item[key] for key in ("type", "id", "status", "result")})
        self.assertEqual([i.get("role", i["type"]) for i in upstream["input"]],
                         ["user", "image_generation_call", "user"])
        accepted(self, upstream)
        self.assertIn("input[1].revised_prompt", codex_request_error(
            dict(upstream, input=[upstream["input"][0], item])))  # what was saved

    def test_chat_forwards_the_tool_and_its_tool_choice_and_drops_replayed_images(self):
        url = "data:image/png;base64," + drawn(64, 64)
        upstream, _ = codex_proxy.chat_request_to_responses({
            "model": "gpt-5.5", "tool_choice": DRAW,
            "tools": [dict(IMAGE_TOOL, model="gpt-image-1"),
                      {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
            "messages": [{"role": "user", "content": PROMPT},
                         {"role": "assistant", "content": "Here it is.",
                          "images": [{"type": "image_url", "image_url": {"url": url}}]},
                         {"role": "user", "content": "Thanks"}]}, opts())
        self.assertEqual(upstream["tools"][0], IMAGE_TOOL)
        self.assertEqual(upstream["tool_choice"], DRAW)
        self.assertEqual([i["content"][0]["text"] for i in upstream["input"]], [PROMPT, "Here it is.", "Thanks"])
        self.assertNotIn(drawn(64, 64), json.dumps(upstream))
        accepted(self, upstream)

    def test_the_messages_api_refuses_the_tool_naming_where_to_draw(self):
        with self.assertRaises(ClientError) as caught:
            codex_proxy.messages_request_to_responses({
                "model": "claude-opus-5-5", "max_tokens": 100, "messages": [{"role": "user", "content": PROMPT}],
                "tools": [{"type": "image_generation"}]}, opts())
        self.assertEqual((caught.exception.status, caught.exception.param), (400, "tools"))
        self.assertIn("/v1/images/generations", caught.exception.message)
        self.assertIn("/v1/responses", caught.exception.message)

    def test_a_drawn_image_in_input_counts_as_an_image_not_as_its_base64(self):
        item = image_item(image_events())
        item["result"] += "A" * 400000  # a detailed drawing's base64: the size it reads from the head, as before
        tokens = codex_proxy.estimate_request_tokens({"model": "gpt-5.5", "instructions": "x", "input": [item]})
        self.assertLess(tokens, 1200)  # 1536x1024: 85 + 170 * 6 tiles


class ChatAnswerTests(unittest.TestCase):
    def test_the_image_is_one_chunk_in_openrouters_shape_and_the_text_stays_content(self):
        events = image_events({"partial_images": 2}, text="Here is your lighthouse.")
        _, chunks = run_stream(codex_proxy.ResponsesToChatStream(chat_ctx(stream=True)), events)
        images = [c["choices"][0]["delta"]["images"] for c in chunks if c["choices"] and
                  "images" in c["choices"][0]["delta"]]
        self.assertEqual(images, [[{"type": "image_url",
                                    "image_url": {"url": "data:image/png;base64," + image_item(events)["result"]}}]])
        answer = codex_proxy.chat_completion_from_chunks(
            run_stream(codex_proxy.ResponsesToChatStream(chat_ctx()), events)[1], chat_ctx())
        choice = answer["choices"][0]
        self.assertEqual((choice["message"]["content"], choice["finish_reason"]), ("Here is your lighthouse.", "stop"))
        self.assertEqual(choice["message"]["images"], images[0])

    def test_the_data_url_has_the_images_format(self):
        for fmt, mime in (("png", "image/png"), ("jpeg", "image/jpeg"), ("webp", "image/webp")):
            events = image_events(tool=dict(IMAGE_TOOL, output_format=fmt))
            stream, chunks = run_stream(codex_proxy.ResponsesToChatStream(chat_ctx()), events)
            url = codex_proxy.chat_completion_from_chunks(chunks, chat_ctx())["choices"][0]["message"]["images"][0]
            self.assertTrue(url["image_url"]["url"].startswith("data:%s;base64,iVBOR" % mime), fmt)
            self.assertEqual(stream.images, [len(image_item(events)["result"])])

    def test_a_refused_drawing_fails_the_answer_with_the_backends_words(self):
        stream, chunks = run_stream(codex_proxy.ResponsesToChatStream(chat_ctx(stream=True)),
                                    image_events({"fail": MODERATED}))
        self.assertEqual(stream.error, dict(MODERATED, status=400))
        self.assertEqual(chunks[-1], {"error": {"message": MODERATED["message"], "type": "invalid_request_error",
                                                "param": None, "code": "moderation_blocked"}})


class LogAndDumpTests(unittest.TestCase):
    def test_the_log_line_says_how_many_images_and_how_large(self):
        record = {"id": "req_1", "method": "POST", "path": "/v1/responses", "status": 200, "total": 1.5,
                  "images": [4 * 1024 * 100, 8]}
        line, fields = codex_proxy.request_log_line(record)
        self.assertIn(" images 2 (301 KB) ", line)
        self.assertEqual((fields["images"], fields["image_bytes"]), (2, 3 * 1024 * 100 + 6))
        line, fields = codex_proxy.request_log_line(dict(record, images=[]))
        self.assertNotIn("images", line)
        self.assertNotIn("images", fields)

    def test_a_dump_shows_each_image_by_its_length_and_hash(self):
        b64 = drawn(32, 32)
        stand_in = "[image: %d base64 chars, sha256 %s]" % (
            len(b64), hashlib.sha256(b64.encode()).hexdigest()[:16])
        data = {"item": {"type": "image_generation_call", "result": b64},
                "event": {"partial_image_b64": b64}, "url": "data:image/png;base64," + b64,
                "other": {"result": "kept", "text": b64}}
        self.assertEqual(codex_proxy.redacted(data), {
            "item": {"type": "image_generation_call", "result": stand_in}, "event": {"partial_image_b64": stand_in},
            "url": "data:image/png;base64," + stand_in, "other": {"result": "kept", "text": b64}})
        text = json.dumps({"item": {"result": b64.replace("/", "\\/")}, "u": "data:image/png;base64," + b64})
        self.assertEqual(codex_proxy.without_images(text),
                         json.dumps({"item": {"result": stand_in}, "u": "data:image/png;base64," + stand_in}))


class CopiesTests(unittest.TestCase):
    """A drawn image is megabytes in one event: read with as few copies as can be."""

    SIZE = 2 * 1024 * 1024

    def peak(self, work):
        """The most memory `work` held at once, in sizes of the image."""
        tracemalloc.start()
        try:
            result = work()
            held, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        self.assertTrue(result)
        return round(peak / self.SIZE, 1)

    def test_a_long_event_is_read_with_one_copy_of_its_bytes_and_one_of_its_text(self):
        data = "x" * self.SIZE
        raw = b"event: response.output_item.done\ndata: " + data.encode() + b"\n\nevent: next\ndata: {}\n\n"
        chunks = [raw[at:at + 65536] for at in range(0, len(raw), 65536)]
        parser = codex_proxy.SSEParser()
        self.assertLessEqual(self.peak(lambda: [pair for chunk in chunks for pair in parser.feed(chunk)]), 2.1)


# ---------------------------------------------------------------------------
# Through the proxy

class DrawingTestCase(ProxyTestCase):
    def upstream(self):
        return [r.json for r in self.fake.requests if r.path == "/backend-api/codex/responses"]

    def responses(self, body, stream=False, proxy=None):
        """(status, the answer: its events when streamed, else the JSON, raw bytes)."""
        status, headers, raw = self.request("POST", "/v1/responses", dict(body, stream=stream), proxy=proxy)
        if status == 200 and stream:
            self.assertTrue(headers["content-type"].startswith("text/event-stream"), headers)
            return status, sse_data(raw), raw
        return status, json.loads(raw.decode()), raw


class ResponsesDrawingTests(DrawingTestCase):
    def test_a_streamed_drawing_passes_every_event_in_order_and_the_image_whole(self):
        self.fake.script.append({"image": {"partial_images": 2}, "text": "Here it is."})
        with self.assertLogs("codex_proxy", "INFO") as logs:
            status, events, raw = self.responses(image_request(), stream=True)
            wait_for(lambda: any("POST /v1/responses -> 200" in line for line in logs.output))  # once the answer is out
        self.assertEqual(status, 200, raw)
        self.assertEqual(render_sse(events), raw)  # byte for byte: nothing decoded or written again
        kinds = [e["type"] for e in events]
        self.assertEqual(kinds[2:9], ["response.output_item.added", "response.image_generation_call.in_progress",
                                      "response.image_generation_call.generating"]
                         + ["response.image_generation_call.partial_image"] * 2
                         + ["response.image_generation_call.completed", "response.output_item.done"])
        partials = [e for e in events if e["type"].endswith(".partial_image")]
        self.assertEqual([(p["partial_image_index"], p["size"]) for p in partials], [(0, "1536x1024"), (1, "1536x1024")])
        item = image_item(events)
        self.assertEqual(item["result"], drawn())
        self.assertEqual((item["status"], item["size"], item["quality"], item["background"], item["output_format"],
                          item["action"], item["revised_prompt"]),
                         ("completed", "1536x1024", "low", "opaque", "png", "generate", "A drawing of: " + PROMPT))
        self.assertEqual(events[-1]["response"]["output"][0], item)
        self.assertEqual(streamed_text(events), "Here it is.")
        line = next(entry for entry in logs.output if "POST /v1/responses -> 200" in entry)
        self.assertIn(" images 1 (%d KB) " % -(-len(base64.b64decode(drawn())) // 1024), line)
        self.assertNotIn(drawn()[:40], "\n".join(logs.output))

    def test_a_json_answer_holds_the_whole_item(self):
        self.fake.script.append({"image": {"revised_prompt": "A tall lighthouse."}, "empty_completed_output": True})
        status, answer, raw = self.responses(image_request())
        self.assertEqual(status, 200, answer)
        [item] = answer["output"]
        self.assertEqual(item["result"], drawn())
        self.assertEqual({k: item[k] for k in ("type", "status", "size", "revised_prompt", "action")},
                         {"type": "image_generation_call", "status": "completed", "size": "1536x1024",
                          "revised_prompt": "A tall lighthouse.", "action": "generate"})
        self.assertTrue(item["id"].startswith("ig_"))

    def test_a_model_in_the_tool_is_left_out(self):
        # The backend chooses the image model and refuses a tool that names one, as the fake does.
        status, answer, _ = self.responses(image_request(dict(IMAGE_TOOL, model="gpt-image-1")))
        self.assertEqual(status, 200, answer)
        self.assertEqual(self.upstream()[-1]["tools"], [IMAGE_TOOL])
        self.assertEqual(answer["output"][0]["result"], drawn())

    def test_a_turn_after_a_drawing_shows_the_image_again_as_the_backend_takes_it(self):
        status, first, _ = self.responses(image_request())
        self.assertEqual(status, 200, first)
        self.fake.script.append({"text": "It is blue."})
        status, second, _ = self.responses({"model": "gpt-5.5", "previous_response_id": first["id"],
                                            "input": "What colour is it?"})
        self.assertEqual(status, 200, second)
        item = first["output"][0]
        sent = self.upstream()[-1]["input"]
        self.assertEqual(sent[1], {"type": "image_generation_call", "id": item["id"], "status": "completed",
                                   "result": item["result"]})
        self.assertEqual(len(sent), 3)
        # And the same item, sent by the client itself, whole, with a failed one it drops.
        self.fake.script.append({"image": {"fail": MODERATED}})
        status, failed, _ = self.responses(image_request())
        self.assertEqual((status, failed["output"][0]["status"]), (200, "failed"))
        status, third, _ = self.responses({"model": "gpt-5.5", "input": [
            {"role": "user", "content": PROMPT}, item, failed["output"][0], {"role": "user", "content": "Again?"}]})
        self.assertEqual(status, 200, third)
        self.assertEqual(self.upstream()[-1]["input"][1:], [sent[1], {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Again?"}]}])

    def test_input_tokens_after_a_drawing_count_the_image_as_one(self):
        status, first, _ = self.responses(image_request())
        self.assertEqual(status, 200, first)
        count = self.json_answer("POST", "/v1/responses/input_tokens", {
            "model": "gpt-5.5", "previous_response_id": first["id"], "input": "And now?"})["input_tokens"]
        self.assertLess(count, 1500)


class SlowDrawingTests(DrawingTestCase):
    config_overrides = {"heartbeat_interval": 0.3, "upstream_idle_timeout": 0.6, "image_timeout": 10}

    def test_a_stream_that_draws_gets_keep_alives_and_the_longer_idle_timeout(self):
        self.fake.script.append({"image": {}, "text": "Done.", "stall": STALL})
        started = time.monotonic()
        status, _, raw = self.request("POST", "/v1/responses", dict(image_request(), stream=True))
        self.assertGreaterEqual(time.monotonic() - started, STALL)
        self.assertEqual(status, 200, raw)
        keep_alives = re.findall(rb"\n\n: keep-alive\n\n", raw)
        self.assertGreaterEqual(len(keep_alives), 2, raw[:600])
        self.assertLess(raw.index(b"image_generation_call.generating"), raw.index(b": keep-alive"))  # while it draws
        events = sse_data(re.sub(rb": keep-alive\n\n", b"", raw))
        self.assertEqual(image_item(events)["result"], drawn())
        self.assertEqual(events[-1]["type"], "response.completed")
        # The same silence without the image tool: --upstream-idle-timeout (0.6 s) ends it.
        self.fake.script.append({"text": "Done.", "stall": STALL})
        status, _, raw = self.request("POST", "/v1/responses", {"model": "gpt-5.5", "input": "hi", "stream": True})
        self.assertEqual(sse_data(re.sub(rb": keep-alive\n\n", b"", raw))[-1]["type"], "error")

    def test_a_json_answer_stays_plain_json_however_long_it_draws(self):
        for path, body in (("/v1/responses", image_request()),
                           ("/v1/chat/completions", {"model": "gpt-5.5", "tools": [IMAGE_TOOL], "tool_choice": DRAW,
                                                     "messages": [{"role": "user", "content": PROMPT}]})):
            with self.subTest(path=path):
                self.fake.script.append({"image": {}, "text": "Done.", "stall": STALL})
                status, headers, raw = self.request("POST", path, body)
                self.assertEqual(status, 200, raw)
                self.assertTrue(headers["content-type"].startswith("application/json"))
                self.assertNotIn(b"keep-alive", raw)
                self.assertIn(drawn().encode(), raw)
                json.loads(raw.decode())


class ChatDrawingTests(DrawingTestCase):
    def chat(self, **fields):
        body = {"model": "gpt-5.5", "tools": [IMAGE_TOOL], "tool_choice": DRAW,
                "messages": [{"role": "user", "content": PROMPT}]}
        body.update(fields)
        return body

    def test_the_image_comes_in_message_images(self):
        self.fake.script.append({"image": {}, "text": "Here is your lighthouse."})
        answer = self.json_answer("POST", "/v1/chat/completions", self.chat())
        choice = answer["choices"][0]
        self.assertEqual((choice["message"]["content"], choice["finish_reason"]), ("Here is your lighthouse.", "stop"))
        self.assertEqual(choice["message"]["images"], [{"type": "image_url", "image_url": {
            "url": "data:image/png;base64," + drawn()}}])
        self.assertEqual(self.upstream()[-1]["tools"], [IMAGE_TOOL])
        self.assertEqual(self.upstream()[-1]["tool_choice"], DRAW)

    def test_streamed_the_image_is_one_chunk(self):
        self.fake.script.append({"image": {"partial_images": 3}, "text": "Here."})
        status, events, raw = self.sse_request("/v1/chat/completions", self.chat(stream=True))
        self.assertEqual(status, 200, raw)
        chunks = [data for _, data in events]
        self.assertEqual(chunks[-1], "[DONE]")
        with_images = [c for c in chunks[:-1] if c["choices"] and "images" in c["choices"][0]["delta"]]
        self.assertEqual(len(with_images), 1)
        self.assertEqual(with_images[0]["choices"][0]["delta"]["images"][0]["image_url"]["url"],
                         "data:image/png;base64," + drawn())
        self.assertEqual(raw.count(b"base64,"), 1)  # the partial images are not sent

    def test_a_later_turn_does_not_send_the_image_back(self):
        self.fake.script.append({"image": {}, "text": "Here."})
        first = self.json_answer("POST", "/v1/chat/completions", self.chat())
        self.fake.script.append({"text": "A lighthouse."})
        messages = [{"role": "user", "content": PROMPT}, first["choices"][0]["message"],
                    {"role": "user", "content": "What did you draw?"}]
        answer = self.json_answer("POST", "/v1/chat/completions", self.chat(messages=messages, tool_choice="auto"))
        self.assertEqual(answer["choices"][0]["message"]["content"], "A lighthouse.")
        sent = self.fake.requests_to("/responses")[-1]
        self.assertNotIn(drawn()[:100], json.dumps(sent.json))
        self.assertEqual([i["content"][0]["text"] for i in sent.json["input"]], [PROMPT, "Here.", "What did you draw?"])

    def test_a_refused_drawing_is_a_400_moderation_blocked(self):
        self.fake.script.append({"image": {"fail": MODERATED}})
        status, _, answer = self.json_request("POST", "/v1/chat/completions", self.chat())
        self.assertEqual(status, 400, answer)
        self.assertEqual(answer["error"], {"message": MODERATED["message"], "type": "invalid_request_error",
                                           "param": None, "code": "moderation_blocked"})
        self.fake.script.append({"image": {"fail": MODERATED}})
        status, events, raw = self.sse_request("/v1/chat/completions", self.chat(stream=True))
        self.assertEqual(status, 200, raw)
        self.assertEqual(events[-1][1]["error"]["code"], "moderation_blocked")
        self.assertNotIn(b"[DONE]", raw)


class MessagesDrawingTests(DrawingTestCase):
    def test_the_image_tool_is_a_400_naming_where_to_draw(self):
        status, _, answer = self.json_request("POST", "/v1/messages", {
            "model": "claude-opus-5-5", "max_tokens": 100, "messages": [{"role": "user", "content": PROMPT}],
            "tools": [{"type": "image_generation"}]}, {"anthropic-version": "2023-06-01", "x-api-key": "unused"})
        self.assertEqual(status, 400, answer)
        self.assertEqual((answer["type"], answer["error"]["type"]), ("error", "invalid_request_error"))
        self.assertIn("POST /v1/images/generations", answer["error"]["message"])
        self.assertEqual(self.upstream(), [])


class DumpDrawingTests(DumpDirTestCase):
    def dumped(self, *paths):
        """The dump files' texts, one for each request path."""
        self.assertTrue(wait_for(lambda: len(self.dumps()) >= len(paths)))
        time.sleep(0.2)  # the last file written whole
        texts = {json.loads(text)["request"]["path"]: text for _, text in self.dumps()}
        return [texts[path] for path in paths]

    def test_no_image_in_a_dump_only_its_length_and_hash(self):
        picture = drawn(48, 32, (200, 10, 10))
        self.fake.script.append({"image": {"partial_images": 2}, "text": "Here."})
        body = dict(image_request(), stream=True, input=[{"role": "user", "content": [
            {"type": "input_text", "text": "Like this one"},
            {"type": "input_image", "image_url": "data:image/png;base64," + picture}]}])
        status, _, raw = self.request("POST", "/v1/responses", body)
        self.assertEqual(status, 200, raw)
        self.fake.script.append({"image": {}, "text": "Here."})
        answer = self.json_answer("POST", "/v1/chat/completions", {
            "model": "gpt-5.5", "tools": [IMAGE_TOOL], "messages": [{"role": "user", "content": PROMPT}]})
        result = answer["choices"][0]["message"]["images"][0]["image_url"]["url"].split(",", 1)[1]
        texts = self.dumped("/v1/responses", "/v1/chat/completions")
        partials = [e["partial_image_b64"] for e in sse_data(raw) if "partial_image_b64" in e]
        for secret in [picture, result] + partials + [image_item(sse_data(raw))["result"]]:
            for text in texts:
                self.assertNotIn(secret[:64], text)
        digest = hashlib.sha256(result.encode()).hexdigest()[:16]
        self.assertIn("[image: %d base64 chars, sha256 %s]" % (len(result), digest), texts[1])
        self.assertIn("data:image/png;base64,[image: %d base64 chars" % len(picture), texts[0])
        data = json.loads(texts[0])
        self.assertTrue(data["answer"].startswith("event: response.created"))
        self.assertEqual(len(re.findall(r"\[image: \d+ base64 chars, sha256 [0-9a-f]{16}\]", data["answer"])),
                         len(partials) + 2)  # the item's, again in response.completed


@unittest.skipIf(openai is None, "the openai package is not installed (CI installs it)")
class OpenAISDKDrawingTests(DrawingTestCase):
    def test_the_sdk_reads_the_drawn_image_streamed_and_not(self):
        client = self.sdk_client(openai.OpenAI, "/v1")
        answer = client.responses.create(model="gpt-5.5", tools=[{"type": "image_generation"}],
                                         tool_choice={"type": "image_generation"}, input=PROMPT)
        [item] = answer.output
        self.assertEqual((item.type, item.status, item.size), ("image_generation_call", "completed", "1024x1024"))
        self.assertEqual(fake_upstream.png_size(base64.b64decode(item.result)), (1024, 1024))
        self.fake.script.append({"image": {"partial_images": 1}, "text": "Here.", "empty_completed_output": True})
        with client.responses.stream(model="gpt-5.5", tools=[{"type": "image_generation", "partial_images": 1}],
                                     tool_choice={"type": "image_generation"}, input=PROMPT) as stream:
            kinds = [event.type for event in stream]
            final = stream.get_final_response()
        self.assertIn("response.image_generation_call.partial_image", kinds)
        self.assertEqual([o.type for o in final.output], ["image_generation_call", "message"])
        self.assertEqual(final.output[0].result, drawn(1024, 1024))
        self.assertEqual(final.output_text, "Here.")

    def test_the_sdk_reads_chat_images_streamed_and_not(self):
        client = self.sdk_client(openai.OpenAI, "/v1")
        tools = [{"type": "image_generation"}]
        self.fake.script.append({"image": {}, "text": "Drawn."})
        answer = client.chat.completions.create(model="gpt-5.5", tools=tools,
                                                messages=[{"role": "user", "content": PROMPT}])
        message = answer.choices[0].message
        self.assertEqual((message.content, answer.choices[0].finish_reason), ("Drawn.", "stop"))
        self.assertEqual(message.images[0]["image_url"]["url"], "data:image/png;base64," + drawn(1024, 1024))
        self.fake.script.append({"image": {}, "text": "Drawn."})
        chunks = list(client.chat.completions.create(model="gpt-5.5", tools=tools, stream=True,
                                                     messages=[{"role": "user", "content": PROMPT}]))
        images = [image for chunk in chunks for choice in chunk.choices
                  for image in (getattr(choice.delta, "images", None) or ())]
        self.assertEqual([image["image_url"]["url"] for image in images], ["data:image/png;base64," + drawn(1024, 1024)])

    def test_a_usage_limit_is_the_sdks_rate_limit_error(self):
        self.fake.script.append(usage_limit_reply(resets_in_seconds=7200))
        with self.assertRaises(openai.RateLimitError):
            self.sdk_client(openai.OpenAI, "/v1").images.generate(model="gpt-image-1", prompt="p")


if __name__ == "__main__":
    unittest.main()
