"""The Images API on a Codex login: POST /v1/images/generations, each image one /responses call
with the built-in image_generation tool, against a fake backend that draws real PNGs.

Run: python3 -m unittest tests.test_images -v
"""

import base64
import json
import socket
import time
import unittest

from fake_upstream import png, png_size, usage_limit_reply
from support import ProxyTestCase, optional_module, raw_request, sse_events, wait_for

openai = optional_module("openai")  # the core suite runs without it

GENERATIONS = "/v1/images/generations"


def drawn(width=1024, height=1024, colour=(40, 120, 200)):
    """The base64 the fake draws for a size (what the answer must carry, byte for byte)."""
    return base64.b64encode(png(width, height, colour)).decode("ascii")


class ImagesTestCase(ProxyTestCase):
    def image_calls(self):
        return [r.json for r in self.fake.requests_to("/backend-api/codex/responses")]


class GenerationsTest(ImagesTestCase):
    def test_one_image_is_one_call_with_the_image_tool_and_the_backends_bytes(self):
        answer = self.json_answer("POST", GENERATIONS, {"model": "gpt-image-1", "prompt": "a red boat at dawn",
                                                         "size": "1536x1024", "quality": "high"})
        self.assertIsInstance(answer["created"], int)
        [image] = answer["data"]
        self.assertEqual(image["b64_json"], drawn(1536, 1024))
        self.assertEqual(png_size(base64.b64decode(image["b64_json"])), (1536, 1024))
        self.assertEqual(image["revised_prompt"], "A drawing of: a red boat at dawn")
        self.assertEqual(answer["usage"], {"input_tokens": 12, "output_tokens": 7, "total_tokens": 19})
        [call] = self.image_calls()
        self.assertEqual(call["tools"], [{"type": "image_generation", "size": "1536x1024", "quality": "high"}])
        self.assertEqual(call["tool_choice"], {"type": "image_generation"})
        self.assertEqual(call["model"], "gpt-5.5")  # a chat model of the catalog draws; gpt-image-1 is not sent
        self.assertEqual(call["input"], [{"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "a red boat at dawn"}]}])

    def test_the_log_line_says_how_many_images_and_their_size_never_their_bytes(self):
        with self.assertLogs("codex_proxy", "INFO") as logs:
            answer = self.json_answer("POST", GENERATIONS, {"prompt": "p", "n": 2})
            # (The line is written once the answer has gone: the client may read it first.)
            self.assertTrue(wait_for(lambda: any("/v1/images/generations -> 200" in text for text in logs.output), 5))
        line = next(text for text in logs.output if "/v1/images/generations -> 200" in text)
        self.assertRegex(line, r" images 2 \(\d+ KB\)")
        self.assertNotIn(answer["data"][0]["b64_json"][:40], "\n".join(logs.output))

    def test_every_option_reaches_the_tool_unchanged(self):
        options = {"size": "1024x1536", "quality": "low", "background": "transparent", "output_format": "webp",
                   "output_compression": 80, "moderation": "low", "input_fidelity": "high"}
        self.json_answer("POST", "/images/generations", dict(options, prompt="p"))  # without /v1 too
        self.assertEqual(self.image_calls()[0]["tools"], [dict(options, type="image_generation")])

    def test_n_images_are_n_calls_at_once_in_order(self):
        self.fake.script.extend([{"image": {"colour": (255, 0, 0)}, "delay": 0.05},
                                 {"image": {"colour": (0, 255, 0)}}, {"image": {"colour": (0, 0, 255)}}])
        answer = self.json_answer("POST", GENERATIONS, {"prompt": "three", "n": 3})
        self.assertEqual(len(self.image_calls()), 3)
        # (The calls run at once, so which script entry each got is the fake's order of arrival.)
        self.assertEqual(sorted(image["b64_json"] for image in answer["data"]),
                         sorted(drawn(colour=c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))))
        self.assertEqual(answer["usage"]["total_tokens"], 3 * 19)

    def test_the_model_that_draws_is_the_image_model_setting(self):
        proxy = self.start_proxy(image_model="gpt-5.4")
        self.json_answer("POST", GENERATIONS, {"prompt": "p"}, proxy=proxy)
        self.assertEqual(self.image_calls()[0]["model"], "gpt-5.4")

    def test_a_minimal_effort_default_is_raised_for_the_image_tool(self):
        proxy = self.start_proxy(fast="1")
        self.json_answer("POST", GENERATIONS, {"prompt": "p"}, proxy=proxy)
        self.assertEqual(self.image_calls()[0]["reasoning"], {"effort": "low"})
        # The same wherever the image tool goes upstream; without it the default stays (gpt-5.4 has minimal).
        self.json_answer("POST", "/v1/responses", {"model": "gpt-5.4", "input": "draw",
                                                   "tools": [{"type": "image_generation"}]}, proxy=proxy)
        self.json_answer("POST", "/v1/responses", {"model": "gpt-5.4", "input": "talk"}, proxy=proxy)
        self.assertEqual([call.get("reasoning") for call in self.image_calls()[1:]],
                         [{"effort": "low"}, {"effort": "minimal"}])

    def test_refusals_before_any_call(self):
        cases = [({"prompt": "p", "response_format": "url"}, "response_format", "b64_json"),
                 ({"model": "gpt-image-1"}, "prompt", "prompt is required"),
                 ({"prompt": "  "}, "prompt", "prompt is required"),
                 ({"prompt": "p", "n": 11}, "n", "n must be from 1 to 10"),
                 ({"prompt": "p", "n": "2"}, "n", "n"),
                 ({"prompt": "p", "size": 1024}, "size", "size")]
        for body, param, words in cases:
            status, headers, answer = self.json_request("POST", GENERATIONS, body)
            self.assertEqual(status, 400, (body, answer))
            self.assertEqual(answer["error"]["param"], param, answer)
            self.assertIn(words, answer["error"]["message"])
        self.assertEqual(self.image_calls(), [])
        self.assertEqual(self.json_answer("POST", GENERATIONS, {"prompt": "p", "response_format": "b64_json"})
                         ["data"][0]["b64_json"], drawn())

    def test_backend_errors_in_the_openai_shape(self):
        status, _, answer = self.json_request("POST", GENERATIONS, {"prompt": "p", "size": "999x999"})
        self.assertEqual(status, 400, answer)
        self.assertIn("Invalid value: '999x999'", answer["error"]["message"])
        self.fake.script.append({"image": {"fail": {"code": "moderation_blocked",
                                                    "message": "Your request was rejected by the safety system."}}})
        status, _, answer = self.json_request("POST", GENERATIONS, {"prompt": "p"})
        self.assertEqual(status, 400, answer)
        self.assertEqual(answer["error"]["code"], "moderation_blocked")
        self.assertEqual(answer["error"]["message"], "Your request was rejected by the safety system.")
        self.fake.script.append(usage_limit_reply(resets_in_seconds=30))
        status, headers, answer = self.json_request("POST", GENERATIONS, {"prompt": "p"})
        self.assertEqual(status, 429, answer)
        self.assertIn("retry-after", headers)

    def test_one_failed_call_of_n_fails_the_request(self):
        self.fake.script.extend([{"image": {}}, {"image": {"fail": {"code": "moderation_blocked", "message": "No."}}}])
        status, _, answer = self.json_request("POST", GENERATIONS, {"prompt": "p", "n": 2})
        self.assertEqual((status, answer["error"]["code"]), (400, "moderation_blocked"))


EDITS = "/v1/images/edits"


def form(fields, files):
    """(multipart/form-data body, its Content-Type): text fields, then (name, filename, bytes) files."""
    boundary = "codexproxytestboundary7MA4YWxk"
    chunks = []
    for name, value in fields.items():
        chunks.append(('--%s\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n'
                       % (boundary, name, value)).encode())
    for name, filename, data in files:
        chunks.append(('--%s\r\nContent-Disposition: form-data; name="%s"; filename="%s"\r\n'
                       "Content-Type: application/octet-stream\r\n\r\n" % (boundary, name, filename)).encode()
                      + data + b"\r\n")
    chunks.append(("--%s--\r\n" % boundary).encode())
    return b"".join(chunks), "multipart/form-data; boundary=" + boundary


def data_url(data, kind="image/png"):
    return "data:%s;base64,%s" % (kind, base64.b64encode(data).decode("ascii"))


class EditsTest(ImagesTestCase):
    def edit(self, fields, files, proxy=None):
        body, content_type = form(fields, files)
        return self.json_request("POST", EDITS, body, {"Content-Type": content_type}, proxy)

    def test_an_edit_sends_the_images_in_order_and_the_mask_to_the_tool(self):
        first, second, mask = png(64, 32, (1, 2, 3)), png(8, 8, (9, 9, 9)), png(64, 32, (0, 0, 0))
        status, _, answer = self.edit({"prompt": "make it blue", "model": "gpt-image-1", "size": "1024x1024",
                                       "n": "1", "input_fidelity": "high"},
                                      [("image[]", "a.png", first), ("image[]", "b.png", second),
                                       ("mask", "mask.png", mask)])
        self.assertEqual(status, 200, answer)
        self.assertEqual(answer["data"][0]["b64_json"], drawn(64, 32))  # the fake draws at the first input's size
        [call] = self.image_calls()
        self.assertEqual(call["input"][0]["content"], [
            {"type": "input_text", "text": "make it blue"},
            {"type": "input_image", "image_url": data_url(first)},
            {"type": "input_image", "image_url": data_url(second)}])
        self.assertEqual(call["tools"], [{"type": "image_generation", "size": "1024x1024", "input_fidelity": "high",
                                          "input_image_mask": {"image_url": data_url(mask)}}])

    def test_one_image_and_its_type_from_its_bytes(self):
        jpeg = b"\xff\xd8\xff\xe0" + b"\x00" * 40
        status, _, answer = self.edit({"prompt": "p"}, [("image", "photo.bin", jpeg)])
        self.assertEqual(status, 200, answer)
        self.assertEqual(self.image_calls()[0]["input"][0]["content"][1]["image_url"], data_url(jpeg, "image/jpeg"))

    def test_bad_forms_are_400s_naming_what_is_wrong(self):
        picture = png(4, 4)
        cases = [({"prompt": "p"}, [], "image", "image is required"),
                 ({"prompt": "p"}, [("image", "x.txt", b"not an image")], "image", "not a PNG"),
                 ({"prompt": "p", "n": "two"}, [("image", "a.png", picture)], "n", "whole number"),
                 ({"prompt": "p", "stream": "maybe"}, [("image", "a.png", picture)], "stream", "true or false"),
                 ({}, [("image", "a.png", picture)], "prompt", "prompt is required"),
                 ({"prompt": "p"}, [("image", "a.png", picture), ("mask", "m.png", picture),
                                    ("mask", "n.png", picture)], "mask", "one file")]
        for fields, files, param, words in cases:
            status, _, answer = self.edit(fields, files)
            self.assertEqual(status, 400, (fields, answer))
            self.assertEqual(answer["error"]["param"], param, answer)
            self.assertIn(words, answer["error"]["message"])
        status, _, answer = self.json_request("POST", EDITS, b"--x\r\n", {"Content-Type": "multipart/form-data"})
        self.assertEqual(status, 400, answer)
        self.assertIn("boundary", answer["error"]["message"])
        self.assertEqual(self.image_calls(), [])

    def test_a_streamed_edit_has_image_edit_events(self):
        body, content_type = form({"prompt": "p", "stream": "true", "partial_images": "1"}, [("image", "a.png", png(16, 16))])
        status, headers, raw = self.request("POST", EDITS, body, {"Content-Type": content_type})
        self.assertEqual(status, 200, raw)
        kinds = [name for name, _ in sse_events(raw, json.loads)]
        self.assertEqual(kinds, ["image_edit.partial_image", "image_edit.completed"])


class ApiKeyImagesTest(ImagesTestCase):
    def test_api_key_mode_asks_the_apis_own_images_api(self):
        proxy = self.start_proxy(openai_api_key="sk-test-key", auth="apikey")
        body = {"model": "gpt-image-1", "prompt": "p", "size": "1024x1536", "n": 2}
        answer = self.json_answer("POST", GENERATIONS, body, proxy=proxy)
        self.assertEqual([image["b64_json"] for image in answer["data"]], [drawn(1024, 1536)] * 2)
        [sent] = self.fake.requests_to("/v1/images/generations")
        self.assertEqual(sent.json, body)  # as it came: the API has the image models
        self.assertEqual(self.image_calls(), [])

    def test_api_key_mode_edits_through_the_apis_responses(self):
        proxy = self.start_proxy(openai_api_key="sk-test-key", auth="apikey")
        body, content_type = form({"prompt": "p"}, [("image", "a.png", png(16, 8))])
        status, _, answer = self.json_request("POST", EDITS, body, {"Content-Type": content_type}, proxy)
        self.assertEqual(status, 200, answer)
        self.assertEqual(answer["data"][0]["b64_json"], drawn(16, 8))
        [sent] = self.fake.requests_to("/v1/responses")
        self.assertEqual(sent.json["tool_choice"], {"type": "image_generation"})
        self.assertEqual(sent.json["model"], "gpt-5")  # the API's newest gpt model draws


class StreamedGenerationsTest(ImagesTestCase):
    config_overrides = {"heartbeat_interval": 0.2}

    def test_partial_images_then_the_image(self):
        status, events, raw = self.sse_request(GENERATIONS, {"prompt": "p", "stream": True, "partial_images": 2,
                                                             "size": "1024x1536"})
        self.assertEqual(status, 200, raw)
        kinds = [name for name, _ in events]
        self.assertEqual(kinds, ["image_generation.partial_image"] * 2 + ["image_generation.completed"])
        partials = [data for _, data in events[:2]]
        self.assertEqual([p["partial_image_index"] for p in partials], [0, 1])
        self.assertEqual(png_size(base64.b64decode(partials[0]["b64_json"])), (1024, 1536))
        done = events[-1][1]
        self.assertEqual(done["b64_json"], drawn(1024, 1536))
        self.assertEqual((done["size"], done["output_format"]), ("1024x1536", "png"))
        self.assertEqual(done["usage"], {"input_tokens": 12, "output_tokens": 7, "total_tokens": 19})
        self.assertIsInstance(done["created_at"], int)

    def test_without_partial_images_only_the_image(self):
        _, events, _ = self.sse_request(GENERATIONS, {"prompt": "p", "stream": True})
        self.assertEqual([name for name, _ in events], ["image_generation.completed"])

    def test_a_failure_is_an_error_event(self):
        self.fake.script.append({"image": {"fail": {"code": "moderation_blocked", "message": "No."}}})
        _, events, _ = self.sse_request(GENERATIONS, {"prompt": "p", "stream": True})
        self.assertEqual(events[-1][1]["error"]["code"], "moderation_blocked")

    def test_a_slow_image_keeps_its_stream_alive_and_its_json_clean(self):
        self.fake.script.append({"image": {}, "stall": 1.0})
        status, _, raw = self.request("POST", GENERATIONS, {"prompt": "p", "stream": True})
        self.assertEqual(status, 200)
        self.assertIn(b": keep-alive", raw)
        self.fake.script.append({"image": {}, "stall": 1.0})
        status, _, raw = self.request("POST", GENERATIONS, {"prompt": "p"})
        self.assertEqual(json.loads(raw)["data"][0]["b64_json"], drawn())  # nothing but the JSON


class DrawingTimeoutTest(ImagesTestCase):
    def test_a_drawing_may_be_silent_for_the_image_timeout_not_the_idle_one(self):
        proxy = self.start_proxy(upstream_idle_timeout=0.3, image_timeout=5)
        self.fake.script.append({"image": {}, "stall": 1.0})
        self.json_answer("POST", GENERATIONS, {"prompt": "p"}, proxy=proxy)
        proxy = self.start_proxy(upstream_idle_timeout=5, image_timeout=0.3)
        self.fake.script.append({"image": {}, "stall": 2.0})
        started = time.monotonic()
        with self.assertLogs("codex_proxy", "WARNING") as logs:
            status, _, answer = self.json_request("POST", GENERATIONS, {"prompt": "p"}, proxy=proxy)
        self.assertEqual((status, answer["error"]["code"]), (502, "stream_interrupted"), answer)
        self.assertLess(time.monotonic() - started, 1.9)  # ended by the image timeout, not the stall's end
        self.assertIn("sent nothing for too long (--image-timeout)", "\n".join(logs.output))


class ClientGoneTest(ImagesTestCase):
    def test_a_client_that_leaves_closes_every_call_of_its_request(self):
        for stream in (False, True):
            with self.subTest(stream=stream):
                self.fake.reset()
                self.fake.script.extend([{"image": {}, "stall": 5.0}] * 2)
                sock = socket.create_connection(("127.0.0.1", self.proxy.port), timeout=5)
                self.addCleanup(sock.close)
                sock.sendall(raw_request(GENERATIONS, {"prompt": "p", "n": 2, "stream": stream}))
                self.assertTrue(wait_for(lambda: len(self.image_calls()) == 2, 3))
                time.sleep(0.3)
                sock.close()
                self.assertTrue(wait_for(lambda: self.proxy.app.upstream.streams() == 0, 3),
                                "an image call went on drawing after its client left")


@unittest.skipIf(openai is None, "the openai package is not installed (CI installs it)")
class OpenAISDKImagesTest(ImagesTestCase):
    def client(self):
        return self.sdk_client(openai.OpenAI, "/v1")

    def test_images_generate(self):
        image = self.client().images.generate(model="gpt-image-1", prompt="a lighthouse", size="1024x1024")
        self.assertEqual(base64.b64decode(image.data[0].b64_json), png(1024, 1024))
        self.assertEqual(image.usage.total_tokens, 19)

    def test_images_generate_n_2(self):
        images = self.client().images.generate(model="gpt-image-1", prompt="two", n=2)
        self.assertEqual([base64.b64decode(i.b64_json) for i in images.data], [png(1024, 1024)] * 2)

    def test_images_generate_streamed_with_partial_images(self):
        stream = self.client().images.generate(model="gpt-image-1", prompt="p", stream=True, partial_images=2)
        events = list(stream)
        self.assertEqual([e.type for e in events], ["image_generation.partial_image"] * 2 + ["image_generation.completed"])
        self.assertEqual(base64.b64decode(events[-1].b64_json), png(1024, 1024))

    def test_images_edit_one_image_two_images_and_a_mask(self):
        client = self.client()
        one = client.images.edit(model="gpt-image-1", image=("a.png", png(32, 32), "image/png"), prompt="bluer")
        self.assertEqual(base64.b64decode(one.data[0].b64_json), png(32, 32))
        two = client.images.edit(model="gpt-image-1", image=[png(24, 12), png(8, 8)], mask=png(24, 12), prompt="p")
        self.assertEqual(png_size(base64.b64decode(two.data[0].b64_json)), (24, 12))
        last = self.image_calls()[-1]
        self.assertEqual([part["type"] for part in last["input"][0]["content"]],
                         ["input_text", "input_image", "input_image"])
        self.assertIn("input_image_mask", last["tools"][0])
        stream = client.images.edit(image=png(16, 16), prompt="p", stream=True, partial_images=1)
        self.assertEqual([event.type for event in stream], ["image_edit.partial_image", "image_edit.completed"])

    def test_response_format_url_and_moderation_are_api_errors(self):
        with self.assertRaises(openai.BadRequestError) as caught:
            self.client().images.generate(prompt="p", response_format="url")
        self.assertIn("b64_json", str(caught.exception))
        self.fake.script.append({"image": {"fail": {"code": "moderation_blocked", "message": "No."}}})
        with self.assertRaises(openai.BadRequestError) as caught:
            self.client().images.generate(prompt="p")
        self.assertEqual(caught.exception.code, "moderation_blocked")
        self.fake.script.append({"image": {"fail": {"code": "moderation_blocked", "message": "No."}}})
        with self.assertRaises(openai.APIError):
            list(self.client().images.generate(prompt="p", stream=True))


if __name__ == "__main__":
    unittest.main()
