"""The Codex CLI's own model catalog: GET /v1/models?client_version=X (as Codex asks when it
holds a ChatGPT login) answers {"models": [...]} in the shape Codex decodes, while /v1/models
with no client_version stays the OpenAI list.

Run: python3 -m unittest tests.test_codex_catalog -v
"""

import unittest

import codex_proxy
from support import ProxyTestCase
from fake_upstream import default_catalog

# The fields Codex CLI 0.169 cannot decode a catalog entry without (found by taking each key
# out of a full entry in turn and watching `codex debug models` fall back to its bundled list).
CODEX_REQUIRED = {"slug", "display_name", "priority", "shell_type", "visibility", "supported_in_api",
                  "supported_reasoning_levels", "support_verbosity", "truncation_policy",
                  "experimental_supported_tools"}
NOT_SERVED = {"use_responses_lite", "upgrade", "availability_nux", "model_messages",
              "multi_agent_version", "auto_review_model_override", "additional_speed_tiers", "service_tiers",
              "default_service_tier", "service_tier"}


class CodexCatalogTest(ProxyTestCase):
    def test_the_codex_shape_is_the_backends_entries_without_what_the_proxy_does_not_serve(self):
        backend = default_catalog()["models"]
        self.assertTrue(NOT_SERVED & set(backend[0]), "the fake's gpt-5.5 should carry keys to leave out")
        for path in ("/v1/models?client_version=0.169.0", "/models?client_version=0.169.0"):
            status, _, payload = self.json_request("GET", path)
            self.assertEqual(status, 200, payload)
            self.assertEqual(list(payload), ["models"])
            # Every entry, hidden ones too, in the backend's order, each as the backend gave it
            # but for the keys of transports and features the proxy does not serve.
            self.assertEqual(payload["models"], [{k: v for k, v in m.items() if k not in NOT_SERVED}
                                                 for m in backend])
            for entry in payload["models"]:
                self.assertFalse(NOT_SERVED & set(entry), entry["slug"])
                self.assertLessEqual(CODEX_REQUIRED, set(entry), entry["slug"])

    def test_without_client_version_the_openai_list_is_unchanged(self):
        status, _, payload = self.json_request("GET", "/v1/models")
        self.assertEqual(status, 200, payload)
        self.assertEqual(payload["object"], "list")
        self.assertEqual([m["id"] for m in payload["data"]], ["gpt-5.5", "gpt-5.4", "gpt-5.5-mini"])
        status, _, payload = self.json_request("GET", "/v1/models?limit=5")
        self.assertEqual((status, payload["object"]), (200, "list"))

    def test_one_backend_fetch_serves_both_shapes(self):
        self.json_request("GET", "/v1/models")
        self.json_request("GET", "/v1/models?client_version=0.169.0")
        self.assertEqual(len(self.fake.requests_to("/backend-api/codex/models")), 1)

    def test_api_key_mode_builds_the_shape_from_the_apis_chat_models(self):
        api = self.start_proxy(openai_api_key="sk-test-key", auth="apikey")
        status, _, payload = self.json_request("GET", "/v1/models?client_version=0.169.0", proxy=api)
        self.assertEqual(status, 200, payload)
        entries = payload["models"]
        self.assertEqual([m["slug"] for m in entries], ["gpt-4.1", "gpt-4.1-mini", "gpt-4o", "gpt-5"])
        self.assertEqual([m["priority"] for m in entries], [1, 2, 3, 4])
        for entry in entries:
            self.assertLessEqual(CODEX_REQUIRED, set(entry), entry)
            self.assertNotIn("base_instructions", entry)  # Codex keeps its own prompt
        gpt5 = entries[-1]
        self.assertEqual([level["effort"] for level in gpt5["supported_reasoning_levels"]], ["low", "medium", "high"])
        self.assertEqual(entries[0]["supported_reasoning_levels"], [])


class ApiChatModelTest(unittest.TestCase):
    def test_which_api_models_a_chat_client_is_offered(self):
        offered = ["gpt-5", "gpt-4.1-mini", "o3", "o4-mini", "codex-mini-latest", "chatgpt-4o-latest"]
        not_offered = ["text-embedding-3-small", "gpt-4o-audio-preview", "gpt-4o-realtime-preview", "tts-1",
                       "whisper-1", "dall-e-3", "gpt-image-1", "gpt-4o-mini-transcribe", "omni-moderation-latest",
                       "gpt-4o-search-preview", "babbage-002", "", None]
        for slug in offered:
            self.assertTrue(codex_proxy.is_api_chat_model(slug), slug)
        for slug in not_offered:
            self.assertFalse(codex_proxy.is_api_chat_model(slug), slug)


if __name__ == "__main__":
    unittest.main()
