"""Real clients end to end: Claude Code (`claude -p`) and the Codex CLI (`codex exec`)
run as subprocesses against the running proxy and the strict fake backend.

The fake answers the first turn with a tool call that writes a file in the client's
working directory; the client runs the tool and sends its result back; the fake then
finishes with text. So each test proves the whole loop: the client's request is
translated, the tool call reaches the client in a shape it accepts, and the tool result
comes back with the same call id.

The CLIs come from npm (`@anthropic-ai/claude-code`, `@openai/codex`): `.ci/run` installs
them and sets CODEX_PROXY_CLIENTS_DIR to the npm prefix; otherwise they are looked up on
PATH. Where a CLI is missing these tests skip, saying why; with
CODEX_PROXY_REQUIRE_OPTIONAL=1 (as in CI) a missing CLI is a failure.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # also as `-m unittest tests.test_real_clients`
from fake_upstream import default_catalog, fake_id_token, usage_limit_reply  # noqa: E402
from support import SCRIPT, DumpDirTestCase, ProxyTestCase, closed_port, wait_for  # noqa: E402

REQUIRE = bool(os.environ.get("CODEX_PROXY_REQUIRE_OPTIONAL"))
CLIENTS_DIR = os.environ.get("CODEX_PROXY_CLIENTS_DIR")
PACKAGES = {"claude": "@anthropic-ai/claude-code", "codex": "@openai/codex"}
RUN_TIMEOUT = 60  # seconds per CLI run; a run takes about half a second
LOCAL_KEY = "local-proxy-key"  # the proxy runs with --api-key: the clients must present it
DONE_TEXT = "All done: wrote hello.txt"
FILE_TEXT = "hello from the proxy\n"
# The freeform input of Codex CLI's apply_patch (its lark grammar: begin_patch hunk+ end_patch).
APPLY_PATCH_INPUT = "*** Begin Patch\n*** Add File: hello.txt\n+hello from the fake\n*** End Patch\n"
PATCHED_TEXT = "hello from the fake\n"


def find_cli(name):
    """Path of an installed CLI: $CODEX_PROXY_CLIENTS_DIR/node_modules/.bin/NAME, else PATH."""
    if CLIENTS_DIR:
        path = os.path.join(CLIENTS_DIR, "node_modules", ".bin", name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return shutil.which(name)


def require_cli(name):
    path = find_cli(name)
    if path:
        return path
    where = ("%s/node_modules/.bin" % CLIENTS_DIR) if CLIENTS_DIR else "PATH"
    reason = ("%s not found in %s (npm install --prefix DIR %s, then set CODEX_PROXY_CLIENTS_DIR=DIR)"
              % (name, where, PACKAGES[name]))
    if REQUIRE:
        raise AssertionError("CODEX_PROXY_REQUIRE_OPTIONAL is set but " + reason)
    raise unittest.SkipTest(reason)


def input_items(body, kind):
    return [item for item in body.get("input") or () if isinstance(item, dict) and item.get("type") == kind]


def response_id(dump):
    """The id of the response answered in an exchange written to --dump-dir (its response.created)."""
    return re.search(r'"response":\s*\{"id":\s*"(resp_\w+)"', dump["answer"]).group(1)


def tool_names(body):
    return [tool.get("name") for tool in body.get("tools") or () if isinstance(tool, dict)]


class RealClientTestCase(ProxyTestCase):
    """A fake scripted by `self.answer(request) -> reply`, a throwaway HOME and working directory."""

    cli = None  # "claude" or "codex"
    config_overrides = {"api_key": LOCAL_KEY}

    def setUp(self):
        self.cli_path = require_cli(self.cli)  # before the fake and the proxy start
        ProxyTestCase.setUp(self)
        self.root = tempfile.mkdtemp(prefix="codex-proxy-%s-" % self.cli)
        self.addCleanup(shutil.rmtree, self.root, True)
        self.client_home = os.path.join(self.root, "home")
        self.cwd = os.path.join(self.root, "work")
        self.tmp = os.path.join(self.root, "tmp")
        for folder in (self.client_home, self.cwd, self.tmp):
            os.mkdir(folder)
        self.issued = []  # call ids of the tool calls the fake sent
        # Every upstream request gets the callback (the script pops one entry per request).
        self.fake.script.extend([{"callback": self._answer}] * 100)

    def _answer(self, body):
        reply = self.answer(body)
        for call in reply.get("tool_calls") or ():
            self.issued.append(call["call_id"])
        return reply

    def answer(self, body):
        raise NotImplementedError

    def upstream_bodies(self):
        return [r.json for r in self.fake.requests_to("/responses")]

    def base_env(self):
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": self.client_home, "TMPDIR": self.tmp,
                "LANG": "C.UTF-8", "NO_COLOR": "1"}

    def run_cli(self, args, env, timeout=RUN_TIMEOUT, command=None):
        # Its own process group: `codex` is a node wrapper around the native binary, and
        # on a timeout both must go (a surviving child would hold the output pipes open).
        started = time.monotonic()
        proc = subprocess.Popen((command or [self.cli_path]) + args, cwd=self.cwd, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        self.group = proc.pid
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            self.fail("%s did not finish within %s s\nstdout: %s\nstderr: %s\nupstream requests: %d" % (
                self.cli, timeout, out.decode("utf-8", "replace")[-2000:], err.decode("utf-8", "replace")[-2000:],
                len(self.upstream_bodies())))
        self.elapsed = time.monotonic() - started
        self.stdout = out.decode("utf-8", "replace")
        self.stderr = err.decode("utf-8", "replace")
        self.returncode = proc.returncode

    def details(self):
        return "exit %s\nstdout: %s\nstderr: %s" % (self.returncode, self.stdout[-3000:], self.stderr[-3000:])

    def assert_succeeded(self):
        self.assertEqual(self.returncode, 0, self.details())

    def assert_file(self, name, content):
        path = os.path.join(self.cwd, name)
        self.assertTrue(os.path.isfile(path), "%s was not written\n%s" % (name, self.details()))
        with open(path, encoding="utf-8") as handle:
            self.assertEqual(handle.read(), content)

    def assert_outputs_answer_calls(self):
        """The last upstream request carries a function_call_output for every call the fake issued."""
        self.assertTrue(self.issued, "the fake never issued a tool call")
        last = self.upstream_bodies()[-1]
        calls = [item.get("call_id") for item in input_items(last, "function_call")]
        outputs = [item.get("call_id") for item in input_items(last, "function_call_output")]
        self.assertEqual(sorted(outputs), sorted(self.issued), json.dumps(last.get("input"))[-3000:])
        self.assertEqual(sorted(calls), sorted(self.issued))
        return {item["call_id"]: item.get("output") for item in input_items(last, "function_call_output")}


# ---------------------------------------------------------------------------
# Claude Code

class ClaudeCodeTests(RealClientTestCase):
    cli = "claude"

    def claude_env(self, **extra):
        env = self.base_env()
        env.update({
            "ANTHROPIC_BASE_URL": "http://127.0.0.1:%d" % self.proxy.port,
            "ANTHROPIC_AUTH_TOKEN": LOCAL_KEY,
            # No traffic but to the proxy (the machine may have no internet at all).
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_AUTOUPDATER": "1",
            "DISABLE_TELEMETRY": "1", "DISABLE_ERROR_REPORTING": "1",
        })
        env.update(extra)
        return env

    def claude(self, prompt, tools=(), env=None, extra_args=(), timeout=RUN_TIMEOUT):
        # --allowedTools rather than --dangerously-skip-permissions, which refuses to run as root.
        args = ["-p", prompt] + list(extra_args)
        if tools:
            args += ["--allowedTools", ",".join(tools)]
        return self.run_cli(args, env if env is not None else self.claude_env(), timeout)

    def write_call(self, call_id="call_write_1", name="hello.txt", content=FILE_TEXT):
        return {"name": "Write", "call_id": call_id,
                "arguments": json.dumps({"file_path": os.path.join(self.cwd, name), "content": content})}

    def answer(self, body):
        """Write with the first turn (with reasoning, to see it replayed), text once the result is in."""
        if input_items(body, "function_call_output"):
            return {"text": DONE_TEXT}
        if "Write" in tool_names(body):
            return {"reasoning": "The user wants hello.txt.", "tool_calls": [self.write_call()]}
        return {"text": "Untitled"}  # any side request (titles, topics) gets plain text

    def test_no_login_ends_at_once_with_the_proxys_message(self):
        # Without x-should-retry: false on the 401, Claude Code retries for minutes, printing nothing.
        os.remove(os.path.join(self.home, "auth.json"))
        self.claude("hi", timeout=20)
        self.assertNotEqual(self.returncode, 0, self.details())
        self.assertIn("codex_proxy.py login", self.stdout + self.stderr, self.details())
        self.assertEqual(self.upstream_bodies(), [])

    def test_write_tool_round_trip(self):
        self.claude("Create hello.txt saying hello", tools=["Write"])
        self.assert_succeeded()
        self.assert_file("hello.txt", FILE_TEXT)
        self.assertIn(DONE_TEXT, self.stdout)
        outputs = self.assert_outputs_answer_calls()
        self.assertIn("hello.txt", outputs["call_write_1"])
        first, last = self.upstream_bodies()[0], self.upstream_bodies()[-1]
        # Claude Code's own model name was mapped to the account's default model...
        self.assertEqual(first["model"], "gpt-5.5")
        self.assertIn("Write", tool_names(first))
        # ...its tools were sent as flat, non-strict functions...
        write = [t for t in first["tools"] if t.get("name") == "Write"][0]
        self.assertEqual((write["type"], write["strict"]), ("function", False))
        self.assertIn("file_path", write["parameters"]["properties"])
        # ...and the thinking block (signature = encrypted reasoning) came back on the next turn.
        replayed = input_items(last, "reasoning")
        self.assertEqual(len(replayed), 1, json.dumps(last["input"])[-2000:])
        self.assertTrue(replayed[0]["encrypted_content"].startswith("enc-"))
        # One conversation, one upstream prompt cache.
        self.assertEqual(first["prompt_cache_key"], last["prompt_cache_key"])

    def test_parallel_bash_and_write_configured_in_settings_json(self):
        """Two tool calls in one turn; the proxy configured in ~/.claude/settings.json (README recipe)."""
        settings = os.path.join(self.client_home, ".claude", "settings.json")
        os.makedirs(os.path.dirname(settings))
        with open(settings, "w") as handle:
            json.dump({"env": {"ANTHROPIC_BASE_URL": "http://127.0.0.1:%d" % self.proxy.port,
                               "ANTHROPIC_AUTH_TOKEN": LOCAL_KEY}}, handle)
        env = self.claude_env()
        del env["ANTHROPIC_BASE_URL"], env["ANTHROPIC_AUTH_TOKEN"]
        bash = {"name": "Bash", "call_id": "call_bash_1", "arguments": json.dumps({
            "command": "printf 'from bash\\n' > bash.txt && echo BASH-RAN", "description": "Write bash.txt"})}

        def answer(body):
            if input_items(body, "function_call_output"):
                return {"text": "Both done."}
            if {"Bash", "Write"} <= set(tool_names(body)):
                return {"text": "Writing both files.", "tool_calls": [bash, self.write_call("call_write_2")]}
            return {"text": "Untitled"}
        self.answer = answer
        self.claude("Write the two files", tools=["Bash", "Write"], env=env)
        self.assert_succeeded()
        self.assert_file("bash.txt", "from bash\n")
        self.assert_file("hello.txt", FILE_TEXT)
        self.assertIn("Both done.", self.stdout)
        outputs = self.assert_outputs_answer_calls()
        self.assertIn("BASH-RAN", outputs["call_bash_1"])

    def test_web_search_tool(self):
        """Claude Code defers WebSearch behind ToolSearch; once loaded, it asks the API for its
        web_search server tool in a nested request."""
        def answer(body):
            outputs = input_items(body, "function_call_output")
            if [t.get("type") for t in body.get("tools") or []] == ["web_search"]:  # the nested search
                return {"web_search": {"query": "latest python release"},
                        "text": "Python 3.14 is the latest release."}
            if not outputs and "ToolSearch" in tool_names(body):  # load the deferred tool first
                return {"tool_calls": [{"name": "ToolSearch", "call_id": "call_load_1", "arguments": json.dumps(
                    {"query": "select:WebSearch", "max_results": 1})}]}
            if len(outputs) == 1 and "WebSearch" in tool_names(body):
                return {"tool_calls": [{"name": "WebSearch", "call_id": "call_search_1",
                                        "arguments": json.dumps({"query": "latest python release"})}]}
            if outputs:
                return {"text": "Search finished."}
            return {"text": "Untitled"}
        self.answer = answer
        self.claude("What is the latest Python?", tools=["WebSearch", "ToolSearch"])
        self.assert_succeeded()
        self.assertIn("Search finished.", self.stdout)
        outputs = self.assert_outputs_answer_calls()
        self.assertIn("WebSearch", outputs["call_load_1"])  # the tool_reference, as text
        self.assertIn("Python 3.14 is the latest release.", outputs["call_search_1"])
        nested = [b for b in self.upstream_bodies() if [t.get("type") for t in b.get("tools") or []] == ["web_search"]]
        self.assertEqual(len(nested), 1)

    def test_model_aliases(self):
        """`--model haiku` goes to a small model of the catalog, or where ANTHROPIC_DEFAULT_HAIKU_MODEL points."""
        self.answer = lambda body: {"text": "model " + body["model"]}
        self.claude("Hi", extra_args=["--model", "haiku"])
        self.assert_succeeded()
        self.assertIn("model gpt-5.5-mini", self.stdout)
        self.claude("Hi", extra_args=["--model", "haiku"], env=self.claude_env(ANTHROPIC_DEFAULT_HAIKU_MODEL="gpt-5.4"))
        self.assert_succeeded()
        self.assertIn("model gpt-5.4", self.stdout)
        self.assertEqual([b["model"] for b in self.upstream_bodies()], ["gpt-5.5-mini", "gpt-5.4"])

    def test_usage_limit_ends_the_run_with_the_reason(self):
        # (Claude Code retries a 429 whose Retry-After is short, and gives up at once
        # on one that is hours away, as a usage limit's reset usually is.)
        self.answer = lambda body: usage_limit_reply(resets_in_seconds=3 * 3600)
        self.claude("Hi", timeout=30)
        self.assertNotEqual(self.returncode, 0, self.details())
        self.assertIn("usage limit", (self.stdout + self.stderr).lower(), self.details())
        self.assertEqual(len(self.upstream_bodies()), 1, "Claude Code retried a usage limit")


# ---------------------------------------------------------------------------
# Codex CLI

CODEX_CONFIG = """\
model = "gpt-5.5"
model_provider = "codex-proxy"

[model_providers.codex-proxy]
name = "codex-proxy"
base_url = "http://127.0.0.1:%(port)d/v1"
wire_api = "responses"
env_key = "CODEX_PROXY_API_KEY"

[analytics]
enabled = false
"""


class CodexCLITestCase(RealClientTestCase):
    """The Codex CLI in a throwaway CODEX_HOME whose config.toml points at the proxy."""

    cli = "codex"

    def setUp(self):
        RealClientTestCase.setUp(self)
        self.codex_home = os.path.join(self.client_home, ".codex")
        os.mkdir(self.codex_home)
        with open(os.path.join(self.codex_home, "config.toml"), "w") as handle:
            handle.write(CODEX_CONFIG % {"port": self.proxy.port})

    def codex(self, prompt, timeout=RUN_TIMEOUT):
        env = self.base_env()
        env.update({"CODEX_HOME": self.codex_home, "CODEX_PROXY_API_KEY": LOCAL_KEY})
        # No sandbox: bubblewrap may not work in CI containers, and the command only writes in cwd.
        return self.run_cli(["exec", "--strict-config", "--skip-git-repo-check", "--ephemeral",
                             "--dangerously-bypass-approvals-and-sandbox", "--color", "never", prompt],
                            env, timeout)

    def answer(self, body):
        if input_items(body, "function_call_output"):
            return {"text": DONE_TEXT}
        if "exec_command" in tool_names(body):
            return {"reasoning": "Write the file with printf.", "tool_calls": [{
                "name": "exec_command", "call_id": "call_exec_1",
                "arguments": json.dumps({"cmd": "printf 'hello from the proxy\\n' > hello.txt && echo EXEC-RAN"})}]}
        if "shell" in tool_names(body):  # older Codex CLIs
            return {"tool_calls": [{"name": "shell", "call_id": "call_exec_1", "arguments": json.dumps({
                "command": ["bash", "-c", "printf 'hello from the proxy\\n' > hello.txt && echo EXEC-RAN"]})}]}
        return {"text": "Untitled"}


class CodexCLITests(CodexCLITestCase):
    def test_exec_command_round_trip_over_v1_responses(self):
        self.codex("Create hello.txt saying hello")
        self.assert_succeeded()
        self.assert_file("hello.txt", FILE_TEXT)
        self.assertIn(DONE_TEXT, self.stdout)
        outputs = self.assert_outputs_answer_calls()
        self.assertIn("EXEC-RAN", outputs["call_exec_1"])
        requests = self.fake.requests_to("/responses")
        first, last = requests[0].json, requests[-1].json
        # The CLI's own Responses request went through /v1/responses: its developer
        # prompt, its tools (the freeform apply_patch among them) and metadata arrived.
        developer = [m for m in input_items(first, "message") if m.get("role") == "developer"]
        self.assertTrue(any("Codex" in json.dumps(m) for m in developer))
        self.assertIn("apply_patch", tool_names(first))
        self.assertIn("custom", [t.get("type") for t in first["tools"]])
        self.assertIn("thread_id", first.get("client_metadata") or {})
        self.assertEqual(first["model"], "gpt-5.5")
        # Its session header reached the backend, as the prompt cache key.
        self.assertEqual(requests[0].headers.get("session_id"), first["prompt_cache_key"])
        self.assertEqual(first["prompt_cache_key"], last["prompt_cache_key"])
        # Reasoning with encrypted content was replayed on the second turn.
        replayed = input_items(last, "reasoning")
        self.assertEqual(len(replayed), 1)
        self.assertTrue(replayed[0]["encrypted_content"].startswith("enc-"))

    def test_apply_patch_round_trip_over_v1_responses(self):
        """The freeform apply_patch tool: a custom_tool_call streamed through /v1/responses,
        applied by the CLI, its custom_tool_call_output sent back."""
        def answer(body):
            if input_items(body, "custom_tool_call_output"):
                return {"text": DONE_TEXT}
            if "apply_patch" in tool_names(body):
                return {"text": "Adding hello.txt.", "custom_tool_calls": [
                    {"name": "apply_patch", "call_id": "call_patch_1", "input": APPLY_PATCH_INPUT}]}
            return {"text": "Untitled"}
        self.answer = answer
        self.codex("Create hello.txt with apply_patch")
        self.assert_succeeded()
        self.assert_file("hello.txt", PATCHED_TEXT)
        self.assertIn(DONE_TEXT, self.stdout)
        first, last = self.upstream_bodies()[0], self.upstream_bodies()[-1]
        apply_patch = [t for t in first["tools"] if t.get("name") == "apply_patch"][0]
        self.assertEqual(apply_patch["type"], "custom")
        self.assertEqual(apply_patch["format"]["type"], "grammar")  # the freeform grammar reached the backend
        calls = input_items(last, "custom_tool_call")
        outputs = input_items(last, "custom_tool_call_output")
        self.assertEqual([(c["call_id"], c["name"], c["input"]) for c in calls],
                         [("call_patch_1", "apply_patch", APPLY_PATCH_INPUT)], json.dumps(last["input"])[-3000:])
        self.assertEqual([o["call_id"] for o in outputs], ["call_patch_1"])
        self.assertIn("Success. Updated the following files:\\nA hello.txt", json.dumps(outputs[0]["output"]))
        self.assertEqual(input_items(last, "function_call_output"), [])

    def test_usage_limit_ends_the_run_with_the_reason(self):
        """A usage limit ends the run at once, saying so.

        Codex CLI stops on a 429 only when its error `type` is usage_limit_reached (then
        it says when the limit resets); any other 429 it retries, waiting Retry-After,
        which for a usage limit is the hours until the reset."""
        self.answer = lambda body: usage_limit_reply(resets_in_seconds=1)
        self.codex("Hi", timeout=30)
        _, _, answer = self.request("POST", "/v1/responses", {"model": "gpt-5.5", "input": "hi", "stream": True},
                                    headers={"Authorization": "Bearer " + LOCAL_KEY})
        why = "the proxy answered %s\n%s" % (answer.decode("utf-8", "replace"), self.details())
        self.assertNotEqual(self.returncode, 0, why)
        self.assertEqual(len(self.upstream_bodies()) - 1, 1, "Codex CLI retried the usage limit: " + why)
        self.assertIn("usage limit", (self.stdout + self.stderr).lower(), why)


class CodexCLIOverWebSocketTests(DumpDirTestCase, CodexCLITestCase):
    """The Codex CLI with `supports_websockets = true` in its provider block: each turn is a
    `response.create` message on one socket (GET /v1/responses, upgraded), its events come back
    as messages; the turn after a tool continues the last response (previous_response_id, store:
    false) with only the new items, which the proxy chains into the full conversation upstream."""

    def setUp(self):
        super().setUp()  # DumpDirTestCase's, then CodexCLITestCase's: each exchange in self.dump_dir
        config = CODEX_CONFIG.replace('wire_api = "responses"\n', 'wire_api = "responses"\nsupports_websockets = true\n')
        with open(os.path.join(self.codex_home, "config.toml"), "w") as handle:
            handle.write(config % {"port": self.proxy.port})

    def test_exec_command_round_trip_over_the_socket(self):
        with self.assertLogs("codex_proxy", "INFO") as logged:
            self.codex("Create hello.txt saying hello")
        self.assert_succeeded()
        self.assert_file("hello.txt", FILE_TEXT)
        self.assertIn(DONE_TEXT, self.stdout)
        self.assert_all_on_one_socket([getattr(record, "fields", {}) for record in logged.records])
        self.assert_messages_continue_each_other()
        # The warm-up (generate: false) sent nothing upstream: the two turns did.
        requests = self.fake.requests_to("/responses")
        self.assertEqual(len(requests), 2, [r.json for r in requests])
        first, last = requests[0].json, requests[-1].json
        outputs = self.assert_outputs_answer_calls()
        self.assertIn("EXEC-RAN", outputs["call_exec_1"])
        # The proxy chained what came as previous_response_id + new items: the backend got the
        # whole conversation each time, the warm-up's developer prompt first, then the user's
        # words, and after the tool the call, its reasoning and its output.
        for body in (first, last):
            developer = [m for m in input_items(body, "message") if m.get("role") == "developer"]
            self.assertTrue(any("Codex" in json.dumps(m) for m in developer), json.dumps(body["input"])[:2000])
            self.assertIn("Create hello.txt saying hello", json.dumps(input_items(body, "message")))
            self.assertNotIn("previous_response_id", body)
        self.assertIn("apply_patch", tool_names(first))
        self.assertEqual([c["call_id"] for c in input_items(last, "function_call")], ["call_exec_1"])
        replayed = input_items(last, "reasoning")
        self.assertEqual(len(replayed), 1)
        self.assertTrue(replayed[0]["encrypted_content"].startswith("enc-"))
        # The session header of the upgrade reached the backend with each turn, as the prompt cache key.
        self.assertTrue(requests[0].headers.get("session_id"))
        self.assertEqual(requests[0].headers.get("session_id"), first["prompt_cache_key"])
        self.assertEqual(first["prompt_cache_key"], last["prompt_cache_key"])

    def assert_all_on_one_socket(self, answered):
        """No fallback to HTTP: one upgrade, three messages on it, no POST /v1/responses (from the
        proxy's request log lines, `answered`)."""
        # (Codex 0.169 says so when it gives up on the socket: an ERROR line, then that warning.)
        for failure in ("Falling back from WebSockets", "failed to connect to Responses WebSocket"):
            self.assertNotIn(failure, self.stdout + self.stderr, self.details())
        over_http = [f for f in answered if f.get("path") == "/v1/responses" and f.get("transport") != "ws"
                     and f.get("method") == "POST"]
        upgrades = [f for f in answered if f.get("method") == "GET" and f.get("path") == "/v1/responses"]
        messages = [f for f in answered if f.get("transport") == "ws"]
        self.assertEqual(over_http, [], self.details())
        self.assertEqual([f["status"] for f in upgrades], [101], answered)
        self.assertEqual([f["status"] for f in messages], [200, 200, 200], answered)  # warm-up, turn, after the tool
        self.assertEqual(self.proxy.app.metrics.socket_responses, 3)

    def assert_messages_continue_each_other(self):
        """What Codex sent on the socket (--dump-dir): a warm-up, the turn continuing it, and after
        the tool a message continuing the turn with its output alone; all store: false."""
        self.assertTrue(wait_for(lambda: len(self.dumps()) >= 4))
        messages = [d for d in (json.loads(text) for _, text in self.dumps()) if d["request"]["method"] == "POST"]
        self.assertEqual(len(messages), 3, [d["request"]["body"] for d in messages])
        [warm_up] = [d for d in messages if d["request"]["body"].get("generate") is False]
        [after_tool] = [d for d in messages if d["request"]["body"]["input"][0]["type"] == "function_call_output"]
        [turn] = [d for d in messages if d not in (warm_up, after_tool)]
        self.assertIsNone(warm_up["upstream_request"])
        self.assertEqual([m["role"] for m in warm_up["request"]["body"]["input"]], ["developer"])
        self.assertEqual(turn["request"]["body"].get("previous_response_id"), response_id(warm_up))
        self.assertEqual(after_tool["request"]["body"]["previous_response_id"], response_id(turn))
        self.assertEqual(len(after_tool["request"]["body"]["input"]), 1)
        self.assertEqual({d["request"]["body"]["type"] for d in messages}, {"response.create"})
        self.assertEqual({d["request"]["body"]["store"] for d in messages}, {False})


class CodexCLIWithItsOwnLoginTests(CodexCLITestCase):
    """The README's setup on a real machine: no local key (so no env_key in the provider), and
    the Codex CLI's own ChatGPT login in ~/.codex beside the config."""

    config_overrides = {}

    def setUp(self):
        CodexCLITestCase.setUp(self)
        with open(os.path.join(self.codex_home, "config.toml"), "w") as handle:
            handle.write(CODEX_CONFIG.replace('env_key = "CODEX_PROXY_API_KEY"\n', "") % {"port": self.proxy.port})
        tokens = {"id_token": fake_id_token(), "access_token": "codex-cli-own-token",
                  "refresh_token": "codex-cli-own-refresh", "account_id": "acct-123"}
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with open(os.path.join(self.codex_home, "auth.json"), "w") as handle:
            json.dump({"OPENAI_API_KEY": None, "tokens": tokens, "last_refresh": now}, handle)

    def test_codex_decodes_the_catalog_the_proxy_answers(self):
        """As on every real machine: ~/.codex holds the Codex CLI's own ChatGPT login next to the
        config, so Codex asks the provider for its catalog (/v1/models?client_version=). It must
        decode what the proxy answers: no ERROR line, and its model list is the proxy's."""
        self.answer = lambda body: {"text": DONE_TEXT}
        self.codex("Say done")
        self.assert_succeeded()
        self.assertIn(DONE_TEXT, self.stdout)
        # (With a ChatGPT login Codex also reaches chatgpt.com for its own connectors, which fails
        # offline with ERROR lines of its own: only the ones about models are the proxy's.)
        about_models = [line for line in self.stderr.splitlines() if "ERROR" in line and "models" in line]
        self.assertEqual(about_models, [], self.details())
        env = self.base_env()
        env["CODEX_HOME"] = self.codex_home
        self.run_cli(["debug", "models"], env)
        self.assert_succeeded()
        listed = json.loads(self.stdout)["models"]
        self.assertEqual([m["slug"] for m in listed], [m["slug"] for m in default_catalog()["models"]])
        self.assertFalse([m["slug"] for m in listed if m.get("use_responses_lite")], "a key left out came back")


# ---------------------------------------------------------------------------
# The launchers: `codex_proxy.py claude|codex ARGS`, with this test's proxy running and with none

def group_gone(group):
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return True
    return False


class LauncherTests:
    """Mixed into a client's tests: the client run by the launcher, found on the PATH it is given,
    with the proxy's login and key as flags before the command word."""

    answer = staticmethod(lambda body: {"text": "Hello from %s" % body["model"]})

    def launch(self, args, port, env):
        env = dict(env, PATH=os.path.dirname(self.cli_path) + os.pathsep + env["PATH"],
                   CODEX_PROXY_PORT=str(port), CODEX_PROXY_CHATGPT_BASE_URL=self.fake.chatgpt_base,
                   CODEX_REFRESH_TOKEN_URL_OVERRIDE=self.fake.token_url)
        self.run_cli(args, env, command=[sys.executable, SCRIPT, "--codex-home", self.home, "--api-key", LOCAL_KEY,
                                         self.cli])
        self.assert_succeeded()
        self.assertIn("Hello from gpt-5.5", self.stdout)
        # (Codex CLI's git helpers end after it, and are reaped by init a moment later.)
        left = ["ps", "-o", "pid,stat,args", "-g", str(self.group)]
        self.assertTrue(wait_for(lambda: group_gone(self.group)), "processes of the run are left: %s"
                        % subprocess.run(left, capture_output=True, text=True).stdout)
        self.assertNotIn(LOCAL_KEY, self.stderr)
        self.assertNotIn("WebSocket", self.stderr)  # the Codex CLI's socket: no failure to connect, no fallback
        return self.stderr.splitlines()[0]

    def test_through_the_running_proxy(self):
        line = self.launch(self.client_args(), self.proxy.port, self.client_env())
        self.assertEqual(line, "codex-proxy: %s uses the codex-proxy running on http://127.0.0.1:%d"
                         % (self.cli, self.proxy.port))
        self.assertTrue(self.upstream_bodies())  # through this test's proxy

    def test_with_no_proxy_running(self):
        port = closed_port()
        line = self.launch(self.client_args(), port, self.client_env())
        self.assertTrue(line.startswith("codex-proxy: started on http://127.0.0.1:"), line)
        own = int(line.split("http://127.0.0.1:")[1].split()[0])
        self.assertNotEqual(own, port)
        with socket.socket() as sock:
            self.assertNotEqual(sock.connect_ex(("127.0.0.1", own)), 0, "the launcher's proxy outlived the run")


class ClaudeLauncherTests(LauncherTests, RealClientTestCase):
    cli = "claude"

    def client_args(self):
        return ["-p", "Say hello"]

    def client_env(self):
        env = ClaudeCodeTests.claude_env(self)
        del env["ANTHROPIC_BASE_URL"], env["ANTHROPIC_AUTH_TOKEN"]
        return env

    def test_its_settings_json_pointing_elsewhere_does_not_win(self):
        """The README's recipe puts ANTHROPIC_BASE_URL in ~/.claude/settings.json, whose env outranks
        the process environment: the launcher's proxy must be used all the same."""
        folder = os.path.join(self.client_home, ".claude")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "settings.json"), "w") as handle:
            json.dump({"env": {"ANTHROPIC_BASE_URL": "http://127.0.0.1:%d" % closed_port()}}, handle)
        line = self.launch(self.client_args(), closed_port(), self.client_env())
        self.assertTrue(line.startswith("codex-proxy: started on"), line)


class CodexLauncherTests(LauncherTests, RealClientTestCase):
    """No config.toml: the provider and the model come from the launcher's -c overrides alone."""

    cli = "codex"

    def client_args(self):
        return ["exec", "--strict-config", "--skip-git-repo-check", "--ephemeral",
                "--dangerously-bypass-approvals-and-sandbox", "--color", "never", "Say hello"]

    def client_env(self):
        codex_home = os.path.join(self.client_home, ".codex")
        os.makedirs(codex_home, exist_ok=True)  # empty: no config.toml
        return dict(self.base_env(), CODEX_HOME=codex_home)

    def test_through_the_running_proxy(self):
        """...its model calls on the Responses WebSocket (the launcher sets supports_websockets):
        a warm-up and the turn, as messages on one socket, none as a POST."""
        with self.assertLogs("codex_proxy", "INFO") as logged:
            LauncherTests.test_through_the_running_proxy(self)
        answered = [(f.get("method"), f.get("path"), f.get("transport"), f.get("status"))
                    for f in (getattr(record, "fields", {}) for record in logged.records)]
        self.assertEqual([a for a in answered if a[1] == "/v1/responses"],
                         [("POST", "/v1/responses", "ws", 200)] * 2 + [("GET", "/v1/responses", None, 101)],
                         answered)
        first = self.upstream_bodies()[0]
        self.assertEqual(first["model"], "gpt-5.5")  # the proxy's default model, as an override
        developer = [m for m in input_items(first, "message") if m.get("role") == "developer"]
        self.assertTrue(any("Codex" in json.dumps(m) for m in developer))  # the CLI's own request


if __name__ == "__main__":
    unittest.main()
