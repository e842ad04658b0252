#!/usr/bin/env python3
"""codex-proxy: serve OpenAI-, Anthropic- and Ollama-compatible clients on a Codex login.

One file, Python standard library only (CPython 3.8+). Run it:

    python3 codex_proxy.py --port 8765

and point clients at http://127.0.0.1:8765 (OpenAI: base URL .../v1;
Anthropic: ANTHROPIC_BASE_URL=http://127.0.0.1:8765; Ollama:
OLLAMA_HOST=http://127.0.0.1:8765). Everything is translated to the ChatGPT
Codex backend's Responses API, using the login the Codex CLI keeps in
~/.codex/auth.json (or an OpenAI API key).

The file reads top to bottom the way a request flows:

  configuration           constants; the error family (ProxyError: each failure's status, code and
                          fix) and UpstreamFailure (the one reader of upstream error payloads);
                          SETTINGS (every setting's flag, variable, default, check and help) and
                          Config, built from them; named local keys (named_key)
  credentials             auth.json: reading, token refresh (single-flight, locked), atomic writes;
                          LoginWatch (a login appearing, going or ceasing to work, logged once);
                          Logins (several, and which one serves a request: place_conversation, by
                          --login-strategy), LoginRests (rests after a usage limit, ended by their
                          reset or a wham/usage re-check); Login (the device-code and browser
                          logins of `login`)
  upstream client         ConnectionPool, UpstreamStream (an answer's body, chunk by chunk, into
                          the event loop), Upstream (the one way to call upstream), ModelCatalog
  HTTP/1.1                bytes in, events out: HTTPReader (the one reader of HTTP framing: request
                          heads, Content-Length and chunked bodies, trailers, limits; for the server,
                          the upstream answer bodies and the login callback), response_head (the one
                          head writer), ConnectionState (every keep-alive/close decision)
  HTTP: multipart         multipart/form-data bodies (RFC 7578): parse_form_data (the parts, FormPart,
                          exactly as they came), form_fields (text fields and files, as an endpoint reads them)
  WebSocket               RFC 6455, sans-IO: websocket_upgrade (the handshake: a Request's 101 head, or a
                          WebSocketRefused), WebSocketReader (a client's frames in, its messages out), the
                          frame writer (websocket_frame, text_frame, close_frame, ...)
  HTTP server             Responder, ClientInput (a connection's bytes into its HTTPReader),
                          ClientConnection, WebSocketSession (a connection become a WebSocket: its
                          frames read, pings answered, the close handshake), SocketResponder (an SSE
                          answer as WebSocket messages), ProxyServer, SSE writer/parser
  translators: shared     RequestOptions and AnswerContext, build_upstream_request (the one
                          Responses-request builder), tools, content parts, AnswerStream (what every
                          dialect's answer stream is), StreamTranslator (the plumbing of every
                          translated one) and DialectHooks (what it asks a dialect), the error builders
  translators: responses  /v1/responses bodies for the Codex backend, ResponsesStream, the fold
  translators: chat       Chat Completions <-> Responses
  translators: messages   Anthropic Messages <-> Responses
  translators: images     the Images API -> Responses calls with the image_generation tool, ImageStream
  translators: ollama     Ollama's /api/chat and /api/generate <-> Responses (NDJSON lines, or one object),
                          its model list and show from the catalog
  translators: tokens     the o200k estimate behind count_tokens: fitted data (TOKEN_COST_FIT), which
                          tests/fit_token_estimate.py refits
  routes: dialects        Dialect: one client API's translators, encoder, errors, cut event
  routes: the app         Route, App: the route table, the guard, the handlers; API-key forwarding;
                          the endpoint groups (ResponsesEndpoints, ResponsesSockets: the Responses API
                          over WebSocket, ImageEndpoints, OllamaEndpoints, Pages)
  command line            COMMANDS (each, with what it does); CommandLineParser (a refusal in one line,
                          with the nearest flag or command); the flags; settings_texts (flag > --config's
                          file > variable > default; config_file_texts reads the file); CODEX_PROXY_
                          variables that are no setting; main(); SettingsReload (the file re-read on
                          SIGHUP); a taken port (who has it: a codex-proxy's /health says); the `login`
                          and `logout` commands
  commands                doctor (the setup, check by check) and usage (the plan's windows), run
                          without the server
  commands: launchers     `claude` and `codex`: the client run already pointed at a proxy (the one
                          running, else one of its own for the length of the run)
  commands: setup         `config --print` (the settings as a config file) and `install-service` (a
                          systemd user unit or launchd agent that runs the proxy with one at login)
"""

import _thread
import argparse
import asyncio
import base64
import binascii
import collections
import contextvars
import copy
import dataclasses
import datetime
import difflib
import errno
import fnmatch
import functools
import hashlib
import hmac
import http
import ipaddress
import itertools
import json
import logging
import os
import plistlib
import random
import re
import shlex
import shutil
import signal
import socket
import ssl
import struct
import sys
import tempfile
import threading
import time
import types
import urllib.parse
import zlib

try:  # the auth.json lock: fcntl on POSIX, msvcrt on Windows
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None
try:
    import msvcrt
except ImportError:
    msvcrt = None

__version__ = "0.1.0"

log = logging.getLogger("codex_proxy")

# The request being served: its Responder.record (its id, what the log line says of it). Set for the
# task that serves it and copied into the threads that work for it (UpstreamWorkers, in_thread).
REQUEST = contextvars.ContextVar("request", default=None)


class RequestIdInLog(logging.Filter):
    """Puts the id of the request being served in front of whatever is logged about it (and in
    `request_id`, for --log-format json), so that a warning can be matched to its request line."""

    def filter(self, record):
        current = REQUEST.get()
        if current is not None and not hasattr(record, "fields"):  # the request line names it already
            record.request_id = current["id"]
            record.msg = "%s: %s" % (current["id"], record.msg)
        return True


log.addFilter(RequestIdInLog())


# ---- configuration -----------------------------------------------------------

CODEX_CLIENT_VERSION = "0.169.0"  # the Codex CLI release whose wire format we follow
CODEX_ORIGINATOR = "codex_cli_rs"
CHATGPT_BASE_URL = "https://chatgpt.com/backend-api/codex"
OPENAI_BASE_URL = "https://api.openai.com/v1"
REFRESH_TOKEN_URL = "https://auth.openai.com/oauth/token"
ISSUER = "https://auth.openai.com"  # where `login` logs in (CODEX_PROXY_ISSUER replaces it in tests)
OAUTH_CLIENT_ID = "app_EMoamEEZ73f0CkXaXp7hrann"
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")  # lowest first
VERBOSITIES = ("low", "medium", "high")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOGIN_STRATEGIES = ("headroom", "fill-first", "round-robin")  # how Logins places a new conversation


def wall_clock():
    """Now, in seconds since the epoch: the one clock that every stored time (a token's `exp`,
    `last_refresh`, a limit's `resets_at`) is compared with. Tests move time by replacing it."""
    return time.time()


# What the user can do next (an error's `fix`), by what failed.
LOGIN_WAYS = "`codex login` or `python3 codex_proxy.py login`"
NETWORK_FIX = "check your network or --proxy"
PROXY_FIX = "check --proxy (or HTTPS_PROXY and NO_PROXY)"
CA_BUNDLE_FIX = "check the CA bundle (SSL_CERT_FILE or REQUESTS_CA_BUNDLE), or a proxy that intercepts TLS"


class ProxyError(Exception):
    """A failure the proxy reports; every section raises one of its subclasses. Each says, for its
    kind of failure, the HTTP `status` a client gets, the `code` it sees (the kind), and the `fix`:
    what the user can do next (said by doctor, usage and the commands). describe_failure and the
    doctor read these; nothing reads the message to tell failures apart."""

    status = 500
    code = None
    fix = None
    param = None  # the request field at fault (a ClientError's)

    def __init__(self, message, status=None, code=None, fix=None):
        Exception.__init__(self, message)
        self.message = message
        for name, value in (("status", status), ("code", code), ("fix", fix)):
            if value is not None:
                setattr(self, name, value)

    def limit_details(self):
        """plan_type and reset times of a usage limit, for the client's error body, or None."""
        return None

    def retry_after(self):
        """Seconds (as text) for a Retry-After header, or None."""
        return None


class ClientError(ProxyError):
    """A request the proxy cannot serve: it becomes an error in the client's dialect."""

    status = 400

    def __init__(self, message, status=400, param=None, code=None):
        ProxyError.__init__(self, message, status, code)
        self.param = param


class AuthError(ProxyError):
    """No usable credentials: the user has to log in (again)."""

    status = 401
    code = "codex_login_required"
    fix = "log in: " + LOGIN_WAYS


class UpstreamUnavailable(ProxyError):
    """The upstream could not be reached or stopped answering (or, 503, the
    proxy is at its --max-streams); `fix` by what failed."""

    status = 502
    code = "upstream_unavailable"
    fix = NETWORK_FIX

    def __init__(self, message, status=502, retry_after=None, fix=None):
        ProxyError.__init__(self, message, status, fix=fix)
        self.retry_seconds = retry_after

    def retry_after(self):
        return str(self.retry_seconds) if self.retry_seconds else None


class LockTimeout(ProxyError):
    """A lock file (auth.json's) stayed taken by another process: nothing upstream is at fault."""

    status = 502
    code = "auth_file_locked"

    def __init__(self, path, seconds):
        ProxyError.__init__(self, "%s stayed locked by another process for %gs." % (path, seconds),
                            fix="let the other process (a proxy or the Codex CLI refreshing the token) finish, "
                                "or end it if it hangs")


USAGE_LIMIT_CODES = ("usage_limit_reached", "usage_not_included")
LIMIT_FIELDS = ("plan_type", "resets_at", "resets_in_seconds")


def upstream_error_status(code):
    """HTTP status for an upstream failure code seen inside a stream."""
    code = (code or "").lower()
    if code in ("rate_limit_exceeded", "usage_limit_reached", "usage_not_included", "insufficient_quota"):
        return 429
    if code in ("server_is_overloaded", "slow_down", "overloaded"):
        return 503
    if code in ("context_length_exceeded", "invalid_prompt", "invalid_request_error", "bad_request",
                "moderation_blocked"):
        return 400
    return 502


class UpstreamFailure:
    """What the upstream said about a failure, whatever shape it came in: the one reader of
    upstream error payloads. From an error object (`error`: a stream's failing event, see
    event_failure), or, by of_body, from an error status's body or a token endpoint's answer.
    Its code is the error's code (else its type); its limit, a usage limit's plan and reset times."""

    def __init__(self, error, status=None):
        error = as_object(error)
        code, message = error.get("code") or error.get("type"), error.get("message")
        self.code = code if isinstance(code, str) else None
        self.message = message if isinstance(message, str) else None
        self.status = status or upstream_error_status(self.code)
        self.resets = {key: error[key] for key in LIMIT_FIELDS if key in error}
        self.limit = self.resets if error.get("type") in USAGE_LIMIT_CODES else None
        self.oauth_error = None  # a token endpoint's bare error name (RFC 6749 5.2: {"error": "invalid_grant"})

    @classmethod
    def of_body(cls, status, payload, raw=b""):
        """From an error status's body: its `error` object or string, a `detail`, a top-level
        `code`; without a message, the raw text. A usage limit's code is said in the message."""
        payload = as_object(payload)
        error, detail = payload.get("error"), payload.get("detail")
        failure = cls(error if isinstance(error, dict) else None, status)
        if isinstance(error, str):
            failure.oauth_error = error
        if not failure.message:
            failure.message = detail if isinstance(detail, str) else json.dumps(detail) \
                if isinstance(detail, (dict, list)) else failure.oauth_error
        if not failure.code and isinstance(payload.get("code"), str):
            failure.code = payload["code"]
        if failure.message and isinstance(payload.get("error_description"), str):  # OAuth's shape (RFC 6749 5.2)
            failure.message += ": " + payload["error_description"]
        if not failure.message:
            text = raw.decode("utf-8", "replace").strip() if raw else ""
            failure.message = text[:500] or "HTTP %s from upstream" % status
        code = failure.code
        if code and code.replace("_", " ") not in failure.message.lower() and "usage" in code:
            failure.message = "%s (%s)" % (failure.message, code)
        return failure

    def retry_after(self):
        """Seconds until a limit resets (as text), or None."""
        resets = self.resets
        if isinstance(resets.get("resets_in_seconds"), (int, float)):
            return str(max(0, int(resets["resets_in_seconds"])))
        if isinstance(resets.get("resets_at"), (int, float)):
            return str(max(0, int(resets["resets_at"] - wall_clock())))
        return None


def as_object(value):
    """A JSON object, or {} for null or a value of the wrong shape."""
    return value if isinstance(value, dict) else {}


def from_environment(*names):
    """The first of these environment variables that is set: the one place the environment is read."""
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None


def default_codex_home():
    """Where the Codex CLI keeps its login: $CODEX_HOME, else ~/.codex."""
    return from_environment("CODEX_HOME") or os.path.join(os.path.expanduser("~"), ".codex")


def text_value(text):
    return text


def number_from(text, kind=float):
    try:
        return kind(text)
    except ValueError:
        raise ValueError("must be a %s, not %r" % ("whole number" if kind is int else "number", text)) from None


def port_number(text):
    port = number_from(text, int)
    if not 0 <= port <= 65535:
        raise ValueError("must be a port from 0 to 65535, not %d" % port)
    return port


def positive(text):
    value = number_from(text)
    if not value > 0:
        raise ValueError("must be more than 0, not %s" % text)
    return value


def not_negative(text):
    value = number_from(text)
    if not value >= 0:
        raise ValueError("must be 0 or more, not %s" % text)
    return value


def megabytes_as_bytes(text):
    """A size given in MB (more than 0, fractions allowed), as a number of bytes."""
    return int(positive(text) * 1024 * 1024)


def whole_number_from(minimum):
    """The parser of a whole number of `minimum` or more."""
    def parse(text):
        value = number_from(text, int)
        if value < minimum:
            raise ValueError("must be %d or more, not %d" % (minimum, value))
        return value
    return parse


def one_of(*choices):
    def parse(text):
        if text not in choices:
            raise ValueError("must be one of %s, not %r" % (", ".join(choices), text))
        return text
    return parse


def yes_or_no(text):
    value = text.strip().lower()
    if value not in ("1", "0", "true", "false", "yes", "no", "on", "off", ""):
        raise ValueError("must be 1/0, true/false or yes/no, not %r" % text)
    return value in ("1", "true", "yes", "on")


def http_url(text):
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host, not %r" % text)
    return text.rstrip("/")


def proxy_url(text):
    try:
        parts = urllib.parse.urlsplit(text if "://" in text else "http://" + text)
        port = parts.port
    except ValueError as exc:
        raise ValueError("must be a proxy URL (%s), not %r" % (exc, text)) from None
    if parts.scheme not in ("http", "https") or not parts.hostname or port is None and "://" not in text:
        raise ValueError("must look like http://HOST:PORT, not %r" % text)
    return text


def model_mapping(text):
    pattern, sep, model = text.partition("=")
    if not sep or not pattern.strip() or not model.strip():
        raise ValueError("takes PATTERN=MODEL, not %r" % text)
    return pattern.strip(), model.strip()


KEY_NAME = re.compile(r"[A-Za-z0-9][\w.-]{0,63}")


class WholeText(str):
    """A repeatable setting's one item read whole, from a variable that holds one (Setting's
    `whole_variables`): no list to split, no NAME= to read (the old CODEX_PROXY_API_KEY's key)."""

REDACTED = "[redacted]"  # what stands for a secret where it is not shown


def named_key(text):
    """(name, key) of an --api-key: NAME=KEY, or a plain KEY (named default; a base64 key's trailing
    = is no name's)."""
    name, sep, key = text.partition("=")
    if isinstance(text, WholeText) or not (sep and key and not key.startswith("=") and KEY_NAME.fullmatch(name)):
        name, key = "default", text
    if not key.strip():
        raise ValueError("takes NAME=KEY or KEY, not an empty key")
    if key == REDACTED:  # a key anyone could guess, from a `config --print` file
        raise ValueError("is %s: `config --print` hides the keys; put the key itself there "
                         "(or print with --show-keys)" % REDACTED)
    return name, key


def from_variables(*names, otherwise=None):
    """A default read when a Config is made: the first of these environment variables that is set."""
    return lambda: from_environment(*names) or otherwise


class Setting:
    """One setting of the server: its Config field (`name`), its default (as text, as a flag would
    give it, or a function giving that text when a Config is made), how its text is read and
    checked, its help. A setting with a flag (`flag`: the flag's name when it is not the field's)
    also has a CODEX_PROXY_<FLAG> variable (and any older name); a flag and its variable go through
    the same check. `reloads`: whether a reload of --config (SIGHUP) can change it in a running
    proxy (else it needs a restart)."""

    def __init__(self, name, default, parse, help, metavar=None, repeat=False, switch=False, aliases=(),
                 environment=(), flag=None, reloads=True, whole_variables=(), distinct_names=False):
        self.name, self.default, self.parse, self.help, self.reloads = name, default, parse, help, reloads
        self.distinct_names = distinct_names  # a repeatable setting of (NAME, VALUE) items, each NAME once
        self.whole_variables = whole_variables  # variables of a repeatable setting that hold one item, whole
        flag = flag or name
        self.flags = ("--" + flag.replace("_", "-"),) + aliases
        self.variables = ("CODEX_PROXY_" + flag.upper(),) + environment
        self.metavar, self.repeat, self.switch = metavar or flag.upper(), repeat, switch

    def value(self, given):
        """The setting's value from its text (a list of texts for a repeatable one; None: not set)."""
        if self.repeat:
            items = [self.parse(item) for item in given or ()]
            names = [item[0] for item in items]
            twice = next((name for at, name in enumerate(names) if name in names[:at]), None)
            if self.distinct_names and twice is not None:
                raise ValueError("names %s twice: give each its own name (%s)" % (twice, self.metavar))
            return items
        return None if given is None else self.parse(given)

    def file_keys(self):
        """The keys that name it in a config file: its long flags with dashes or underscores, its
        field's name, and a repeatable one's plural (api_keys)."""
        names = [flag[2:] for flag in self.flags] + [self.name] + [self.flags[0][2:] + "s"] * self.repeat
        return {spelling for name in names for spelling in (name.replace("_", "-"), name.replace("-", "_"))}

    def initial(self):
        """The value of a Config that is not told otherwise."""
        default = self.default() if callable(self.default) else self.default
        return self.value([default] if self.repeat and default is not None else default)


SETTINGS = (
    Setting("config_file", None, text_value, "a JSON file of settings: {\"port\": 9000, \"api_key\": {\"laptop\": "
            "\"KEY\"}, ...}, its keys the long flags (a flag wins over it, it over a variable); SIGHUP re-reads it",
            metavar="FILE", flag="config", reloads=False),
    Setting("host", "127.0.0.1", text_value, "address to listen on (default 127.0.0.1; others need --api-key)",
            reloads=False),
    Setting("port", "8765", port_number, "port to listen on (default 8765; 0 picks a free one)", reloads=False),
    Setting("api_key", None, named_key, "a key clients must send (Authorization: Bearer KEY or x-api-key: KEY), "
            "as NAME=KEY or KEY (named default); repeatable: a key per tool, its name in the log and /metrics",
            metavar="NAME=KEY", repeat=True, environment=("CODEX_PROXY_API_KEYS",),
            whole_variables=("CODEX_PROXY_API_KEY",), distinct_names=True),
    Setting("key_name", None, text_value, "the key that `claude` and `codex` pass to the proxy: the name of one "
            "of --api-key's (default: the first)", metavar="NAME"),
    Setting("auth", "auto", one_of("auto", "chatgpt", "apikey"), "credentials: chatgpt (the login in auth.json), "
            "apikey (auth.json's key, else OPENAI_API_KEY), or auto: the login when there is one (default)",
            metavar="MODE"),
    Setting("codex_homes", None, os.path.expanduser, "folder of a login's auth.json (default $CODEX_HOME, "
            "else ~/.codex); repeatable: several logins, the next taking over when one reaches its usage limit",
            metavar="DIR", repeat=True, environment=("CODEX_HOME",), flag="codex_home"),
    Setting("login_strategy", "headroom", one_of(*LOGIN_STRATEGIES), "which login a new conversation goes to: "
            "headroom (the lowest used percent), fill-first (the first available, in --codex-home order) or "
            "round-robin (each in turn); a conversation stays on its login while that one is available "
            "(default headroom)", metavar="STRATEGY"),
    Setting("login_recheck_interval", "300", positive, "seconds between re-checks (GET wham/usage) of a login "
            "resting after a usage limit, which end the rest early when the backend shows it below its limit "
            "(default 300)", metavar="SECONDS"),
    # (The upstream's address and route, and its idle timeout, are taken once, by the connection pool, the
    # cached catalog and the body readers: a reload leaves them, a restart applies them.)
    Setting("chatgpt_base_url", CHATGPT_BASE_URL, http_url, "Codex backend for ChatGPT logins (default %s)"
            % CHATGPT_BASE_URL, metavar="URL", reloads=False),
    Setting("openai_base_url", OPENAI_BASE_URL, http_url, "OpenAI API for API-key mode (default %s)"
            % OPENAI_BASE_URL, metavar="URL", reloads=False),
    Setting("proxy", None, proxy_url, "upstream HTTPS proxy URL (default: HTTPS_PROXY, honouring NO_PROXY)",
            metavar="URL", reloads=False),
    Setting("log_level", "info", one_of(*LOG_LEVELS), "log detail: debug, info, warning, error (default info)",
            metavar="LEVEL"),
    Setting("log_format", "text", one_of("text", "json"), "request log lines as text or JSON (default text)",
            metavar="FORMAT", reloads=False),
    Setting("quiet", "0", yes_or_no, "no start banner", switch=True),
    Setting("reasoning_effort", None, one_of(*REASONING_EFFORTS), "reasoning effort when a client does not "
            "choose one (%s)" % ", ".join(REASONING_EFFORTS), metavar="EFFORT"),
    Setting("verbosity", None, one_of(*VERBOSITIES), "answer verbosity when a client does not choose one "
            "(low, medium, high)", metavar="LEVEL"),
    Setting("service_tier", None, text_value, "service tier when a client does not choose one (e.g. priority, "
            "flex)", metavar="TIER"),
    Setting("fast", "0", yes_or_no, "defaults for speed: minimal reasoning effort, low verbosity, priority tier",
            switch=True),
    Setting("default_model", None, text_value, "model for claude-* names (default: the first of your catalog)",
            metavar="MODEL"),
    Setting("model_map", None, model_mapping, "map client model names (shell patterns) to a model; "
            "repeatable, e.g. --model-map 'claude-*haiku*=gpt-5.5-mini'", metavar="PATTERN=MODEL", repeat=True),
    Setting("max_body_bytes", "64", megabytes_as_bytes, "largest request body accepted, in MB (default 64)",
            metavar="MB", flag="max_body_mb"),
    Setting("upstream_idle_timeout", "300", positive, "seconds the upstream may stay silent mid-answer "
            "(default 300)", metavar="SECONDS", reloads=False),
    Setting("image_model", None, text_value, "the chat model that draws for /v1/images (default: the first of "
            "your catalog)", metavar="MODEL"),
    Setting("image_timeout", "300", positive, "seconds the upstream may stay silent while it draws an image "
            "(default 300)", metavar="SECONDS"),
    Setting("max_streams", "1024", whole_number_from(1), "upstream requests (streams) in flight at once; beyond, "
            "clients get a prompt 503 with Retry-After (default 1024)", metavar="COUNT",
            aliases=("--upstream-threads",), environment=("CODEX_PROXY_UPSTREAM_THREADS",)),
    Setting("models_cache_ttl", "300", not_negative, "seconds to cache the model catalog (default 300)",
            metavar="SECONDS"),
    Setting("allowed_hosts", None, text_value, "a Host name to answer besides localhost and --host (repeatable; "
            "'*' for any): requests for other names are refused, which stops DNS rebinding", metavar="NAME",
            repeat=True, flag="allowed_host"),
    Setting("allow_origins", None, http_url, "a web page origin (e.g. http://localhost:3000) allowed to call "
            "the proxy, with CORS; requests from any other page are refused (repeatable)", metavar="URL",
            repeat=True, flag="allow_origin"),
    Setting("client_write_timeout", "60", positive, "seconds a client may stop reading before its request is "
            "ended (default 60)", metavar="SECONDS"),
    Setting("shutdown_grace", "10", not_negative, "seconds in-flight requests get to finish on SIGTERM/Ctrl-C "
            "(default 10)", metavar="SECONDS"),
    Setting("heartbeat_interval", "15", not_negative, "seconds of upstream silence after which a stream gets a "
            "keep-alive (default 15; 0: none)", metavar="SECONDS", flag="keepalive_interval"),
    Setting("store_max_responses", "1000", whole_number_from(0), "Responses kept in memory for "
            "previous_response_id, retrieve and input_items (default 1000; 0 keeps none)", metavar="COUNT",
            reloads=False),
    Setting("store_max_bytes", "256", megabytes_as_bytes, "memory those kept Responses may take, in MB "
            "(default 256)", metavar="MB", flag="store_max_mb", reloads=False),
    Setting("dump_dir", None, text_value, "write each request's exchange (client request, upstream request, "
            "events, answer; secrets redacted) as a JSON file here, for a bug report", metavar="DIR"),
)


CONFIG_FILE = SETTINGS[0]  # --config: read before the others, and never from a config file


class SettingWithoutFlag(Setting):
    """A setting with neither a flag nor a CODEX_PROXY_ variable: read from the environment
    variable other tools use too, or fixed (tests set it through Config). Its `help` is for the
    reader of this file."""

    def __init__(self, name, default, parse, help):
        Setting.__init__(self, name, default, parse, help)
        self.flags = self.variables = ()


SETTINGS_WITHOUT_FLAGS = (
    SettingWithoutFlag("codex_home", default_codex_home, os.path.expanduser, "the first of codex_homes (the "
                       "login that a command like `login` works on)"),
    SettingWithoutFlag("openai_api_key", from_variables("OPENAI_API_KEY"), text_value, "the OpenAI API key of "
                       "apikey mode when auth.json holds none"),
    SettingWithoutFlag("ca_file", from_variables("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"), text_value, "the CA "
                       "bundle that upstream certificates are checked against (None: the system's)"),
    SettingWithoutFlag("refresh_token_url", from_variables("CODEX_REFRESH_TOKEN_URL_OVERRIDE",
                                                           otherwise=REFRESH_TOKEN_URL),
                       text_value, "where tokens are refreshed (the Codex CLI's override variable)"),
    SettingWithoutFlag("header_timeout", "30", positive, "seconds for a request's headers to arrive"),
    SettingWithoutFlag("keep_alive_timeout", "120", positive, "idle seconds before a client connection is closed"),
    SettingWithoutFlag("connect_timeout", "30", positive, "seconds to connect to the upstream"),
    SettingWithoutFlag("refresh_timeout", "30", positive, "seconds for the token endpoint to answer"),
)


def with_a_field_per_setting(cls):
    """`cls` as a dataclass with a field for each setting, its default the setting's initial value."""
    cls.__annotations__ = {setting.name: object for setting in SETTINGS + SETTINGS_WITHOUT_FLAGS}
    for setting in SETTINGS + SETTINGS_WITHOUT_FLAGS:
        setattr(cls, setting.name, dataclasses.field(default_factory=setting.initial))
    return dataclasses.dataclass(cls, repr=False, eq=False)  # no repr: it would show the keys


@with_a_field_per_setting
class Config:
    """Every setting of a running proxy, a field for each of SETTINGS and SETTINGS_WITHOUT_FLAGS:
    Config(port=0, ...) changes some; the command line fills them from flags and the environment."""

    def __post_init__(self):
        if isinstance(self.api_key, str):  # Config(api_key="KEY") in code: one key, named default
            self.api_key = [("default", self.api_key)]
        if self.codex_homes:  # several logins: codex_home is the first
            self.codex_home = self.codex_homes[0]
        else:
            self.codex_homes = [self.codex_home]
        if self.fast:  # --fast fills only what was not said
            self.reasoning_effort = self.reasoning_effort or "minimal"
            self.verbosity = self.verbosity or "low"
            self.service_tier = self.service_tier or "priority"

    def key_for_clients(self):
        """The key the launchers give their client: --key-name's, else the first; None without keys
        (ValueError: --key-name names none of them)."""
        keys = dict(self.api_key)
        if self.key_name and self.key_name not in keys:
            raise ValueError("--key-name %s is none of the --api-key names (%s)" % (
                self.key_name, ", ".join(keys) or "no --api-key given"))
        return keys.get(self.key_name) if self.key_name else (self.api_key[0][1] if self.api_key else None)

    @property
    def auth_path(self):
        return os.path.join(self.codex_home, "auth.json")

    def defaults(self):
        """Server-wide defaults, applied only where a client did not say."""
        return {"reasoning_effort": self.reasoning_effort, "verbosity": self.verbosity,
                "service_tier": self.service_tier}


# ---- credentials -------------------------------------------------------------

REFRESH_MARGIN = 5 * 60  # refresh when the access token expires within this
REFRESH_AGE_WITHOUT_EXP = 8 * 24 * 3600
PERMANENT_REFRESH_ERRORS = ("refresh_token_expired", "refresh_token_reused", "refresh_token_invalidated")


def jwt_claims(token):
    """The payload of a JWT, unverified (we only read `exp` and account ids)."""
    try:
        payload = token.split(".")[1]
        payload += "=" * (-len(payload) % 4)
        claims = json.loads(base64.urlsafe_b64decode(payload.encode("ascii")))
        return claims if isinstance(claims, dict) else {}
    except (IndexError, ValueError, TypeError, binascii.Error, UnicodeError):
        return {}


@functools.lru_cache(maxsize=16)
def token_expiry(token):
    """A JWT's `exp` claim (looked at on every call upstream: decoded once per token)."""
    return jwt_claims(token).get("exp")


def refresh_due_at(tokens, last_refresh):
    """When a login's access token is due for a refresh (epoch seconds): by its `exp`, else by
    the file's age; None when neither says."""
    exp = token_expiry(tokens.get("access_token", ""))
    if isinstance(exp, (int, float)):
        return exp - REFRESH_MARGIN
    refreshed = parse_timestamp(last_refresh)
    return None if refreshed is None else refreshed + REFRESH_AGE_WITHOUT_EXP


def tokens_expiring(tokens, last_refresh):
    due = refresh_due_at(tokens, last_refresh)
    return due is not None and wall_clock() > due


def token_account_id(tokens):
    """The ChatGPT account a login's tokens belong to: the file's, else the id token's claim."""
    if tokens.get("account_id"):
        return tokens["account_id"]
    claims = jwt_claims(tokens.get("id_token") or "").get("https://api.openai.com/auth") or {}
    return claims.get("chatgpt_account_id")


def token_identity(id_token):
    """Who a login is, from its id token's claims: {"email", "plan", "account_id"} (None where unsaid)."""
    claims = jwt_claims(id_token or "")
    auth = claims.get("https://api.openai.com/auth")
    auth = auth if isinstance(auth, dict) else {}
    profile = claims.get("https://api.openai.com/profile")
    email = claims.get("email") or (profile.get("email") if isinstance(profile, dict) else None)
    return {"email": email, "plan": auth.get("chatgpt_plan_type"), "account_id": auth.get("chatgpt_account_id")}


def login_advice(codex_home):
    """How to log in (again) to `codex_home`: with the proxy itself, or with the Codex CLI."""
    if os.path.abspath(codex_home) == os.path.abspath(default_codex_home()):
        return "run `python3 codex_proxy.py login` or `codex login`"
    return "run `python3 codex_proxy.py login --codex-home %s` or `CODEX_HOME=%s codex login`" % (
        codex_home, codex_home)


def auth_file_exposure(path):
    """(what is wrong, its fix) when users other than its owner can get at an auth.json (it holds a
    login or a key), else None; None too where there is no such file or modes mean nothing (Windows)."""
    if os.name != "posix":
        return None
    try:
        mode = os.stat(path).st_mode & 0o777
    except OSError:
        return None
    if not mode & 0o077:
        return None
    return "%s has mode %04o: other users of this machine can get at it" % (path, mode), "chmod 600 %s" % path


def utc_stamp(when=None, fraction=True):
    """`when` (default now) in RFC 3339 UTC with Z; with `fraction`, microseconds too (auth.json's
    last_refresh)."""
    stamp = datetime.datetime.fromtimestamp(wall_clock() if when is None else when, datetime.timezone.utc)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if fraction else "%Y-%m-%dT%H:%M:%SZ")


def file_signature(path):
    """What changes whenever a file is rewritten (in place or replaced); raises FileNotFoundError."""
    st = os.stat(path)
    return st.st_mtime_ns, st.st_size, st.st_ino


def parse_timestamp(text):
    """Seconds since the epoch from an ISO 8601 time as Codex CLI writes it."""
    if not isinstance(text, str):
        return None
    # Python before 3.11 reads only 3 or 6 digits of a fraction: make it 6.
    text = re.sub(r"\.(\d+)", lambda m: "." + (m.group(1) + "00000")[:6], text.strip().replace("Z", "+00:00"),
                  count=1)
    try:
        stamp = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=datetime.timezone.utc)
    return stamp.timestamp()


def atomic_write_json(path, data):
    """Replace `path` with `data` so that a reader sees the old or the new file, never a torn one.

    Written as the Codex CLI writes auth.json (serde_json's pretty form: two-space
    indent, no final newline). A symlinked file is replaced where the link points,
    so the link stays."""
    path = os.path.realpath(path)
    folder = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix=".auth.json.", suffix=".tmp", dir=folder)
    try:
        os.fchmod(fd, 0o600) if hasattr(os, "fchmod") else None
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


class FileLock:
    """An exclusive lock on a sibling `.lock` file, shared with other proxy
    processes (fcntl on POSIX, msvcrt on Windows); waits at most `timeout`."""

    def __init__(self, path, timeout=60.0):
        self.path = path
        self.timeout = timeout
        self.fd = None

    def __enter__(self):
        if fcntl is None and msvcrt is None:
            return self  # no way to lock here: best effort
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                if fcntl is not None:
                    fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                else:
                    msvcrt.locking(self.fd, msvcrt.LK_NBLCK, 1)
                return self
            except OSError:
                if time.monotonic() > deadline:
                    os.close(self.fd)
                    self.fd = None
                    raise LockTimeout(self.path, self.timeout)
                time.sleep(0.05)

    def __exit__(self, *exc):
        if self.fd is not None:
            if fcntl is not None:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            else:
                msvcrt.locking(self.fd, msvcrt.LK_UNLCK, 1)
            os.close(self.fd)
            self.fd = None


class LoginWatch:
    """What an auth.json held when last read, so that a login that appears, goes away or stops
    working while the proxy runs is logged once per change, with what to do (the start lines say
    what there was at first). Told by its AuthStore, from any thread."""

    STOPPED = ("stopped",)

    def __init__(self, store):
        self.store = store
        self.lock = threading.Lock()
        self.signature = self.state = None  # the file's version as last read, and what it held (None: unread)
        self.said = None  # the last failure logged
        self.logging = False  # turned on by the server (Logins.watch): a command says what it finds itself

    @staticmethod
    def holding(data):
        """What a parsed auth.json (None: none there) holds: ("chatgpt", the login's account; a refresh
        keeps it), ("apikey",) or ("none",)."""
        data = as_object(data)
        tokens = as_object(data.get("tokens"))
        if tokens.get("access_token"):
            return "chatgpt", token_account_id(tokens)
        return ("apikey",) if data.get("OPENAI_API_KEY") else ("none",)

    def read(self, signature, data):
        """The file was read (signature and data None: it is not there). The same version read
        again says nothing new: a login that stopped working stays so until the file changes."""
        state = self.holding(data)
        with self.lock:
            if self.signature == signature and self.state is not None:
                return
            before, self.signature, self.state = self.state, signature, state
        if before is None or before == state or not self.logging:
            return
        path = self.store.path
        if state[0] == "chatgpt":
            who = token_identity(as_object(data["tokens"]).get("id_token"))["email"] or state[1]
            log.info("%s now holds a ChatGPT login (%s): requests use it", path, who or "an unknown account")
        elif state[0] == "apikey":
            log.info("%s now holds an API key", path)
        else:
            self.say("the login in %s is gone (the file %s): %s" % (
                path, "was removed" if data is None else "holds none now", login_advice(self.store.home)))

    def stopped(self, exc):
        """A refresh failed for good (an AuthError): said once, until the file changes. Returns `exc`."""
        with self.lock:
            working, self.state = self.state is None or self.state[0] == "chatgpt", self.STOPPED
        if working and self.logging:
            self.say("the ChatGPT login stopped working: %s" % exc)
        return exc

    def say(self, text):
        self.said = text
        log.warning(text)


class AuthStore:
    """The Codex CLI's auth.json: which mode we run in, headers, token refresh.

    Called from the upstream worker threads. The file is shared with the
    Codex CLI, which may refresh it at any time, so it is re-read whenever it
    changes, and a refresh re-reads it under a lock before spending the
    refresh token (refresh tokens rotate: each can be used once).
    """

    MODE_RECHECK = 0.25  # seconds mode() trusts its last look (each is a stat() on the event loop)

    def __init__(self, config, post_json, codex_home=None):
        self.config = config
        self.home = codex_home or config.codex_home
        self.path = os.path.join(self.home, "auth.json")
        self.post_json = post_json  # (url, body) -> (status, parsed JSON or None)
        self.lock = threading.Lock()  # one refresh at a time in this process
        self.cached = None  # (stat signature, parsed data)
        self.known_mode = (0.0, None)  # (when, mode) of the last look for mode()
        self.refreshes = 0  # token refreshes done (for /metrics)
        self.due = (None, None)  # (parsed file, refresh_due_at of its tokens): worked out once per version
        self.watch = LoginWatch(self)

    # -- reading
    def read(self, fresh=False, patience=1.0):
        """The parsed file. Empty or torn content is retried for `patience`
        seconds: the Codex CLI rewrites it in place (truncate, then write)
        without a lock."""
        deadline = time.monotonic() + patience
        while True:
            try:
                signature, cached = file_signature(self.path), self.cached  # a refresh may reset it meanwhile
                if not fresh and cached and cached[0] == signature:
                    return cached[1]
                with open(self.path, "r", encoding="utf-8") as handle:
                    text = handle.read()
                data = json.loads(text)
                if not isinstance(data, dict):
                    raise ValueError("not an object")
                self.cached = (signature, data)
                self.watch.read(signature, data)
                return data
            except FileNotFoundError:
                self.watch.read(None, None)
                raise AuthError("No Codex login found at %s: %s, or use an API key (--auth apikey)."
                                % (self.path, login_advice(self.home)))
            except (ValueError, OSError) as exc:
                if time.monotonic() > deadline:
                    raise AuthError("Cannot read the Codex login in %s (%s): %s to write it anew."
                                    % (self.path, exc, login_advice(self.home)))
                time.sleep(0.05)

    def mode(self):
        """'apikey' or 'chatgpt', as --auth says; with auto, ChatGPT when auth.json has a login."""
        if self.config.auth in ("apikey", "chatgpt"):
            return self.config.auth
        when, mode = self.known_mode
        if mode and time.monotonic() - when < self.MODE_RECHECK:
            return mode
        mode = self.file_mode()
        self.known_mode = (time.monotonic(), mode)
        return mode

    def file_mode(self):
        try:  # called on the event loop: never wait for a file being rewritten
            data = self.read(patience=0)
        except AuthError:
            cached = self.cached
            data = cached[1] if cached else {}  # requests will explain a missing login
        tokens = as_object(data.get("tokens"))
        if data.get("OPENAI_API_KEY") and data.get("auth_mode") == "apikey":
            return "apikey"  # the Codex CLI's own API-key login
        if tokens.get("access_token"):
            return "chatgpt"  # a ChatGPT login wins over an OPENAI_API_KEY in the environment
        return "apikey" if data.get("OPENAI_API_KEY") or self.config.openai_api_key else "chatgpt"

    def identity(self):
        """Who the login in the file is (token_identity(), and when its access token expires), or None
        without one; never a token, and never waits (the event loop calls it)."""
        try:
            tokens = self.read(patience=0).get("tokens")
        except AuthError:
            return None
        if not isinstance(tokens, dict) or not tokens.get("access_token"):
            return None
        return dict(token_identity(tokens.get("id_token")), expires=token_expiry(tokens["access_token"]))

    def problem(self):
        """Why there is no usable login (the AuthError's words), or None."""
        try:
            self._tokens(self.read(patience=0))
        except AuthError as exc:
            return str(exc)
        return None

    def file_key(self):
        try:
            return self.read(patience=0).get("OPENAI_API_KEY")
        except AuthError:
            return None

    def api_key(self):
        """The API key: auth.json's, else OPENAI_API_KEY's."""
        key = self.file_key() or self.config.openai_api_key
        if not key:
            raise AuthError("No OpenAI API key found: put one in %s or OPENAI_API_KEY, or use a ChatGPT login "
                            "(--auth chatgpt)." % self.path)
        return key

    # -- ChatGPT tokens
    def _tokens(self, data):
        tokens = data.get("tokens")
        if not isinstance(tokens, dict) or not tokens.get("access_token"):
            raise AuthError("%s has no ChatGPT tokens: %s." % (self.path, login_advice(self.home)))
        return tokens

    def chatgpt_credentials(self):
        """(access token, account id), refreshed first when about to expire."""
        data = self.read()
        tokens = self._tokens(data)
        due = self.due  # read once: another thread may be setting it for another version
        if due[0] is not data:
            due = self.due = (data, refresh_due_at(tokens, data.get("last_refresh")))
        if due[1] is not None and wall_clock() > due[1]:
            tokens = self.refresh(tokens["access_token"])
        return self.credentials_of(tokens)

    @staticmethod
    def credentials_of(tokens):
        """(access token, account id) of a login's tokens; a line break pasted into the file is
        dropped (http.client would refuse the header, quoting the token)."""
        return tokens["access_token"].strip(), token_account_id(tokens)

    def refresh(self, stale_access_token):
        """New tokens in place of `stale_access_token`; single-flight.

        Whoever waited for the lock finds the file already refreshed (by us or
        by the Codex CLI) and uses that instead of spending the refresh token.
        The token endpoint gets --refresh-timeout seconds to answer.
        """
        try:
            with self.lock, FileLock(self.path + ".lock", self.config.refresh_timeout * 2):
                return self._refresh_locked(stale_access_token)
        except (AuthError, OSError) as exc:  # OSError: a read-only folder, say (no lock, no new file)
            raise self.watch.stopped(exc if isinstance(exc, AuthError) else AuthError(
                "Cannot update the Codex login in %s (%s): the proxy needs to write to that folder to refresh the "
                "token." % (self.path, exc.strerror or exc))) from None

    def _refresh_locked(self, stale_access_token):
        data = self.read(fresh=True)
        tokens = self._tokens(data)
        if tokens["access_token"].strip() != stale_access_token.strip() \
                and not tokens_expiring(tokens, data.get("last_refresh")):
            return tokens
        spent = tokens.get("refresh_token")
        if not spent:
            raise AuthError("The Codex login in %s has expired and has no refresh token: %s."
                            % (self.path, login_advice(self.home)))
        try:
            status, reply = self.post_json(self.config.refresh_token_url, {
                "client_id": OAUTH_CLIENT_ID, "grant_type": "refresh_token", "refresh_token": spent},
                self.config.refresh_timeout)
        except UpstreamUnavailable as exc:
            raise UpstreamUnavailable("Token refresh failed: %s" % exc, exc.status, fix=exc.fix) from None
        if status != 200 or not isinstance(reply, dict) or not reply.get("access_token"):
            return self._refresh_failed(status, reply, stale_access_token)
        return self._store(reply, spent)

    def _refresh_failed(self, status, reply, stale_access_token):
        code = refresh_error_code(reply)
        if code in PERMANENT_REFRESH_ERRORS or status == 401:
            # The Codex CLI may have spent the same refresh token a moment ago.
            again = self._tokens(self.read(fresh=True))
            if again["access_token"].strip() != stale_access_token.strip():
                return again
            raise AuthError("The Codex login in %s is no longer valid (%s): %s." % (
                self.path, code or "HTTP %s" % status, login_advice(self.home)))
        if status >= 500:  # the auth server's trouble, not the login's: worth a retry later
            raise UpstreamUnavailable("Token refresh failed: the auth server answered HTTP %s." % status)
        raise AuthError("Token refresh failed (HTTP %s%s)." % (status, ", " + code if code else ""))

    def _store(self, reply, spent):
        """Write refreshed tokens, into the file as it is now: if it no longer
        holds the refresh token we spent, someone logged in (or the Codex CLI
        refreshed) meanwhile, and their tokens are the ones to keep."""
        data = self.read(fresh=True)
        tokens = self._tokens(data)
        if tokens.get("refresh_token") != spent:
            log.info("%s changed during the token refresh: using it as it is", self.path)
            return tokens
        tokens.update((key, reply[key]) for key in ("access_token", "refresh_token", "id_token")
                      if reply.get(key))
        data["tokens"] = tokens
        data["last_refresh"] = utc_stamp()
        atomic_write_json(self.path, data)
        self.cached = None
        self.refreshes += 1
        log.info("refreshed the Codex access token")
        return tokens


def refresh_error_code(reply):
    """The error code of a failed refresh, in any of the shapes the server uses."""
    failure = UpstreamFailure.of_body(None, reply)
    return failure.oauth_error or failure.code


class Logins:
    """The ChatGPT logins the proxy serves on, one AuthStore per --codex-home (each
    with its own file, lock and refresh), and which of them serves a request.

    With one login every request simply uses it, with no bookkeeping. With
    several, a conversation (its session id, also its prompt cache key) sticks
    to the login that last served it while that login is available: the
    upstream prompt cache is the account's, so a move costs a cache miss. New
    conversations, and those whose login is unavailable, are placed by
    --login-strategy (place_conversation). A login that answers a usage limit
    rests until the limit resets, or until a re-check (LoginRests) shows it
    below its limit; one whose credentials fail (a dead refresh token, no login
    at all) is set aside, with one warning, until its auth.json changes
    (someone logged in again). Only when no login is left does a client hear of
    it: a 429 with the earliest reset while some rest, else a 401. Used from the
    upstream worker threads, and by /health on the event loop.
    """

    MAX_CONVERSATIONS = 10000  # conversations remembered; the longest unused are forgotten

    def __init__(self, config, post_json, recheck=None, previous=None):
        self.config = config  # read at each choice (--login-strategy, --login-recheck-interval): never copied
        self.stores = [AuthStore(config, post_json, home) for home in config.codex_homes]
        self.several = len(self.stores) > 1
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)  # notified when a re-check ends
        self.usage = [PlanUsage() for _ in self.stores]  # each login's windows, as last reported for it
        self.rests = LoginRests(self, recheck)
        self.resting = self.rests.resting  # login index -> (until (epoch seconds), the limit's code, details)
        self.aside = {}  # login index -> (its auth.json's file_signature then, why)
        self.conversations = collections.OrderedDict()  # conversation -> login index
        self.turn = [0]  # round-robin: the login that the next new conversation tries first
        if previous is not None:
            self.take_over(previous)

    def take_over(self, previous):
        """A reload's new logins go on where `previous` (the Logins they replace) was, for each folder
        still listed: its rest and re-check times, a setting aside, its usage, its conversations,
        the round-robin turn. Copied, not shared: a request in flight goes on with `previous`, whose
        login numbers are not these. A login that `previous` is re-checking now is due at once here
        (what that re-check finds reaches `previous` only)."""
        homes = [store.home for store in self.stores]
        moved = {old: homes.index(store.home) for old, store in enumerate(previous.stores) if store.home in homes}
        with previous.lock:
            for old, new in moved.items():
                self.usage[new] = copy.deepcopy(previous.usage[old])
            self.resting.update((moved[old], rest) for old, rest in previous.resting.items() if old in moved)
            self.rests.rechecked.update((moved[old], 0 if previous.rests.checking[old] else when)
                                        for old, when in previous.rests.rechecked.items() if old in moved)
            self.aside.update((moved[old], why) for old, why in previous.aside.items() if old in moved)
            self.conversations.update((conversation, moved[old]) for conversation, old
                                      in previous.conversations.items() if old in moved)
            self.turn[0] = moved.get(previous.turn[0] % len(previous.stores), 0)

    def watch(self):
        """From now on, log a login that appears, goes away or stops working (LoginWatch): the server's,
        where a ChatGPT login can serve (not with --auth apikey)."""
        for store in self.stores:
            store.watch.logging = store.config.auth != "apikey"

    def name(self, index):
        identity = self.stores[index].identity() or {}
        return "login %d (%s)" % (index + 1, identity.get("email") or self.stores[index].path)

    def choose(self, conversation, tried=()):
        """The index of the login to serve `conversation` (None: no conversation) on: the one it
        sticks to while available, else the one --login-strategy places it on, among those not
        `tried` yet. Re-checks the resting logins that are due first; with none available, waits
        for the re-checks other requests are running. Raises when none is left."""
        deadline = time.monotonic() + self.config.connect_timeout + self.config.upstream_idle_timeout
        while True:
            self.rests.recheck_due()
            with self.lock:
                stuck = self.conversations.get(conversation) if conversation else None
                if stuck is not None and stuck not in tried and self.available(stuck):
                    return stuck
                candidates = [index for index in range(len(self.stores))
                              if index not in tried and self.available(index)]
                if candidates:
                    return place_conversation(self.config.login_strategy, candidates,
                                              [usage.used_percent() for usage in self.usage], self.turn)
                if not self.rests.waited_for_rechecks(deadline):
                    raise self.none_left()

    def reported(self, index, headers):
        """An answer of one login came, with its usage headers (429s too): its latest usage."""
        with self.lock:
            self.usage[index].from_headers(headers)

    def available(self, index):
        """Whether a login may serve now; ends a rest that is over and a setting aside whose file changed.
        (Called holding the lock.)"""
        if index in self.resting:
            if self.resting[index][0] > wall_clock():
                return False
            del self.resting[index]
        if index in self.aside:
            try:
                signature = file_signature(self.stores[index].path)
            except OSError:
                signature = None
            if signature == self.aside[index][0]:
                return False
            del self.aside[index]
        return True

    def served(self, conversation, index):
        """Remember which login served a conversation, for its next request."""
        if conversation:
            with self.lock:
                self.conversations[conversation] = index
                self.conversations.move_to_end(conversation)
                if len(self.conversations) > self.MAX_CONVERSATIONS:
                    self.conversations.popitem(last=False)

    def rest(self, index, error):
        """A login answered a usage limit (an UpstreamError): no requests for it until the limit resets."""
        self.rests.rest(index, error)

    def set_aside(self, index, exc):
        """A login's credentials failed (an AuthError): unused until its auth.json changes."""
        try:
            signature = file_signature(self.stores[index].path)
        except OSError:
            signature = None
        with self.lock:
            known = self.aside.get(index, (None, None))[1] == str(exc)
            self.aside[index] = (signature, str(exc))
        said = self.stores[index].watch.said  # (a login that stopped working has been said, with its fix)
        if not known:
            log.warning("setting %s aside until its auth.json changes%s", self.name(index),
                        "" if said and str(exc) in said else ": %s" % exc)

    def none_left(self):
        """What a client hears when no login can serve (called holding the lock)."""
        if not self.resting:
            return AuthError("No login can serve this request. %s" % " ".join(
                "Login %d: %s" % (index + 1, self.aside[index][1]) for index in sorted(self.aside)))
        index, (until, code, details) = min(self.resting.items(), key=lambda item: item[1][0])
        error = dict(details, type=code or "usage_limit_reached", resets_at=int(until),
                     resets_in_seconds=max(0, int(until - wall_clock() + 0.999)))
        error["message"] = "Every login has reached its usage limit; the first to reset is login %d, at %s." % (
            index + 1, utc_stamp(until, fraction=False))
        return UpstreamError(429, json.dumps({"error": error}).encode("utf-8"))

    def status(self, with_accounts):
        """Each login's state for /health (with its email, plan and folder if `with_accounts`); never tokens."""
        logins = []
        for index, store in enumerate(self.stores):
            identity = store.identity()
            entry = {"codex_home": store.home, "email": identity and identity["email"],
                     "plan": identity and identity["plan"]} if with_accounts else {}
            with self.lock:
                if identity is None or self.available(index):
                    entry["state"] = "ok" if identity else "not logged in"
                elif index in self.resting:
                    entry.update(state="resting", until=utc_stamp(self.resting[index][0], fraction=False))
                else:
                    entry.update(state="set aside", reason=self.aside[index][1])
                if with_accounts:  # None: the backend has not reported it yet
                    entry["used_percent"] = self.usage[index].used_percent() if self.usage[index].windows else None
            logins.append(entry)
        return logins

    def describe(self):
        """The start line's words on credentials."""
        first = self.stores[0]
        if first.mode() == "apikey":
            try:
                first.api_key()
            except AuthError as exc:
                return "NO API KEY: %s" % exc
            where = first.path if first.file_key() else "OPENAI_API_KEY"
            return "API key from %s -> %s" % (where, first.config.openai_base_url)
        if not self.several:
            return "ChatGPT login %s -> %s" % (login_summary(first), first.config.chatgpt_base_url)
        return "%d ChatGPT logins -> %s (new conversations: --login-strategy %s)%s" % (
            len(self.stores), first.config.chatgpt_base_url, self.config.login_strategy,
            "".join("\n    %d. %s" % (n, login_summary(store)) for n, store in enumerate(self.stores, 1)))


def place_conversation(strategy, candidates, used_percents, turn):
    """The login (an index of `candidates`, the available ones in the listed order) that a new
    conversation goes to: headroom, the lowest used percent (ties: the first listed); fill-first,
    the first; round-robin, the first at or after turn[0], which then moves past it."""
    if strategy == "headroom":
        return min(candidates, key=lambda index: (used_percents[index], index))
    if strategy == "round-robin":
        index = min(candidates, key=lambda index: (index - turn[0]) % len(used_percents))
        turn[0] = index + 1
        return index
    return candidates[0]


class LoginRests:
    """The logins resting after a usage limit, and their re-checks. A rest ends at the reset the
    backend gave, or as soon as a re-check (GET wham/usage with the login's own credentials, by
    `recheck`) shows every window below 100%. A resting login is re-checked at its reset, and
    before it at most once per --login-recheck-interval, counted from its 429 or its last re-check.
    Re-checks run when a request needs a login (Logins.choose, on an upstream worker thread): a
    login that came back serves that very request, and a client hears of a limit only after them;
    a request that finds no login available while another runs a re-check waits for its end."""

    DEFAULT_REST = 3600.0  # seconds a login rests when its usage limit names no reset time

    def __init__(self, logins, recheck):
        self.logins, self.recheck = logins, recheck
        self.resting = {}  # login index -> (until (epoch seconds), the limit's code, details of it)
        self.rechecked = {}  # resting login index -> when its last re-check (or its 429) was
        self.checking = collections.Counter()  # login index -> re-checks of it in progress

    def rest(self, index, error):
        """A login answered a usage limit (an UpstreamError): no requests for it until the limit resets."""
        details = error.limit_details() or {}
        until = details.get("resets_at")
        if not isinstance(until, (int, float)):
            seconds = details.get("resets_in_seconds")
            until = wall_clock() + (seconds if isinstance(seconds, (int, float)) else self.DEFAULT_REST)
        with self.logins.lock:
            self.resting[index] = (until, error.code, details)
            self.rechecked[index] = wall_clock()
        log.warning("%s reached its usage limit (%s): it rests until %s, and requests move to another login",
                    self.logins.name(index), error.code, utc_stamp(until, fraction=False))

    def recheck_due(self):
        """Re-check each resting login whose re-check is due (claimed under the lock, so that one
        request does it while others go on)."""
        if self.recheck is None:
            return
        now = wall_clock()
        with self.logins.lock:
            interval = self.logins.config.login_recheck_interval
            due = [index for index, (until, _, _) in sorted(self.resting.items())
                   if now >= min(until, self.rechecked.get(index, now) + interval)]
            self.rechecked.update(dict.fromkeys(due, now))
            self.checking.update(due)
        for index in due:
            try:
                self.recheck_one(index)
            finally:
                with self.logins.changed:
                    self.checking[index] -= 1
                    self.logins.changed.notify_all()

    def waited_for_rechecks(self, deadline):
        """With no login available: wait (holding the lock, until `deadline`, time.monotonic) for a
        re-check that another request is running to end, as it may bring its login back. False
        when none runs or the deadline has passed: the client hears that no login is left."""
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not any(self.checking.values()):
            return False
        self.logins.changed.wait(remaining)
        return True

    def recheck_one(self, index):
        """Ask the backend how full a resting login is: below its limit ends the rest; still at it,
        the rest lasts until the full window resets (or one more interval, if none says when). A
        failed re-check changes nothing: the rest ends at its reset. (Not holding the lock.)"""
        try:
            payload = self.recheck(self.logins.stores[index])
        except (ProxyError, OSError) as exc:
            return log.warning("re-checking the usage of %s failed: %s", self.logins.name(index), exc)
        return self.shown(index, payload)

    def shown(self, index, payload):
        """What wham/usage showed of a login (a re-check's, or `usage`'s): its latest usage; for a
        resting one, the end of its rest, or how much longer it lasts."""
        name = self.logins.name(index)
        with self.logins.lock:
            usage = self.logins.usage[index]
            usage.from_wham(payload)  # its latest usage, for headroom too
            until = usage.limited_until()
            if index not in self.resting:
                return None
            if until is None:
                del self.resting[index]
                self.rechecked.pop(index, None)
            else:
                until = until if until > wall_clock() else wall_clock() + self.logins.config.login_recheck_interval
                self.resting[index] = (until,) + self.resting[index][1:]
        if until is None:
            return log.warning("%s is below its usage limit again (re-checked: %g%% used): it serves new "
                               "conversations again", name, usage.used_percent())
        return log.info("%s is still at its usage limit (re-checked): it rests until %s", name,
                        utc_stamp(until, fraction=False))


def login_usage_lines(logins, failures=None):
    """Each login's usage as the backend last reported it, for people (the start lines, `usage`):
    a line naming it (and until when it rests), then its windows; `failures`: the login indexes
    whose usage could not be asked, with why."""
    lines = []
    for index, usage in enumerate(logins.usage):
        with logins.lock:
            until = logins.resting.get(index, (0,))[0]
        rest = ", resting until %s" % moment_for_people(until) if until > wall_clock() else ""
        lines.append("%s%s:" % (logins.name(index), rest))
        if index in (failures or {}):
            lines.append("  not known (%s)" % failure_text(failures[index]))
        else:
            lines += ["  " + line for line in usage.lines() or ["no usage reported yet"]]
    return lines


def login_summary(store):
    """Whose login an AuthStore's file holds, and where it is (for start lines)."""
    identity = store.identity()
    if identity is None:
        return "from %s: NOT FOUND (%s)" % (store.path, login_advice(store.home))
    return "%s (%s plan) from %s" % (identity["email"] or "of unknown email", identity["plan"] or "unknown",
                                     store.path)


# Logging in (`python3 codex_proxy.py login`): the Codex CLI's two ways, for machines without it. Each
# machine needs a login of its own: a refresh token is spent by its first use, so a copied auth.json
# stops working on one machine as soon as the other refreshes (refresh_token_reused).

LOGIN_GIVE_UP_AFTER = 15 * 60  # seconds a login waits for the user, as the Codex CLI's
LOGIN_CALLBACK_PORT = 1455  # the browser login's local page: the port the auth server sends the Codex CLI back to
LOGIN_SCOPE = "openid profile email offline_access"
DEFAULT_POLL_INTERVAL = 5.0  # seconds between device-login polls when the server names no interval
LOGIN_TOKENS = ("id_token", "access_token", "refresh_token")


class LoginFailed(ProxyError):
    """A login that cannot finish; the message says why and what to do instead."""

    code = "login_failed"


def base64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def poll_interval(value):
    """Seconds between device-login polls, from the server's interval (a number or a string)."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return DEFAULT_POLL_INTERVAL
    return min(max(seconds, 0.1), 60.0) if seconds > 0 else DEFAULT_POLL_INTERVAL  # no busy loop, no long sleep


def seconds_in_words(seconds):
    return "%g minutes" % (seconds / 60.0) if seconds >= 60 else "%g seconds" % seconds


class Login:
    """Logging in to ChatGPT with a device code (any browser, on any machine) or with
    a browser on this machine (PKCE), as `codex login` does; both end with tokens
    from the issuer's /oauth/token. Calls go through a ConnectionPool, so --proxy,
    HTTPS_PROXY, NO_PROXY and the CA bundle apply as for every other call."""

    def __init__(self, config, issuer):
        self.config = config
        self.issuer = issuer.rstrip("/")
        self.pool = ConnectionPool(config)

    def post(self, path, body, form=False):
        return self.pool.post(self.issuer + path, body, self.config.refresh_timeout, form)

    @staticmethod
    def refused(what, status, reply):
        said = UpstreamFailure.of_body(status, reply).message
        return LoginFailed("%s failed: the auth server answered HTTP %s (%s)." % (what, status, said))

    def with_device_code(self, give_up_after):
        status, reply = self.post("/api/accounts/deviceauth/usercode", {"client_id": OAUTH_CLIENT_ID})
        if status == 404:
            raise LoginFailed("Device code login is not enabled for this account or workspace (the auth server "
                              "answered 404). Log in with a browser instead: python3 codex_proxy.py login --browser")
        reply = reply if isinstance(reply, dict) else {}
        user_code = reply.get("user_code") or reply.get("usercode")
        if status != 200 or not reply.get("device_auth_id") or not user_code:
            raise self.refused("Asking for a device code", status, reply)
        print("To log in, open this page in a browser, on this machine or any other:\n\n    %s/codex/device\n\n"
              "sign in, and enter this one-time code (it expires in %s; never share it):\n\n    %s\n\n"
              "Waiting for the code to be entered... (Ctrl-C cancels)" % (self.issuer, seconds_in_words(give_up_after),
                                                                         user_code), flush=True)
        grant = self.poll(reply["device_auth_id"], user_code, poll_interval(reply.get("interval")),
                          give_up_after)
        return self.exchange(grant["authorization_code"], self.issuer + "/deviceauth/callback",
                             grant["code_verifier"])

    def poll(self, device_auth_id, user_code, interval, give_up_after):
        """The device login's grant, once the code has been entered (403 and 404 mean not yet)."""
        deadline = time.monotonic() + give_up_after
        while True:
            status, reply = self.post("/api/accounts/deviceauth/token",
                                       {"device_auth_id": device_auth_id, "user_code": user_code})
            if status == 200 and isinstance(reply, dict) and reply.get("authorization_code") \
                    and reply.get("code_verifier"):
                return reply
            if status not in (403, 404, 429) and status < 500:  # 429 and 5xx: the server's trouble, for now
                raise self.refused("Device login", status, reply)
            if time.monotonic() + interval > deadline:
                raise LoginFailed("The code was not entered within %s. Run `python3 codex_proxy.py login` again "
                                  "for a new one." % seconds_in_words(give_up_after))
            time.sleep(interval)

    def with_browser(self, port, give_up_after):
        """Send the user's browser to the issuer's sign-in page; it comes back to a page on this
        machine with a code, which (with the PKCE verifier only we know) buys the tokens."""
        verifier = base64url(os.urandom(64))
        state = base64url(os.urandom(32))
        redirect_uri = "http://localhost:%d/auth/callback" % port
        page = LoginCallback(port, state)  # first: a taken port must fail before the user signs in
        try:
            url = self.issuer + "/oauth/authorize?" + urllib.parse.urlencode([
                ("response_type", "code"), ("client_id", OAUTH_CLIENT_ID), ("redirect_uri", redirect_uri),
                ("scope", LOGIN_SCOPE),
                ("code_challenge", base64url(hashlib.sha256(verifier.encode("ascii")).digest())),
                ("code_challenge_method", "S256"), ("id_token_add_organizations", "true"),
                ("codex_cli_simplified_flow", "true"), ("state", state), ("originator", CODEX_ORIGINATOR)],
                quote_via=urllib.parse.quote)
            print("To log in, open this page in a browser on this machine (it sends the browser back to %s):"
                  "\n\n    %s\n" % (redirect_uri, url), flush=True)
            if open_browser(url):
                print("(It should have opened in your browser.)", flush=True)
            print("Waiting for the browser to come back... (Ctrl-C cancels)", flush=True)
            return page.wait(time.monotonic() + give_up_after, give_up_after,
                             lambda code: self.exchange(code, redirect_uri, verifier))
        finally:
            page.close()

    def exchange(self, code, redirect_uri, verifier):
        """Tokens for an authorization code (form-encoded, as the issuer wants it)."""
        status, reply = self.post("/oauth/token", {
            "grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
            "client_id": OAUTH_CLIENT_ID, "code_verifier": verifier}, form=True)
        if status != 200 or not isinstance(reply, dict) or not all(
                isinstance(reply.get(key), str) and reply[key] for key in LOGIN_TOKENS):
            raise self.refused("Exchanging the sign-in for tokens", status, reply)
        return reply


class LoginCallback:
    """The page on 127.0.0.1 the browser comes back to after signing in
    (/auth/callback?code=&state=), answering one request at a time until the
    right one: a request whose state is not this login's did not come from this
    sign-in, and is refused and waited past."""

    def __init__(self, port, state):
        self.state = state
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if os.name != "nt":  # a previous login's closed connections (TIME_WAIT) must not keep the port
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind(("127.0.0.1", port))
            self.sock.listen(8)
        except OSError as exc:
            self.sock.close()
            raise LoginFailed("Cannot listen on 127.0.0.1:%d, where the browser comes back after signing in "
                              "(%s): another login (or `codex login`) may be waiting there. Finish or stop it, or "
                              "log in with a device code instead: python3 codex_proxy.py login"
                              % (port, exc.strerror or exc))
        self.sock.settimeout(0.5)  # wakes up to notice the deadline (and Ctrl-C, on Windows)

    def close(self):
        self.sock.close()

    def wait(self, deadline, give_up_after, exchange):
        """The tokens exchange(code) gives for the first right request."""
        while time.monotonic() < deadline:
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            with conn:
                tokens = self.serve(conn, exchange)
            if tokens is not None:
                return tokens
        raise LoginFailed("The sign-in was not finished within %s. Run `python3 codex_proxy.py login --browser` "
                          "again." % seconds_in_words(give_up_after))

    def serve(self, conn, exchange):
        """Answer one request; the tokens once the right one came, else None."""
        conn.settimeout(10)
        reader = HTTPReader()
        try:
            kind, request = reader.next_event()
            while kind is NEED_DATA:
                reader.feed(conn.recv(4096))
                kind, request = reader.next_event()
        except (HTTPError, OSError):
            return None
        if kind is not MESSAGE_HEAD:  # closed before a request
            return None
        query = {name: values[-1] for name, values in urllib.parse.parse_qs(request.query).items()}
        if request.path != "/auth/callback":
            return self.send_page(conn, 404, "Not found.")
        if not hmac.compare_digest(query.get("state", "").encode(), self.state.encode()):
            return self.send_page(conn, 400, "This sign-in did not start here (state mismatch): ignored.")
        if query.get("error") or not query.get("code"):
            failure = LoginFailed("The sign-in was refused: %s." % (
                query.get("error_description") or query.get("error") or "no authorization code came back"))
            self.send_page(conn, 400, str(failure))
            raise failure
        try:
            tokens = exchange(query["code"])
        except LoginFailed as exc:
            self.send_page(conn, 502, str(exc))
            raise
        self.send_page(conn, 200, "Signed in. You can close this tab; the terminal says the rest.")
        return tokens

    @staticmethod
    def send_page(conn, status, text):
        body = ("codex-proxy login: %s\n" % text).encode("utf-8")
        try:
            conn.sendall(response_head(status, {"Content-Type": "text/plain; charset=utf-8",
                                                "Cache-Control": "no-store"}, False, len(body)) + body)
        except OSError:
            pass


def open_browser(url):
    """Open `url` in a browser where this machine shows one: never a text browser in this terminal."""
    if os.name == "posix" and sys.platform != "darwin" and not from_environment("DISPLAY", "WAYLAND_DISPLAY"):
        return False
    import webbrowser  # here: only a browser login needs it
    try:
        return webbrowser.open(url)
    except Exception:  # no browser after all: the URL is printed anyway
        return False


def save_login(codex_home, tokens):
    """Write a new login's auth.json exactly as the Codex CLI does (its keys, order and format), with the
    same atomic 0600 write and lock as a refresh; returns token_identity() of the login."""
    identity = token_identity(tokens["id_token"])
    data = {"auth_mode": "chatgpt", "OPENAI_API_KEY": None,
            "tokens": {"id_token": tokens["id_token"], "access_token": tokens["access_token"],
                       "refresh_token": tokens["refresh_token"], "account_id": identity["account_id"]},
            "last_refresh": utc_stamp()}
    os.makedirs(codex_home, mode=0o700, exist_ok=True)
    path = os.path.join(codex_home, "auth.json")
    with FileLock(path + ".lock"):
        atomic_write_json(path, data)
    return identity


# ---- upstream client ---------------------------------------------------------

class UpstreamError(ProxyError):
    """The upstream answered an error status (before any streaming): its status, and the code and
    message of its body, as a client gets them; the fix by what it was."""

    def __init__(self, status, body=b"", headers=None):
        self.body = body
        self.headers = headers or {}
        self.failure = UpstreamFailure.of_body(status, _json_or_none(body), body)
        ProxyError.__init__(self, self.failure.message, status, self.failure.code)

    def limit_details(self):
        return self.failure.limit

    def retry_after(self):
        """From the header, else from the body: the backend sends no header for a usage limit."""
        return self.headers.get("retry-after") or self.failure.retry_after()

    @property
    def fix(self):
        resets = (self.limit_details() or {}).get("resets_at")
        if resets:
            return "wait until the limit resets, %s" % moment_for_people(resets)
        if self.status >= 500:
            return "the backend is having trouble: try again later"
        return {401: "log in again: " + LOGIN_WAYS, 403: "check that your plan includes Codex",
                404: "check --chatgpt-base-url (or --openai-base-url)", 429: "wait a moment and try again"
                }.get(self.status)


def _json_or_none(body):
    try:
        return json.loads(body.decode("utf-8")) if body else None
    except (ValueError, UnicodeDecodeError):
        return None


def proxy_for(url, explicit):
    """The proxy URL to use for an https `url`, or None (honours NO_PROXY)."""
    proxy = explicit or from_environment("HTTPS_PROXY", "https_proxy")
    if not proxy:
        return None
    host = urllib.parse.urlsplit(url).hostname or ""
    no_proxy = from_environment("NO_PROXY", "no_proxy") or ""
    for entry in (e.strip().lower() for e in no_proxy.split(",")):
        entry = re.sub(r":\d+$", "", entry)  # host:port entries: the host part
        if not entry:
            continue
        if entry == "*" or host == entry.lstrip(".") or host.endswith("." + entry.lstrip(".")):
            return None
    return proxy


class PlanUsage:
    """The plan's usage windows (the 5-hour "primary" and the weekly
    "secondary" one) as the backend last reported them: in the
    x-codex-primary-* / x-codex-secondary-* headers of every answer, or at
    wham/usage."""

    def __init__(self):
        self.windows = {}  # primary/secondary -> {"used_percent", "window_minutes", "resets_at"}
        self.updated = None
        self.limit_reached = False  # wham/usage's own word (headers have none)

    def used_percent(self):
        """The highest window's used percent (0 when never reported): how full this login is."""
        return max([window["used_percent"] for window in self.windows.values()
                    if window.get("used_percent") is not None] or [0])

    def limited_until(self):
        """None when every window is below 100% and no limit is reached; else when the last full
        window resets (0 if none says)."""
        full = [window.get("resets_at") or 0 for window in self.windows.values()
                if (window.get("used_percent") or 0) >= 100]
        return max(full) if full else 0 if self.limit_reached else None

    def from_headers(self, headers):
        if any("x-codex-%s-used-percent" % name in headers for name in ("primary", "secondary")):
            self.limit_reached = False
        for name in ("primary", "secondary"):
            used = headers.get("x-codex-%s-used-percent" % name)
            if used is None:
                continue
            window = {"used_percent": number_or_none(used),
                      "window_minutes": number_or_none(headers.get("x-codex-%s-window-minutes" % name))}
            reset = number_or_none(headers.get("x-codex-%s-reset-at" % name))
            after = number_or_none(headers.get("x-codex-%s-reset-after-seconds" % name))
            window["resets_at"] = reset if reset else wall_clock() + after if after is not None else None
            self.windows[name] = window
            self.updated = wall_clock()

    def from_wham(self, payload):
        limits = as_object(as_object(payload).get("rate_limit"))
        self.limit_reached = limits.get("limit_reached") is True or limits.get("allowed") is False
        for name in ("primary", "secondary"):
            window = as_object(limits.get(name + "_window"))
            if window:
                seconds = number_or_none(window.get("limit_window_seconds"))
                after = number_or_none(window.get("reset_after_seconds"))
                self.windows[name] = {
                    "used_percent": number_or_none(window.get("used_percent")),
                    "window_minutes": seconds / 60 if seconds else None,
                    "resets_at": number_or_none(window.get("reset_at")) or (
                        wall_clock() + after if after is not None else None)}
                self.updated = wall_clock()

    def lines(self):
        """One line per window: '5-hour window: 12% used, resets 14:05 (in 1h 20m)'."""
        out = []
        for name, window in sorted(self.windows.items()):
            minutes = window.get("window_minutes")
            label = {300: "5-hour", 10080: "weekly"}.get(int(minutes or 0),
                                                         "%g-minute" % minutes if minutes else name)
            line = "%s window: %s%% used" % (label, "%g" % window["used_percent"]
                                             if window.get("used_percent") is not None else "?")
            if window.get("resets_at"):
                line += ", resets %s" % moment_for_people(window["resets_at"])
            out.append(line)
        return out


def number_or_none(value):
    try:
        return float(value) if value is not None and value != "" else None
    except (TypeError, ValueError):
        return None


def moment_for_people(stamp):
    """A moment as the user reads it: local time, and how far from now."""
    seconds = int(stamp - wall_clock())
    moment = time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(stamp))
    if seconds < 0:
        return "%s (%s ago)" % (moment, duration(-seconds))
    return "%s (in %s)" % (moment, duration(seconds))


def duration(seconds):
    days, rest = divmod(int(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    parts = ["%dd" % days] * bool(days) + ["%dh" % hours] * bool(hours) + ["%dm" % minutes]
    return " ".join(parts[:2]) if seconds >= 60 else "%ds" % seconds


CONNECT_RETRY_DELAYS = (0.25, 0.75)  # seconds before each new try of a connection that failed


def describe_connect_failure(exc, target, proxy, timeout):
    """(the UpstreamUnavailable, worth another try) for a failure to connect to `target` (host:port),
    through `proxy` (a split URL) if there is one."""
    through = " through the proxy %s:%s" % (proxy.hostname, proxy.port or 80) if proxy else ""
    where = "the proxy %s:%s (--proxy or HTTPS_PROXY, on the way to %s)" % (
        proxy.hostname, proxy.port or 80, target) if proxy else "upstream " + target
    fix = PROXY_FIX if proxy else NETWORK_FIX
    if isinstance(exc, ssl.SSLError):  # also certificate errors
        return UpstreamUnavailable("cannot reach upstream %s%s: TLS failed (%s)" % (target, through, exc),
                                   fix=CA_BUNDLE_FIX), False
    if str(exc).startswith("Tunnel connection failed"):
        return UpstreamUnavailable("cannot reach upstream %s%s: the proxy refused the tunnel (%s)" % (
            target, through, exc), fix=PROXY_FIX), False
    if isinstance(exc, socket.timeout):
        return UpstreamUnavailable("cannot reach %s: no answer within %gs" % (where, timeout), 504, fix=fix), False
    if isinstance(exc, socket.gaierror):
        return UpstreamUnavailable("cannot reach %s: DNS lookup failed (%s)" % (where, exc), fix=fix), True
    if isinstance(exc, ConnectionRefusedError):
        return UpstreamUnavailable("cannot reach %s: connection refused" % where, fix=fix), True
    return UpstreamUnavailable("cannot reach %s: %s" % (where, exc), fix=fix), True


class ConnectionPool:
    """Blocking keep-alive HTTP connections, one idle list per origin.

    Used only from the upstream worker threads.
    """

    def __init__(self, config):
        self.config = config
        self.idle = collections.defaultdict(list)
        self.lock = threading.Lock()
        self.context = None

    @property
    def ssl_context(self):
        """Made at the first TLS connection: loading the CA bundle takes a while."""
        if self.context is None:
            self.context = ssl.create_default_context(cafile=self.config.ca_file)
        return self.context

    def _new_connection(self, scheme, host, port, proxy):
        import http.client  # here, not at the top: the proxy starts faster and smaller without it
        timeout = self.config.connect_timeout
        if proxy:
            # The hop to the proxy itself is plain TCP, as with urllib and requests.
            conn = http.client.HTTPSConnection(proxy.hostname, proxy.port or 80, timeout=timeout,
                                               context=self.ssl_context)
            headers = {}
            if proxy.username:
                creds = "%s:%s" % (urllib.parse.unquote(proxy.username), urllib.parse.unquote(proxy.password or ""))
                headers["Proxy-Authorization"] = "Basic " + base64.b64encode(creds.encode()).decode()
            conn.set_tunnel(host, port, headers=headers)
            return conn
        if scheme == "https":
            return http.client.HTTPSConnection(host, port, timeout=timeout, context=self.ssl_context)
        return http.client.HTTPConnection(host, port, timeout=timeout)

    def _connect(self, scheme, host, port, url):
        """A new connection. Failures to connect at all (DNS, refused, reset)
        are tried again twice, a little later, before the caller hears of them;
        they are reported as UpstreamUnavailable saying what failed where."""
        proxy = proxy_for(url, self.config.proxy) if scheme == "https" else None
        proxy = urllib.parse.urlsplit(proxy if "://" in proxy else "http://" + proxy) if proxy else None
        for delay in CONNECT_RETRY_DELAYS + (None,):
            conn = self._new_connection(scheme, host, port, proxy)
            try:
                conn.connect()
                conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return conn
            except BaseException as exc:
                conn.close()
                if not isinstance(exc, OSError):
                    raise
                failure, retry = describe_connect_failure(exc, "%s:%d" % (host, port), proxy,
                                                          self.config.connect_timeout)
                if delay is None or not retry:
                    raise failure from None
                log.info("%s; trying again in %gs", failure, delay)
                time.sleep(delay)

    def request(self, method, url, headers, body, timeout=None):
        """Send a request; returns (origin, connection, response) with the head
        read. `timeout`: how long the upstream may stay silent (default
        --upstream-idle-timeout)."""
        import http.client
        parts = urllib.parse.urlsplit(url)
        scheme = parts.scheme
        port = parts.port or (443 if scheme == "https" else 80)
        origin = (scheme, parts.hostname, port)
        target = parts.path + ("?" + parts.query if parts.query else "")
        for attempt in (0, 1):
            conn = None
            if attempt == 0:  # a retry always takes a new connection
                with self.lock:
                    conn = self.idle[origin].pop() if self.idle[origin] else None
            reused = conn is not None
            try:
                if conn is None:
                    conn = self._connect(scheme, parts.hostname, port, url)
                conn.sock.settimeout(timeout or self.config.upstream_idle_timeout)
                conn.request(method, target, body=body, headers=headers)
                return origin, conn, conn.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError, ConnectionAbortedError,
                    ssl.SSLEOFError) as exc:  # a kept-alive connection the upstream had closed, often
                conn.close()
                if not reused:
                    raise UpstreamUnavailable("upstream %s:%d closed the connection: %s" % (parts.hostname, port, exc))
                self.discard_idle(origin)  # the upstream dropped kept-alive connections: all are stale
            except socket.timeout:
                conn and conn.close()
                raise UpstreamUnavailable("upstream %s:%d timed out" % (parts.hostname, port), 504)
            except (OSError, http.client.HTTPException) as exc:
                conn and conn.close()
                raise UpstreamUnavailable("cannot reach upstream %s:%d: %s" % (parts.hostname, port, exc))
            except ValueError:  # a header value http.client refuses: never quote it (it may be a key)
                conn and conn.close()
                raise UpstreamUnavailable("a request header for %s has characters HTTP does not allow (a key or "
                                          "token with a line break in it?)" % parts.hostname, 500)
            except BaseException:  # cancelled, say: that connection is done for
                conn and conn.close()
                raise

    def post(self, url, body, timeout=None, form=False):
        """Blocking POST without our auth headers (token endpoints): `body` as JSON, or form-encoded
        with `form`; returns (status, the answer's JSON or None)."""
        if form:
            content_type, payload = "application/x-www-form-urlencoded", urllib.parse.urlencode(body).encode()
        else:
            content_type, payload = "application/json", json.dumps(body).encode("utf-8")
        return self.exchange("POST", url, {"Content-Type": content_type, "Accept": "application/json",
                                           "Content-Length": str(len(payload))}, payload, timeout)

    def get(self, url, timeout=None):
        """Blocking GET without our auth headers; returns (status, the answer's JSON or None)."""
        return self.exchange("GET", url, {"Accept": "application/json"}, None, timeout)

    def exchange(self, method, url, headers, payload, timeout):
        """(status, the answer's JSON or None) of one request, read whole."""
        origin, conn, response = self.request(method, url, headers, payload, timeout)
        try:
            raw = response.read()
        finally:
            self.release(origin, conn, response)
        return response.status, _json_or_none(raw)

    def release(self, origin, conn, response):
        """Keep the connection for the next request if the answer was read to its end."""
        if response.isclosed() and not response.will_close and conn.sock is not None:
            with self.lock:
                self.idle[origin].append(conn)
        else:
            conn.close()

    def discard_idle(self, origin=None):
        with self.lock:
            origins = [origin] if origin else list(self.idle)
            stale = [conn for key in origins for conn in self.idle.pop(key, [])]
        for conn in stale:
            conn.close()


class UpstreamWorkers:
    """Threads for the blocking parts of upstream calls (connect, send, read
    the head): one per call being made, started when needed, so that no call
    ever waits for a thread, with small stacks; one left idle for IDLE_SECONDS
    ends. (Upstream bounds the calls in flight: --max-streams.)"""

    IDLE_SECONDS = 30.0
    STACK_SIZE = 512 * 1024

    def __init__(self):
        self.lock = threading.Lock()
        self.busy = 0  # calls in flight
        self.idle = []  # workers waiting for a call
        self.stopped = False

    def submit(self, job):
        """Run job() in a worker, in the caller's context (what it logs names the caller's request);
        False once stopped, or when no thread can be started."""
        job = functools.partial(contextvars.copy_context().run, job)
        with self.lock:
            if self.stopped:
                return False
            self.busy += 1
            worker = self.idle.pop() if self.idle else None
        if worker is not None:
            worker.jobs.append(job)
            worker.wake.release()
            return True
        # `wake` is a lock held while the worker has nothing to do (cheaper to hand over than an Event)
        worker = types.SimpleNamespace(jobs=collections.deque([job]), wake=_thread.allocate_lock())
        worker.wake.acquire()
        size = threading.stack_size()
        try:
            threading.stack_size(self.STACK_SIZE)
        except (ValueError, RuntimeError):  # pragma: no cover - a platform without stack sizes
            pass
        try:
            # Not threading.Thread: its start() waits until the thread runs, which would hold up
            # the event loop (the caller) for as long as the thread waits for the GIL.
            _thread.start_new_thread(self.work, (worker,))
        except RuntimeError:  # "can't start new thread": the system's limit, not ours
            with self.lock:
                self.busy -= 1
            return False
        finally:
            threading.stack_size(size)
        return True

    def work(self, worker):
        while True:
            job = worker.jobs.popleft()
            try:
                job()
            except BaseException:  # noqa: B902 - a job reports its own failures; the worker lives on
                log.exception("upstream worker failed")
            with self.lock:
                self.busy -= 1
                if self.stopped:
                    return
                self.idle.append(worker)
            while not worker.wake.acquire(timeout=self.IDLE_SECONDS):
                with self.lock:
                    if worker in self.idle:  # still unclaimed: this thread is not needed
                        self.idle.remove(worker)
                        return
            if not worker.jobs:  # woken by stop()
                return

    def stop(self):
        with self.lock:
            self.stopped = True
            idle, self.idle = self.idle, []
        for worker in idle:
            worker.wake.release()


class UpstreamStream:
    """An upstream answer whose body arrives in the event loop as it comes.

    A worker reads the answer's head; from then on the BodyReader reads the
    body on the loop. While the client is behind by more than BACKLOG bytes
    (a slow reader) the stream pauses, so the body is never buffered whole.
    `close()` (the client went away) stops it at once, and the connection is
    not reused."""

    BACKLOG = 1024 * 1024

    def __init__(self, loop, reader):
        self.loop = loop
        self.reader = reader
        self.pending = collections.deque()  # chunks, then None (the end) or an exception
        self.waiter = None
        self.lock = threading.Lock()  # between the worker and the loop, until the head is in
        self.backlog = 0  # bytes arrived and not consumed yet
        self.paused = False
        self.headed = False  # the worker is done with the connection: it is the loop's
        self.closed = False  # the client went away
        self.ended = False  # the end (or a failure) has arrived
        self.on_end = None  # called once when the stream ends
        self.on_failure = None  # a Counter of failures by kind
        self.conn = self.response = self.origin = None
        self.body = None  # the HTTPReader of the answer's body, once the BodyReader has it
        self.idle_timeout = reader.idle_timeout  # seconds it may stay silent (drawing an image: longer)
        self.idle_setting = "--upstream-idle-timeout"  # the setting that says so
        self.status = None
        self.headers = {}
        self.last = 0.0  # when data last came (monotonic)

    def arrive(self, item):
        self.pending.append(item)
        if isinstance(item, bytes):
            self.backlog += len(item)
        else:
            self.end()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def end(self):
        if not self.ended:
            self.ended = True
            if self.on_end is not None:
                self.on_end()

    async def chunks(self):
        """The body as it arrives, all that came since the last look joined in
        one chunk; raises UpstreamUnavailable if it broke off."""
        while True:
            if not self.pending:
                self.waiter = self.loop.create_future()
                await self.waiter
                self.waiter = None
            items = list(self.pending)
            self.pending.clear()
            data = [item for item in items if isinstance(item, bytes)]
            if data:
                self.backlog -= sum(map(len, data))
                if self.paused and self.backlog <= self.BACKLOG // 2:
                    self.reader.resume(self)
                yield b"".join(data)
            last = items[-1]
            if last is None:
                return
            if isinstance(last, Exception):
                raise last

    async def read(self):
        return b"".join([chunk async for chunk in self.chunks()])

    def close(self):
        """Stop reading now (the client went away)."""
        with self.lock:
            if self.closed or self.ended:
                return
            self.closed = True
            ours = self.headed  # else the worker closes the connection when its head is in
        if ours and self in self.reader.streams:
            self.reader.finish(self, False)
        elif ours:
            self.conn.close()
        self.arrive(None)


class BodyReader:
    """Reads the bodies of the upstream answers in flight, on the event loop.

    The workers connect, send and read heads (blocking http.client calls);
    each body is then read here as its socket becomes readable, without a
    thread switch per piece, which under load costs more than the piece.
    It also ends streams silent for --upstream-idle-timeout and puts complete
    connections back into the pool."""

    def __init__(self, loop, pool, idle_timeout):
        self.loop = loop
        self.pool = pool
        self.idle_timeout = idle_timeout
        self.streams = set()
        self.timer = None  # ends silent streams

    def add(self, stream):
        """Take over a stream whose head a worker has read."""
        self.streams.add(stream)
        stream.last = time.monotonic()
        stream.body = HTTPReader.body_of(stream.response.chunked, stream.response.length)
        sock = stream.conn.sock
        sock.setblocking(False)
        try:  # what http.client's buffer holds already (reading the head may have read more)
            early = stream.response.fp.peek(0)
            early = stream.response.fp.read(len(early)) if early else b""
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            early = b""
        except (OSError, ValueError) as exc:
            return self.finish(stream, UpstreamUnavailable("upstream connection failed: %s" % exc))
        stream.response.close()  # the socket is read directly from now on: http.client's buffer can go
        if early:
            self.take(stream, early)
        if stream in self.streams:
            self.loop.add_reader(sock.fileno(), self.read, stream)
            if isinstance(sock, ssl.SSLSocket):
                self.read(stream)  # decrypted bytes may wait in the TLS layer, which the selector cannot see
        if self.timer is not None and stream.idle_timeout < self.idle_timeout:
            self.timer.cancel()  # due sooner than the timer looks: expire() sets it again
            self.timer = None
        if self.timer is None:
            self.timer = self.loop.call_later(min(self.idle_timeout, stream.idle_timeout), self.expire)

    def read(self, stream):
        try:
            self.read_available(stream)
        except Exception as exc:  # a bug must end this stream with an error, never leave it hanging
            log.exception("reading an upstream answer failed")
            self.finish(stream, UpstreamUnavailable("the proxy failed reading the upstream answer: %s" % exc))

    def read_available(self, stream):
        sock = stream.conn.sock
        while True:
            try:
                data = sock.recv(65536)
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return
            except (OSError, ValueError) as exc:
                return self.finish(stream, UpstreamUnavailable("upstream connection failed: %s" % exc))
            self.take(stream, data)  # b"": the end of the connection (which may end the answer)
            if not data or stream not in self.streams or stream.paused or (
                    len(data) < 65536 and not isinstance(sock, ssl.SSLSocket)):
                return  # all there was (a TLS socket is read until it says so)

    def take(self, stream, data):
        stream.last = time.monotonic()
        try:
            payload, ended = stream.body.body_bytes(data)
        except HTTPError as exc:
            return self.finish(stream, UpstreamUnavailable(
                "upstream connection failed: the answer broke off" if stream.body.eof
                else "upstream sent a malformed body: %s" % (exc.message[:1].lower() + exc.message[1:])))
        if payload:
            stream.arrive(payload)
            if stream.backlog > stream.BACKLOG and not stream.paused:
                stream.paused = True  # the client is slow: wait until it has read some
                self.loop.remove_reader(stream.conn.sock.fileno())
        if ended:
            self.finish(stream, None)

    def resume(self, stream):
        if stream in self.streams and stream.paused:
            stream.paused = False
            stream.last = time.monotonic()
            self.loop.add_reader(stream.conn.sock.fileno(), self.read, stream)

    def expire(self):
        """End the streams silent for --upstream-idle-timeout; look again when the next one could be."""
        now = time.monotonic()
        for stream in [s for s in self.streams if s.last + s.idle_timeout <= now and not s.paused]:
            self.finish(stream, UpstreamUnavailable("upstream sent nothing for too long (%s)" % stream.idle_setting,
                                                    504))
        due = [s.last + s.idle_timeout for s in self.streams if not s.paused]
        self.timer = None
        if self.streams:
            self.timer = self.loop.call_at(self.loop.time() + (min(due + [now + self.idle_timeout]) - now),
                                           self.expire)

    def finish(self, stream, outcome):
        """End a stream: None, complete (its connection goes back to the pool);
        an exception, failed; False, closed because its client left."""
        if stream not in self.streams:
            return
        self.streams.discard(stream)
        sock = stream.conn.sock
        if not stream.paused and sock is not None:
            self.loop.remove_reader(sock.fileno())
        if outcome is None and not stream.body.buf and not stream.body.eof:
            sock.settimeout(self.pool.config.upstream_idle_timeout)  # blocking again, for a worker
            self.pool.release(stream.origin, stream.conn, stream.response)
        else:
            stream.conn.close()
        if isinstance(outcome, Exception) and stream.on_failure is not None:
            stream.on_failure["idle_timeout" if outcome.status == 504 else "broken_stream"] += 1
        if outcome is not False:
            stream.arrive(outcome)

    def close_all(self):
        for stream in list(self.streams):
            self.finish(stream, False)
        if self.timer is not None:
            self.timer.cancel()


class Upstream:
    """The one way to call upstream: auth headers, refresh-and-retry, streaming."""

    def __init__(self, config):
        self.config = config
        self.pool = ConnectionPool(config)
        self.workers = UpstreamWorkers()
        self.readers = {}  # event loop -> its BodyReader
        self.open_streams = 0  # answers whose body has not ended yet
        self.usage = PlanUsage()
        self.errors = collections.Counter()  # upstream failures by kind (for /metrics)
        self.logins = Logins(config, self.pool.post, self.login_usage)
        self.auth_store = self.logins.stores[0]  # the first login: it decides the mode

    def mode(self):
        return self.auth_store.mode()

    def use_logins(self, config):
        """The logins of `config`'s --codex-home folders, from now on (a reload's): new Logins, watched,
        going on where the old ones were for each folder still listed (Logins.take_over)."""
        self.logins = Logins(config, self.pool.post, self.login_usage, previous=self.logins)
        self.logins.watch()
        self.auth_store = self.logins.stores[0]

    def base_url(self):
        return self.config.openai_base_url if self.mode() == "apikey" else self.config.chatgpt_base_url

    def streams(self):  # upstream calls in flight now (being sent, or their answer being read)
        return self.open_streams

    def _headers(self, extra, login):
        headers = {"Content-Type": "application/json"}
        if self.mode() == "apikey":
            headers["Authorization"] = "Bearer " + login.api_key().strip()
            headers["User-Agent"] = "codex-proxy/%s" % __version__
        else:
            token, account = login.chatgpt_credentials()
            headers["Authorization"] = "Bearer " + token
            if account:
                headers["ChatGPT-Account-ID"] = account
            headers["originator"] = CODEX_ORIGINATOR
            headers["User-Agent"] = "%s/%s (codex-proxy %s; %s)" % (
                CODEX_ORIGINATOR, CODEX_CLIENT_VERSION, __version__, sys.platform)
        headers.update(extra or {})
        return headers, headers["Authorization"][7:]

    def _send(self, method, url, payload, extra_headers, login):
        """Send with one login's credentials; after a 401, refresh them and send once more."""
        headers, token = self._headers(extra_headers, login)
        if payload is not None:
            headers["Content-Length"] = str(len(payload))
        origin, conn, response = self.pool.request(method, url, headers, payload)
        if response.status == 401 and self.mode() == "chatgpt":
            response.read()
            self.pool.release(origin, conn, response)
            token, account = AuthStore.credentials_of(login.refresh(token))
            headers["Authorization"] = "Bearer " + token  # the refresh may have found another login
            headers.pop("ChatGPT-Account-ID", None)
            if account:
                headers["ChatGPT-Account-ID"] = account
            origin, conn, response = self.pool.request(method, url, headers, payload)
        return origin, conn, response

    def _send_on_logins(self, logins, method, url, payload, extra_headers):
        """Several logins: send with the one the conversation sticks to; on a usage limit or dead
        credentials, with the next one, before anything reaches the client. `logins`: those of the
        request's start (a reload may put new ones in their place meanwhile)."""
        conversation = (extra_headers or {}).get("session_id")
        tried = set()
        while True:
            index = logins.choose(conversation, tried)  # raises when none is left
            tried.add(index)
            try:
                origin, conn, response = self._send(method, url, payload, extra_headers, logins.stores[index])
            except AuthError as exc:
                logins.set_aside(index, exc)
                continue
            logins.reported(index, {k.lower(): v for k, v in response.getheaders()})
            if response.status != 429:
                logins.served(conversation, index)
                return origin, conn, response
            error = UpstreamError(429, response.read(), {k.lower(): v for k, v in response.getheaders()})
            self.pool.release(origin, conn, response)
            if error.code not in USAGE_LIMIT_CODES:
                raise error
            logins.rest(index, error)

    def _open_blocking(self, stream, method, path, body, extra_headers):
        """Worker thread: send (on the right login), then hand over the answer's head."""
        url = path if "://" in path else self.base_url().rstrip("/") + path
        payload = None if body is None else compact_json(body).encode("utf-8", "replace")
        logins = self.logins  # read once: a reload may replace them while this request is sent
        if logins.several and self.mode() == "chatgpt":
            origin, conn, response = self._send_on_logins(logins, method, url, payload, extra_headers)
        else:
            origin, conn, response = self._send(method, url, payload, extra_headers, logins.stores[0])
        stream.conn = conn
        stream.status = response.status
        stream.headers = {k.lower(): v for k, v in response.getheaders()}
        if not logins.several:
            logins.reported(0, stream.headers)
        return origin, conn, response

    def _run(self, stream, head_future, method, path, body, extra_headers):
        if stream.closed:
            return  # the client left while this request waited for a thread: never send it
        try:
            origin, conn, response = self._open_blocking(stream, method, path, body, extra_headers)
        except BaseException as exc:  # noqa: B902 - handed to the loop, never lost
            stream.loop.call_soon_threadsafe(_settle, head_future, None, exc)
            return
        with stream.lock:
            stream.origin, stream.response = origin, response
            stream.headed = not stream.closed
        if not stream.headed:  # the client left meanwhile
            return conn.close()
        # From here on the connection is the loop's: its BodyReader reads the body.
        stream.loop.call_soon_threadsafe(_settle, head_future, True, None)

    async def open(self, method, path, body=None, headers=None, drawing=False):
        """Send a request; returns an UpstreamStream once the answer's head is in (`drawing`: the
        answer may draw an image, and stay silent for --image-timeout). Raises UpstreamError for an
        error status (its body read), AuthError without usable credentials, UpstreamUnavailable."""
        loop = asyncio.get_running_loop()
        reader = self.readers.get(loop) or self.readers.setdefault(
            loop, BodyReader(loop, self.pool, self.config.upstream_idle_timeout))
        record = REQUEST.get()
        if record is not None:  # the id of this answer, not of an earlier call (the catalog's) if it fails
            record.pop("upstream_id", None)
        stream = UpstreamStream(loop, reader)
        if drawing:
            stream.idle_timeout, stream.idle_setting = self.config.image_timeout, "--image-timeout"
        head = loop.create_future()
        if self.open_streams >= self.config.max_streams or \
                not self.workers.submit(lambda: self._run(stream, head, method, path, body, headers)):
            raise UpstreamUnavailable("All %d upstream streams (--max-streams) are in use; try again in a moment."
                                      % self.config.max_streams, 503, retry_after=1)
        self.open_streams += 1
        stream.on_end = self.stream_ended
        try:
            await head
        except BaseException as exc:
            stream.close()  # never sent, or closed by its worker, or (head in) by the reader
            stream.end()
            if isinstance(exc, UpstreamUnavailable):
                self.errors["timeout" if exc.status == 504 else "unreachable"] += 1
            raise
        reader.add(stream)
        self.usage.from_headers(stream.headers)
        note_upstream_id(stream.headers)
        if stream.status >= 400:
            raw = await stream.read()
            self.errors["http_%d" % stream.status] += 1
            raise UpstreamError(stream.status, raw, stream.headers)
        stream.on_failure = self.errors
        return stream

    def stream_ended(self):
        self.open_streams -= 1

    async def fetch_json(self, method, path, body=None, headers=None):
        stream = await self.open(method, path, body, headers)
        raw = await stream.read()
        payload = _json_or_none(raw)
        if payload is None:
            raise UpstreamUnavailable("upstream answered something that is not JSON")
        return payload

    def wham_usage_url(self):
        base = self.config.chatgpt_base_url.rstrip("/")
        return (base[:-len("/codex")] if base.endswith("/codex") else base) + "/wham/usage"

    async def fetch_usage(self):
        """The plan's usage windows from the backend (ChatGPT mode), into self.usage."""
        self.usage.from_wham(await self.fetch_json("GET", self.wham_usage_url()))
        return self.usage

    def login_usage(self, login):
        """wham/usage asked with one login's (AuthStore's) own credentials (a worker thread's re-check
        of a resting login): its JSON, or an UpstreamError/UpstreamUnavailable."""
        origin, conn, response = self._send("GET", self.wham_usage_url(), None, None, login)
        raw = response.read()
        self.pool.release(origin, conn, response)
        if response.status != 200:
            raise UpstreamError(response.status, raw, {k.lower(): v for k, v in response.getheaders()})
        payload = _json_or_none(raw)
        if not isinstance(payload, dict):
            raise UpstreamUnavailable("wham/usage answered something that is not a JSON object")
        return payload

    def shutdown(self, wait=0):
        """Stop the workers; with `wait`, give a token refresh in progress that long to finish."""
        self.workers.stop()
        for reader in list(self.readers.values()):
            reader.close_all()
        self.pool.discard_idle()
        deadline = time.monotonic() + wait
        for login in self.logins.stores if wait else ():
            if login.lock.acquire(timeout=max(0, deadline - time.monotonic())):
                login.lock.release()


async def fetch_each_login_usage(upstream):
    """Ask wham/usage for each login, with its own credentials (the start lines and `usage` with
    several logins), into that login's usage; the failures, by login index."""
    loop, logins = asyncio.get_running_loop(), upstream.logins
    failures = {}
    for index, login in enumerate(logins.stores):
        try:
            payload = await loop.run_in_executor(None, upstream.login_usage, login)
        except ProxyError as exc:
            failures[index] = exc
            continue
        logins.rests.shown(index, payload)  # (a resting login below its limit serves again)
    return failures


UPSTREAM_ID_HEADERS = ("x-request-id", "x-oai-request-id")  # where an upstream answer says its own id


def upstream_request_id(headers):
    """The id the upstream gave its answer (printable, at most 256 characters), or None."""
    for name in UPSTREAM_ID_HEADERS:
        value = headers.get(name)
        if value and SAFE_HEADER_VALUE.match(value):
            return value
    return None


def note_upstream_id(headers):
    """Keep an upstream answer's id in the record of the request being served (REQUEST), for its log line."""
    record, upstream_id = REQUEST.get(), upstream_request_id(headers)
    if record is not None and upstream_id:
        record["upstream_id"] = upstream_id


def _settle(future, result, exc):
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


class ModelCatalog:
    """The account's model catalog, cached for --models-cache-ttl seconds, and model-name resolution."""

    FAILURE_TTL = 5.0  # seconds a failed fetch is answered from memory, not tried again

    def __init__(self, upstream, config):
        self.upstream = upstream
        self.config = config
        self.cache = {}  # mode -> (fetched at, CatalogSnapshot)
        self.failures = {}  # mode -> (failed at, exception)
        self.lock = None

    def remembered(self, mode):
        """The cached snapshot, or the error of a fetch that failed a moment ago (raised), or None."""
        cached = self.cache.get(mode)
        if cached and time.monotonic() - cached[0] < self.config.models_cache_ttl:
            return cached[1]
        failed = self.failures.get(mode)
        if failed and time.monotonic() - failed[0] < self.FAILURE_TTL:
            raise failed[1].with_traceback(None)  # else each raise would add to the one it keeps
        return None

    async def entries(self):
        """Catalog entries: ChatGPT mode's listed models by priority, or the API's list."""
        return (await self.snapshot()).listed

    def cached_slugs(self):
        """The listed models of the last fetch, without fetching (an error message names them)."""
        cached = self.cache.get(self.upstream.mode())
        return [m.get("slug") for m in cached[1].listed] if cached else []

    async def snapshot(self):
        mode = self.upstream.mode()
        snapshot = self.remembered(mode)
        if snapshot is not None:
            return snapshot
        if self.lock is None:
            self.lock = asyncio.Lock()
        async with self.lock:  # one fetch, however many requests wait for it
            snapshot = self.remembered(mode)
            if snapshot is not None:
                return snapshot
            try:
                snapshot = await self.fetch(mode)
            except (UpstreamError, UpstreamUnavailable, LockTimeout) as exc:
                self.failures[mode] = (time.monotonic(), exc)
                raise
            self.cache[mode] = (time.monotonic(), snapshot)
            self.failures.pop(mode, None)
            return snapshot

    async def fetch(self, mode):
        if mode == "apikey":
            payload = as_object(await self.upstream.fetch_json("GET", "/models"))
            entries = [dict(m, slug=m.get("id")) for m in payload.get("data") or () if isinstance(m, dict)]
            return CatalogSnapshot(entries, entries)
        payload = as_object(await self.upstream.fetch_json("GET", "/models?client_version=" + CODEX_CLIENT_VERSION))
        everything = [m for m in payload.get("models") or () if isinstance(m, dict) and m.get("slug")]
        entries = [m for m in everything
                   if m.get("visibility", "list") == "list" and m.get("supported_in_api") is not False]
        entries.sort(key=lambda m: (m.get("priority") if isinstance(m.get("priority"), (int, float))
                                    else float("inf")))
        return CatalogSnapshot(entries, everything)

    async def for_codex(self):
        """The catalog in the Codex CLI's own shape ({"models": [...]}, what it asks with
        ?client_version=): the backend's entries, hidden ones too, as the backend gives them but
        for the keys that would lead Codex to a transport or feature this proxy does not serve;
        in API-key mode, the API's chat models as entries with the fields Codex requires."""
        snapshot = await self.snapshot()
        if self.upstream.mode() == "apikey":
            chat_models = [m["slug"] for m in snapshot.everything if is_api_chat_model(m.get("slug"))]
            return {"models": [codex_entry_for_api_model(slug, rank) for rank, slug in enumerate(chat_models, 1)]}
        return {"models": [{key: value for key, value in m.items() if key not in CODEX_KEYS_NOT_SERVED}
                           for m in snapshot.everything]}

    async def entry(self, slug):
        for model in await self.entries():
            if model.get("slug") == slug:
                return model
        return None

    async def resolve(self, requested):
        """(upstream model, its catalog entry or None) for a client's model name."""
        entries = []
        try:
            entries = await self.entries()
        except (UpstreamError, UpstreamUnavailable, LockTimeout) as exc:
            if requested.lower().startswith("claude") and not self.config.default_model:
                raise  # without the catalog there is nothing to map a claude-* name to
            log.warning("model catalog unavailable: %s", exc)
        slugs = [m.get("slug") for m in entries]
        default = claude_default_model(self.config.default_model, self.upstream.mode(), slugs)
        model = resolve_model(requested, slugs, self.config.model_map, default)
        return model, next((m for m in entries if m.get("slug") == model), None)


CatalogSnapshot = collections.namedtuple("CatalogSnapshot", "listed everything")
CatalogSnapshot.__doc__ = """A fetched catalog: the entries clients are shown (listed, by priority), and every
entry the backend gave (everything)."""

# Keys of a backend catalog entry that would make the Codex CLI use a transport or a feature
# this proxy does not serve (Responses Lite, speed tiers, upgrade and
# availability prompts, multi-agent and auto-review variants): left out of /v1/models?client_version=.
CODEX_KEYS_NOT_SERVED = frozenset((
    "use_responses_lite", "upgrade", "availability_nux", "model_messages",
    "multi_agent_version", "auto_review_model_override", "additional_speed_tiers", "service_tiers",
    "default_service_tier", "service_tier"))

API_CHAT_MODEL = re.compile(r"^(gpt-|o\d|codex-|chatgpt-)")
API_NOT_CHAT_MODEL = re.compile(r"(audio|realtime|tts|transcribe|image|embedding|search|moderation)")
API_REASONING_MODEL = re.compile(r"^(gpt-5|o\d|codex-)")


def is_api_chat_model(slug):
    """Whether an API model id names a model that answers /responses with text (not an embedding,
    speech, image or realtime model): the ones worth offering in a chat client's model picker."""
    return bool(slug and API_CHAT_MODEL.match(slug) and not API_NOT_CHAT_MODEL.search(slug))


def codex_entry_for_api_model(slug, priority):
    """An API model as a Codex catalog entry: the fields Codex 0.169 cannot decode the catalog
    without, no instructions (Codex then uses its own), reasoning levels for reasoning models."""
    reasoning = bool(API_REASONING_MODEL.match(slug))
    entry = {"slug": slug, "display_name": slug, "visibility": "list", "supported_in_api": True,
             "priority": priority, "shell_type": "shell_command", "support_verbosity": slug.startswith("gpt-5"),
             "supported_reasoning_levels": [{"effort": effort, "description": "%s reasoning effort" % effort}
                                            for effort in (("low", "medium", "high") if reasoning else ())],
             "truncation_policy": {"mode": "bytes", "limit": 10000}, "experimental_supported_tools": []}
    if reasoning:
        entry["default_reasoning_level"] = "medium"
    return entry


LATEST_TAG = ":latest"


def resolve_model(requested, slugs, model_map=(), default_model=None):
    """The upstream model for a client's model name.

    --model-map patterns win; a name the catalog has passes (with Ollama's :latest tag too, which
    upstream never sees); any claude-*
    name maps to a small catalog model (haiku) or the default one, so
    Anthropic clients work with no flag; other names pass unchanged and the
    backend says clearly if it does not know them.
    """
    bare = requested[:-len(LATEST_TAG)] if requested.endswith(LATEST_TAG) else requested  # Ollama's default tag
    for pattern, target in model_map:
        if fnmatch.fnmatchcase(requested, pattern) or fnmatch.fnmatchcase(bare, pattern):
            return target
    requested = bare
    if requested in slugs:
        return requested
    if requested.lower().startswith("claude"):
        if "haiku" in requested.lower():
            small = [s for s in slugs if re.search(r"(mini|nano|small|spark)", s)]
            if small:
                return small[0]
        if default_model:
            return default_model
        if slugs:
            return slugs[0]
    return requested


def claude_default_model(configured, mode, slugs):
    """The model a claude-* name gets when no --model-map pattern says: --default-model, else in API-key
    mode the newest gpt-N (the API's list has no priorities to go by), else None (the catalog's first)."""
    if not configured and mode == "apikey":
        return newest_gpt_model(slugs)
    return configured


def newest_gpt_model(slugs):
    """The highest-numbered plain gpt-N(.M) model in a list, or None."""
    numbered = [(tuple(int(n) for n in m.group(1).split(".")), slug) for slug in slugs
                for m in [re.match(r"^gpt-(\d+(?:\.\d+)?)$", slug or "")] if m]
    return max(numbered)[1] if numbered else None


# ---- HTTP/1.1: bytes in, events out ---------------------------------------------

MAX_REQUEST_LINE = 8 * 1024
MAX_HEADER_BYTES = 64 * 1024
MAX_HEADER_COUNT = 128
HEAD_END = re.compile(rb"\r?\n\r?\n")
REQUEST_LINE = re.compile(r"^([!#$%&'*+.^_`|~0-9A-Za-z-]+) (\S+) HTTP/(\d)\.(\d)$")
# (a field's name, its value without the blanks around it); the value ends at its last non-blank at once,
# where a lazy `.*?[ \t]*$` tried the rest of the line at each of its characters (a 64 KB line: 14 s)
HEADER_LINE = re.compile(r"^([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*(.*[^ \t\n]|)[ \t]*$")
CONTROL_CHARACTER = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # not allowed in a field value (RFC 9110 5.5)
CONTENT_LENGTH = re.compile(r"^[0-9]{1,18}$")
CHUNK_SIZE = re.compile(rb"^[0-9a-fA-F]{1,16}$")
MAX_CHUNK_LINE = 4096  # bytes a chunk-size line (the size and its extensions) may take
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
MAX_CHUNKS = 100000  # a request body in more chunks is refused (clients send KBs a chunk; each costs loop time)
LINGER_SECONDS = 2.0  # after refusing a request: how long what the client still sends is read and dropped
REASONS = {status.value: status.phrase for status in http.HTTPStatus}
REASONS[529] = "Overloaded"


class HTTPError(ClientError):
    """A request refused at the HTTP level; the connection is closed after the answer.

    `target` is the request target when the request line was readable, so
    that the answer can speak the dialect of its path."""

    def __init__(self, status, message, target=None, code=None):
        ClientError.__init__(self, message, status, code=code)
        self.target = target


class ClientGone(Exception):  # not a ProxyError: no one is left to answer, so it is how a handler stops
    """The client closed its connection."""


class Headers:
    """Case-insensitive header fields; a repeated field keeps every value."""

    def __init__(self, pairs=()):
        self.pairs = list(pairs)
        self.values = {}
        for name, value in self.pairs:
            self.values.setdefault(name.lower(), []).append(value)

    def get(self, name, default=None):
        values = self.values.get(name.lower())
        return ", ".join(values) if values else default

    def get_all(self, name):
        return self.values.get(name.lower(), [])

    def __contains__(self, name):
        return name.lower() in self.values


class Request:
    def __init__(self, method, target, version, headers, body=b""):
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.body = body
        self.size = len(body)  # the body's size as received (the body itself is let go once parsed)
        split = urllib.parse.urlsplit(target)
        self.path = split.path or "/"
        self.query = split.query


def parse_request_head(head):
    """A Request (without its body) from the bytes of a request head, blank line excluded."""
    lines = head.decode("latin-1").replace("\r\n", "\n").split("\n")
    if len(lines[0]) > MAX_REQUEST_LINE:
        raise HTTPError(431, "Request line too long (limit %d bytes)" % MAX_REQUEST_LINE)
    match = REQUEST_LINE.match(lines[0])
    if not match:
        raise HTTPError(400, "Malformed request line")
    method, target, major, minor = match.groups()
    if major != "1":
        raise HTTPError(505, "HTTP version not supported", target)
    if len(lines) - 1 > MAX_HEADER_COUNT:
        raise HTTPError(431, "Too many header fields (limit %d)" % MAX_HEADER_COUNT, target)
    pairs = []
    for line in lines[1:]:
        field = HEADER_LINE.match(line)
        if not field:  # includes obsolete line folding, which RFC 9112 lets us refuse
            raise HTTPError(400, "Malformed header line", target)
        if CONTROL_CHARACTER.search(field.group(2)):
            raise HTTPError(400, "Control character in the value of header %s" % field.group(1), target)
        pairs.append(field.groups())
    try:
        return Request(method, target, "1.1" if minor != "0" else "1.0", Headers(pairs))
    except ValueError:  # urlsplit refuses targets such as http://[x/
        raise HTTPError(400, "Malformed request target") from None


def body_framing(request, limit):
    """How the request's body is framed: ("chunked", None) or ("length", n)."""
    headers = request.headers
    too_large = "Request body too large (limit %d MB)" % (limit // (1024 * 1024))
    if "transfer-encoding" in headers:
        codings = [c.strip().lower() for c in headers.get("transfer-encoding").split(",")]
        if codings != ["chunked"]:
            raise HTTPError(501, "Unsupported Transfer-Encoding (only chunked)", request.target)
        if "content-length" in headers:
            raise HTTPError(400, "Both Content-Length and Transfer-Encoding given", request.target)
        return "chunked", None
    if "content-length" not in headers:
        return "length", 0
    values = {v.strip() for v in ",".join(headers.get_all("content-length")).split(",")}
    if len(values) != 1 or not all(CONTENT_LENGTH.match(v) for v in values):
        raise HTTPError(400, "Malformed Content-Length", request.target)
    length = int(values.pop())
    if length > limit:
        raise HTTPError(413, too_large, request.target)
    return "length", length


def response_head(status, headers, keep_alive, length=None):
    """The bytes of a response head; without `length` the body is chunked. A 101 (Switching Protocols)
    has no body, and its `headers` say its Connection (Upgrade): the connection goes on in another protocol."""
    lines = ["HTTP/1.1 %d %s" % (status, REASONS.get(status, "Unknown")), "Server: codex-proxy/" + __version__]
    for name, value in headers.items():
        if value is not None:
            lines.append("%s: %s" % (name, value))
    if status != 101:
        if length is not None:
            lines.append("Content-Length: %d" % length)
        elif keep_alive:  # a body that ends with the connection needs no framing
            lines.append("Transfer-Encoding: chunked")
        lines.append("Connection: " + ("keep-alive" if keep_alive else "close"))
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def chunk_size(line):
    """A chunk's size from its size line (extensions ignored). ValueError unless plain hex:
    int() alone would take "-5" or "5_0", and a negative size would never move on."""
    text = line.split(b";", 1)[0].strip()
    if not CHUNK_SIZE.match(text):
        raise ValueError("malformed chunk size")
    return int(text, 16)


def chunk_end(buf, pos):
    """Where the CRLF (or LF) after a chunk's data ends; None while it has not come whole."""
    if buf.startswith(b"\r\n", pos):
        return pos + 2
    if buf.startswith(b"\n", pos):
        return pos + 1
    if buf[pos:] in (b"", b"\r"):
        return None
    raise HTTPError(400, "Malformed chunked body")


# What HTTPReader.next_event() returns: (kind, value).
MESSAGE_HEAD = "head"  # value: the Request (its head; the body follows)
BODY_DATA = "data"  # value: body bytes, never empty
MESSAGE_END = "end"  # value: the trailer fields (Headers); the message is complete
NEED_DATA = "need data"  # value None: nothing more until more bytes are fed
PAUSED = "paused"  # value None: a message ended; next_message() reads the one after it
PEER_CLOSED = "closed"  # value None: the peer closed (fed b"") between messages
NO_TRAILERS = Headers()  # the MESSAGE_END of a message without trailer fields (never changed)


class BodyFraming:
    """The body half of HTTPReader (which see): a body by Content-Length,
    chunked (its trailer fields too), or up to the end of the connection."""

    def __init__(self, max_body=sys.maxsize, max_chunks=sys.maxsize):
        self.buf = b""  # fed and not consumed yet
        self.eof = False  # the peer closed: nothing comes after buf
        self.max_body = max_body  # chunked: the decoded body's limit (Content-Length: body_framing checks it)
        self.max_chunks = max_chunks
        self.next_message()

    def next_message(self):
        """Start on the next message, with what is left of the bytes fed."""
        self.left = 0  # bytes left of a Content-Length body or of the current chunk
        self.size = 0  # a chunked body's decoded bytes so far
        self.chunks = 0
        self.trailers = []
        self.trailer_bytes = 0
        self.failure = None  # the fault found after data that was handed out first

    def feed(self, data):
        """Bytes that came; b"" when the peer has closed."""
        if not data:
            self.eof = True
        else:
            self.buf = self.buf + data if self.buf else data

    def discard(self):
        """Drop what was fed and not read (sent on by a client during an answer after which it is closed)."""
        self.buf = b""

    def next_event(self):
        return self.STEPS[self.state](self)

    def incomplete(self):
        """At the end of the input, a message begun and not finished is an error."""
        if self.eof and (self.buf or self.state != "head"):
            raise HTTPError(400, "Incomplete message (the connection closed)")

    def frame(self, framing, length):
        if framing == "chunked":
            self.state = "chunk size"
        elif length is None:
            self.state = "until close"
        else:
            self.state, self.left = "length", length

    def read_length(self):
        if not self.left:
            self.state = "done"
            return MESSAGE_END, NO_TRAILERS
        buf = self.buf
        if not buf:
            self.incomplete()
            return NEED_DATA, None
        if len(buf) <= self.left:
            data, self.buf = buf, b""
        else:
            data, self.buf = buf[:self.left], buf[self.left:]
        self.left -= len(data)
        return BODY_DATA, data

    def read_until_close(self):
        if self.buf:
            data, self.buf = self.buf, b""
            return BODY_DATA, data
        if self.eof:
            self.state = "done"
            return MESSAGE_END, NO_TRAILERS
        return NEED_DATA, None

    def read_chunks(self):
        """As many chunks as the bytes hold (an SSE answer comes in many small ones), up to 1024, in one
        BODY_DATA event; data before a fault is an event of its own, so that the events do not depend
        on how the bytes were split. The hot path of every answer: its counters are kept in locals."""
        buf, state, out = self.buf, self.state, []
        pos, end = 0, len(buf)
        chunks, size = self.chunks, self.size
        max_body, max_chunks = self.max_body, self.max_chunks
        budget = chunks + 1024
        try:
            while pos < end and chunks < budget:
                if state == "chunk size":
                    line_end = buf.find(b"\n", pos, pos + MAX_CHUNK_LINE + 1)
                    if line_end == -1:
                        if end - pos > MAX_CHUNK_LINE:
                            raise HTTPError(400, "Malformed chunked body")
                        break
                    left = chunk_size(buf[pos:line_end])
                    pos = line_end + 1
                    if not left:
                        state = "trailer"
                        break
                    chunks += 1
                    size += left
                    if size > max_body or chunks > max_chunks:
                        self.over_limit(size, chunks)
                    stop = pos + left
                    if buf[stop:stop + 2] == b"\r\n":  # the common case: the whole chunk is here
                        out.append(buf[pos:stop])
                        pos = stop + 2
                        continue
                    self.left, state = left, "chunk data"
                if state == "chunk data":
                    piece = buf[pos:pos + self.left]
                    if piece:
                        out.append(piece)
                        pos += len(piece)
                        self.left -= len(piece)
                    if self.left:
                        break
                    state = "chunk end"
                after = chunk_end(buf, pos)
                if after is None:
                    break
                pos, state = after, "chunk size"
        except (HTTPError, ValueError) as exc:  # ValueError: from chunk_size
            fault = exc if isinstance(exc, HTTPError) else HTTPError(400, "Malformed chunk size")
            if not out:
                raise fault from None
            self.state, self.failure = "failed", fault
            return BODY_DATA, b"".join(out)
        self.buf, self.state = buf[pos:], state
        self.chunks, self.size = chunks, size
        if out:
            return BODY_DATA, b"".join(out)
        if state == "trailer":
            return self.read_trailer()
        self.incomplete()
        return NEED_DATA, None

    def read_failed(self):
        raise self.failure

    def over_limit(self, size, chunks):
        if size > self.max_body:
            raise HTTPError(413, "Request body too large (limit %d MB)" % (self.max_body // (1024 * 1024)))
        raise HTTPError(400, "Chunked body in too many chunks (more than %d)" % self.max_chunks)

    def read_trailer(self):
        """The trailer fields after the last chunk, up to the blank line (malformed ones are ignored)."""
        buf, pos = self.buf, 0
        while True:
            line_end = buf.find(b"\n", pos)
            if self.trailer_bytes + ((line_end + 1) if line_end != -1 else len(buf)) - pos > MAX_HEADER_BYTES:
                raise HTTPError(400, "Malformed chunked body")
            if line_end == -1:
                self.buf = buf[pos:]
                self.incomplete()
                return NEED_DATA, None
            line = buf[pos:line_end].rstrip(b"\r")
            self.trailer_bytes += line_end + 1 - pos
            pos = line_end + 1
            if not line:
                break
            field = HEADER_LINE.match(line.decode("latin-1"))
            if field:
                self.trailers.append(field.groups())
        self.buf, self.state = buf[pos:], "done"
        return MESSAGE_END, Headers(self.trailers)

    def read_done(self):
        return PAUSED, None

    def body_bytes(self, data):
        """Feed `data` (b"": the end of the input), then read a body's events at once:
        (the body bytes the input holds, whether the body has ended)."""
        if data:
            self.buf = self.buf + data if self.buf else data
        else:
            self.eof = True
        kind, data = self.STEPS[self.state](self)
        if kind is not BODY_DATA:
            return b"", kind is MESSAGE_END
        if not self.buf and self.state in self.GOING_ON and not self.eof:
            return data, False  # all read, and the body goes on: the next event can only be NEED_DATA
        out = [data]
        while True:
            kind, data = self.next_event()
            if kind is not BODY_DATA:
                return b"".join(out), kind is MESSAGE_END
            out.append(data)

    GOING_ON = frozenset(("chunk size", "chunk data", "chunk end", "until close"))  # states a body is not over in
    STEPS = {"length": read_length, "until close": read_until_close, "chunk size": read_chunks,
             "chunk data": read_chunks, "chunk end": read_chunks, "trailer": read_trailer, "done": read_done,
             "failed": read_failed}


class HTTPReader(BodyFraming):
    """HTTP/1.1 framing, sans-IO: bytes in (`feed`), events out (`next_event`).

    The one reader of HTTP framing: client requests (a head, then a body by
    Content-Length or chunked), the body of an upstream answer (whose head
    http.client read: `HTTPReader.body_of`), and the login callback's request.
    It never reads a socket or waits; the same bytes give the same events
    however they are split. Broken framing or a limit passed raises HTTPError
    with the status a server answers it with."""

    @classmethod
    def body_of(cls, chunked, length):
        """A reader of a body whose head was read elsewhere: chunked, `length`
        bytes, or (length None) up to the end of the connection."""
        reader = cls()
        reader.frame("chunked" if chunked else "length", length)
        return reader

    def next_message(self):
        """Start on the next message, with what is left of the bytes fed (a pipelined request)."""
        self.state = "head"
        self.request = None
        self.scanned = 0  # head bytes already searched for the head's end
        BodyFraming.next_message(self)

    def waiting(self):
        """Whether no byte of a next message has come (blank lines before a request are skipped)."""
        if self.state != "head" or self.scanned:
            return False
        if self.buf[:1] in (b"\r", b"\n"):
            self.skip_blank_lines()
        return not self.buf or self.buf == b"\r"

    def skip_blank_lines(self):
        buf, start = self.buf, 0
        while True:
            if buf.startswith(b"\r\n", start):
                start += 2
            elif buf.startswith(b"\n", start):
                start += 1
            else:
                break
        if start:
            self.buf = buf[start:]

    def read_head(self):
        if self.waiting():
            if self.eof:
                self.incomplete()
                return PEER_CLOSED, None
            return NEED_DATA, None
        buf = self.buf
        end = HEAD_END.search(buf, max(0, self.scanned - 3))
        # The limits, so that the same bytes pass or fail however they are split: a CR
        # may wait for its LF, and up to 3 bytes of the blank line may have come.
        if buf.find(b"\n", 0, MAX_REQUEST_LINE + 2) == -1 and \
                len(buf) - (buf[MAX_REQUEST_LINE:MAX_REQUEST_LINE + 1] == b"\r") > MAX_REQUEST_LINE:
            raise HTTPError(431, "Request line too long (limit %d bytes)" % MAX_REQUEST_LINE)
        if (end.start() if end else len(buf) - 3) > MAX_HEADER_BYTES:
            raise HTTPError(431, "Request headers too large (limit %d bytes)" % MAX_HEADER_BYTES)
        if not end:
            self.scanned = len(buf)
            self.incomplete()
            return NEED_DATA, None
        self.buf = buf[end.end():]
        self.request = parse_request_head(buf[:end.start()])
        self.state = "framing"
        return MESSAGE_HEAD, self.request

    def start_body(self):
        """Frame the request's body as its head says (once the head is accepted: a
        refused request's body is never read); whether body bytes are to come."""
        if self.state == "framing":
            self.frame(*body_framing(self.request, self.max_body))
        return self.state != "length" or self.left > 0

    def read_framing(self):
        self.start_body()
        return self.next_event()

    STEPS = dict(BodyFraming.STEPS, head=read_head, framing=read_framing)


class ConnectionState:
    """Where one client connection is, and the one place that decides whether it
    goes on after an answer (keep-alive) or closes. Sans-IO: the connection
    tells it what happened and asks it what to do."""

    # Between requests (shutdown may close it at once), in a request (it may finish), closed.
    IDLE, IN_REQUEST, CLOSED = "idle", "in a request", "closed"

    def __init__(self):
        self.phase = self.IDLE
        self.wanted = False  # the request allows another after it (its HTTP version, its Connection field)
        self.closing = False  # this connection ends after the current answer, whatever the request wants
        self.client_gone = False  # the client left before its answer ended

    @property
    def keep_alive(self):
        """Whether the answer being written says (and means) that another request may follow."""
        return self.wanted and not self.closing and not self.client_gone

    def idle(self):
        return self.phase == self.IDLE

    def request_begun(self):
        """A request's first bytes came."""
        self.phase = self.IN_REQUEST

    def head_received(self, request):
        tokens = [t.strip().lower() for t in request.headers.get("connection", "").split(",")]
        self.wanted = "keep-alive" in tokens if request.version == "1.0" else "close" not in tokens

    def streamed(self, request):
        """An answer of unknown length begins: whether it is chunked. It is where another request
        may follow it (HTTP/1.1 keep-alive); else (HTTP/1.0, or Connection: close) the client
        learns where it ends by the connection closing, and its head says no Transfer-Encoding."""
        if request.version == "1.0" or not self.keep_alive:
            self.closing = True
            return False
        return True

    def close_after_answer(self):
        """The connection closes after this answer: the server is shutting down, a refused
        request's body may be unread, or the client sent on during its answer."""
        self.closing = True

    def hung_up(self):
        self.client_gone = True

    def answered(self, finished):
        """The answer is over (`finished`: written whole); whether to read another request."""
        go_on = finished and self.keep_alive
        self.phase = self.IDLE if go_on else self.CLOSED
        return go_on

    def closed(self):
        self.phase = self.CLOSED


# ---- HTTP: multipart/form-data bodies ---------------------------------------------
# RFC 7578 forms in RFC 2046's framing, read from a body already received whole. Lines end in CRLF
# as the RFCs say, or in a bare LF where the first boundary line does (bodies built by hand do): the
# body keeps the line end it began with, so a part's data that ends in CR keeps it.

MAX_FORM_PARTS = 100
MAX_PART_HEAD = 16 * 1024  # bytes a part's header block may take
HEADER_PARAMETER = re.compile(r';[ \t]*(?:([^\s=;"]+)[ \t]*=[ \t]*("(?:[^"\\]|\\.)*"|[^;\s"]*)[ \t]*)?')
QUOTED_PAIR = re.compile(r"\\(.)", re.S)
EXTENDED_CHARSETS = ("utf-8", "iso-8859-1", "us-ascii")  # of RFC 5987's name*=charset'lang'text
HTML_FORM_ESCAPES = (("%22", '"'), ("%0D", "\r"), ("%0A", "\n"))  # how browsers and httpx quote names
PLAIN_TRANSFER_ENCODINGS = ("binary", "8bit", "7bit")  # RFC 7578 4.7: the bytes as they are


@dataclasses.dataclass
class FormPart:
    """One part of a multipart/form-data body, as it came."""

    name: str
    filename: str = None  # None: a text field
    content_type: str = None  # its media type, lower-cased, without parameters; None if not said
    data: bytes = b""


def parse_form_data(body, content_type):
    """The parts of a multipart/form-data body, in order (FormParts). Preamble and epilogue are
    ignored; a part's data is its bytes exactly (one copy of them). A ClientError says what is wrong:
    the Content-Type, a boundary line, a part's headers, too many parts."""
    dash = b"--" + form_boundary(content_type)
    newline, at = first_delimiter(body, dash)
    delimiter, parts = newline + dash, []
    # Data may hold what starts like a boundary line; only a whole one ends it. A regular expression
    # looks for one: a loop over each near miss would be as slow as they are many.
    delimiter_line = re.compile(re.escape(delimiter) + rb"(?:(--)|[ \t]*" + newline + rb")")
    while at is not None:  # `at`: where a part begins; None once the close delimiter is read
        if len(parts) == MAX_FORM_PARTS:
            raise ClientError("The form has more than %d parts." % MAX_FORM_PARTS)
        headers, start = part_headers(body, at, newline, delimiter, len(parts) + 1)
        end = delimiter_line.search(body, start)
        if end is None:
            raise ClientError("The form ends without its closing boundary line (%s--): the body is cut "
                              "short, or its boundary is not the Content-Type's." % dash.decode("ascii"))
        parts.append(form_part(headers, body[start:end.start()], len(parts) + 1))
        at = None if end.group(1) else end.end()  # after the close delimiter: the epilogue
    return parts


def form_boundary(content_type):
    """The boundary (bytes) a multipart/form-data Content-Type names."""
    kind, parameters = header_parameters(content_type or "", "Content-Type")
    if kind != "multipart/form-data":
        raise ClientError("The Content-Type is %s; expected multipart/form-data with a boundary."
                          % (one_line(content_type, 100) if content_type else "missing"))
    boundary = parameters.get("boundary")
    if not boundary:
        raise ClientError("The multipart/form-data Content-Type has no boundary parameter.")
    if len(boundary) > 70 or not all(" " <= c <= "~" for c in boundary):
        raise ClientError("The multipart/form-data boundary must be 1 to 70 printable ASCII characters "
                          "(RFC 2046), not %s." % one_line(repr(boundary), 100))
    return boundary.encode("ascii")


def header_parameters(value, header):
    """(a header's first word, lower-cased; its parameters by lower-cased name) for Content-Type or
    Content-Disposition. A quoted value loses its quotes and backslashes; an RFC 5987 value
    (`name*=charset'lang'text`) is decoded and kept as `name*`. A ClientError names `header`."""
    kind, _, rest = value.partition(";")
    parameters, at, rest = {}, 0, ";" + rest if _ else ""
    while at < len(rest):
        match = HEADER_PARAMETER.match(rest, at)
        if match is None or match.end() == at:
            raise ClientError("The %s is malformed: %s" % (header, one_line(value, 200)))
        at = match.end()
        name, text = match.group(1), match.group(2)
        if name is None:  # an empty parameter (`;;`, a `;` at the end)
            continue
        name = name.lower()
        if text.startswith('"'):
            text = QUOTED_PAIR.sub(r"\1", text[1:-1])
        if name.endswith("*"):  # unquoted, as RFC 5987 has it, or quoted, as some send it
            text = extended_value(text, name, header)
        if name in parameters:
            raise ClientError("The %s gives %s twice: %s" % (header, name, one_line(value, 200)))
        parameters[name] = text
    return kind.strip().lower(), parameters


def extended_value(text, name, header):
    """An RFC 5987 value (charset'language'percent-encoded text), decoded."""
    charset, quote, rest = text.partition("'")
    _, quote_again, encoded = rest.partition("'")
    if not (quote and quote_again) or charset.lower() not in EXTENDED_CHARSETS:
        raise ClientError("The %s's %s is not charset'language'text with charset UTF-8 or ISO-8859-1: %s"
                          % (header, name, one_line(text, 100)))
    try:
        return urllib.parse.unquote(encoded, encoding=charset.lower(), errors="strict")
    except UnicodeDecodeError:
        raise ClientError("The %s's %s is not %s: %s" % (header, name, charset, one_line(text, 100))) from None


def first_delimiter(body, dash):
    """(the body's line end, where its first part begins: None for a form of no parts), past the
    preamble. Lines end as the first boundary line does: in CRLF, else in a bare LF."""
    line = rb"(?:(--)|[ \t]*(\r?\n))"  # a boundary, then `--` (the close delimiter) or its line end
    match = re.compile(re.escape(dash) + line).match(body) or re.compile(b"\n" + re.escape(dash) + line).search(body)
    if match is None:
        raise ClientError("The form has no boundary line (%s): the body is not the form its Content-Type says."
                          % dash.decode("ascii"))
    return match.group(2) or b"\r\n", None if match.group(1) else match.end()


def part_headers(body, at, newline, delimiter, number):
    """(the headers of the part that begins at `at`, where its data begins)."""
    blank = newline * 2
    if body.startswith(newline, at):  # no headers at all
        return Headers(), at + len(newline)
    end = body.find(blank, at, at + MAX_PART_HEAD + len(blank))
    if end == -1 and len(body) - at >= MAX_PART_HEAD + len(blank):
        raise ClientError("Part %d of the form has headers over %d KB." % (number, MAX_PART_HEAD // 1024))
    if end == -1 or body.find(delimiter, at, end) != -1:
        raise ClientError("Part %d of the form has headers that do not end (no blank line before its data)."
                          % number)
    pairs = []
    for line in body[at:end].decode("utf-8", "replace").split(newline.decode("ascii")):
        field = HEADER_LINE.match(line)
        if not field or CONTROL_CHARACTER.search(field.group(2)):
            raise ClientError("Part %d of the form has a malformed header line: %s" % (number, one_line(line, 100)))
        pairs.append(field.groups())
    return Headers(pairs), end + len(blank)


def form_part(headers, data, number):
    """The FormPart of a part's headers and data; a ClientError if it is no form field."""
    dispositions = headers.get_all("content-disposition")
    if len(dispositions) != 1:
        raise ClientError("Part %d of the form has %s Content-Disposition header."
                          % (number, "more than one" if dispositions else "no"))
    header = "Content-Disposition of part %d" % number
    kind, parameters = header_parameters(dispositions[0], header)
    if kind != "form-data":
        raise ClientError("The %s is %r, not form-data." % (header, kind))
    name = form_parameter(parameters, "name")
    if name is None:
        raise ClientError("The %s has no name." % header)
    encoding = (headers.get("content-transfer-encoding") or "binary").strip().lower()
    if encoding not in PLAIN_TRANSFER_ENCODINGS:
        raise ClientError("Part %d of the form (%s) has Content-Transfer-Encoding %s; send its bytes as they are."
                          % (number, name, one_line(encoding, 40)), param=name)
    content_type = headers.get("content-type")
    if content_type is not None:
        content_type = content_type.partition(";")[0].strip().lower() or None
    return FormPart(name, form_parameter(parameters, "filename"), content_type, data)


def form_parameter(parameters, name):
    """A Content-Disposition's name or filename: its RFC 5987 form (name*) if given, else the plain one
    with the escapes of HTML forms undone (%22, %0D, %0A: what browsers and httpx send for ", CR, LF)."""
    if name + "*" in parameters:
        return parameters[name + "*"]
    value = parameters.get(name)
    for escape, character in HTML_FORM_ESCAPES if value is not None else ():
        value = value.replace(escape, character)
    return value


def form_fields(parts):
    """(text fields, files) of a form, the way an endpoint reads them. Text fields (the parts without
    a filename) by name, each decoded from UTF-8; one given as `name[]` is a list of its values under
    `name`, and any other name may be given once. Files (the parts with a filename) by name, each a
    list of FormParts in order, `name[]` read as `name` (OpenAI's SDK sends several images as image[])."""
    text, files = {}, {}
    for part in parts:
        listed = part.name.endswith("[]")
        name = part.name[:-2] if listed else part.name
        if part.filename is not None:
            files.setdefault(name, []).append(part)
            continue
        try:
            value = part.data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ClientError("The form field %s is not UTF-8 text (%s)." % (part.name, exc.reason),
                              param=name) from None
        if listed and isinstance(text.setdefault(name, []), list):
            text[name].append(value)
        elif name in text:
            raise ClientError("The form field %s is given more than once." % name, param=name)
        else:
            text[name] = value
    return text, files


# ---- WebSocket: RFC 6455, bytes in, frames out --------------------------------------
# The server's side of RFC 6455, sans-IO as HTTPReader is: the handshake (pure functions over a
# Request), WebSocketReader (a client's bytes in, its messages out) and the frame writer. No extension
# is agreed (a client offering permessage-deflate is answered without it, which RFC 7692 allows) and
# no subprotocol; so every RSV bit must be 0, and no frame is compressed.

WEBSOCKET_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 1.3: what the accept key hashes in
WEBSOCKET_VERSION = "13"
# Opcodes (RFC 6455 5.2); the control frames are those from OP_CLOSE up.
OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
DATA_OPCODES = (OP_CONTINUATION, OP_TEXT, OP_BINARY)
CONTROL_OPCODES = (OP_CLOSE, OP_PING, OP_PONG)
MAX_CONTROL_PAYLOAD = 125
# Close codes (RFC 6455 7.4.1) that this side says or reads.
CLOSE_NORMAL, CLOSE_GOING_AWAY, CLOSE_PROTOCOL_ERROR, CLOSE_UNSUPPORTED_DATA = 1000, 1001, 1002, 1003
CLOSE_NO_STATUS = 1005  # what a close frame without a code is read as (RFC 6455 7.1.5); never sent
CLOSE_INVALID_DATA, CLOSE_POLICY_VIOLATION, CLOSE_TOO_BIG = 1007, 1008, 1009


class WebSocketRefused(HTTPError):
    """A request that cannot become a WebSocket, answered in HTTP: `answer_headers` are the
    headers its answer needs (a 426 says the version or protocol the server speaks)."""

    def __init__(self, status, message, target=None, answer_headers=None):
        HTTPError.__init__(self, status, message, target)
        self.answer_headers = answer_headers or {}


def websocket_accept(key):
    """The Sec-WebSocket-Accept of a Sec-WebSocket-Key (RFC 6455 4.2.2)."""
    digest = hashlib.sha1((key + WEBSOCKET_GUID).encode("latin-1")).digest()
    return base64.b64encode(digest).decode("ascii")


def header_tokens(headers, name):
    """The comma-separated tokens of a header (every line of it), lower-cased."""
    return {token.strip().lower() for value in headers.get_all(name) for token in value.split(",")}


def websocket_upgrade(request):
    """The head of the 101 answer that makes `request` (its head) a WebSocket; a WebSocketRefused
    says why it cannot. Nothing is agreed beyond RFC 6455 itself: no extension, no subprotocol."""
    headers, target = request.headers, request.target
    if request.method != "GET":
        raise WebSocketRefused(405, "A WebSocket opens with GET, not %s." % request.method, target, {"Allow": "GET"})
    if request.version != "1.1":
        raise WebSocketRefused(400, "A WebSocket opens over HTTP/1.1.", target)
    if "websocket" not in header_tokens(headers, "upgrade") or "upgrade" not in header_tokens(headers, "connection"):
        raise WebSocketRefused(426, "This endpoint speaks WebSocket: send Upgrade: websocket and Connection: Upgrade.",
                               target, {"Upgrade": "websocket"})
    versions = headers.get_all("sec-websocket-version")
    if [version.strip() for version in versions] != [WEBSOCKET_VERSION]:
        raise WebSocketRefused(426, "Unsupported Sec-WebSocket-Version %s (this server speaks 13)."
                               % one_line(", ".join(versions) or "(none)", 40), target,
                               {"Sec-WebSocket-Version": WEBSOCKET_VERSION})
    keys = headers.get_all("sec-websocket-key")
    if len(keys) != 1 or not websocket_key_is_valid(keys[0].strip()):
        raise WebSocketRefused(400, "Sec-WebSocket-Key must be given once, the base64 of 16 bytes.", target)
    answer = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Accept": websocket_accept(keys[0].strip())}
    return response_head(101, answer, keep_alive=False)


def websocket_key_is_valid(key):
    """Whether a Sec-WebSocket-Key is the base64 of 16 bytes (RFC 6455 4.1), padding and all."""
    try:
        return len(key) == 24 and len(base64.b64decode(key, validate=True)) == 16
    except binascii.Error:
        return False


# What WebSocketReader.feed returns: a list of these (equal when of one kind and one value).
TextMessage = dataclasses.make_dataclass("TextMessage", [("text", str)], frozen=True)
BinaryMessage = dataclasses.make_dataclass("BinaryMessage", [("data", bytes)], frozen=True)
Ping = dataclasses.make_dataclass("Ping", [("payload", bytes)], frozen=True)
Pong = dataclasses.make_dataclass("Pong", [("payload", bytes)], frozen=True)


@dataclasses.dataclass(frozen=True)
class CloseReceived:
    """The client's close frame: its code (CLOSE_NO_STATUS if it gave none) and reason."""

    code: int
    reason: str = ""


@dataclasses.dataclass(frozen=True)
class ProtocolFailure:
    """The client broke RFC 6455: the server closes with `close_code` (1002, 1007, 1009)."""

    close_code: int
    reason: str


def unmask(payload, mask):
    """`payload` XOR its 4-byte `mask` repeated (RFC 6455 5.3), as one big int: at C speed,
    where a Python loop over the bytes takes seconds for 10 MB."""
    size = len(payload)
    if not size:
        return b""
    key = (mask * ((size + 3) // 4))[:size]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(size, "big")


def close_code_is_valid(code):
    """Whether a close frame may carry `code` (RFC 6455 7.4): the defined ones that are sent on
    the wire (not 1004-1006 or 1015), IANA's 1012-1014, and those of libraries and apps (3000-4999)."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def close_event(payload):
    """The CloseReceived (or ProtocolFailure) of a close frame's payload."""
    if not payload:
        return CloseReceived(CLOSE_NO_STATUS)
    if len(payload) == 1:
        return ProtocolFailure(CLOSE_PROTOCOL_ERROR, "A close frame's payload of 1 byte (a code takes 2).")
    code = int.from_bytes(payload[:2], "big")
    if not close_code_is_valid(code):
        return ProtocolFailure(CLOSE_PROTOCOL_ERROR, "Invalid close code %d." % code)
    try:
        return CloseReceived(code, payload[2:].decode("utf-8"))
    except UnicodeDecodeError:
        return ProtocolFailure(CLOSE_INVALID_DATA, "A close reason that is not UTF-8.")


class WebSocketReader:
    """A client's WebSocket frames, sans-IO (as HTTPReader): bytes in, events out (`feed`).

    Frames are read as RFC 6455 has a server read them: masked, no RSV bit (no extension is
    agreed), known opcodes; control frames unfragmented, of 125 bytes at most, and allowed
    between the fragments of a message; lengths in as few bytes as they fit (RFC 6455 5.2 says
    "MUST", so another encoding is refused, as h11 refuses what HTTP says must not be sent). A
    message is reassembled from its fragments; text must be UTF-8. A message over
    `max_message_bytes` fails as soon as a frame's length says so, before its payload is read.
    A ProtocolFailure or a CloseReceived is the last event: what comes after is not read.
    The same bytes give the same events however they are split."""

    def __init__(self, max_message_bytes):
        self.max_message_bytes = max_message_bytes
        self.buf, self.at = b"", 0  # the bytes fed, and where the unread ones start
        self.state = "header"  # "header", "payload", or "over" (after the last event)
        self.frame = None  # the frame whose payload is read: (fin, opcode, length, mask)
        self.payload, self.received = [], 0  # its payload (masked) so far, and its size
        self.message_opcode = None  # OP_TEXT or OP_BINARY while a fragmented message goes on
        self.fragments, self.message_size = [], 0  # its payloads (unmasked) so far, and their size

    def feed(self, data):
        """The events that `data` completes, in order (a list, often empty)."""
        if self.state == "over":
            return []
        self.buf = self.buf[self.at:] + data if self.at < len(self.buf) else data
        self.at, events = 0, []
        while self.state != "over":
            event = self.read_header() if self.state == "header" else self.read_payload()
            if event is NEED_DATA:
                break
            if event is not None:
                events.append(event)
            if isinstance(event, (ProtocolFailure, CloseReceived)):
                self.state, self.buf, self.at = "over", b"", 0
        return events

    def read_header(self):
        """A frame's header, checked as soon as its bytes say enough: NEED_DATA, a ProtocolFailure,
        or None (the header is read: its payload is next)."""
        buf, at = self.buf, self.at
        if len(buf) - at < 2:
            return NEED_DATA
        first, second = buf[at], buf[at + 1]
        fin, opcode, length = bool(first & 0x80), first & 0x0F, second & 0x7F
        failure = self.check_frame_start(first, second, opcode, fin, length)
        if failure:
            return failure
        extended = {126: 2, 127: 8}.get(length, 0)
        if len(buf) - at < 2 + extended:
            return NEED_DATA
        if extended:
            length = int.from_bytes(buf[at + 2:at + 2 + extended], "big")
            if length >> 63:
                return ProtocolFailure(CLOSE_PROTOCOL_ERROR, "A frame length with its most significant bit set.")
            if length <= (125 if extended == 2 else 0xFFFF):
                return ProtocolFailure(CLOSE_PROTOCOL_ERROR, "A frame length not in the fewest bytes it fits.")
        if opcode in DATA_OPCODES and self.message_size + length > self.max_message_bytes:
            return ProtocolFailure(CLOSE_TOO_BIG, "A message over %d bytes." % self.max_message_bytes)
        end = at + 2 + extended + 4
        if len(buf) < end:
            return NEED_DATA
        self.frame, self.at, self.state = (fin, opcode, length, buf[end - 4:end]), end, "payload"
        return None

    def check_frame_start(self, first, second, opcode, fin, length):
        """A ProtocolFailure for what a frame's first two bytes break, or None."""
        if first & 0x70:
            return ProtocolFailure(CLOSE_PROTOCOL_ERROR, "RSV bits set, and no extension was agreed.")
        if opcode not in DATA_OPCODES and opcode not in CONTROL_OPCODES:
            return ProtocolFailure(CLOSE_PROTOCOL_ERROR, "Unknown opcode %#x." % opcode)
        if not second & 0x80:
            return ProtocolFailure(CLOSE_PROTOCOL_ERROR, "An unmasked frame (a client masks every frame).")
        if opcode in CONTROL_OPCODES:
            if not fin:
                return ProtocolFailure(CLOSE_PROTOCOL_ERROR, "A fragmented control frame.")
            if length > MAX_CONTROL_PAYLOAD:
                return ProtocolFailure(CLOSE_PROTOCOL_ERROR, "A control frame's payload over 125 bytes.")
        elif opcode == OP_CONTINUATION and self.message_opcode is None:
            return ProtocolFailure(CLOSE_PROTOCOL_ERROR, "A continuation frame, and no message was begun.")
        elif opcode != OP_CONTINUATION and self.message_opcode is not None:
            return ProtocolFailure(CLOSE_PROTOCOL_ERROR, "A new message before the fragmented one ended.")
        return None

    def read_payload(self):
        """The payload of the frame whose header was read: NEED_DATA until it is whole, then
        the frame's event (None for a fragment that does not end its message)."""
        fin, opcode, length, mask = self.frame
        piece = self.buf[self.at:self.at + length - self.received]
        if piece:
            self.payload.append(piece)
            self.received += len(piece)
            self.at += len(piece)
        if self.received < length:
            return NEED_DATA
        payload = unmask(b"".join(self.payload), mask)
        self.frame, self.payload, self.received, self.state = None, [], 0, "header"
        if opcode == OP_PING:
            return Ping(payload)
        if opcode == OP_PONG:
            return Pong(payload)
        if opcode == OP_CLOSE:
            return close_event(payload)
        return self.fragment_read(fin, opcode, payload)

    def fragment_read(self, fin, opcode, payload):
        """A data frame's payload: the message it ends, or None while the message goes on."""
        if opcode != OP_CONTINUATION:
            self.message_opcode = opcode
        self.fragments.append(payload)
        self.message_size += len(payload)
        if not fin:
            return None
        message, opcode = b"".join(self.fragments), self.message_opcode
        self.message_opcode, self.fragments, self.message_size = None, [], 0
        if opcode == OP_BINARY:
            return BinaryMessage(message)
        try:
            return TextMessage(message.decode("utf-8"))
        except UnicodeDecodeError:
            return ProtocolFailure(CLOSE_INVALID_DATA, "A text message that is not UTF-8.")


def websocket_frame(opcode, payload, fin=True):
    """A server's frame: unmasked (RFC 6455 5.1: only a client masks), no RSV bit, its length
    in the fewest bytes it fits. A control frame must be whole and of 125 bytes at most."""
    size = len(payload)
    if opcode in CONTROL_OPCODES and (size > MAX_CONTROL_PAYLOAD or not fin):
        raise ValueError("a control frame is whole and of 125 bytes at most")
    first = (0x80 if fin else 0) | opcode
    if size <= 125:
        head = struct.pack("!BB", first, size)
    elif size <= 0xFFFF:
        head = struct.pack("!BBH", first, 126, size)
    else:
        head = struct.pack("!BBQ", first, 127, size)
    return head + payload


def text_frame(text):
    return websocket_frame(OP_TEXT, text.encode("utf-8"))


def ping_frame(payload=b""):
    return websocket_frame(OP_PING, payload)


def pong_frame(payload):
    """The answer to a Ping: its payload, as it came (RFC 6455 5.5.3)."""
    return websocket_frame(OP_PONG, payload)


def close_frame(code, reason=""):
    """A close frame with `code` and `reason` (cut, at a character, to the 123 bytes a control frame
    leaves it). CLOSE_NO_STATUS gives one without a code: the echo of a close that gave none."""
    if code == CLOSE_NO_STATUS:
        return websocket_frame(OP_CLOSE, b"")
    said = reason.encode("utf-8")[:MAX_CONTROL_PAYLOAD - 2].decode("utf-8", "ignore").encode("utf-8")
    return websocket_frame(OP_CLOSE, struct.pack("!H", code) + said)


# ---- HTTP server: connections, SSE ----------------------------------------------

class Responder:
    """Writes one answer: whole (`send`) or streamed (`start`, `write`, `end`)."""

    def __init__(self, connection, request, record):
        self.connection = connection
        self.request = request
        self.started = self.finished = False
        self.chunked = False  # known when a streamed answer starts (ConnectionState.streamed)
        self.status = None
        self.headers = {"x-request-id": record["id"]}  # sent with whatever answer this is
        self.head = b""  # a streamed answer's head, until its first body bytes go with it
        # What the request log line, /metrics and --dump-dir say of this exchange (REQUEST's).
        self.record = record
        record.update(method=request.method, path=request.path, started=time.monotonic(), first_byte=None)
        self.dump = None  # an ExchangeDump, with --dump-dir

    def client_gone(self):
        """Whether the client left before this answer ended."""
        return self.connection.state.client_gone

    def note_sent(self, data):
        if self.record["first_byte"] is None:
            self.record["first_byte"] = time.monotonic()
        if self.dump is not None:
            self.dump.sent.append(data)

    async def send(self, status, body, content_type="application/json", headers=None):
        headers = dict(self.headers, **dict(headers or {}, **{"Content-Type": content_type}))
        self.status, self.started = status, True
        self.note_sent(body)
        head = response_head(status, headers, self.connection.state.keep_alive, len(body))  # HEAD: GET's length
        await self.connection.write(head if self.request.method == "HEAD" else head + body)
        self.finished = True

    async def send_json(self, status, payload, headers=None):
        await self.send(status, compact_json(payload).encode("utf-8", "replace"), headers=headers)

    async def start(self, status, content_type="text/event-stream", headers=None):
        """Begin a streamed answer: chunked, or ended by closing the connection (ConnectionState.streamed)."""
        headers = dict(self.headers, **dict(headers or {}, **{"Content-Type": content_type}))
        if content_type.startswith("text/event-stream"):
            headers.update({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.chunked = self.connection.state.streamed(self.request)
        self.status, self.started = status, True
        # Sent with the first body bytes: one write, one packet, for both.
        self.head = response_head(status, headers, self.connection.state.keep_alive)

    def frame(self, data):
        self.note_sent(data)
        framed = b"%x\r\n%s\r\n" % (len(data), data) if self.chunked and data else data
        if self.head:
            framed, self.head = self.head + framed, b""
        return framed

    async def write(self, data):
        if data or self.head:
            await self.connection.write(self.frame(data))

    def write_now(self, data):
        """Queue body bytes without waiting for the client (keep-alives)."""
        self.connection.write_now(self.frame(data))

    def finish_now(self, data=b"", status=503, headers=None):
        """End the answer at once, without waiting for the client (shutdown): the
        last bytes of a stream, or a whole answer with `status` if none started."""
        if not self.started:
            self.status, self.started = status, True
            self.connection.state.close_after_answer()
            head = response_head(status, dict(self.headers, **dict(headers or {}, **{
                "Content-Type": "application/json"})), self.connection.state.keep_alive, len(data))
            self.connection.write_now(head + data)
        else:
            self.connection.write_now(self.frame(data) + (b"0\r\n\r\n" if self.chunked else b""))
        self.finished = True

    async def end(self):
        if self.chunked or self.head:
            await self.connection.write(self.frame(b"") + (b"0\r\n\r\n" if self.chunked else b""))
        self.finished = True


class ClientInput:
    """The bytes a client sends, read into an HTTPReader, and ways to wait for more."""

    def __init__(self, reader, config):
        self.reader = reader  # the asyncio stream
        self.config = config
        self.http = HTTPReader(config.max_body_bytes, MAX_CHUNKS)

    @property
    def buf(self):
        """What came and is not consumed yet."""
        return self.http.buf

    async def fill(self):
        data = await self.reader.read(65536)
        if not data:
            raise ClientGone()
        self.http.feed(data)

    async def fill_in_time(self, timeout, message):
        try:
            await asyncio.wait_for(self.fill(), timeout)
        except asyncio.TimeoutError:
            raise HTTPError(408, message)

    async def wait_for_request(self):
        """Wait (idle keep-alive) for a request's first byte; False when the client
        leaves or stays idle too long."""
        self.http.next_message()
        while self.http.waiting():
            try:
                await asyncio.wait_for(self.fill(), self.config.keep_alive_timeout)
            except (asyncio.TimeoutError, ClientGone, ConnectionError, OSError):
                return False
        return True

    async def read_head(self):
        """The request head (a Request without its body), within the size limits and in time."""
        deadline = time.monotonic() + self.config.header_timeout
        while True:
            kind, request = self.http.next_event()
            if kind is MESSAGE_HEAD:
                return request
            await self.fill_in_time(deadline - time.monotonic(),
                                    "Request headers not received within %gs" % self.config.header_timeout)

    async def read_body(self):
        """The request's body, decoded, within the reader's limits, its bytes in time."""
        parts, chunks = [], 0
        while True:
            kind, data = self.http.next_event()
            if kind is BODY_DATA:
                parts.append(data)
                if self.http.chunks >= chunks + 1024:  # tiny chunks already read are parsed without
                    chunks = self.http.chunks  # waiting: let others run
                    await asyncio.sleep(0)
            elif kind is MESSAGE_END:
                return b"".join(parts)
            else:
                await self.fill_in_time(self.config.keep_alive_timeout, "Request body not received in time")


class ClientConnection:
    """One client connection: read a request, hand it to the app, answer, and again (keep-alive).

    Its `state` (a ConnectionState) says where it is and whether it goes on."""

    def __init__(self, reader, writer, server):
        self.writer = writer
        self.server = server
        self.app, self.config = server.app, server.config
        self.input = ClientInput(reader, server.config)
        self.state = ConnectionState()
        self.watcher = None
        self.task = None  # the task serving this connection
        self.websocket = None  # its WebSocketSession, once it is one

    async def write(self, data):
        if self.state.client_gone:
            raise ClientGone()
        try:
            self.writer.write(data)
            if self.writer.transport.is_closing():  # the write found the connection reset
                raise ConnectionResetError("client connection lost")
            if self.writer.transport.get_write_buffer_size():
                await self.drain()
        except (ConnectionError, OSError):
            self.state.hung_up()
            raise ClientGone()

    async def drain(self):
        """Wait while the client reads what was written; a client that reads
        nothing for --client-write-timeout seconds is dropped (its handler,
        and with it the upstream request, ends)."""
        transport = self.writer.transport
        while True:
            before = transport.get_write_buffer_size()
            try:
                return await asyncio.wait_for(self.writer.drain(), self.config.client_write_timeout)
            except asyncio.TimeoutError:
                if transport.get_write_buffer_size() < before:
                    continue  # slow, but reading
                log.warning("a client read nothing for %gs (--client-write-timeout): dropping it",
                            self.config.client_write_timeout)
                transport.abort()
                raise ConnectionError("client stopped reading")

    def write_now(self, data):
        """Queue bytes without waiting (the last words of a connection that is closing)."""
        if not self.state.client_gone and not self.writer.transport.is_closing():
            self.writer.write(data)

    def close(self):
        try:
            self.writer.close()
        except Exception:  # pragma: no cover - closing a dead transport
            pass

    async def serve(self):
        self.task = asyncio.current_task()
        try:
            while await self.serve_one():
                pass
        except (ClientGone, ConnectionError):  # gone, or reset in the middle of a request
            pass
        except Exception:  # never let one connection take the server down
            log.exception("connection failed")
        finally:
            self.state.closed()
            await self.stop_watching()
            self.close()

    async def serve_one(self):
        """One request and its answer; False when the connection should close."""
        if self.server.draining:
            self.state.close_after_answer()
        if self.state.closing or not await self.input.wait_for_request():
            return False
        record = {"id": new_id("req_")}  # from its first byte on, what is logged about it carries its id
        token = REQUEST.set(record)
        try:
            return await self.answer(record)
        finally:
            REQUEST.reset(token)

    async def answer(self, record):
        """Read the request that has begun, and answer it; False when the connection should close."""
        try:
            request, routing = await self.read_request()
        except HTTPError as exc:
            self.state.close_after_answer()  # what follows (an unread body) cannot be told from a next request
            status, body, headers = self.app.early_error(exc.target or "/", exc.status, exc.message, exc.code)
            headers["x-request-id"] = record["id"]
            payload = json.dumps(body).encode("utf-8")
            log.warning("refused a request (%d): %s", status, exc.message)
            self.app.metrics.requests[("-", status, None)] += 1
            await self.write(response_head(status, headers, self.state.keep_alive, len(payload)) + payload)
            await self.linger()
            return self.state.answered(False)
        responder = Responder(self, request, record)
        handler = asyncio.ensure_future(self.app.handle(request, responder, routing))
        if routing[0] is None or not routing[0].takes_connection:  # (a WebSocket reads its own frames)
            self.watch_for_hangup(handler, request, responder)
        try:
            await handler
        except asyncio.CancelledError:
            if not self.state.client_gone:
                raise  # the server is shutting down
        finally:
            self.app.finished(responder, self.state.client_gone)
            await self.stop_watching()
        return self.state.answered(responder.finished)

    async def linger(self):
        """After refusing a request whose body may still be on its way: closing with its bytes
        unread would send a reset, which the client would see instead of the refusal. So stop
        writing, then read and drop what comes, for LINGER_SECONDS and up to four bodies' worth."""
        loop = asyncio.get_running_loop()
        deadline, left = loop.time() + LINGER_SECONDS, 4 * self.config.max_body_bytes
        try:
            self.writer.write_eof()
            while left > 0:
                data = await asyncio.wait_for(self.input.reader.read(65536), max(0.0, deadline - loop.time()))
                if not data:
                    return
                left -= len(data)
        except (asyncio.TimeoutError, ConnectionError, OSError, RuntimeError):
            pass

    async def read_request(self):
        """(the request, where it goes: App.check_head's routing)."""
        self.state.request_begun()
        request = await self.input.read_head()
        self.state.head_received(request)
        routing = self.app.check_head(request)
        try:
            await self.expect_body(request)
            request.body = await self.input.read_body()
            request.size = len(request.body)
        except HTTPError as exc:
            exc.target = exc.target or request.target
            raise
        return request, routing

    async def expect_body(self, request):
        """Frame the body; answer "Expect: 100-continue" when one is to come and none has yet."""
        body_coming = self.input.http.start_body()
        expect = request.headers.get("expect")
        if expect:
            if expect.lower() != "100-continue":
                raise HTTPError(417, "Unsupported Expect header")
            if request.version == "1.1" and body_coming and not self.input.buf:
                await self.write(CONTINUE)

    def watch_for_hangup(self, handler, request, responder):
        """While a request is handled, notice at once when the client goes away and cancel the
        handler, which closes its upstream request (what it sends meanwhile is kept for the next)."""
        async def watch():
            try:
                # What comes meanwhile (pipelined requests) is kept up to a bound. From a client
                # that sends on and on, the rest is dropped, and the connection ends with this
                # answer; its leaving is still noticed.
                while len(self.input.buf) < MAX_HEADER_BYTES:
                    await self.input.fill()
                self.state.close_after_answer()
                while True:
                    self.input.http.discard()
                    await self.input.fill()
            except ClientGone:  # end of input: gone, or only done sending (a half-close)
                if await self.still_reading(request, responder):
                    return
            except (ConnectionError, OSError):
                pass
            self.state.hung_up()
            handler.cancel()
        self.watcher = asyncio.ensure_future(watch())

    async def still_reading(self, request, responder):
        """After the client's end of input, whether it still reads (a half-close) or is gone.

        Both look the same until something is written: a closed socket then answers with a reset.
        Before the answer starts, an interim "100 Continue" (which HTTP/1.1 clients must accept)
        is that something; once it has started, the answer's own next bytes are."""
        if request.version == "1.0":
            return False
        for _ in range(2):
            if responder.started:
                return True
            self.write_now(CONTINUE)
            await asyncio.sleep(0.05)
            if self.writer.transport.is_closing():
                return False
        return True

    async def stop_watching(self):
        if self.watcher is not None:
            self.watcher.cancel()
            try:
                await self.watcher
            except asyncio.CancelledError:
                pass
            self.watcher = None


class SocketResponder(Responder):
    """Writes one answer on a WebSocket (the Responses API's WebSocket mode): each SSE event it is
    given becomes one JSON text message, in order (so the socket says exactly what the HTTP route
    streams); an SSE comment (a keep-alive) becomes a ping frame, never a text message; an error
    answer becomes an `error` event with its HTTP status. Nothing else of HTTP is written."""

    def __init__(self, session, request, record):
        Responder.__init__(self, session.connection, request, record)
        self.session = session  # the WebSocketSession it answers on
        self.events = SSEParser()
        self.last_event = None  # the data of the terminal event sent, once sent

    def frame(self, data):
        self.note_sent(data)
        events = self.events.feed(data)
        if not events:
            return ping_frame() if data.startswith(b":") else b""
        if is_terminal_event(*events[-1]):
            self.last_event = events[-1][1]
        return b"".join(websocket_frame(OP_TEXT, payload.encode("utf-8")) for _, payload in events)

    def error_message(self, status, body):
        """The `error` event of an error answer: the HTTP route's error object, with its status."""
        try:
            error = json.loads(body).get("error")
        except (ValueError, AttributeError):
            error = None
        return text_frame(compact_json({"type": "error", "status": status, "error": error or {
            "type": "server_error", "message": body.decode("utf-8", "replace")}}))

    async def send(self, status, body, content_type="application/json", headers=None):
        self.status, self.started = status, True
        self.note_sent(body)
        await self.connection.write(self.error_message(status, body) if status >= 400
                                    else text_frame(body.decode("utf-8", "replace")))
        self.finished = True

    async def start(self, status, content_type="text/event-stream", headers=None):
        self.status, self.started = status, True

    def finish_now(self, data=b"", status=503, headers=None):
        if not self.started:
            self.status, self.started = status, True
            self.connection.write_now(self.error_message(status, data))
        else:
            self.connection.write_now(self.frame(data))
        self.finished = True

    async def end(self):
        self.finished = True


class WebSocketSession:
    """A client connection that has become a WebSocket (its 101 written by `open`). Its frames are
    read as they come, in a task of their own, so that a ping is answered at once even while an
    answer is streaming; its text messages are handed out one at a time (`next_message`); a close,
    a protocol failure or a binary message ends it with the close handshake (RFC 6455 7). A client
    that leaves in the middle of an answer has that answer cancelled, as over HTTP."""

    # Messages received and not yet answered, at most: by count, and in all as big as this many
    # messages of the largest size. Beyond, the socket is closed (1008): the frames must go on being
    # read (a ping waits behind them), and memory is not for a client to fill.
    MAX_WAITING, MAX_WAITING_MESSAGES_SIZE = 64, 2

    def __init__(self, connection, max_message_bytes):
        self.connection = connection
        self.reader = WebSocketReader(max_message_bytes)
        self.messages = asyncio.Queue()  # text messages, then None once it ends
        self.waiting_size, self.max_waiting_size = 0, self.MAX_WAITING_MESSAGES_SIZE * max_message_bytes
        self.answering = None  # the task answering a message, while one is answered
        self.close_sent = None  # the code of the close frame sent
        self.ended = False  # no more messages come
        self.lingering = False  # the close handshake is done: the last bytes are read and dropped
        self.task = None  # the task reading its frames

    async def open(self, head):
        """Write the 101 `head`; from here the connection's bytes are frames."""
        self.connection.state.close_after_answer()  # no HTTP request follows a WebSocket
        await self.connection.write(head)
        early = self.connection.input.buf  # frames sent right behind the upgrade request
        self.connection.input.http.discard()
        self.task = asyncio.ensure_future(self.read_frames(early))

    async def next_message(self):
        """The next text message, or None once the socket ends."""
        if self.ended and self.messages.empty():
            return None
        text = await self.messages.get()
        self.waiting_size -= len(text) if text else 0
        return text

    async def answer(self, work):
        """Run `work` (answering a message); the client leaving cancels it."""
        self.answering = asyncio.current_task()
        try:
            await work
        finally:
            self.answering = None

    def close(self, code, reason=""):
        """Send the close frame (once); reading stops once the client answers it or goes."""
        if self.close_sent is None:
            self.close_sent = code
            self.connection.write_now(close_frame(code, reason[:MAX_CONTROL_PAYLOAD - 2]))

    def going_away(self):
        """The server is shutting down: close 1001 now if no answer runs (else its owner closes
        once the answer is over)."""
        if self.answering is None and not self.ended:
            self.close(CLOSE_GOING_AWAY, "The proxy is shutting down.")
            self.end()

    async def read_frames(self, data):
        try:
            while True:
                for event in self.reader.feed(data):
                    if not self.on_event(event):
                        self.end()
                        # Read what still comes: closing with it unread would reset the connection,
                        # and the client could lose the close frame.
                        self.lingering = True
                        await self.connection.linger()
                        return
                data = await self.connection.input.reader.read(65536)
                if not data:
                    raise ClientGone()
        except (ClientGone, ConnectionError, OSError):
            self.connection.state.hung_up()
            self.end()

    def on_event(self, event):
        """Act on one event of the reader; False when the socket ends."""
        if isinstance(event, Ping):
            self.connection.write_now(pong_frame(event.payload))
        elif isinstance(event, TextMessage):
            self.waiting_size += len(event.text)
            if self.messages.qsize() >= self.MAX_WAITING or self.waiting_size > self.max_waiting_size:
                self.close(CLOSE_POLICY_VIOLATION, "Too many messages waiting: send the next once an answer ends.")
                return False
            self.messages.put_nowait(event.text)
        elif isinstance(event, BinaryMessage):
            self.close(CLOSE_UNSUPPORTED_DATA, "Binary messages are not read here: send JSON text.")
            return False
        elif isinstance(event, CloseReceived):
            self.close(CLOSE_NORMAL if event.code == CLOSE_NO_STATUS else event.code)
            return False
        elif isinstance(event, ProtocolFailure):
            log.warning("a WebSocket client broke the protocol: %s", event.reason)
            self.close(event.close_code, event.reason)
            return False
        return True  # a pong

    def end(self):
        """No more messages: what waits unanswered is dropped; an answer running is cancelled (the
        client has said goodbye, or gone)."""
        if self.ended:
            return
        self.ended = True
        while not self.messages.empty():
            self.messages.get_nowait()
        self.messages.put_nowait(None)
        if self.answering is not None:
            self.connection.state.hung_up()
            self.answering.cancel()

    async def stop(self):
        """Stop reading (the session is over); after a close handshake, once the client's last
        bytes are read (ClientConnection.linger's bound)."""
        if self.task is None:
            return
        if self.lingering:
            await asyncio.wait([self.task], timeout=LINGER_SECONDS + 1)
        if not self.task.done():
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass


class ProxyServer:
    """The listening socket and the connections it has open."""

    def __init__(self, app, config):
        self.app, self.config = app, config
        self.connections = set()  # the ClientConnections open now
        self.server = self.url = self.port = None  # known once listening
        self.draining = False  # shutting down: finish what is in flight, take nothing new

    async def start(self):
        # A deep backlog: a burst of connects (an agent fanning out) must not wait for SYN retries.
        self.server = await asyncio.start_server(self.on_connection, self.config.host, self.config.port,
                                                 backlog=1024)
        self.port = self.server.sockets[0].getsockname()[1]
        host = self.config.host if ":" not in self.config.host else "[%s]" % self.config.host
        self.url = "http://%s:%d" % (host, self.port)
        return self

    async def on_connection(self, reader, writer):
        connection = ClientConnection(reader, writer, self)
        self.connections.add(connection)
        try:
            await connection.serve()
        except asyncio.CancelledError:  # the server is shutting down
            pass
        finally:
            self.connections.discard(connection)

    async def shutdown(self, grace, hurry=None):
        """Stop accepting at once; close idle keep-alive connections; let
        requests in flight finish for up to `grace` seconds (or until `hurry`
        is set), then cancel them: streams end with their dialect's error
        event, other answers are a 503."""
        self.draining = True
        self.server.close()
        for connection in list(self.connections):
            connection.state.close_after_answer()
            if connection.state.idle():
                connection.close()
            elif connection.websocket is not None:
                connection.websocket.going_away()
        tasks = [c.task for c in self.connections if c.task is not None]
        if tasks:
            log.info("shutting down: waiting up to %gs for %d connection(s)", grace, len(tasks))
        hurried = asyncio.ensure_future(hurry.wait()) if hurry is not None else None
        deadline = time.monotonic() + grace
        while not (hurried and hurried.done()) and time.monotonic() < deadline:
            waiting = [task for task in tasks if not task.done()]
            if not waiting:
                break
            await asyncio.wait(waiting + ([hurried] if hurried else []), timeout=deadline - time.monotonic(),
                               return_when=asyncio.FIRST_COMPLETED)
        if hurried:
            hurried.cancel()
        pending = [task for task in tasks if not task.done()]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5)


compact_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class TextDelta(dict):
    """A text delta, the event most of an answer is made of: a dict like any
    other client event, which its dialect's encoder writes from a template
    (head + the text as JSON + tail) instead of encoding the whole object."""
    __slots__ = ("template", "text")


def text_template(event, field, key, named=False):
    """(head, tail): an event's SSE bytes around the JSON of its text, field[key]
    (`field` is nested in `event`); found by encoding the event with a marker text."""
    marker = "\x00text\x00"
    field[key] = marker
    head, _, tail = text_delta_sse(event, named).partition(compact_json(marker).encode("utf-8"))
    return head, tail


def text_delta_sse(event, named=False):
    """A client event (a dict) as SSE: a TextDelta from its template, any other with sse_event;
    `named`: the SSE event name is the event's type (Anthropic's streams), else it has none."""
    if event.__class__ is TextDelta:
        head, tail = event.template
        return head + compact_json(event.text).encode("utf-8", "replace") + tail
    return sse_event(event, event["type"] if named else None)


def sse_event(data, event=None):
    """One Server-Sent Event; `data` is a JSON-able object or a ready string."""
    if isinstance(data, str):
        data = data.replace("\n", "\ndata: ")
    else:
        data = compact_json(data)  # compact JSON has no line breaks
    # "replace": a lone surrogate (which JSON can carry) has no UTF-8 form
    if event:
        return ("event: " + event + "\ndata: " + data + "\n\n").encode("utf-8", "replace")
    return ("data: " + data + "\n\n").encode("utf-8", "replace")


class SSEParser:
    """Incremental Server-Sent Events parser: bytes in, (event, data) pairs out."""

    def __init__(self):
        self.buf = b""  # the start of an event that has not ended yet
        self.more = []  # chunks after it holding no end of an event, joined once one comes

    def feed(self, chunk):
        if self.buf:
            seam = (self.more[-1] if self.more else self.buf)[-2:] + chunk
            if b"\n\n" not in seam and b"\r" not in seam:
                # A long event still arriving (a whole Response with a big output): keep its chunks
                # rather than copy and scan all of it again for each one.
                self.more.append(chunk)
                return []
            if self.more:  # the long event ends here: its pieces joined once (an image's megabytes)
                pieces, self.more = [self.buf] + self.more + [chunk], []
                chunk, self.buf = b"".join(pieces), b""
                del pieces
        buf = self.buf + chunk
        chunk = None  # one copy of a long event at a time
        if b"\r" in buf:
            if buf.endswith(b"\r"):  # a CRLF may be split across chunks
                buf, self.buf = buf[:-1], b"\r"
            else:
                self.buf = b""
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        else:
            self.buf = b""
        blocks = buf.split(b"\n\n")
        self.buf, buf = blocks.pop() + self.buf, None
        blocks.reverse()
        events = []
        while blocks:
            block = blocks.pop()  # let go once read
            # The shapes every event of the backend has: one "event:" and one "data:" line, or one "data:".
            if block[:7] == b"event: ":
                line_end = block.find(b"\n")
                if block[line_end + 1:line_end + 7] == b"data: " and block.find(b"\n", line_end + 1) == -1:
                    events.append((block[7:line_end].decode("utf-8", "replace"),
                                   str(memoryview(block)[line_end + 7:], "utf-8", "replace")))  # no copy to decode
                    continue
            elif block[:6] == b"data: " and b"\n" not in block:
                events.append((None, str(memoryview(block)[6:], "utf-8", "replace")))
                continue
            event, data = None, []
            for line in block.decode("utf-8", "replace").split("\n"):
                if not line or line.startswith(":"):
                    continue
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "data":
                    data.append(value)
                elif name == "event":
                    event = value
            if data or event:
                events.append((event, "\n".join(data)))
        return events


# ---- translators: shared pieces ---------------------------------------------
# Translators are pure: dicts in, dicts out (or, for answers, upstream events
# in, client events out). They never touch sockets, files or globals.

# What the Codex backend accepts inside a request's objects, by kind. Requests
# are built from these tables; what a client sends beyond them is dropped
# (logged at debug), never forwarded.
# The built-in image tool's options the backend takes (it refuses any other key, `model` included).
IMAGE_TOOL_KEYS = ("type", "size", "quality", "background", "output_format", "output_compression", "moderation",
                   "partial_images", "action", "input_fidelity", "input_image_mask")
IMAGE_MASK_KEYS = ("image_url", "file_id")  # its input_image_mask's
CODEX_ACCEPTS = {
    "reasoning": ("effort", "summary"),
    "text": ("format", "verbosity"),
    "text.format": {"text": ("type",), "json_object": ("type",),
                    "json_schema": ("type", "name", "schema", "strict", "description")},
    "include": ("reasoning.encrypted_content",),
    "tools": {"function": ("type", "name", "description", "parameters", "strict"),
              "custom": ("type", "name", "description", "format"),
              "web_search": ("type", "filters", "user_location", "search_context_size", "external_web_access"),
              "image_generation": IMAGE_TOOL_KEYS},
    "content": {"input_text": ("type", "text"), "output_text": ("type", "text"), "refusal": ("type", "refusal"),
                "input_image": ("type", "image_url", "detail", "file_id"),
                "input_file": ("type", "filename", "file_data", "file_url", "file_id")},
}
DEFAULT_INSTRUCTIONS = "You are a helpful assistant."
TOOL_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
EMPTY_SCHEMA = {"type": "object", "properties": {}}
TERMINAL_EVENTS = ("response.completed", "response.incomplete", "response.failed", "error")
STREAM_CUT = "The upstream stream ended before the response was complete."
CUT_ERROR = {"status": 502, "code": "stream_interrupted", "message": STREAM_CUT}
NO_DEFAULTS = {"reasoning_effort": None, "verbosity": None, "service_tier": None}
# What an answer cut short by the proxy's own shutdown says (overloaded: clients retry).
SHUTDOWN_FAILURE = {"code": "server_is_overloaded",
                    "message": "The proxy is shutting down and this answer was cut short; try again."}


@dataclasses.dataclass(eq=False, repr=False)  # no repr: it would show the conversation
class RequestOptions:
    """What a request translator needs beyond the body; the route fills it in."""

    model: str  # the upstream model
    client_model: str = None  # the name the client asked for (answers report it); None: `model`
    model_info: dict = None  # the model's catalog entry ({} if unknown)
    chatgpt_mode: bool = True  # False when the upstream is the public API
    defaults: dict = None  # the server's reasoning_effort/verbosity/service_tier
    session_id: str = None  # the conversation id the client's headers carry, if any
    history: list = None  # the input and output items of the response a request continues
    history_size: int = 0  # what `history` weighs, as the store counts it (translating it is work)
    started: float = None  # when the request began (time.monotonic()); the route says

    def __post_init__(self):
        self.client_model = self.client_model or self.model
        self.model_info = self.model_info or {}
        self.defaults = self.defaults or NO_DEFAULTS


@dataclasses.dataclass(eq=False, repr=False)  # no repr: it would show the conversation
class AnswerContext:
    """What the answer side of a translation needs to know about its request."""

    id: str  # the answer's id
    model: str  # the name answers report
    stream: bool = False  # whether the client asked for a stream
    tool_names: "ToolNames" = None  # the ToolNames of the request
    stops: list = ()  # stop sequences the proxy applies
    include_usage: bool = False  # Chat: stream_options.include_usage
    legacy_functions: bool = False  # Chat: the request used `functions`, not `tools`
    web_search: bool = False  # Messages: the request has a web search tool
    thinking: str = None  # Messages: "summarized", "omitted" or None
    prompt_too_long: object = None  # Messages: a function giving Anthropic's context-overflow message
    upstream: dict = None  # the request as it went upstream (a stop's usage counts its input from it)
    stored_input: list = None  # the input items kept with the answer (Responses stored by the proxy)
    private: bool = False  # Responses with store: false, kept only where its WebSocket can chain to it
    created: int = dataclasses.field(default_factory=lambda: unix_seconds())
    image_kind: str = "image_generation"  # Images: its stream events' prefix (image_generation, image_edit)

    def __post_init__(self):
        self.tool_names = self.tool_names or ToolNames()
        self.stops = list(self.stops)


def new_id(prefix):
    # An id need not be secret, only unique: random's generator, not os.urandom, whose
    # system call hands the GIL away, and getting it back under load takes long.
    return "%s%024x" % (prefix, random.getrandbits(96))


def put_given(target, **fields):
    """Sets on `target` each of `fields` that has a value (not None): a body's optional parts."""
    target.update((name, value) for name, value in fields.items() if value is not None)


def unix_seconds():
    """Now, in whole seconds since the epoch (the `created` of an answer)."""
    return int(wall_clock())


def data_url(media_type, data):
    return "data:%s;base64,%s" % (media_type, data)


def parse_json_arguments(arguments):
    """Tool-call arguments as a dict; the model's raw text is kept if it is not JSON."""
    if isinstance(arguments, dict):
        return arguments
    try:
        value = json.loads(arguments or "{}")
    except ValueError:
        return {"_raw_arguments": arguments}
    return value if isinstance(value, dict) else {"_value": value}


def clamp_effort(effort, supported):
    """Nearest effort the model lists (the backend refuses others).

    `supported` is the catalog entry's supported_reasoning_levels: strings or
    {"effort": ...} dicts; empty/None means unknown, so pass effort through.
    "max" (Anthropic) means the highest level the model has.
    """
    if not effort:
        return effort
    levels = [s.get("effort") if isinstance(s, dict) else s for s in (supported or ())]
    levels = [lv for lv in levels if lv in REASONING_EFFORTS]
    if effort == "max":
        effort = "xhigh"
    if not levels or effort in levels or effort not in REASONING_EFFORTS:
        return effort
    want = REASONING_EFFORTS.index(effort)
    # Ties go to the higher level: never silently think less than asked.
    return min(levels, key=lambda lv: (abs(REASONING_EFFORTS.index(lv) - want), -REASONING_EFFORTS.index(lv)))


class ToolNames:
    """Client tool names <-> names the backend accepts (<=64 chars of [A-Za-z0-9_-])."""

    def __init__(self, names=()):
        self.to_upstream = {}
        self.to_client = {}
        for name in names:
            self.add(name)

    def add(self, name):
        if name in self.to_upstream:
            return self.to_upstream[name]
        short = name
        if not TOOL_NAME_RE.match(name or ""):
            clean = re.sub(r"[^a-zA-Z0-9_-]", "_", name or "tool")
            short = clean if len(clean) <= 64 else clean[:55]
            if short != clean or clean != name or short in self.to_client:
                digest = hashlib.sha1(name.encode("utf-8", "replace")).hexdigest()[:8]
                short = clean[:55] + "_" + digest
        self.to_upstream[name] = short
        self.to_client[short] = name
        return short

    def upstream(self, name):
        return self.to_upstream.get(name, name)

    def client(self, name):
        return self.to_client.get(name, name)


def derive_cache_key(*parts):
    """A stable prompt_cache_key from what opens a conversation.

    Hash the instructions and the first user turn: they stay the same as the
    conversation grows, so every turn of it lands on the same upstream cache.
    """
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    digest = hashlib.sha256(blob.encode("utf-8", "replace")).hexdigest()
    return "-".join((digest[:8], digest[8:12], digest[12:16], digest[16:20], digest[20:32]))  # UUID-shaped


def first_user_item(items):
    for item in items:
        if item.get("type", "message") == "message" and item.get("role") == "user":
            return item
    return items[0] if items else None


def build_upstream_request(opts, instructions, items, tools=None, tool_choice=None, parallel_tool_calls=None,
                           effort=None, summary=None, text_format=None, verbosity=None, service_tier=None,
                           prompt_cache_key=None, include=(), client_metadata=None):
    """The Responses request every dialect sends upstream, from what its client asked.

    None means the client did not say: the server's defaults are applied here,
    and only here. service_tier "default" is a client asking for the standard
    tier (sent as nothing). The effort is clamped to the model's levels.
    """
    defaults = opts.defaults
    upstream = {"model": opts.model}
    if instructions or opts.chatgpt_mode:
        upstream["instructions"] = instructions or DEFAULT_INSTRUCTIONS  # required by the Codex backend
    upstream.update(input=items, stream=True, store=False)
    # Encrypted reasoning comes back so that the next turn can replay it.
    include = [value for value in include if value in CODEX_ACCEPTS["include"]]
    upstream["include"] = include + [v for v in ("reasoning.encrypted_content",) if v not in include]
    reasoning = {}
    if not effort:
        effort = defaults.get("reasoning_effort")
        if effort in ("minimal", "none") and any(as_object(tool).get("type") == "image_generation"
                                                  for tool in tools or ()):
            effort = "low"  # a default the backend would refuse with the image tool
    if effort:
        reasoning["effort"] = clamp_effort(effort, opts.model_info.get("supported_reasoning_levels"))
    if summary:
        reasoning["summary"] = summary
    put_given(upstream, reasoning=reasoning or None, tools=tools or None, tool_choice=tool_choice,
              parallel_tool_calls=parallel_tool_calls)
    text = {}
    if text_format:
        text["format"] = trimmed_by_kind(text_format, CODEX_ACCEPTS["text.format"], "text.format")
    if verbosity or defaults.get("verbosity"):
        text["verbosity"] = verbosity or defaults["verbosity"]
    service_tier = service_tier or defaults.get("service_tier")
    if service_tier == "default":  # the standard tier, which is sent as none
        service_tier = None
    put_given(upstream, text=text or None, service_tier=service_tier or None, client_metadata=client_metadata)
    upstream["prompt_cache_key"] = prompt_cache_key or opts.session_id \
        or derive_cache_key(upstream.get("instructions"), first_user_item(items))
    return upstream


def with_public_api_sampling(upstream, opts, max_tokens=None, temperature=None, top_p=None):
    """The length and sampling a client asked for, onto an upstream request for the public
    Responses API (API-key mode), which takes them; the Codex backend refuses them all, so in
    ChatGPT mode nothing is added."""
    if opts.chatgpt_mode:
        return
    if is_json_type(max_tokens, int) and max_tokens > 0:
        upstream["max_output_tokens"] = max_tokens
    upstream.update((key, value) for key, value in (("temperature", temperature), ("top_p", top_p))
                    if is_json_type(value, (int, float)))


JSON_TYPE_NAMES = ((bool, "a boolean"), (int, "an integer"), (float, "a number"), (str, "a string"),
                   (list, "an array"), (dict, "an object"))


def json_type_name(value):
    if value is None:
        return "null"
    return next((name for kind, name in JSON_TYPE_NAMES if isinstance(value, kind)), type(value).__name__)


def is_json_type(value, kinds):
    """isinstance, except that a boolean is not a number."""
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    return isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool))


def check_fields(body, spec, where=""):
    """A 400 naming the first field of `body` that is not of the type its
    dialect's `spec` gives (null counts as absent). A spec maps a field to a
    type or tuple of types, to a spec (an object with typed fields) or to
    [type] (an array of that type)."""
    for name, want in spec.items():
        value = body.get(name)
        if value is None:
            continue
        path = where + name
        if isinstance(want, dict):
            if not isinstance(value, dict):
                raise wrong_type(path, "an object", value)
            check_fields(value, want, path + ".")
        elif isinstance(want, list):
            if not isinstance(value, list) or not all(is_json_type(item, want[0]) for item in value):
                raise wrong_type(path, "an array of %ss" % dict(JSON_TYPE_NAMES)[want[0]].split()[-1], value)
        elif not is_json_type(value, want):
            kinds = want if isinstance(want, tuple) else (want,)
            raise wrong_type(path, " or ".join(dict(JSON_TYPE_NAMES)[kind] for kind in kinds), value)


def wrong_type(path, expected, value):
    return ClientError("Invalid type for '%s': expected %s, but got %s instead." % (path, expected,
                                                                                  json_type_name(value)),
                       param=path.split(".")[0], code="invalid_type")


def trimmed_to(value, fields, where):
    """`value` (an object) with only `fields`; what else it has is dropped, and said at debug level."""
    dropped = [key for key in value if key not in fields]
    if dropped:
        log.debug("dropped %s: the Codex backend does not take %s", where, ", ".join(sorted(dropped)))
        return {key: value[key] for key in fields if key in value}
    return value


def trimmed_by_kind(value, kinds, where):
    """An object whose fields depend on its `type`, trimmed to what the backend takes for that
    type; a type not in `kinds` passes as it is (a backend feature the client named)."""
    kind = value.get("type")
    fields = kinds.get(kind) if isinstance(kind, str) else None
    return trimmed_to(value, fields, "%s (%s)" % (where, kind)) if fields else value


def require_conversation(body, no_model, no_messages=None):
    """The opening checks of every request: a model name and (where the
    dialect has them) a non-empty list of messages; each dialect words them."""
    if not body.get("model") or not isinstance(body["model"], str):
        raise ClientError(no_model, param="model")
    if no_messages and not (isinstance(body.get("messages"), list) and body["messages"]):
        raise ClientError(no_messages, param="messages")


def function_tool(name, description, parameters, strict, names=None):
    """A flat Responses function tool; `names` (a ToolNames) shortens names the backend would refuse."""
    return {"type": "function", "name": names.add(name) if names else name, "description": description or "",
            # An omitted strict means strict upstream, which refuses open schemas.
            "parameters": backend_schema(parameters) if parameters else EMPTY_SCHEMA, "strict": strict is True}


# Keywords of a JSON schema whose value maps names to schemas (not a schema itself), and those
# whose value is data, never a schema: a "pattern" inside either is not a pattern keyword.
SCHEMA_MAPS = frozenset(("properties", "patternProperties", "$defs", "definitions", "dependentSchemas"))
SCHEMA_DATA = frozenset(("enum", "const", "default", "examples"))


def backend_schema(schema):
    """A tool's parameters as the backend takes them: it compiles every `pattern` with Python's
    `re` and refuses the whole request over one it cannot (Claude Code's Artifact tool has
    \\p{Cc}), so those patterns are left out, at any depth; all else is kept as it is."""
    text = compact_json(schema) if isinstance(schema, dict) else ""
    cleaned = schema_without_bad_patterns(text) if '"pattern"' in text else None
    return schema if cleaned is None else json.loads(cleaned)


@functools.lru_cache(maxsize=64)  # the same tools come with every turn of a conversation
def schema_without_bad_patterns(schema_json):
    """The schema (JSON text) without the patterns `re` cannot compile, as JSON text; None when
    it has none."""
    schema = json.loads(schema_json)
    cleaned = patterns_that_compile(schema)
    return None if cleaned == schema else compact_json(cleaned)


def patterns_that_compile(node, names_to_schemas=False):
    if isinstance(node, list):
        return [patterns_that_compile(item) for item in node]
    if not isinstance(node, dict):
        return node
    if names_to_schemas:
        return {name: patterns_that_compile(value) for name, value in node.items()}
    kept = {}
    for key, value in node.items():
        if key == "pattern" and isinstance(value, str) and not regex_compiles(value):
            log.debug("dropped the tool schema pattern %r: the backend cannot compile it", value)
        elif key in SCHEMA_DATA:
            kept[key] = value
        else:
            kept[key] = patterns_that_compile(value, key in SCHEMA_MAPS)
    return kept


@functools.lru_cache(maxsize=256)
def regex_compiles(pattern):
    try:
        re.compile(pattern)
    except (re.error, RecursionError, OverflowError, ValueError):
        return False
    return True


def block_texts(content, where, param, refusal=False):
    """The texts of string content or of a list of text blocks (and refusal
    blocks, where allowed); anything else is a 400 that names `where`."""
    if content is None or isinstance(content, str):
        return [content or ""]
    if not isinstance(content, list):
        raise ClientError("%s: must be a string or an array of text blocks" % where, param=param)
    texts = []
    for index, block in enumerate(content):
        kind = as_object(block).get("type")
        if kind == "text" or (kind == "refusal" and refusal):
            text = block.get(kind)
            if text is not None and not isinstance(text, str):
                raise ClientError("%s.%d.%s: must be a string" % (where, index, kind), param=param)
            texts.append(text or "")
        else:
            raise ClientError("%s.%d: block type %r is not allowed here (only text)" % (where, index, kind),
                              param=param)
    return texts


def image_part(url, detail=None):
    return {"type": "input_image", "image_url": url, "detail": detail or "auto"}


def file_part(filename=None, file_data=None, file_url=None):
    part = {"type": "input_file"}
    if file_url:
        part["file_url"] = file_url
    else:
        part.update(filename=filename or "document.pdf", file_data=file_data)
    return part


# Images the backend draws (the image_generation tool's image_generation_call items) are relayed
# as the base64 they come in, never decoded; the log says how large, --dump-dir shows a stand-in.
IMAGE_MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


def image_generation_tool(tool, where):
    """The image tool as the backend takes it: its keys and its mask's only (a `model` is dropped:
    the backend chooses the image model, and refuses a request that names one)."""
    tool = trimmed_to(tool, IMAGE_TOOL_KEYS, where)
    mask = tool.get("input_image_mask")
    if isinstance(mask, dict):
        tool = dict(tool, input_image_mask=trimmed_to(mask, IMAGE_MASK_KEYS, where + ".input_image_mask"))
    return tool


def draws(upstream):
    """Whether a Responses request offers the image tool: its answer may be silent while it draws."""
    return any(as_object(tool).get("type") == "image_generation" for tool in upstream.get("tools") or ())


def drawn_image(item):
    """A finished output item's image, base64, or None (another item, or a drawing that failed)."""
    result = item.get("result") if item.get("type") == "image_generation_call" else None
    return result if isinstance(result, str) and result else None


def drawn_image_url(item):
    """An image_generation_call item's image as a data: URL (its output_format's type; PNG by default)."""
    return data_url(IMAGE_MEDIA_TYPES.get(item.get("output_format"), "image/png"), item["result"])


MAX_STOPS, MAX_STOP_CHARS = 32, 256  # the proxy checks each piece of text against them: keep that small


def stop_sequences(value, param, wrong, most=MAX_STOPS, one_string=False):
    """A client's stop sequences as a list: an array of at most `most` strings
    (or, with `one_string`, a lone string); else `wrong`."""
    stops = [value] if isinstance(value, str) and one_string else [] if value is None else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops) or len(stops) > most:
        raise ClientError(wrong, param=param)
    if any(len(stop) > MAX_STOP_CHARS for stop in stops):
        raise ClientError("%s: a stop sequence may be at most %d characters long." % (param, MAX_STOP_CHARS),
                          param=param)
    return stops


class StopSequenceCutter:
    """Cuts streamed text at the first stop sequence.

    Text that might be the start of a stop sequence is held back until the
    next piece decides it, so nothing past a stop ever reaches the client.
    """

    def __init__(self, stops):
        self.stops = [s for s in (stops or ()) if s]
        self.held = ""
        self.hit = None  # the stop sequence that ended the text
        self.passed = []  # the text let through (with stop sequences only: to count it)
        self.starts = {stop[:n] for stop in self.stops for n in range(1, len(stop))}  # text ending so is held
        self.longest = max([len(stop) for stop in self.stops] or [0])

    def feed(self, text):
        """Returns the text that is safe to emit now."""
        if self.hit is not None:
            return ""
        if not self.stops:
            return text
        buf = self.held + text
        first = None
        for stop in self.stops:
            at = buf.find(stop)
            if at != -1 and (first is None or at < first[0]):
                first = (at, stop)
        if first is not None:
            self.hit = first[1]
            self.held = ""
            self.passed.append(buf[:first[0]])
            return buf[:first[0]]
        held_length = next((n for n in range(min(self.longest - 1, len(buf)), 0, -1) if buf[-n:] in self.starts), 0)
        self.held = buf[len(buf) - held_length:] if held_length else ""
        safe = buf[:len(buf) - held_length] if held_length else buf
        self.passed.append(safe)
        return safe

    def flush(self):
        """At the end of the text: what was held back was not a stop after all."""
        held, self.held = self.held, ""
        return "" if self.hit is not None else held


def read_usage(usage):
    """Responses usage as plain ints; the backend may omit any of it."""
    usage = as_object(usage)

    def number(value):
        return value if isinstance(value, int) else 0
    input_tokens = number(usage.get("input_tokens"))
    output_tokens = number(usage.get("output_tokens"))
    return {
        "input_tokens": input_tokens,  # includes the cached ones
        "cached_tokens": number(as_object(usage.get("input_tokens_details")).get("cached_tokens")),
        "output_tokens": output_tokens,  # includes the reasoning ones
        "reasoning_tokens": number(as_object(usage.get("output_tokens_details")).get("reasoning_tokens")),
        "total_tokens": number(usage.get("total_tokens")) or input_tokens + output_tokens,
    }


def stream_error(error, fallback=None):
    """{"status", "message", "code"} for an upstream failure seen inside a stream."""
    failure = UpstreamFailure(error)
    return {"status": failure.status, "code": failure.code, "message": failure.message or fallback
            or "The upstream response failed (%s)." % (failure.code or "no reason given")}


def event_failure(event):
    """The error a failing upstream event carries: a response.failed's response.error, an error
    event's own fields, or (as some backends send it) its nested `error` object."""
    if event.get("type") == "response.failed":
        return as_object(as_object(event.get("response")).get("error"))
    return as_object(event.get("error")) or event


def context_overflow(code, message):
    """Whether an upstream error says the conversation no longer fits the model's context."""
    text = (message or "").lower()
    return code == "context_length_exceeded" or "context window" in text or "context length" in text


# One error builder per dialect, used by the routes and inside streams.
OPENAI_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                      404: "not_found_error", 405: "invalid_request_error", 408: "invalid_request_error",
                      413: "invalid_request_error", 429: "rate_limit_exceeded"}
ANTHROPIC_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                         404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                         500: "api_error", 503: "overloaded_error", 529: "overloaded_error"}


def openai_error(status, message, code=None, param=None, details=None):
    kind = OPENAI_ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    error = {"message": message, "type": kind, "param": param, "code": code}
    if details:
        # A ChatGPT usage limit keeps the backend's own type and reset times:
        # the Codex CLI stops at once (saying when the limit resets) only on
        # those, and retries any other 429, which would wait for hours.
        error.update(details, type=code)
    return {"error": error}


def anthropic_error_type(status):
    """The Anthropic error `type` for an HTTP status."""
    if status in ANTHROPIC_ERROR_TYPES:
        return ANTHROPIC_ERROR_TYPES[status]
    return "api_error" if status >= 500 else "invalid_request_error"


def anthropic_error(status, message, code=None, param=None, details=None):
    """Anthropic's error shape (which has no code, param or details)."""
    return {"type": "error", "error": {"type": anthropic_error_type(status), "message": message}}


class AnswerStream:
    """What a route drives for every dialect: upstream Responses events in, the client's events
    (dicts) out. StreamTranslator (Chat, Messages) and ResponsesStream implement it.

    After feed/finish/fail: `done` (the answer ended as it should), `stopped` (it ended before
    upstream's did: a stop sequence), `error` ({"status", "message", "code"} when it failed),
    `final` (the Response object to keep, where the dialect has one), `usage` (read_usage) and
    `images` (the length of each drawn image's base64: the log says their size).
    """

    done = stopped = False
    error = final = usage = None
    images = ()

    def count_image(self, item):
        """Count a finished output item's image, if it is one (each implementation's __init__
        makes `images` a list)."""
        image = drawn_image(item)
        if image is not None:
            self.images.append(len(image))

    def feed(self, event):
        """The client events one upstream event becomes."""
        raise NotImplementedError

    def finish(self):
        """The client events that end a stream whose upstream bytes ended."""
        raise NotImplementedError

    def fail(self, failure, fallback=None):
        """The client events of a failure (an upstream error object, or None for `fallback`)."""
        raise NotImplementedError

    @staticmethod
    def error_event(error):
        """The client event that carries `error` ({"status", "message", "code"})."""
        raise NotImplementedError


class DialectHooks:
    """What StreamTranslator asks a dialect: how each part of an answer looks there. Each hook
    appends client events to `out`. A subclass must supply the ones that raise; the others
    show nothing unless it overrides them."""

    def opening(self, out):
        """The answer starts (its first upstream event came)."""
        raise NotImplementedError

    def emit_text(self, out, at, text):
        """A piece of the text of the message at output index `at`, past the stop sequences."""
        raise NotImplementedError

    def refusal(self, out, at, part, text):
        """A piece of a refusal (content part `part` of the message at `at`)."""
        raise NotImplementedError

    def start_call(self, out, at, call):
        """A function call starts: `call` is {"index", "id", "name", "streamed"}."""
        raise NotImplementedError

    def call_arguments(self, out, call, arguments):
        """A piece of a function call's JSON arguments."""
        raise NotImplementedError

    def closing(self, out, response, outcome):
        """The answer ended: `response` is upstream's (its usage), `outcome` why (see outcome())."""
        raise NotImplementedError

    def separate(self, at, part, text):
        """Text to put between two parts of the answer (none by default)."""
        return text

    def text_ended(self, out, at):
        """The message at `at` has no more text."""

    def cite(self, out, at, citations):
        """A finished message's web citations: [(content index, that part's text, url_citation)]."""

    def accepts_call(self, call):
        return True

    def end_call(self, out, call):
        """A function call's arguments are complete."""

    def item_done(self, out, at, item):
        """Another kind of output item is complete (reasoning, web search...)."""

    def emit_thinking(self, out, text):
        """A piece of a reasoning summary (where the dialect's HANDLERS route summary deltas to
        summary_delta)."""


class StreamTranslator(DialectHooks, AnswerStream):
    """Upstream Responses events in, one client's events out: the plumbing
    both translated dialects share.

    It keeps the stream's state (started, done, failed), cuts text at stop
    sequences, sends a message's text from its done event only when no deltas
    came, tracks function calls by output index, and says why the answer
    ended. Subclasses supply the DialectHooks and `error_event`, and name in
    `HANDLERS` the upstream events they show beyond these.
    """

    HANDLERS = {
        "response.output_text.delta": "text_delta",
        "response.output_text.annotation.added": "annotation_added",
        "response.refusal.delta": "refusal_delta",
        "response.output_item.added": "item_added",
        "response.function_call_arguments.delta": "arguments_delta",
        "response.output_item.done": "output_item_done",
    }

    def __init__(self, ctx):
        self.ctx = ctx
        self.names = ctx.tool_names
        self.cutter = StopSequenceCutter(ctx.stops)
        self.started = False
        self.done = False  # the answer ended as it should
        self.stopped = False  # it ended before upstream's did (a stop sequence): the rest is not wanted
        self.error = None  # {"status", "message", "code"} when it failed
        self.calls = {}  # output_index -> {"index", "id", "name", "streamed"} of a function call
        self.streamed = set()  # output_index of messages whose text came as deltas
        self.text_at = None  # output_index of the message whose text the cutter may hold
        self.fed = 0  # characters of text given to the cutter (the client's text, unless cut)
        self.noted = {}  # (output_index, content_index) -> annotations that came as events
        self.refused = False
        self.final = None  # a translated answer has no Response object of its own to keep
        self.usage = None  # the answer's token counts (read_usage), once it has ended
        self.images = []  # the length of each drawn image's base64
        self.last_summary_part = None  # (output_index, summary_index) of the last summary text sent

    def feed(self, event):
        if self.done or self.error or not isinstance(event, dict):
            return []
        kind = event.get("type")
        if kind in ("response.failed", "error"):
            return self.fail(event_failure(event))
        out = []
        if not self.started:
            self.started = True
            self.opening(out)
        if kind in ("response.completed", "response.incomplete"):
            response = as_object(event.get("response"))
            self.usage = read_usage(response.get("usage"))
            self.end_text(out)
            self.closing(out, response, self.outcome(response))
            self.done = True
        elif self.cutter.hit is None:  # nothing reaches the client past a stop sequence
            handler = self.HANDLERS.get(kind)
            if handler:
                getattr(self, handler)(out, event)
        return out

    def finish(self):
        """The upstream byte stream ended: without a terminal event that is a failure."""
        if self.done or self.error:
            return []
        return self.fail(None, STREAM_CUT)

    def fail(self, failure, fallback="The upstream response failed."):
        self.error = stream_error(failure, fallback)
        return [self.error_event(self.error)]

    def outcome(self, response):
        """Why the answer ended, in words each dialect maps to its own."""
        reason = as_object(response.get("incomplete_details")).get("reason")
        if self.cutter.hit is not None:
            return "stop_sequence"
        if reason in ("max_output_tokens", "content_filter"):
            return reason
        if self.refused:
            return "refusal"
        return "tool_calls" if self.calls else "end_turn"

    # -- text
    def text_delta(self, out, event):
        at = event.get("output_index")
        self.streamed.add(at)
        self.text(out, at, event.get("content_index"), event.get("delta"))

    def refusal_delta(self, out, event):
        at = event.get("output_index")
        self.streamed.add(at)
        if event.get("delta"):
            self.refusal(out, at, event.get("content_index"), event["delta"])

    def text(self, out, at, part, text):
        if not text or not isinstance(text, str):
            return
        self.text_at = at
        text = self.separate(at, part, text)
        self.fed += len(text)
        safe = self.cutter.feed(text)
        if safe:
            self.emit_text(out, at, safe)
        if self.cutter.hit is not None:
            self.stop_early(out)

    def stop_early(self, out):
        """A stop sequence ended the text: the answer ends now (the caller closes the upstream
        request), its usage estimated here: the request as sent, the text up to the stop."""
        inputs = quick_request_tokens(self.ctx.upstream) if self.ctx.upstream else 0
        text = "".join(self.cutter.passed)
        outputs = estimate_text_tokens(text) if len(text) <= QUICK_COUNT_CHARS else len(text) // 4  # on the loop
        response = {"usage": {"input_tokens": inputs, "output_tokens": outputs, "total_tokens": inputs + outputs}}
        self.usage = read_usage(response["usage"])
        self.end_text(out)
        self.closing(out, response, "stop_sequence")
        self.done = self.stopped = True

    def end_text(self, out):
        """At a message's end, text held back as a possible stop sequence was none."""
        if self.text_at is None:
            return
        at, self.text_at = self.text_at, None
        rest = self.cutter.flush()
        if rest:
            self.emit_text(out, at, rest)
        self.text_ended(out, at)

    def summary_delta(self, out, event):
        """A piece of a reasoning summary; separate parts of it are set apart by a blank line."""
        if event.get("delta"):
            part = (event.get("output_index"), event.get("summary_index"))
            separator = "\n\n" if self.last_summary_part not in (None, part) else ""
            self.last_summary_part = part
            self.emit_thinking(out, separator + event["delta"])

    def annotation_added(self, out, event):
        note = as_object(event.get("annotation"))
        if note:
            self.noted.setdefault((event.get("output_index"), event.get("content_index")), []).append(note)

    # -- items
    def item_added(self, out, event):
        item = as_object(event.get("item"))
        if item.get("type") == "function_call":
            self.add_call(out, event.get("output_index"), item)

    def add_call(self, out, at, item):
        call = {"index": len(self.calls), "id": item.get("call_id") or item.get("id"),
                "name": self.names.client(item.get("name") or ""), "streamed": False}
        if self.accepts_call(call):
            self.calls[at] = call
            self.start_call(out, at, call)

    def arguments_delta(self, out, event):
        call = self.calls.get(event.get("output_index"))
        if call and event.get("delta"):
            call["streamed"] = True
            self.call_arguments(out, call, event["delta"])

    def output_item_done(self, out, event):
        at, item = event.get("output_index"), as_object(event.get("item"))
        kind = item.get("type")
        if kind == "message":
            if at not in self.streamed:
                for index, part in enumerate(item.get("content") or ()):
                    if self.stopped:
                        return  # a stop sequence in an earlier part ended the answer
                    part = as_object(part)
                    if part.get("type") == "output_text":
                        self.text(out, at, index, part.get("text"))
                    elif part.get("type") == "refusal" and part.get("refusal"):
                        self.refusal(out, at, index, part["refusal"])
            citations = message_citations(at, item, self.noted)
            if citations and self.cutter.hit is None:
                self.cite(out, at, citations)
            self.end_text(out)
        elif kind == "function_call":
            if at not in self.calls:
                self.add_call(out, at, item)
            call = self.calls.get(at)
            if call:
                if not call["streamed"] and item.get("arguments"):
                    call["streamed"] = True
                    self.call_arguments(out, call, item["arguments"])
                self.end_call(out, call)
        else:
            self.count_image(item)
            self.item_done(out, at, item)


def message_citations(at, item, noted):
    """(content index, the part's text, url_citation) for each web citation of a finished message
    item: its text parts' annotations, else the annotation events that came for them."""
    citations = []
    for index, part in enumerate(item.get("content") or ()):
        part = as_object(part)
        text = part.get("text")
        if part.get("type") != "output_text" or not isinstance(text, str):
            continue
        for note in part.get("annotations") or noted.get((at, index)) or ():
            note = as_object(note)
            if note.get("type") == "url_citation" and isinstance(note.get("url"), str):
                citations.append((index, text, note))
    return citations


def citation_span(note, text):
    """An annotation's (start, end) in its part's text, kept inside it."""
    start, end = note.get("start_index"), note.get("end_index")
    start = min(max(start, 0), len(text)) if isinstance(start, int) else 0
    end = min(max(end, start), len(text)) if isinstance(end, int) else start
    return start, end


class UpstreamEvent(dict):
    """An upstream event that remembers the SSE (name, data) it came in, to be passed on unchanged."""
    __slots__ = ("sse",)


def parse_events(parser, chunk, as_received=False):
    """Upstream SSE events in a chunk, as dicts (unparsable ones are skipped);
    `as_received`: as UpstreamEvents, which remember their SSE to pass it on unchanged."""
    events = []
    for name, data in parser.feed(chunk):
        try:
            event = json.loads(data)
        except ValueError:
            continue
        if isinstance(event, dict):
            if name and "type" not in event:
                event["type"] = name
            if as_received:
                event = UpstreamEvent(event)
                event.sse = (name, data)
            events.append(event)
    return events


def is_terminal_event(name, data):
    """Whether an SSE event ends its answer (Responses terminal events, or Chat's [DONE])."""
    if name:
        return name in TERMINAL_EVENTS
    if data == "[DONE]":
        return True
    if '"type"' not in data[:24]:  # a Chat chunk: cheap to rule out without parsing it
        return False
    try:
        return json.loads(data).get("type") in TERMINAL_EVENTS
    except (ValueError, AttributeError):
        return False


# ---- translators: responses -> Codex backend ----------------------------------
# A /v1/responses request is reshaped for the Codex backend (ChatGPT mode;
# API-key mode forwards it), and the answer goes back event for event.

# The input fields of each item type; output-only keys (ids of items that
# were never stored, status) have been refused, so only these are sent.
INPUT_ITEM_FIELDS = {
    "message": {"type": str, "role": str, "content": (str, list)},
    "function_call": {"type": str, "call_id": str, "name": str, "arguments": str},
    "function_call_output": {"type": str, "call_id": str, "output": (str, list)},
    "reasoning": {"type": str, "summary": list, "encrypted_content": str},
    "custom_tool_call": {"type": str, "call_id": str, "name": str, "input": str},
    "custom_tool_call_output": {"type": str, "call_id": str, "output": (str, list)},
    "compaction": {"type": str, "encrypted_content": str},  # from /v1/responses/compact
    # A drawn image shown again: the backend takes these only (what else the item said is output).
    "image_generation_call": {"type": str, "id": str, "status": str, "result": str},
}


def codex_input_items(items):
    """Client Responses input items in the form the Codex backend accepts."""
    out = []
    for at, item in enumerate(items):
        if not isinstance(item, dict):
            raise ClientError("Each input item must be an object.", param="input")
        kind = item.get("type") or ("message" if "role" in item else None)
        if not isinstance(kind, str):
            raise ClientError("input.%d.type: must be a string" % at, param="input")
        check_fields(item, INPUT_ITEM_FIELDS.get(kind, {}), "input.%d." % at)
        if kind == "item_reference":
            raise ClientError("item_reference needs stored responses, and the Codex backend stores none: "
                              "send the items themselves.", param="input")
        if kind not in INPUT_ITEM_FIELDS:
            out.append(item)  # other item types (custom tool calls, shell calls...) go as sent
            continue
        if kind == "reasoning" and not item.get("encrypted_content"):
            continue  # without the backend's encrypted content it cannot be replayed at all
        if kind == "image_generation_call" and drawn_image(item) is None:
            continue  # a drawing that failed: no image to show again
        if kind == "compaction" and not item.get("encrypted_content"):
            raise ClientError("input.%d: a compaction item needs the encrypted_content /v1/responses/compact "
                              "gave it." % at, param="input")
        clean = {key: item[key] for key in INPUT_ITEM_FIELDS[kind] if key in item}
        clean["type"] = kind
        if kind == "message":
            if clean.get("role") == "system":  # refused in input: same meaning as developer
                clean["role"] = "developer"
            if isinstance(clean.get("content"), str):
                part = "output_text" if clean.get("role") == "assistant" else "input_text"
                clean["content"] = [{"type": part, "text": clean["content"]}]
            else:
                clean["content"] = codex_content(clean.get("content") or [], "input.%d.content" % at)
        if kind == "reasoning":
            clean.setdefault("summary", [])
        out.append(clean)
    return out


RESPONSE_NOT_FOUND = ("%s with id %r not found: codex-proxy keeps responses in memory only, while it runs "
                      "(the most recent --store-max-responses of them, none made with store: false).")


def codex_content(content, where):
    """A message's content parts, each with only the fields the backend takes for its type."""
    parts = []
    for index, part in enumerate(content):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise ClientError("%s.%d: must be an object with a type" % (where, index), param="input")
        parts.append(trimmed_by_kind(part, CODEX_ACCEPTS["content"], "%s.%d" % (where, index)))
    return parts


# The type of each field this translator reads.
RESPONSES_FIELDS = {
    "model": str, "input": (str, list), "instructions": str, "tools": list, "tool_choice": (str, dict),
    "parallel_tool_calls": bool, "reasoning": {"effort": str, "summary": str, "generate_summary": str},
    "text": {"format": {"type": str}, "verbosity": str}, "include": [str], "prompt_cache_key": str,
    "service_tier": str, "client_metadata": dict, "stream": bool, "previous_response_id": str,
    "background": bool, "store": bool,
}
def codex_tools(tools):
    """Tools as the backend takes them: only the fields it knows for each tool
    type, function tools flat and with an explicit strict (omitted means strict
    in the Responses API, and then the backend refuses open schemas). RESPONSES_FIELDS has
    checked that `tools` is an array."""
    out = []
    for at, tool in enumerate(tools):
        if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
            raise ClientError("tools.%d: must be an object with a type" % at, param="tools")
        if tool["type"] == "function" and isinstance(tool.get("function"), dict):  # Chat Completions shape
            tool = dict(tool["function"], type="function")
        if tool["type"] == "image_generation":
            tool = image_generation_tool(tool, "tools.%d" % at)
        tool = trimmed_by_kind(tool, CODEX_ACCEPTS["tools"], "tools.%d" % at)
        if tool["type"] == "function":
            tool = dict(tool, strict=tool.get("strict") is True)
            if tool.get("parameters"):
                tool["parameters"] = backend_schema(tool["parameters"])
        out.append(tool)
    return out


def responses_request_for_codex(body, opts):
    """(the Codex backend's request, ctx) for a /v1/responses request.

    The backend refuses sampling and length parameters and anything outside
    the fields the official client sends, so those are left out.
    """
    check_fields(body, RESPONSES_FIELDS)
    require_conversation(body, "model is required.")
    if body.get("conversation"):
        raise ClientError("conversation needs stored conversations, and the Codex backend stores none: "
                          "send the whole conversation in input, or chain responses with "
                          "previous_response_id.", param="conversation")
    if body.get("background"):
        raise ClientError("background responses need storage, which the Codex backend does not offer.",
                          param="background")
    if body.get("previous_response_id") and opts.history is None:
        raise ClientError(RESPONSE_NOT_FOUND % ("Previous response", body["previous_response_id"]), 404,
                          param="previous_response_id", code="previous_response_not_found")
    items = body.get("input")
    if isinstance(items, str):
        items = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": items}]}]
    elif items is None:
        items = []
    instructions = body.get("instructions")
    if not (isinstance(instructions, str) and instructions.strip()):
        instructions = None
    reasoning = as_object(body.get("reasoning"))
    text = as_object(body.get("text"))
    upstream = build_upstream_request(
        # previous_response_id: the route has looked up that response's input and output (opts.history).
        opts, instructions, list(opts.history or ()) + codex_input_items(items),
        tools=codex_tools(body["tools"]) if body.get("tools") is not None else None,
        tool_choice=body.get("tool_choice"), parallel_tool_calls=body.get("parallel_tool_calls"),
        effort=reasoning.get("effort"), summary=reasoning.get("summary") or reasoning.get("generate_summary"),
        text_format=text.get("format"), verbosity=text.get("verbosity"), service_tier=body.get("service_tier"),
        prompt_cache_key=body.get("prompt_cache_key"), include=body.get("include") or (),
        client_metadata=body.get("client_metadata"))
    ctx = AnswerContext(new_id("resp_"), opts.client_model, stream=bool(body.get("stream")))
    ctx.stored_input = upstream["input"]  # kept by the proxy, as the API would keep it
    ctx.private = body.get("store") is False
    return upstream, ctx


# What the backend's /responses/compact takes (a non-stream JSON request).
CODEX_COMPACT_FIELDS = ("model", "input", "instructions", "tools", "parallel_tool_calls", "reasoning", "text",
                        "service_tier", "prompt_cache_key")


def compact_request_for_codex(body, opts):
    """A /v1/responses/compact request as the backend's compact endpoint takes it:
    normalised as a /v1/responses request, then only the fields it knows."""
    upstream, _ = responses_request_for_codex(body, opts)
    return {key: upstream[key] for key in CODEX_COMPACT_FIELDS if key in upstream}


def with_server_defaults(body, defaults):
    """A Responses request for the public API with the server's defaults where the client did not say."""
    if not any(defaults.values()):
        return body
    body = dict(body)
    if defaults.get("reasoning_effort") and not as_object(body.get("reasoning")).get("effort"):
        body["reasoning"] = dict(as_object(body.get("reasoning")), effort=defaults["reasoning_effort"])
    if defaults.get("verbosity") and not as_object(body.get("text")).get("verbosity"):
        body["text"] = dict(as_object(body.get("text")), verbosity=defaults["verbosity"])
    if defaults.get("service_tier") and not body.get("service_tier"):
        body["service_tier"] = defaults["service_tier"]
    return body


class ResponsesStream(AnswerStream):
    """Upstream events to a Responses client, passed on as they come, except
    that a terminal event whose response has an empty `output` (the backend
    sends it so) gets the output rebuilt from the stream's items.

    The AnswerStream interface, as StreamTranslator implements it for the other
    dialects; a failure is recorded in `error` (an incomplete answer is still an
    answer), a cut stream ends with an error event; `final` is the whole Response
    once it has ended."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.done = False
        self.stopped = False  # never: a Responses answer is the backend's, whole
        self.error = None
        self.items = {}  # output_index -> finished output item
        self.final = None
        self.usage = None
        self.images = []  # the length of each drawn image's base64

    def feed(self, event):
        if self.done:
            return []
        kind = event.get("type")
        if kind == "response.output_item.done" and isinstance(event.get("item"), dict):
            self.items[event.get("output_index", len(self.items))] = event["item"]
            self.count_image(event["item"])
        elif kind in TERMINAL_EVENTS:
            self.done = True
            response = as_object(event.get("response"))
            if kind in ("response.failed", "error"):
                self.error = stream_error(event_failure(event))
            if response and not response.get("output") and self.items:
                event = dict(event, response=dict(response, output=[self.items[k] for k in sorted(self.items)]))
            self.final = as_object(event.get("response")) if kind != "error" else None
            self.usage = read_usage(as_object(self.final).get("usage"))
        return [event]

    def finish(self):
        if self.done:
            return []
        self.error = dict(CUT_ERROR)
        return [self.error_event(CUT_ERROR)]

    def fail(self, failure, fallback=None):
        self.error = stream_error(failure, fallback)
        return [self.error_event(self.error)]

    @staticmethod
    def error_event(error):
        return {"type": "error", "code": error["code"], "message": error["message"]}


def response_from_events(events, ctx):
    """The Response object a stream of Responses events amounts to (its output rebuilt where the
    terminal event's is empty); {} without a terminal event."""
    stream = ResponsesStream(ctx)
    for event in events:
        stream.feed(event)
    return stream.final or {}


def ungenerated_response(body, ctx):
    """The Response of a request with `generate: false` (WebSocket mode's warm-up: checked, and
    kept to be continued, with nothing generated): completed, with no output."""
    return {"id": ctx.id, "object": "response", "created_at": ctx.created, "status": "completed", "error": None,
            "incomplete_details": None, "instructions": body.get("instructions"), "model": ctx.model,
            "output": [], "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "tool_choice": body.get("tool_choice", "auto"), "tools": body.get("tools") or [],
            "store": body.get("store") is not False, "usage": None, "metadata": {}}


def ungenerated_events(response):
    """The stream of an ungenerated_response: created, then completed."""
    return [{"type": "response.created", "sequence_number": 0, "response": dict(response, status="in_progress")},
            {"type": "response.completed", "sequence_number": 1, "response": response}]


def responses_sse(event):
    """A Responses event as SSE: as it came from upstream when it is unchanged."""
    sse = getattr(event, "sse", None)
    return sse_event(sse[1], sse[0]) if sse else sse_event(event, event.get("type"))


# ---- translators: Chat Completions <-> Responses ---------------------------------
# A Chat Completions request becomes one Codex Responses request (ChatGPT
# mode; API-key mode forwards chat requests unchanged), and the Responses SSE
# events become chat.completion.chunk objects. Non-stream answers are folded
# from those same chunks, so both answer shapes always agree.

# Accepted by Chat Completions but refused by the Codex backend, and without an
# effect a client can notice beyond sampling details, so they are dropped:
# max_tokens, max_completion_tokens, temperature, top_p, presence_penalty,
# frequency_penalty, logit_bias, seed, user, metadata, store, modalities
# ["text"], prediction, safety_identifier, prompt_cache_retention,
# stream_options (used here). The request is built from an allowlist, so
# nothing else reaches the backend either.
SERVICE_TIERS = {"priority": "priority", "fast": "priority", "flex": "flex", "default": "default"}
CHAT_FINISH_REASONS = {"stop_sequence": "stop", "max_output_tokens": "length", "content_filter": "content_filter",
                       "refusal": "stop", "tool_calls": "tool_calls", "end_turn": "stop"}


def chat_usage(usage):
    u = read_usage(usage)
    return {
        "prompt_tokens": u["input_tokens"],
        "completion_tokens": u["output_tokens"],
        "total_tokens": u["total_tokens"],
        "prompt_tokens_details": {"cached_tokens": u["cached_tokens"]},
        "completion_tokens_details": {"reasoning_tokens": u["reasoning_tokens"]},
    }


# Request: Chat Completions -> Responses.

def chat_request_to_responses(body, opts):
    """Returns (upstream Responses body, ctx for the answer side)."""
    check_chat_request(body)
    legacy = bool(body.get("functions"))
    names = ToolNames()
    tools = chat_tools(body.get("functions") if legacy else body.get("tools"), legacy, names)
    if body.get("web_search_options") is not None:
        size = as_object(body["web_search_options"]).get("search_context_size")
        tools.append(dict({"type": "web_search"}, **({"search_context_size": size} if size else {})))
    instructions, items = chat_messages_to_input(body["messages"], names)
    check_call_pairing(items)
    # A legacy answer carries one function_call: ask for at most one.
    parallel = False if legacy else body.get("parallel_tool_calls")
    upstream = build_upstream_request(
        opts, instructions, items, tools=tools,
        tool_choice=chat_tool_choice(body.get("function_call") if legacy else body.get("tool_choice"), legacy, names),
        parallel_tool_calls=parallel if isinstance(parallel, bool) else None,
        effort=body.get("reasoning_effort") or as_object(body.get("reasoning")).get("effort"), summary="auto",
        text_format=chat_response_format(body.get("response_format")), verbosity=body.get("verbosity"),
        # "default" asks for the standard tier; "auto" (or none) leaves it to the server's default.
        service_tier=SERVICE_TIERS.get(body.get("service_tier")), prompt_cache_key=body.get("prompt_cache_key"))
    stops = stop_sequences(body.get("stop"), "stop", "'stop' must be a string or an array of at most 4 strings.", 4,
                           one_string=True)
    ctx = AnswerContext(new_id("chatcmpl-"), opts.client_model, stream=bool(body.get("stream")), tool_names=names,
                        stops=stops, legacy_functions=legacy, upstream=upstream,
                        include_usage=bool(as_object(body.get("stream_options")).get("include_usage")))
    return upstream, ctx


# The type of each field this translator reads.
CHAT_FIELDS = {
    "model": str, "messages": list, "n": int, "logprobs": bool, "top_logprobs": int, "modalities": [str],
    "audio": dict, "tools": list, "functions": list, "tool_choice": (str, dict), "function_call": (str, dict),
    "parallel_tool_calls": bool, "web_search_options": {"search_context_size": str}, "reasoning_effort": str,
    "reasoning": {"effort": str}, "verbosity": str, "service_tier": str, "prompt_cache_key": str,
    "response_format": {"type": str, "json_schema": {"name": str, "schema": dict, "strict": bool,
                                                     "description": str}},
    "stop": (str, list), "stream": bool, "stream_options": {"include_usage": bool},
}


def check_chat_request(body):
    """The checks of a Chat Completions request that stand before reading it."""
    check_fields(body, CHAT_FIELDS)
    require_conversation(body, "you must provide a model parameter",
                         "'messages' must be a non-empty array of messages.")
    if body.get("n") not in (None, 1):
        raise ClientError("Only n=1 is supported: the Codex backend returns one choice.", param="n")
    if body.get("logprobs") or body.get("top_logprobs"):
        raise ClientError("logprobs are not available through the Codex backend.", param="logprobs")
    if "audio" in (body.get("modalities") or ()) or body.get("audio"):
        raise ClientError("Audio output is not available through the Codex backend.", param="modalities")
    if body.get("tools") and body.get("functions"):
        raise ClientError("Send either 'tools' or the legacy 'functions', not both.", param="functions")


def chat_tools(tools, legacy, names):
    """Flat Responses function tools from `tools` (or the legacy `functions`), arrays if given
    (CHAT_FIELDS); the image tool as the backend takes it (its images come back in
    message.images, as OpenRouter gives them)."""
    if tools is None:
        return []
    param = "functions" if legacy else "tools"
    flat = []
    for at, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise ClientError("Each tool must be an object.", param=param)
        if not legacy and tool.get("type") == "image_generation":
            flat.append(image_generation_tool(tool, "tools.%d" % at))
            continue
        if not legacy and tool.get("type") != "function":
            raise ClientError("Tool type %r is not supported through the Codex backend; only function tools and "
                              "image_generation are." % tool.get("type"), param=param)
        fn = tool if legacy else as_object(tool.get("function"))
        if not fn.get("name") or not isinstance(fn["name"], str):
            raise ClientError("Every function tool needs a name.", param=param)
        flat.append(function_tool(fn["name"], fn.get("description"), fn.get("parameters"), fn.get("strict"), names))
    return flat


def chat_tool_choice(choice, legacy, names):
    """tool_choice, or the legacy function_call ("none", "auto", {"name"})."""
    if choice is None or choice in ("none", "auto", "required"):
        return choice
    if not legacy and choice == {"type": "image_generation"}:
        return choice  # draw, whatever else the model could do
    if isinstance(choice, dict):
        name = choice.get("name") if legacy else as_object(choice.get("function")).get("name")
        if (legacy or choice.get("type") == "function") and isinstance(name, str) and name:
            return {"type": "function", "name": names.add(name)}
    raise ClientError("Unsupported tool_choice %s." % json.dumps(choice), param="tool_choice")


def chat_response_format(response_format):
    kind = as_object(response_format).get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        spec = as_object(response_format.get("json_schema"))
        text_format = {"type": "json_schema", "name": spec.get("name") or "response",
                       "schema": spec.get("schema") or {}, "strict": spec.get("strict") is True}
        if spec.get("description"):
            text_format["description"] = spec["description"]
        return text_format
    raise ClientError("Unsupported response_format type %r." % kind, param="response_format")


def chat_messages_to_input(messages, names):
    """(instructions, input items) from Chat messages, in order."""
    instructions = []
    items = []
    legacy_calls = {}  # function name -> call_id of its latest legacy call
    leading = True
    for at, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ClientError("messages[%d] must be an object." % at, param="messages")
        role = message.get("role")
        leading = leading and role in ("system", "developer")
        # Participant `name`s have no Responses counterpart and are not sent.
        if role in ("system", "developer"):
            if leading:
                instructions.append(chat_text(message, at))
            else:  # the backend refuses system messages in input
                items.append({"type": "message", "role": "developer",
                              "content": [{"type": "input_text", "text": chat_text(message, at)}]})
        elif role == "user":
            items.append({"type": "message", "role": "user", "content": user_content(message.get("content"), at)})
        elif role == "assistant":
            items.extend(assistant_items(message, at, names, legacy_calls))
        elif role in ("tool", "function"):
            items.append(tool_output_item(message, at, legacy_calls))
        else:
            raise ClientError("messages[%d] has an unsupported role %r." % (at, role), param="messages")
    return "\n\n".join(t for t in instructions if t), items


def chat_text(message, at, refusal=False):
    """The text of a message whose content is a string or text parts (refusal parts where allowed)."""
    return "\n".join(block_texts(message.get("content"), "messages[%d].content" % at, "messages", refusal))


def assistant_items(message, at, names, legacy_calls):
    """An assistant message's text and tool calls as input items."""
    # `reasoning_content` some clients echo back is dropped: without the
    # encrypted_content the backend issued it cannot be replayed. So are the `images` it drew
    # (message.images): megabytes of base64 at every later turn, for the model to read again.
    items = []
    text = chat_text(message, at, refusal=True) or message.get("refusal") or ""
    if text:
        items.append({"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]})
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise ClientError("messages[%d].tool_calls must be an array." % at, param="messages")
    for call in calls:
        call = as_object(call)
        fn = as_object(call.get("function"))
        if call.get("type", "function") != "function" or not isinstance(call.get("id"), str) or not call["id"] \
                or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise ClientError("messages[%d].tool_calls holds an unsupported or incomplete call." % at,
                              param="messages")
        items.append(function_call_item(call["id"], names.add(fn["name"]), fn.get("arguments")))
    legacy_call = as_object(message.get("function_call"))
    if legacy_call:
        name = legacy_call.get("name") if isinstance(legacy_call.get("name"), str) else "function"
        call_id = "call_fn%d" % at  # stable as the conversation grows
        legacy_calls[name] = call_id
        items.append(function_call_item(call_id, names.add(name), legacy_call.get("arguments")))
    return items


def tool_output_item(message, at, legacy_calls):
    """A tool (or legacy function) message as a function_call_output item."""
    if message.get("role") == "tool":
        call_id = message.get("tool_call_id")
        if not isinstance(call_id, str) or not call_id:
            raise ClientError("messages[%d] (role tool) needs a tool_call_id." % at, param="messages")
    else:
        call_id = legacy_calls.get(message.get("name")) if isinstance(message.get("name"), str) else None
        if call_id is None:
            raise ClientError("messages[%d] answers function %r, which no earlier assistant message called."
                              % (at, message.get("name")), param="messages")
    return {"type": "function_call_output", "call_id": call_id, "output": chat_text(message, at)}


def function_call_item(call_id, name, arguments):
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments if arguments is not None else {}, ensure_ascii=False)
    return {"type": "function_call", "call_id": call_id, "name": name, "arguments": arguments}


def user_content(content, at):
    if content is None or isinstance(content, str):
        return [{"type": "input_text", "text": content or ""}]
    if not isinstance(content, list):
        raise ClientError("messages[%d].content must be a string or an array of parts." % at, param="messages")
    return [user_part(as_object(part), at) for part in content]


def user_part(part, at):
    kind = part.get("type")
    if kind == "text":
        return {"type": "input_text", "text": block_texts([part], "messages[%d].content" % at, "messages")[0]}
    if kind == "image_url":
        image = part.get("image_url")
        image = image if isinstance(image, dict) else {"url": image}
        url = image.get("url")
        if not isinstance(url, str) or not url.startswith(("data:", "https://", "http://")):
            raise ClientError("messages[%d]: image_url must be an http(s) URL or a data: URL." % at,
                              param="messages")
        detail = image.get("detail")
        return image_part(url, detail if isinstance(detail, str) else None)
    if kind == "file" and isinstance(as_object(part.get("file")).get("file_data"), str):
        file = part["file"]
        data = file["file_data"]
        # Chat Completions takes PDFs as bare base64 too; Responses wants a data URL.
        filename = file.get("filename") if isinstance(file.get("filename"), str) else "file.pdf"
        return file_part(filename, data if data.startswith("data:") else data_url("application/pdf", data))
    if kind == "file":
        raise ClientError("messages[%d]: file parts need file_data; uploaded file ids are not available "
                          "through the Codex backend." % at, param="messages")
    raise ClientError("messages[%d]: content part type %r is not supported through the Codex backend."
                      % (at, kind), param="messages")


def check_call_pairing(items):
    """The backend refuses an input whose calls and outputs do not pair up."""
    called = set()
    answered = set()
    for item in items:
        if item["type"] == "function_call":
            called.add(item["call_id"])
        elif item["type"] == "function_call_output":
            if item["call_id"] not in called:
                raise ClientError("Tool result for tool_call_id %r has no earlier assistant tool call with that id."
                                  % item["call_id"], param="messages")
            answered.add(item["call_id"])
    missing = [item["call_id"] for item in items
               if item["type"] == "function_call" and item["call_id"] not in answered]
    if missing:
        raise ClientError("Assistant tool call %r has no result: add a tool message with tool_call_id %r after it."
                          % (missing[0], missing[0]), param="messages")


# Answer: Responses events -> chat.completion.chunk.

class ResponsesToChatStream(StreamTranslator):
    """Responses SSE events in, chat.completion.chunk dicts out.

    The usage chunk (choices: []) is produced when the client asked for it
    (stream_options.include_usage) and always for non-stream requests, whose
    answer chat_completion_from_chunks folds from these chunks.
    """

    HANDLERS = dict(StreamTranslator.HANDLERS, **{"response.reasoning_summary_text.delta": "summary_delta"})

    def __init__(self, ctx):
        StreamTranslator.__init__(self, ctx)
        self.send_usage = ctx.include_usage or not ctx.stream
        self.last_text_part = None  # (output_index, content_index) of the last text sent
        self.part_starts = {}  # (output_index, content_index) -> where its text starts in the content
        self.text_template = None

    def chunk(self, delta, finish_reason=None):
        chunk = {"id": self.ctx.id, "object": "chat.completion.chunk", "created": self.ctx.created,
                 "model": self.ctx.model, "system_fingerprint": None,
                 "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}
        if self.ctx.include_usage:
            chunk["usage"] = None  # as OpenAI does: null on all but the usage chunk
        return chunk

    def opening(self, out):
        out.append(self.chunk({"role": "assistant", "content": ""}))

    def separate(self, at, part, text):
        if self.last_text_part == (at, part):
            return text
        separate = self.last_text_part is not None
        self.last_text_part = (at, part)
        self.part_starts[(at, part)] = self.fed + (2 if separate else 0)
        return "\n\n" + text if separate else text  # separate messages must not run into each other

    def emit_text(self, out, at, text):
        if self.text_template is None:
            delta = {}
            self.text_template = text_template(self.chunk(delta), delta, "content")
        chunk = TextDelta(self.chunk({"content": text}))
        chunk.template, chunk.text = self.text_template, text
        out.append(chunk)

    def refusal(self, out, at, part, text):
        out.append(self.chunk({"refusal": text}))

    def cite(self, out, at, citations):
        notes = []
        for part, text, note in citations:
            start = self.part_starts.get((at, part))
            if start is not None:
                low, high = citation_span(note, text)
                notes.append({"type": "url_citation", "url_citation": {
                    "start_index": start + low, "end_index": start + high, "url": note["url"],
                    "title": note.get("title") if isinstance(note.get("title"), str) else ""}})
        if notes:
            out.append(self.chunk({"annotations": notes}))  # as OpenAI's search models stream them

    def emit_thinking(self, out, text):
        out.append(self.chunk({"reasoning_content": text}))

    def accepts_call(self, call):
        return not (self.ctx.legacy_functions and self.calls)  # a legacy answer holds one call

    def item_done(self, out, at, item):
        """A drawn image: one chunk with delta.images, as OpenRouter streams them. A drawing that
        failed (its moderation refused it) fails the answer, with the backend's words."""
        if item.get("type") != "image_generation_call":
            return
        if drawn_image(item) is not None:
            out.append(self.chunk({"images": [{"type": "image_url", "image_url": {"url": drawn_image_url(item)}}]}))
        elif item.get("status") == "failed" or item.get("error"):
            out.extend(self.fail(item.get("error"), "The image could not be drawn."))

    def call_delta(self, call, function):
        if self.ctx.legacy_functions:
            return {"function_call": function}
        head = {"index": call["index"]}
        if "name" in function:
            head.update(id=call["id"], type="function")
        head["function"] = function
        return {"tool_calls": [head]}

    def start_call(self, out, at, call):
        out.append(self.chunk(self.call_delta(call, {"name": call["name"], "arguments": ""})))

    def call_arguments(self, out, call, arguments):
        out.append(self.chunk(self.call_delta(call, {"arguments": arguments})))

    def closing(self, out, response, outcome):
        finish = CHAT_FINISH_REASONS[outcome]
        if finish == "tool_calls" and self.ctx.legacy_functions:
            finish = "function_call"
        out.append(self.chunk({}, finish))
        if self.send_usage:
            usage_chunk = self.chunk({})
            usage_chunk["choices"] = []
            usage_chunk["usage"] = chat_usage(response.get("usage"))
            out.append(usage_chunk)

    @staticmethod
    def error_event(error):
        return openai_error(error["status"], error["message"], error["code"])



# Non-stream answer: fold the chunks.

def chat_completion_from_chunks(chunks, ctx):
    """The chat.completion object equal to what the chunks stream."""
    content, reasoning, refusal, annotations, images = [], [], [], [], []
    tool_calls = []
    function_call = None
    finish_reason = "stop"
    usage = None
    for chunk in chunks:
        usage = chunk.get("usage") or usage
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            content.append(delta.get("content") or "")
            reasoning.append(delta.get("reasoning_content") or "")
            refusal.append(delta.get("refusal") or "")
            annotations.extend(delta.get("annotations") or ())
            images.extend(delta.get("images") or ())
            for piece in delta.get("tool_calls") or ():  # pieces in lists, joined once (+= would copy)
                while len(tool_calls) <= piece["index"]:
                    tool_calls.append({"id": None, "type": "function", "function": {"name": [], "arguments": []}})
                call = tool_calls[piece["index"]]
                call["id"] = piece.get("id") or call["id"]
                call["function"]["name"].append((piece.get("function") or {}).get("name") or "")
                call["function"]["arguments"].append((piece.get("function") or {}).get("arguments") or "")
            if delta.get("function_call"):
                function_call = function_call or {"name": [], "arguments": []}
                function_call["name"].append(delta["function_call"].get("name") or "")
                function_call["arguments"].append(delta["function_call"].get("arguments") or "")
            finish_reason = choice.get("finish_reason") or finish_reason
    for function in [call["function"] for call in tool_calls] + [function_call] * (function_call is not None):
        function.update(name="".join(function["name"]), arguments="".join(function["arguments"]))
    text = "".join(content)
    message = {"role": "assistant", "content": text or (None if tool_calls or function_call else ""),
               "refusal": "".join(refusal) or None}
    put_given(message, annotations=annotations or None, tool_calls=tool_calls or None,
              function_call=function_call or None, images=images or None)
    if any(reasoning):
        message["reasoning_content"] = "".join(reasoning)
    return {
        "id": ctx.id, "object": "chat.completion", "created": ctx.created, "model": ctx.model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
        "usage": usage or chat_usage(None),
    }


def chat_with_server_defaults(body, defaults):
    """A Chat Completions request for the public API with the server's defaults where the client did not say."""
    missing = {key: value for key, value in defaults.items() if value and not body.get(key)}
    return dict(body, **missing) if missing else body


# ---- translators: Anthropic Messages <-> Responses -------------------------------
# A Messages request (Claude Code's, above all) becomes one Responses request,
# and the Responses SSE events become Anthropic stream events. Non-stream
# answers are folded from those same events, so both answer shapes agree.

# Claude Code's first system block: Anthropic's billing attribution, read by
# their API, not an instruction. It is dropped so the model is not told about
# it and the start of the prompt (the cached prefix) does not change with the
# Claude Code version.
BILLING_HEADER_PREFIX = "x-anthropic-billing-header:"
# Thinking signatures this proxy hands out are upstream's encrypted_content
# behind this mark, so a later turn can tell them from Claude's own (which
# upstream cannot decrypt) without relying on upstream's token format.
SIGNATURE_PREFIX = "codex-proxy:"
# Blocks that record a server tool's work in assistant history. The backend
# cannot replay them (store is false, nothing upstream to refer to); the
# model's text after them already carries what it learned.
SERVER_TOOL_HISTORY_BLOCKS = frozenset((
    "server_tool_use", "web_search_tool_result", "web_fetch_tool_result", "code_execution_tool_result",
    "bash_code_execution_tool_result", "text_editor_code_execution_tool_result", "tool_search_tool_result",
))
MESSAGES_STOP_REASONS = {"stop_sequence": "stop_sequence", "max_output_tokens": "max_tokens",
                         "content_filter": "refusal", "refusal": "refusal", "tool_calls": "tool_use",
                         "end_turn": "end_turn"}
USER_ID_SESSION_RE = re.compile(r"_session_([0-9a-fA-F-]{36})")


# Request: Messages -> Responses.

def messages_request_to_responses(body, opts):
    """Returns (upstream Responses body, ctx for the answer side).

    Also takes count_tokens bodies (no max_tokens, no stream).
    """
    check_messages_request(body)
    thinking = as_object(body.get("thinking"))
    output_config = as_object(body.get("output_config"))
    names = ToolNames()
    tools, web_search = messages_tools(body.get("tools"), names)
    items = MessagesInput(names).convert(body["messages"])
    # Thinking blocks go only to clients that turned thinking on: others (as
    # with Anthropic) get none, and may read content[0] as the text.
    display = None
    if thinking.get("type") in ("enabled", "adaptive"):
        display = "omitted" if thinking.get("display") == "omitted" else "summarized"
    choice = as_object(body.get("tool_choice"))
    upstream = build_upstream_request(
        opts, system_instructions(body.get("system")), items, tools=tools,
        tool_choice=messages_tool_choice(choice, names, web_search) if tools else None,
        parallel_tool_calls=choice.get("disable_parallel_tool_use") is not True if tools else None,
        effort=requested_effort(thinking, output_config),
        # Summaries are only asked for when they are shown; the encrypted
        # reasoning that later turns need comes either way.
        summary="auto" if display == "summarized" else None,
        text_format=output_format(output_config.get("format")),
        service_tier=messages_service_tier(body),
        prompt_cache_key=session_from_user_id(as_object(body.get("metadata")).get("user_id"))
        if not opts.session_id else None)
    # top_k has no counterpart in the public Responses API.
    with_public_api_sampling(upstream, opts, body.get("max_tokens"), body.get("temperature"), body.get("top_p"))
    # Accepted and not forwarded: max_tokens, temperature, top_p, top_k in
    # ChatGPT mode (refused there), metadata (read for the session above),
    # context_management (server-side trimming of history; without it the
    # model just sees the full history), container (for code execution, which
    # is refused with the other server tools), cache_control, inference_geo, diagnostics.
    window = opts.model_info.get("context_window")

    def prompt_too_long():
        # Claude Code compacts the conversation when it reads exactly this
        # (Anthropic's wording); counted only when the context did overflow,
        # which the backend knows better than an estimate: the count is never
        # put at or below the maximum. Counted quickly: such a request is a large one.
        tokens = quick_request_tokens(upstream)
        maximum = window or max(tokens - 1, 1)
        return "prompt is too long: %d tokens > %d maximum" % (max(tokens, maximum + 1), maximum)
    stops = stop_sequences(body.get("stop_sequences"), "stop_sequences",
                           "stop_sequences: must be an array of at most %d strings" % MAX_STOPS)
    ctx = AnswerContext(new_id("msg_"), opts.client_model, stream=body.get("stream") is True, tool_names=names,
                        stops=stops, web_search=web_search, thinking=display, prompt_too_long=prompt_too_long,
                        upstream=upstream)
    return upstream, ctx


def messages_service_tier(body):
    """Claude Code's fast mode (`speed: "fast"`) is the priority tier; "standard_only" is the
    client saying no to priority capacity; anything else leaves it to the server's default."""
    if body.get("speed") == "fast":
        return "priority"
    return "default" if body.get("service_tier") == "standard_only" else None


# The type of each field this translator reads.
MESSAGES_FIELDS = {
    "model": str, "messages": list, "system": (str, list), "max_tokens": int, "stop_sequences": [str],
    "stream": bool, "metadata": {"user_id": str}, "tools": list, "service_tier": str, "speed": str,
    "mcp_servers": list,
    "tool_choice": {"type": str, "name": str, "disable_parallel_tool_use": bool},
    "thinking": {"type": str, "budget_tokens": int, "display": str},
    "output_config": {"effort": str, "format": dict}, "temperature": (int, float), "top_p": (int, float),
}


def check_messages_request(body):
    """The checks of a Messages request that stand before reading it."""
    check_fields(body, MESSAGES_FIELDS)
    require_conversation(body, "model: Field required", "messages: must be a non-empty array of messages")
    if body.get("mcp_servers"):
        # Server-side MCP connections would need the proxy to act as an MCP
        # client; dropping them would make their tools silently vanish.
        raise ClientError("mcp_servers (the MCP connector) is not available through this proxy.",
                          param="mcp_servers")


def requested_effort(thinking, output_config):
    """reasoning.effort from the client's thinking settings (None: the server's default)."""
    budget = thinking.get("budget_tokens")
    if thinking.get("type") == "disabled":
        return "none"  # no thinking at all is closest to the least thinking the model offers
    if output_config.get("effort"):
        return output_config["effort"]
    if isinstance(budget, int):
        return "low" if budget <= 1024 else "medium" if budget <= 8192 else "high"
    return None


def session_from_user_id(user_id):
    """The Claude Code session id inside metadata.user_id, if any.

    Today's form is a JSON string {"device_id", "account_uuid", "session_id"};
    older versions sent "user_<hash>_account_<uuid>_session_<uuid>".
    """
    if not isinstance(user_id, str):
        return None
    try:
        session = as_object(json.loads(user_id)).get("session_id")
    except ValueError:
        match = USER_ID_SESSION_RE.search(user_id)
        session = match.group(1) if match else None
    return session if isinstance(session, str) and session else None


def system_instructions(system):
    texts = block_texts(system, "system", "system")
    return "\n\n".join(text for text in texts if text and not text.startswith(BILLING_HEADER_PREFIX))


def tool_schema(tool, at):
    """A tool's input_schema: an object, or the same as a JSON string."""
    schema = tool.get("input_schema")
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except ValueError:
            raise ClientError("tools.%d.input_schema: not valid JSON" % at, param="tools") from None
    if schema is not None and not isinstance(schema, dict):
        raise ClientError("tools.%d.input_schema: must be a JSON schema object" % at, param="tools")
    return schema


def messages_tools(tools, names):
    """(flat Responses tools, whether the client offered web search)."""
    if tools is None:  # else an array (MESSAGES_FIELDS)
        return [], False
    flat = []
    for at, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise ClientError("tools.%d: must be an object" % at, param="tools")
        kind = tool.get("type")
        if kind in (None, "custom"):
            if not tool.get("name") or not isinstance(tool["name"], str):
                raise ClientError("tools.%d.name: Field required" % at, param="tools")
            # defer_loading tools are sent like the others: the backend has no
            # deferred loading, and Anthropic would load them on demand (via a
            # tool_reference), so the model must be able to call them.
            flat.append(function_tool(tool["name"], tool.get("description"), tool_schema(tool, at),
                                      tool.get("strict"), names))
        elif isinstance(kind, str) and kind.startswith("web_search_"):
            flat.append(web_search_tool(tool, at))
        elif kind == "image_generation":  # an answer here has no block that could hold an image
            raise ClientError("tools.%d: the Messages API has no image output, so image_generation is not "
                              "available here: draw with POST /v1/images/generations, or with the "
                              "image_generation tool of POST /v1/responses." % at, param="tools")
        else:
            raise ClientError("tools.%d: server tool type %r is not available through this proxy "
                              "(only custom tools and web_search are)" % (at, kind), param="tools")
    return flat, any(tool["type"] == "web_search" for tool in flat)


def web_search_tool(tool, at):
    """Anthropic's web_search_* server tool as the Responses web_search tool.

    blocked_domains has no upstream counterpart and max_uses no equivalent
    limit; both are ignored rather than failing a search."""
    search = {"type": "web_search"}
    domains = tool.get("allowed_domains")
    if domains:
        if not isinstance(domains, list) or not all(isinstance(d, str) for d in domains):
            raise ClientError("tools.%d.allowed_domains: must be an array of strings" % at, param="tools")
        search["filters"] = {"allowed_domains": list(domains)}
    location = as_object(tool.get("user_location"))
    if location:
        search["user_location"] = dict((key, location[key]) for key in ("type", "city", "country", "region",
                                                                        "timezone") if location.get(key))
    return search


def messages_tool_choice(choice, names, web_search):
    kind = choice.get("type", "auto")
    if kind in ("auto", "none"):
        return kind
    if kind == "any":
        return "required"
    if kind == "tool":
        name = choice.get("name")
        if name in names.to_upstream:
            return {"type": "function", "name": names.upstream(name)}
        if name == "web_search" and web_search:
            # Upstream cannot force its hosted search by name; with search
            # offered, "required" is the nearest.
            return "required"
        raise ClientError("tool_choice.name: %r is not one of the tools given" % (name,), param="tool_choice")
    raise ClientError("tool_choice.type: %r is not supported" % (kind,), param="tool_choice")


def output_format(fmt):
    """output_config.format (structured outputs) as Responses text.format."""
    fmt = as_object(fmt)
    if not fmt:
        return None
    if fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict):
        raise ClientError("output_config.format: only {type: json_schema, schema} is supported",
                          param="output_config")
    # Not strict: Anthropic's schema rules are looser than upstream strict
    # mode, which would refuse schemas Anthropic takes.
    return {"type": "json_schema", "name": "output", "schema": fmt["schema"], "strict": False}


class MessagesInput:
    """Anthropic messages -> Responses input items, in order.

    Tool results become function_call_output items where they occur. While a
    turn's tool calls still await their outputs, other items (the text of the
    answering user message, system-role messages) are held back, so outputs
    directly follow their calls, as the backend wants. A final assistant
    message (prefill) goes as history: the backend answers after it rather
    than continuing it.
    """

    def __init__(self, names):
        self.names = names
        self.items = []
        self.held = []
        self.open_calls = []  # tool_use ids of the last assistant turn not yet answered
        self.called = set()

    def convert(self, messages):
        for at, message in enumerate(messages):
            if not isinstance(message, dict):
                raise ClientError("messages.%d: must be an object" % at, param="messages")
            role = message.get("role")
            content = message.get("content")
            if isinstance(content, str):
                content = [{"type": "text", "text": content}]
            if not isinstance(content, list) or not all(isinstance(block, dict) for block in content):
                raise ClientError("messages.%d.content: must be a string or an array of content blocks (objects)"
                                  % at, param="messages")
            for index, block in enumerate(content):
                if not isinstance(block.get("type"), str):
                    raise ClientError("messages.%d.content.%d.type: must be a string" % (at, index),
                                      param="messages")
            if role == "user":
                self.user(content, at)
            elif role == "assistant":
                self.check_answered()
                self.assistant(content, at)
            elif role == "system":
                # The backend refuses system messages in input: a developer
                # message keeps this one's place in the conversation.
                texts = block_texts(content, "messages.%d.content" % at, "messages")
                parts = [{"type": "input_text", "text": text} for text in texts if text]
                if parts:
                    self.emit({"type": "message", "role": "developer", "content": parts})
            else:
                raise ClientError("messages.%d.role: %r is not one of user, assistant, system" % (at, role),
                                  param="messages")
        self.check_answered()
        return self.items

    def emit(self, item):
        (self.held if self.open_calls else self.items).append(item)

    def check_answered(self):
        if self.open_calls:
            raise ClientError("messages: tool_use ids were found without tool_result blocks immediately "
                              "after: %s. Each tool_use block must have a corresponding tool_result block "
                              "in the next message." % ", ".join(self.open_calls), param="messages")

    def user(self, content, at):
        parts = []
        for index, block in enumerate(content):
            where = "messages.%d.content.%d" % (at, index)
            if block.get("type") == "tool_result":
                self.tool_result(block, where)
            else:
                parts.extend(input_parts(block, where))
        if parts:
            self.emit({"type": "message", "role": "user", "content": parts})

    def tool_result(self, block, where):
        call_id = block.get("tool_use_id")
        if not isinstance(call_id, str):
            raise ClientError("%s.tool_use_id: must be a string" % where, param="messages")
        if call_id not in self.open_calls:
            why = "was already answered" if call_id in self.called else "matches no earlier tool_use block"
            raise ClientError("%s: tool_result for tool_use_id %r, which %s: each tool_result must answer a "
                              "tool_use of the previous assistant message" % (where, call_id, why),
                              param="messages")
        self.items.append({"type": "function_call_output", "call_id": call_id,
                           "output": tool_result_output(block, where)})
        self.open_calls.remove(call_id)
        if not self.open_calls:
            self.items.extend(self.held)
            self.held = []

    def assistant(self, content, at):
        texts = []

        def flush_text():
            if texts:
                self.items.append({"type": "message", "role": "assistant",
                                   "content": [{"type": "output_text", "text": t} for t in texts]})
                del texts[:]
        for index, block in enumerate(content):
            kind = block.get("type")
            where = "messages.%d.content.%d" % (at, index)
            if kind == "text":
                texts.extend(text for text in block_texts([block], where, "messages") if text)
            elif kind == "tool_use":
                flush_text()
                self.tool_use(block, where)
            elif kind in ("thinking", "redacted_thinking"):
                item = reasoning_item(block)
                if item:
                    flush_text()
                    self.items.append(item)
            elif kind not in SERVER_TOOL_HISTORY_BLOCKS:
                raise ClientError("%s: block type %r is not supported in assistant messages" % (where, kind),
                                  param="messages")
        flush_text()

    def tool_use(self, block, where):
        call_id, name = block.get("id"), block.get("name")
        if not isinstance(call_id, str) or not call_id or not isinstance(name, str) or not name:
            raise ClientError("%s: tool_use needs an id and a name" % where, param="messages")
        if call_id in self.called:
            raise ClientError("%s: tool_use id %r is used twice" % (where, call_id), param="messages")
        if block.get("input") is not None and not isinstance(block["input"], dict):
            raise ClientError("%s: tool_use input must be an object" % where, param="messages")
        self.items.append(function_call_item(call_id, self.names.add(name), block.get("input")))
        self.called.add(call_id)
        self.open_calls.append(call_id)


def reasoning_item(block):
    """A thinking block as a reasoning item, when it carries reasoning this
    proxy relayed (Claude's own thinking, or one without a signature, cannot
    be replayed and is left out)."""
    thinking = block.get("type") == "thinking"
    signature = block.get("signature") if thinking else block.get("data")
    if not isinstance(signature, str) or not signature.startswith(SIGNATURE_PREFIX) \
            or len(signature) == len(SIGNATURE_PREFIX):
        return None
    thought = block.get("thinking") if thinking and isinstance(block.get("thinking"), str) else None
    return {"type": "reasoning", "encrypted_content": signature[len(SIGNATURE_PREFIX):],
            "summary": [{"type": "summary_text", "text": thought}] if thought else []}


def tool_result_output(block, where):
    """A tool_result's content as function_call_output output: text, or parts when it has images."""
    content = block.get("content")
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    elif content is None:
        content = []
    elif not isinstance(content, list):
        raise ClientError("%s.content: must be a string or an array of content blocks" % where, param="messages")
    parts = []
    for index, inner in enumerate(content):
        if not isinstance(inner, dict):
            raise ClientError("%s.content.%d: must be an object" % (where, index), param="messages")
        if inner.get("type") == "tool_reference":
            # Anthropic would load the named deferred tool here; every tool
            # is already upstream, so the model only needs to hear that.
            parts.append({"type": "input_text", "text": "Tool %s is available." % inner.get("tool_name")})
        else:
            parts.extend(input_parts(inner, "%s.content.%d" % (where, index)))
    if all(part["type"] == "input_text" for part in parts):
        output = "\n\n".join(part["text"] for part in parts)
        # function_call_output has no error flag: say it in the text so the
        # model does not take the failure for a result.
        return ("Error: " + output if output else "Error") if block.get("is_error") else output
    if block.get("is_error"):
        parts.insert(0, {"type": "input_text", "text": "Error:"})
    return parts


def input_parts(block, where):
    """Responses input parts for a user-side content block (also inside tool_result)."""
    kind = block.get("type")
    source = as_object(block.get("source"))
    base64_data = source.get("type") == "base64" and isinstance(source.get("data"), str)
    if kind == "text":
        text = block.get("text")
        if not isinstance(text, str):
            raise ClientError("%s.text: must be a string" % where, param="messages")
        return [{"type": "input_text", "text": text}] if text else []
    if kind == "image":
        if base64_data and isinstance(source.get("media_type"), str):
            return [image_part(data_url(source["media_type"], source["data"]))]
        if source.get("type") == "url" and isinstance(source.get("url"), str):
            return [image_part(source["url"])]
    elif kind == "document":
        return document_parts(block, source, where)
    elif kind == "search_result":
        texts = block_texts(block.get("content") or [], where + ".content", "messages")
        head = "%s (%s)" % (block.get("title") or "", block.get("source") or "")
        return [{"type": "input_text", "text": "\n\n".join([head] + texts)}]
    else:
        raise ClientError("%s: block type %r is not supported here" % (where, kind), param="messages")
    return unsupported_source(kind, source, where)


def document_parts(block, source, where):
    title = block.get("title") if isinstance(block.get("title"), str) else None
    if source.get("type") == "base64" and isinstance(source.get("data"), str):
        media_type = source.get("media_type") if isinstance(source.get("media_type"), str) else "application/pdf"
        return [file_part(title, data_url(media_type, source["data"]))]
    if source.get("type") == "url" and isinstance(source.get("url"), str):
        return [file_part(file_url=source["url"])]
    if source.get("type") == "text":
        text = source.get("data") if isinstance(source.get("data"), str) else ""
        return [{"type": "input_text", "text": "%s\n\n%s" % (title, text) if title else text}]
    if source.get("type") == "content":
        inner = source.get("content")
        blocks = [{"type": "text", "text": inner}] if isinstance(inner, str) else inner or ()
        if not isinstance(blocks, (list, tuple)):
            raise ClientError("%s.source.content: must be a string or an array" % where, param="messages")
        return [part for at, b in enumerate(blocks)
                for part in input_parts(as_object(b), "%s.source.content.%d" % (where, at))]
    return unsupported_source("document", source, where)


def unsupported_source(kind, source, where):
    if source.get("type") == "base64":
        raise ClientError("%s.source: a base64 source needs media_type and data" % where, param="messages")
    raise ClientError("%s: %s source type %r is not supported through this proxy (uploaded files cannot be "
                      "read by the backend)" % (where, kind, source.get("type")), param="messages")


# Answer: Responses events -> Anthropic stream events.

def message_skeleton(ctx):
    return {"id": ctx.id, "type": "message", "role": "assistant", "model": ctx.model,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0, "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": 0}}


def messages_usage(usage, web_searches=0):
    """Anthropic usage from Responses usage: input_tokens excludes the cached ones."""
    counts = read_usage(usage)
    out = {"input_tokens": max(counts["input_tokens"] - counts["cached_tokens"], 0),
           "output_tokens": counts["output_tokens"], "cache_read_input_tokens": counts["cached_tokens"],
           "cache_creation_input_tokens": 0}
    if counts["reasoning_tokens"]:
        out["output_tokens_details"] = {"thinking_tokens": counts["reasoning_tokens"]}
    if web_searches:
        out["server_tool_use"] = {"web_search_requests": web_searches, "web_fetch_requests": 0}
    return out


class ResponsesToMessagesStream(StreamTranslator):
    """Responses SSE events in, Anthropic stream events out (each named by its type in SSE).

    One content block per upstream output item, in upstream order: reasoning
    -> thinking (when the client turned thinking on), message -> text,
    function_call -> tool_use, web_search_call -> server_tool_use +
    web_search_tool_result. Blocks open on their first content, so an item
    with nothing to show makes no empty block.
    """

    HANDLERS = dict(StreamTranslator.HANDLERS, **{"response.reasoning_summary_text.delta": "summary_delta"})

    def __init__(self, ctx):
        StreamTranslator.__init__(self, ctx)
        self.blocks = {}  # upstream output_index -> {"index", "open", "part"} of its block
        self.next_index = 0
        self.web_searches = 0

    def opening(self, out):
        out.append({"type": "message_start", "message": message_skeleton(self.ctx)})
        out.append({"type": "ping"})

    def open_block(self, out, at, block):
        state = {"index": self.next_index, "open": True, "part": None}
        self.next_index += 1
        self.blocks[at] = state
        out.append({"type": "content_block_start", "index": state["index"], "content_block": block})
        return state

    @staticmethod
    def delta(state, delta):
        return {"type": "content_block_delta", "index": state["index"], "delta": delta}

    @staticmethod
    def close_block(out, state):
        state["open"] = False
        out.append({"type": "content_block_stop", "index": state["index"]})

    def thinking_block(self, out, at):
        return self.blocks.get(at) or self.open_block(out, at, {"type": "thinking", "thinking": "", "signature": ""})

    def summary_delta(self, out, event):
        text = event.get("delta")
        if text and isinstance(text, str) and self.ctx.thinking == "summarized":
            state = self.thinking_block(out, event.get("output_index"))
            if state["part"] not in (None, event.get("summary_index")):
                text = "\n\n" + text  # summary parts are separate paragraphs
            state["part"] = event.get("summary_index")
            out.append(self.delta(state, {"type": "thinking_delta", "thinking": text}))

    def emit_text(self, out, at, text):
        state = self.blocks.get(at) or self.open_block(out, at, {"type": "text", "text": ""})
        if state.get("template") is None:
            delta = {"type": "text_delta"}
            state["template"] = text_template(self.delta(state, delta), delta, "text", named=True)
        event = TextDelta(self.delta(state, {"type": "text_delta", "text": text}))
        event.template, event.text = state["template"], text
        out.append(event)

    def text_ended(self, out, at):
        state = self.blocks.get(at)
        if state is not None and state["open"]:
            self.close_block(out, state)

    def refusal(self, out, at, part, text):
        self.refused = True
        self.text(out, at, part, text)

    def cite(self, out, at, citations):
        state = self.blocks.get(at) or self.open_block(out, at, {"type": "text", "text": ""})
        for _, text, note in citations:
            low, high = citation_span(note, text)
            title = note.get("title")
            out.append(self.delta(state, {"type": "citations_delta", "citation": {
                "type": "web_search_result_location", "url": note["url"],
                "title": title if isinstance(title, str) and title else None,
                "cited_text": text[low:high][:150], "encrypted_index": ""}}))  # Anthropic quotes at most 150

    def start_call(self, out, at, call):
        call["block"] = self.open_block(out, at, {"type": "tool_use", "id": call["id"], "name": call["name"],
                                                  "input": {}})

    def call_arguments(self, out, call, arguments):
        out.append(self.delta(call["block"], {"type": "input_json_delta", "partial_json": arguments}))

    def end_call(self, out, call):
        self.close_block(out, call["block"])

    def item_done(self, out, at, item):
        if item.get("type") == "reasoning" and self.ctx.thinking:
            self.reasoning_done(out, at, item)
        elif item.get("type") == "web_search_call" and self.ctx.web_search:
            self.web_search(out, at, item)

    def reasoning_done(self, out, at, item):
        state = self.blocks.get(at)
        encrypted = item.get("encrypted_content") if isinstance(item.get("encrypted_content"), str) else ""
        if state is None and self.ctx.thinking == "summarized":
            # No summary deltas came: send what the finished item holds.
            texts = [s["text"] for s in item.get("summary") or () if isinstance(as_object(s).get("text"), str)]
            if any(texts):
                state = self.thinking_block(out, at)
                out.append(self.delta(state, {"type": "thinking_delta", "thinking": "\n\n".join(texts)}))
        if state is None and encrypted:
            # Reasoning with nothing to show still becomes a thinking block
            # (empty, as Anthropic sends with display "omitted"), so its
            # signature brings it back on the next turn.
            state = self.thinking_block(out, at)
        if state is not None:
            if encrypted:
                out.append(self.delta(state, {"type": "signature_delta", "signature": SIGNATURE_PREFIX + encrypted}))
            self.close_block(out, state)

    def web_search(self, out, at, item):
        action = as_object(item.get("action"))
        if action.get("type", "search") != "search":
            return  # opening or searching a page has no Anthropic counterpart
        query = action.get("query") or (action.get("queries") or [""])[0]
        tool_use_id = new_id("srvtoolu_")
        state = self.open_block(out, at, {"type": "server_tool_use", "id": tool_use_id, "name": "web_search",
                                          "input": {}})
        out.append(self.delta(state, {"type": "input_json_delta",
                                      "partial_json": json.dumps({"query": query}, ensure_ascii=False)}))
        self.close_block(out, state)
        # Sources come only if upstream was asked for them; titles never do.
        results = [{"type": "web_search_result", "url": s.get("url"), "title": s.get("title") or s.get("url"),
                    "encrypted_content": "", "page_age": None}
                   for s in action.get("sources") or () if as_object(s).get("url")]
        state = self.open_block(out, ("result", at),
                                {"type": "web_search_tool_result", "tool_use_id": tool_use_id, "content": results})
        self.close_block(out, state)
        self.web_searches += 1

    def closing(self, out, response, outcome):
        for state in sorted(self.blocks.values(), key=lambda state: state["index"]):
            if state["open"]:
                self.close_block(out, state)
        delta = {"stop_reason": MESSAGES_STOP_REASONS[outcome], "stop_sequence": self.cutter.hit}
        out.append({"type": "message_delta", "delta": delta,
                    "usage": messages_usage(response.get("usage"), self.web_searches)})
        out.append({"type": "message_stop"})

    def fail(self, failure, fallback="The upstream response failed."):
        out = StreamTranslator.fail(self, failure, fallback)
        if context_overflow(self.error["code"], self.error["message"]) and self.ctx.prompt_too_long:
            self.error.update(status=400, message=self.ctx.prompt_too_long())
            out = [self.error_event(self.error)]
        return out

    @staticmethod
    def error_event(error):
        return anthropic_error(error["status"], error["message"])


def anthropic_sse(event):
    """An Anthropic stream event as SSE, named by its type."""
    return text_delta_sse(event, named=True)


# Non-stream answer: fold the events.

def message_from_events(events, ctx):
    """The Message object equal to what the events stream (as the SDKs accumulate it).

    For a stream that completed: when the translator has an .error, the
    route answers that instead.
    """
    message = message_skeleton(ctx)
    partial_json = {}  # block index -> input JSON text so far
    pieces = {}  # (block index, field) -> text pieces, joined once at the end (+= would copy)
    for data in events:
        name = data["type"]
        if name == "message_start":
            message = copy.deepcopy(data["message"])
        elif name == "content_block_start":
            message["content"].append(copy.deepcopy(data["content_block"]))
        elif name == "content_block_delta":
            block = message["content"][data["index"]]
            delta = data["delta"]
            if delta["type"] in ("text_delta", "thinking_delta"):
                field = "text" if delta["type"] == "text_delta" else "thinking"
                pieces.setdefault((data["index"], field), [block[field]]).append(delta[field])
            elif delta["type"] == "signature_delta":
                block["signature"] = delta["signature"]
            elif delta["type"] == "citations_delta":
                block.setdefault("citations", []).append(delta["citation"])
            elif delta["type"] == "input_json_delta":
                partial_json.setdefault(data["index"], []).append(delta["partial_json"])
        elif name == "content_block_stop" and partial_json.get(data["index"]):
            message["content"][data["index"]]["input"] = parse_json_arguments("".join(partial_json[data["index"]]))
        elif name == "message_delta":
            message["stop_reason"] = data["delta"]["stop_reason"]
            message["stop_sequence"] = data["delta"]["stop_sequence"]
            message["usage"].update((k, v) for k, v in data["usage"].items() if v is not None)
    for (index, field), texts in pieces.items():
        message["content"][index][field] = "".join(texts)
    return message


# ---- translators: Images API -> Responses ------------------------------------
# The backend has no Images API: each image is one Responses call with the built-in image_generation
# tool, chosen (tool_choice), on a chat model; its image_generation_call item carries the image as
# base64 in `result`, which the answer passes on as it came.

# The type of each field this translator reads (`model` is the client's image model: not sent).
IMAGES_FIELDS = {
    "prompt": str, "model": str, "n": int, "size": str, "quality": str, "background": str, "output_format": str,
    "output_compression": int, "moderation": str, "partial_images": int, "response_format": str, "stream": bool,
    "user": str, "input_fidelity": str,
}
IMAGE_OPTIONS = ("size", "quality", "background", "output_format", "output_compression", "moderation",
                 "partial_images", "input_fidelity")  # what goes to the tool, as the client gave it
MAX_IMAGES = 10  # n, as the Images API allows


def check_image_request(body):
    """A 400 for an Images API request the proxy cannot serve, before any upstream call."""
    check_fields(body, IMAGES_FIELDS)
    if not isinstance(body.get("prompt"), str) or not body["prompt"].strip():
        raise ClientError("prompt is required: a description of the image.", param="prompt")
    if body.get("response_format") not in (None, "b64_json"):
        raise ClientError("response_format %r is not available: codex-proxy hosts no files, so images come as "
                          "b64_json only (leave response_format out, or set it to b64_json)."
                          % body["response_format"], param="response_format")
    n = body.get("n", 1)
    if n is not None and not 1 <= n <= MAX_IMAGES:
        raise ClientError("n must be from 1 to %d, not %d." % (MAX_IMAGES, n), param="n")


# The image types the backend takes, by their first bytes (a file's own Content-Type is often
# application/octet-stream: the SDK sends raw bytes so).
IMAGE_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"),
                    (b"GIF87a", "image/gif"), (b"GIF89a", "image/gif"))


def image_media_type(data):
    """The media type of image bytes by their signature (PNG, JPEG, GIF, WebP), or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return next((kind for signature, kind in IMAGE_SIGNATURES if data.startswith(signature)), None)


def uploaded_image_url(part, field):
    """An uploaded image as a data URL of exactly its bytes; a 400 for a file that is no image."""
    kind = image_media_type(part.data)
    if kind is None:
        raise ClientError("%s: %s is not a PNG, JPEG, WebP or GIF image." % (field, part.filename or "the file"),
                          param=field)
    return data_url(kind, base64.b64encode(part.data).decode("ascii"))


def image_edit_form(text, files):
    """(the body of an images edit form as the generations one is, its images and mask as data
    URLs): its text fields typed as IMAGES_FIELDS says (a form sends every value as text)."""
    body = {}
    for name, value in text.items():
        kind = IMAGES_FIELDS.get(name)
        if kind is int and isinstance(value, str):
            if not re.fullmatch(r"-?\d{1,9}", value.strip()):
                raise ClientError("%s must be a whole number, not %r." % (name, value), param=name)
            value = int(value)
        elif kind is bool and isinstance(value, str):
            if value.strip().lower() not in ("true", "false"):
                raise ClientError("%s must be true or false, not %r." % (name, value), param=name)
            value = value.strip().lower() == "true"
        body[name] = value
    images = [uploaded_image_url(part, "image") for part in files.get("image") or ()]
    if not images:
        raise ClientError("image is required: the image file to edit (several as image[]).", param="image")
    masks = files.get("mask") or ()
    if len(masks) > 1:
        raise ClientError("mask: one file at most.", param="mask")
    return body, images, uploaded_image_url(masks[0], "mask") if masks else None


def image_request_to_responses(body, opts, images=(), mask=None):
    """(the Responses request that draws one image of an Images API request, ctx). `images`: an
    edit's input images, `mask` its mask (data URLs)."""
    tool = {"type": "image_generation"}
    tool.update((key, body[key]) for key in IMAGE_OPTIONS if body.get(key) is not None)
    if mask is not None:
        tool["input_image_mask"] = {"image_url": mask}
    content = [{"type": "input_text", "text": body["prompt"]}] + [
        {"type": "input_image", "image_url": url} for url in images]
    upstream = build_upstream_request(opts, None, [{"type": "message", "role": "user", "content": content}],
                                      tools=[tool], tool_choice={"type": "image_generation"})
    ctx = AnswerContext(new_id("img_"), opts.client_model, stream=bool(body.get("stream")),
                        image_kind="image_edit" if images else "image_generation")
    return upstream, ctx


IMAGE_SETTINGS = ("size", "quality", "background", "output_format")  # what image events and answers echo


class ImageStream(AnswerStream):
    """One image call's upstream events to an Images API client: each partial image as it comes
    (`<kind>.partial_image`), then, once the answer has ended, the image (`<kind>.completed`, which
    is `final`). A failed image call is the answer's error (moderation_blocked: a 400)."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.done = self.stopped = False
        self.error = self.final = self.usage = None
        self.item = None  # the image_generation_call, once done
        self.images = []  # the length of its image's base64 (the log says its size)

    def feed(self, event):
        kind = event.get("type")
        if self.done:
            return []
        if kind == "response.image_generation_call.partial_image":
            return [dict({key: event[key] for key in IMAGE_SETTINGS if event.get(key) is not None},
                         type=self.ctx.image_kind + ".partial_image", b64_json=event.get("partial_image_b64"),
                         partial_image_index=event.get("partial_image_index"), created_at=self.ctx.created)]
        item = as_object(event.get("item"))
        if kind == "response.output_item.done" and item.get("type") == "image_generation_call":
            self.item = item
            self.count_image(item)
        elif kind in TERMINAL_EVENTS:
            return self.ended(event)
        return []

    def ended(self, event):
        self.done = True
        self.usage = read_usage(as_object(event.get("response")).get("usage"))
        item = as_object(self.item)
        if event.get("type") in ("response.failed", "error"):
            return self.fail(event_failure(event))
        if item.get("status") == "failed" or not isinstance(item.get("result"), str):
            return self.fail(as_object(item.get("error")), "The backend drew no image (its image call %s)."
                             % (item.get("status") or "never came"))
        self.final = dict({key: item[key] for key in IMAGE_SETTINGS if item.get(key) is not None},
                          type=self.ctx.image_kind + ".completed", b64_json=item["result"],
                          created_at=self.ctx.created, usage=image_usage(self.usage))
        if isinstance(item.get("revised_prompt"), str):
            self.final["revised_prompt"] = item["revised_prompt"]
        return [self.final]

    def finish(self):
        if self.done:
            return []
        self.done = True
        self.error = dict(CUT_ERROR)
        return [self.error_event(CUT_ERROR)]

    def fail(self, failure, fallback=None):
        self.done = True
        self.error = stream_error(failure, fallback)
        return [self.error_event(self.error)]

    @staticmethod
    def error_event(error):
        """An error in an Images stream: what the openai SDK raises as an APIError."""
        return {"type": "error", "error": openai_error(error["status"], error["message"], error.get("code"))["error"]}


def image_usage(usage):
    """Responses usage as the Images API reports it."""
    return {"input_tokens": usage["input_tokens"], "output_tokens": usage["output_tokens"],
            "total_tokens": usage["input_tokens"] + usage["output_tokens"]}


def image_from_events(events, ctx):
    """The completed-image event a stream of Images events ends with ({} if none)."""
    return next((event for event in reversed(events) if event.get("type", "").endswith(".completed")), {})


def images_response(images, created):
    """The Images API answer for drawn images (completed-image events, in order)."""
    answer = {"created": created, "data": [dict({"b64_json": image["b64_json"]}, **(
        {"revised_prompt": image["revised_prompt"]} if "revised_prompt" in image else {})) for image in images]}
    answer.update((key, images[0][key]) for key in IMAGE_SETTINGS if key in images[0])
    totals = [image["usage"] for image in images]
    answer["usage"] = {key: sum(usage[key] for usage in totals)
                       for key in ("input_tokens", "output_tokens", "total_tokens")}
    return answer


# ---- translators: Ollama <-> Responses --------------------------------------------
# Ollama's /api/chat and /api/generate (what Open WebUI, Continue, Zed and the ollama clients
# speak) become one Responses request each. The answer goes back as Ollama's NDJSON: one object a
# line, written as the upstream deltas come, the last with done: true, why it ended, the timings
# and the token counts; with stream: false, those same lines folded into one object. The model
# list and /api/show are made from the catalog (see OllamaEndpoints).

OLLAMA_VERSION = "0.12.0"  # the Ollama release whose API this follows (what /api/version says)
OLLAMA_THINK_LEVELS = ("low", "medium", "high")
# The type of each field this translator reads. Options beyond these (num_ctx, top_k, seed,
# repeat_penalty, ...), keep_alive, raw, context and template are accepted and have no
# counterpart upstream: the backend refuses sampling parameters, and loads nothing.
OLLAMA_OPTIONS = {"temperature": (int, float), "top_p": (int, float), "num_predict": int, "stop": (str, list)}
OLLAMA_FIELDS = {"model": str, "stream": bool, "think": (bool, str), "format": (str, dict),
                 "options": OLLAMA_OPTIONS, "keep_alive": (int, float, str)}
OLLAMA_CHAT_FIELDS = dict(OLLAMA_FIELDS, messages=list, tools=list)
OLLAMA_GENERATE_FIELDS = dict(OLLAMA_FIELDS, prompt=str, system=str, images=list, raw=bool, context=[int],
                              template=str)
IMAGE_SNIFF_CHARS = 32  # base64 characters decoded to tell an image's type (24 bytes; WebP's mark ends at 12)


@dataclasses.dataclass(eq=False, repr=False)
class OllamaContext(AnswerContext):
    """An Ollama answer's context: AnswerContext's, with which endpoint asked and the timings' clock.
    (`thinking` is "summarized" when the client asked to see the model think.)"""

    chat: bool = True  # /api/chat (the text in message.content), else /api/generate (in `response`)
    started: float = None  # when the request began, by `clock`: the timings count from it
    clock: object = time.monotonic  # the timings' clock (tests give their own)

    def __post_init__(self):
        AnswerContext.__post_init__(self)
        self.started = self.clock() if self.started is None else self.started


# Request: Ollama -> Responses.

def ollama_chat_to_responses(body, opts):
    """(upstream Responses body, ctx) for an /api/chat body with messages."""
    check_fields(body, OLLAMA_CHAT_FIELDS)
    names = ToolNames()
    tools = chat_tools(body.get("tools"), False, names)  # Ollama's tools are Chat Completions' function tools
    instructions, items = ollama_messages_to_input(body.get("messages") or [], names)
    return ollama_request(body, opts, instructions, items, tools, names)


def ollama_generate_to_responses(body, opts):
    """(upstream Responses body, ctx) for an /api/generate body with a prompt: one user message."""
    check_fields(body, OLLAMA_GENERATE_FIELDS)
    content = user_text_and_images(body.get("prompt"), body.get("images"), "images")
    return ollama_request(body, opts, body.get("system"), [{"type": "message", "role": "user", "content": content}],
                          [], ToolNames(), chat=False)


def ollama_request(body, opts, instructions, items, tools, names, chat=True):
    """The Responses request and ctx of either endpoint: think, format, options and stream read here."""
    think = body.get("think")
    if isinstance(think, str) and think not in OLLAMA_THINK_LEVELS:
        raise ClientError("think must be true, false, \"low\", \"medium\" or \"high\", not %s." % json.dumps(think),
                          param="think")
    options = as_object(body.get("options"))
    upstream = build_upstream_request(opts, instructions, items, tools=tools,
                                      effort=think if isinstance(think, str) else None,
                                      summary="auto" if think else None, text_format=ollama_format(body.get("format")))
    with_public_api_sampling(upstream, opts, options.get("num_predict"), options.get("temperature"),
                             options.get("top_p"))
    stops = stop_sequences(options.get("stop"), "options.stop", "options.stop must be an array of at most %d "
                           "strings." % MAX_STOPS, one_string=True)
    ctx = OllamaContext(new_id("ollama-"), opts.client_model, stream=body.get("stream") is not False,
                        tool_names=names, stops=stops, upstream=upstream, thinking="summarized" if think else None,
                        chat=chat, started=opts.started)
    return upstream, ctx


def ollama_format(fmt):
    """format "json" is JSON mode; a JSON schema is structured output, strict only when the schema is
    closed (strict output refuses an open one)."""
    if fmt in (None, ""):
        return None
    if fmt == "json":
        return {"type": "json_object"}
    if isinstance(fmt, dict):
        return {"type": "json_schema", "name": "response", "schema": fmt, "strict": schema_is_closed(fmt)}
    raise ClientError("format must be \"json\" or a JSON schema (an object), not %s." % json.dumps(fmt),
                      param="format")


def schema_is_closed(schema):
    """Whether every object a JSON schema describes is closed: additionalProperties false and every
    property required."""
    if isinstance(schema, list):
        return all(schema_is_closed(item) for item in schema)
    if not isinstance(schema, dict):
        return True
    properties, required = schema.get("properties"), schema.get("required")
    if schema.get("type") == "object" or isinstance(properties, dict):
        named = {name for name in required if isinstance(name, str)} if isinstance(required, list) else set()
        if schema.get("additionalProperties") is not False or set(as_object(properties)) - named:
            return False
    return all(schema_is_closed(value) for key, value in schema.items() if key not in SCHEMA_DATA)


def ollama_messages_to_input(messages, names):
    """(instructions, input items) from Ollama chat messages: system messages are the instructions.
    A replayed assistant turn's tool calls carry no ids: they get ids here, and each tool message
    answers the first unanswered call named its tool_name (without one, the first unanswered)."""
    instructions, items, unanswered = [], [], []
    for at, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ClientError("messages[%d] must be an object." % at, param="messages")
        role, content = message.get("role"), message.get("content")
        if content is not None and not isinstance(content, str):
            raise wrong_type("messages[%d].content" % at, "a string", content)
        if role == "system":
            instructions.append(content or "")
        elif role == "user":
            items.append({"type": "message", "role": "user", "content": user_text_and_images(
                content, message.get("images"), "messages[%d].images" % at)})
        elif role == "assistant":
            items.extend(ollama_assistant_items(message, at, names, unanswered))
        elif role == "tool":
            items.append(ollama_tool_output(message, at, unanswered))
        else:
            raise ClientError("messages[%d] has the role %s; Ollama's are system, user, assistant and tool."
                              % (at, json.dumps(role)), param="messages")
    if unanswered:  # the backend refuses a call without its output
        raise ClientError("The tool call to %s in messages[%s] has no result: add a tool message after it."
                          % (unanswered[0][1], unanswered[0][0].split("_")[1]), param="messages")
    return "\n\n".join(text for text in instructions if text), items


def ollama_assistant_items(message, at, names, unanswered):
    """A replayed assistant message: its text, then its tool calls (noted in `unanswered`, in order)."""
    items = []
    if message.get("content"):
        items.append({"type": "message", "role": "assistant",
                      "content": [{"type": "output_text", "text": message["content"]}]})
    calls = message.get("tool_calls")
    if calls is not None and not isinstance(calls, list):
        raise wrong_type("messages[%d].tool_calls" % at, "an array", calls)
    for n, call in enumerate(calls or ()):
        function = as_object(as_object(call).get("function"))
        name, arguments = function.get("name"), function.get("arguments")
        if not isinstance(name, str) or not name:
            raise ClientError("messages[%d].tool_calls[%d].function.name must be the called tool's name."
                              % (at, n), param="messages")
        if arguments is not None and not isinstance(arguments, (dict, str)):
            raise wrong_type("messages[%d].tool_calls[%d].function.arguments" % (at, n), "an object", arguments)
        call_id = "call_%d_%d" % (at, n)  # stable as the conversation grows
        unanswered.append((call_id, name))
        items.append(function_call_item(call_id, names.add(name), arguments))
    return items


def ollama_tool_output(message, at, unanswered):
    """A tool message as the output of the call it answers."""
    name = message.get("tool_name")
    if name is not None and not isinstance(name, str):
        raise wrong_type("messages[%d].tool_name" % at, "a string", name)
    if not unanswered:
        raise ClientError("messages[%d] (role tool) answers no tool call: it must follow an assistant message "
                          "with tool_calls, one tool message a call." % at, param="messages")
    call_id, _ = unanswered.pop(next((n for n, (_, called) in enumerate(unanswered) if called == name), 0))
    return {"type": "function_call_output", "call_id": call_id, "output": message.get("content") or ""}


def user_text_and_images(text, images, where):
    """A user message's content parts: its text, then its images (bare base64, Ollama's way)."""
    if images is not None and not isinstance(images, list):
        raise wrong_type(where, "an array of base64 strings", images)
    parts = [image_part(base64_image_url(image, "%s[%d]" % (where, n))) for n, image in enumerate(images or ())]
    return ([{"type": "input_text", "text": text or ""}] if text or not parts else []) + parts


def base64_image_url(image, where):
    """An image as bare base64 -> a data URL of exactly that base64, its type read from its first
    bytes; a 400 naming `where` for anything that is no image."""
    if not isinstance(image, str):
        raise wrong_type(where, "a base64 string", image)
    try:
        head = base64.b64decode(image[:IMAGE_SNIFF_CHARS], validate=True)
    except (binascii.Error, ValueError):
        head = b""
    kind = image_media_type(head)
    if kind is None:
        raise ClientError("%s is not a PNG, JPEG, WebP or GIF image in base64 (with no data: prefix)." % where,
                          param=where.split("[")[0])
    return data_url(kind, image)


# Answer: Responses events -> Ollama lines.

class ResponsesToOllamaStream(StreamTranslator):
    """Responses events in, Ollama's answer lines out: a line for each piece of text (message.content,
    or `response` for /api/generate), of thinking (where asked for) and for each whole tool call (its
    arguments an object: Ollama's calls come whole); then the done line, with why the answer ended,
    the timings (ns: from the request's start to the first upstream event, then to the first output,
    then to the end) and upstream's token counts."""

    HANDLERS = dict(StreamTranslator.HANDLERS, **{"response.reasoning_summary_text.delta": "summary_delta"})

    def __init__(self, ctx):
        StreamTranslator.__init__(self, ctx)
        self.arguments = {}  # a call's index -> the pieces of its arguments
        self.last_text_part = None  # (output_index, content_index) of the last text sent
        self.upstream_at = self.output_at = None  # when the first upstream event, the first output came

    def line(self, text="", done=False, **fields):
        """One answer line: `text` where the endpoint puts it, `fields` (thinking, tool_calls) beside it."""
        line = {"model": self.ctx.model, "created_at": utc_stamp()}
        if self.ctx.chat:
            line["message"] = dict({"role": "assistant", "content": text}, **fields)
        else:
            line.update(response=text, **fields)
        line["done"] = done
        return line

    def output(self, out, text="", **fields):
        if self.output_at is None:
            self.output_at = self.ctx.clock()
        out.append(self.line(text, **fields))

    def opening(self, out):
        self.upstream_at = self.ctx.clock()

    def separate(self, at, part, text):
        separate = self.last_text_part not in (None, (at, part))
        self.last_text_part = (at, part)
        return "\n\n" + text if separate else text  # separate messages must not run into each other

    def emit_text(self, out, at, text):
        self.output(out, text)

    def refusal(self, out, at, part, text):
        self.refused = True
        self.output(out, text)

    def emit_thinking(self, out, text):
        if self.ctx.thinking:
            self.output(out, thinking=text)

    def start_call(self, out, at, call):
        self.arguments[call["index"]] = []

    def call_arguments(self, out, call, arguments):
        self.arguments[call["index"]].append(arguments)

    def end_call(self, out, call):
        arguments = parse_json_arguments("".join(self.arguments.pop(call["index"], ())))
        self.output(out, tool_calls=[{"function": {"name": call["name"], "arguments": arguments}}])

    def closing(self, out, response, outcome):
        usage = read_usage(response.get("usage"))
        line = self.line(done=True)
        line["done_reason"] = "length" if outcome == "max_output_tokens" else "stop"
        line.update(self.timings(), prompt_eval_count=usage["input_tokens"], eval_count=usage["output_tokens"])
        out.append(line)

    def timings(self):
        """Ollama's durations, in ns: the whole; until upstream answered (its `load`); until the first
        output (its prompt evaluation); the output (its generation)."""
        now = self.ctx.clock()
        upstream = now if self.upstream_at is None else self.upstream_at
        first = now if self.output_at is None else self.output_at
        return {"total_duration": nanoseconds(now - self.ctx.started),
                "load_duration": nanoseconds(upstream - self.ctx.started),
                "prompt_eval_duration": nanoseconds(first - upstream), "eval_duration": nanoseconds(now - first)}

    @staticmethod
    def error_event(error):
        """Ollama's error line, which ends a stream (the ollama client raises ResponseError on it)."""
        return {"error": error["message"]}


def nanoseconds(seconds):
    return max(0, int(seconds * 1e9))


def ollama_answer_from_lines(lines, ctx):
    """The one object (stream: false) an answer's lines amount to: the done line, with the pieces of
    text, thinking and tool calls of all the lines together."""
    parts = [line.get("message") or {} for line in lines] if ctx.chat else lines
    key = "content" if ctx.chat else "response"
    folded = {key: "".join(part.get(key) or "" for part in parts)}
    put_given(folded, thinking="".join(part.get("thinking") or "" for part in parts) or None,
              tool_calls=[call for part in parts for call in part.get("tool_calls") or ()] or None)
    answer = dict(lines[-1])
    if ctx.chat:
        answer["message"] = dict(answer["message"], **folded)
    else:
        answer.update(folded)
    return answer


def ollama_load_answer(model, chat):
    """What a request with nothing to answer gets (a client loading the model): done, "load"."""
    line = ResponsesToOllamaStream(OllamaContext(new_id("ollama-"), model, chat=chat)).line(done=True)
    line["done_reason"] = "load"
    return line


def ndjson_line(event):
    """An event as one line of newline-delimited JSON (compact JSON has no line breaks)."""
    return compact_json(event).encode("utf-8", "replace") + b"\n"


def ollama_keep_alive(translator):
    """A line with no text, what keeps an Ollama stream alive while upstream is silent (NDJSON has no
    comment lines; a client adds the empty piece to nothing)."""
    return ndjson_line(translator.line())


def ollama_error(status, message, code=None, param=None, details=None):
    """Ollama's error shape: the message alone."""
    return {"error": message}


# The models: /api/tags and /api/show from the catalog.

def ollama_details(entry):
    """A model's `details`: its family is its slug's first word (gpt, o, codex)."""
    family = re.match(r"[A-Za-z]*", entry["slug"]).group(0).lower() or "gpt"
    return {"parent_model": "", "format": "", "family": family, "families": [family], "parameter_size": "",
            "quantization_level": ""}  # a remote model has no file format, size or quantization to tell


def ollama_model(entry, modified_at):
    """A catalog entry as one of /api/tags' models (its digest stable: the slug's)."""
    slug = entry["slug"]
    return {"name": slug, "model": slug, "modified_at": modified_at, "size": 0,
            "digest": hashlib.sha256(slug.encode("utf-8")).hexdigest(), "details": ollama_details(entry)}


def ollama_show(entry, modified_at):
    """/api/show for a catalog entry: what it can do, and its context window as
    model_info["<architecture>.context_length"]."""
    details = ollama_details(entry)
    info = {"general.architecture": details["family"]}
    if is_json_type(entry.get("context_window"), int):
        info[details["family"] + ".context_length"] = entry["context_window"]
    capabilities = ["completion", "tools"] + ["thinking"] * bool(entry.get("supported_reasoning_levels")) \
        + ["vision"] * ("image" in (entry.get("input_modalities") or ()))
    return {"modelfile": "", "parameters": "", "template": "", "details": details, "model_info": info,
            "capabilities": capabilities, "modified_at": modified_at}


OLLAMA_NOTHING_STORED = "codex-proxy serves the models of your ChatGPT plan and stores none: "
OLLAMA_NO_EMBEDDINGS = ("The Codex backend has no embedding models, so codex-proxy cannot embed text: use an "
                        "embedding model elsewhere (Ollama itself on another port, or OpenAI's embeddings API).")
OLLAMA_REFUSED = (  # (method, path, why it is refused and what to use instead): each a 501
    ("POST", "/api/embed", OLLAMA_NO_EMBEDDINGS),
    ("POST", "/api/embeddings", OLLAMA_NO_EMBEDDINGS),
    ("POST", "/api/pull", OLLAMA_NOTHING_STORED + "there is nothing to pull. GET /api/tags lists them."),
    ("POST", "/api/push", OLLAMA_NOTHING_STORED + "there is nothing to push."),
    ("POST", "/api/create", OLLAMA_NOTHING_STORED + "it cannot create one. Send the system prompt and options "
     "with each request instead."),
    ("POST", "/api/copy", OLLAMA_NOTHING_STORED + "it cannot copy one. --model-map gives a model another name."),
    ("DELETE", "/api/delete", OLLAMA_NOTHING_STORED + "there is nothing to delete."),
    ("HEAD", "/api/blobs/{digest*}", OLLAMA_NOTHING_STORED + "it keeps no blobs."),
    ("POST", "/api/blobs/{digest*}", OLLAMA_NOTHING_STORED + "it keeps no blobs."),
)


# ---- translators: token counts for count_tokens ------------------------------
# Dependency-free o200k_base token-count estimate for /v1/messages/count_tokens:
# a small model whose coefficients, TOKEN_COST_FIT, are data fitted by least
# squares against the real tokenizer.  `python3 tests/fit_token_estimate.py`
# refits them (it needs the test-only oracle: pip install bpe-openai) and prints
# a table to paste here with its error per category; tests/test_count_tokens_oracle.py
# holds the estimate within 15% of o200k_base on prose, code, JSON and CJK, and
# tests/test_token_estimate.py holds the parts that need no oracle.
#
# Text: a regex mirroring the o200k_base pre-tokenizer cuts the text into pieces
# (letter runs with one leading space/punctuation char, split at camelCase; 1-3
# digit groups; punctuation runs; whitespace runs); BPE never merges across them.
# Each distinct piece costs: an ASCII word ~1 token plus a little per letter past
# 4 (more when ALLCAPS, punctuation-prefixed or vowel-less; frequent long words
# stay 1), a punctuation run ~1 up to 3 chars, digit groups and whitespace runs
# 1, CJK per character (Han ~0.72, ~0.95 in Traditional Chinese, ~0.89 beside
# kana; kana ~0.63; Hangul ~0.45).  Error: a few percent on prose, code, JSON, CJK.
#
# Requests (Responses-API body): instructions, message parts, function calls and
# outputs, reasoning summaries, tool names/descriptions/compact-JSON schemas, plus
# a few tokens of chat framing per item/tool.  Images use OpenAI's formula (85 +
# 170 per 512px tile after fitting 2048x2048 and then 768px on the short side; 85
# for detail=low) with PNG/GIF/JPEG/WebP sizes read from data URLs; unknown sizes
# (remote URLs, file ids) count 765.  PDFs are only a rough guess: 1500 tokens per
# page when "/Type /Page" objects are visible, else one page per ~40 KB of data.
_PIECE = re.compile(
    r"(?:[^\r\n\w]|_)?[A-Za-z]{0,20}[^\W\d_A-Za-z][^\W\d_]*"  # letters incl. non-ASCII; {0,20}: no O(n^2)
    r"|(?:[^\r\n\w]|_)?(?:[A-Z]*[a-z]+|[A-Z]+[a-z]*)(?:'(?:[sdmtSDMT]|ll|ve|re|LL|VE|RE))?"  # ASCII word
    r"|\d{1,3}| ?(?:[^\s\w]|_)+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_PREFIXED_WORD = re.compile(r"([^A-Za-z]?)([A-Za-z]+)")  # (the one char before the letters, the letters)
_VOWEL = re.compile("[aeiouyAEIOUY]")
_LIGHT_PREFIXES = "._(#%$\t\\"  # a word after one of these costs less than after other punctuation
_TRADITIONAL_HAN = "們這說來會對學國與為發關還麼當從實點應體經處將於兩讓變檔裡"
_VARIANT_HAN = re.compile("[" + _TRADITIONAL_HAN + "们这说来会对学国与为发关还么当从实点应体经处将于两让变档里]")
_SINGLE_TOKEN_WORDS = frozenset("""
account action additional address append application argument arguments associated attribute
attributes automatically available buffer callback certificate channel characters command common
conditions config configuration connect connection console constructor content context copyright
create default define definitions deprecated description destination directory distribution
documentation encoding encryption environment exception exports extension filename following format
foundation function functionality functions header identifier implementation import include
including information instance integer internal invalid iterator length license message method
module modules namespace number object operation options otherwise package parameter parameters
particular pattern performance permission permissions platform process properties provided public
purpose reference request require required resolve resource response result return returns sequence
server service services session socket software source specific specification specified status
string supported undefined unsigned version whether without
""".split())  # frequent long words that are single tokens

# Tokens per piece, by kind of piece (the prefix names the kind); "past N" counts what exceeds N.
# Fitted by least squares against o200k_base: `python3 tests/fit_token_estimate.py` refits every
# entry its samples exercise but the whitespace ones (divisors) and digit_group (a 1-3 digit
# group is always one o200k token); paste its table only if no category of its report is worse.
TOKEN_COST_FIT = {
    "whitespace_run": 1.0,
    "whitespace_breaks_per_token": 14.0,  # line breaks and tabs past 8
    "whitespace_spaces_per_token": 100.0,  # spaces past 16
    "digit_group": 1.0,
    "word_after_space": 1.0,  # an ASCII word, by what stands before it: a space, nothing, punctuation
    "word_alone": 1.03,
    "word_after_light_punctuation": 1.08,  # after one of _LIGHT_PREFIXES
    "word_after_punctuation": 1.44,  # after any other char
    "word_after_punctuation_per_letter": 0.1,  # letters past 4, after any punctuation
    "word_single_token": -0.06,  # a _SINGLE_TOKEN_WORDS word: its prefix's cost plus this, nothing more
    "word_per_letter": 0.027,  # letters past 4
    "word_per_letter_past_8": 0.057,
    "word_alone_per_letter": 0.076,  # letters past 4, no char before the word
    "word_allcaps_after_space": 0.16,  # two or more letters, all capitals
    "word_allcaps": 0.38,  # the same, not after a space
    "word_allcaps_per_letter": 0.052,  # letters past 4
    "word_capitalized_per_letter": 0.075,  # letters past 4, after a space
    "word_vowelless_per_letter": 0.21,  # every letter of a word of 6 or more without a vowel
    "punctuation_run": 1.02,
    "punctuation_per_char_past_3": 0.355,  # chars counted up to 3 in each run of one repeated char
    "punctuation_per_char_past_6": -0.33,
    "punctuation_per_run_past_4": 0.46,
    "punctuation_per_run_past_6": 0.2,
    "punctuation_per_repeat_past_3": 0.03,  # chars past 3 in each run of one repeated char
    "script_piece": 0.3,  # a piece with non-ASCII chars: this plus its chars, at least 1 token
    "script_han": 0.72,
    "script_han_traditional": 0.95,  # in a text mostly in Traditional Chinese
    "script_han_beside_kana": 0.89,
    "script_kana": 0.63,
    "script_hangul": 0.45,
    "script_hangul_piece": 0.3,
    "script_latin": 0.8,  # an accented Latin letter
    "script_other_piece": 0.5,  # a piece with Greek, Cyrillic, Arabic... letters
    "script_other_letter": 0.15,
    "script_symbol": 0.65,
    "script_astral_symbol": 1.5,  # emoji
    "script_ascii": 0.15,
}


def _piece_cost(piece, traditional=False, fit=TOKEN_COST_FIT):
    """Estimated o200k tokens of one piece the _PIECE regex cut (traditional: the text is
    mostly Traditional Chinese).  Linear in each entry of `fit` but for the one-token floor."""
    if piece.isspace():
        return _whitespace_cost(piece, fit)
    if piece.isdigit():
        return fit["digit_group"]
    word = _PREFIXED_WORD.match(piece)
    if word and (word.end() == len(piece) or piece[word.end()] == "'"):
        return _word_cost(word.group(1), word.group(2), fit)
    if piece.isascii():
        return _punctuation_cost(piece, fit)
    return max(1.0, _script_cost(piece, traditional, fit))


def _whitespace_cost(piece, fit):
    """One token, unless very long."""
    spaces = piece.count(" ")
    return (fit["whitespace_run"] + max(0, len(piece) - spaces - 8) / fit["whitespace_breaks_per_token"]
            + max(0, spaces - 16) / fit["whitespace_spaces_per_token"])


def _word_cost(prefix, letters, fit):
    """An ASCII word after `prefix` (a space, one punctuation char or ''): about a token, more
    when long, capitals, after punctuation or without vowels."""
    length = len(letters)
    past_4 = max(0, length - 4)
    cost = (fit["word_after_space"] if prefix == " " else fit["word_alone"] if not prefix
            else fit["word_after_light_punctuation"] + fit["word_after_punctuation_per_letter"] * past_4
            if prefix in _LIGHT_PREFIXES
            else fit["word_after_punctuation"] + fit["word_after_punctuation_per_letter"] * past_4)
    if letters.lower() in _SINGLE_TOKEN_WORDS and not letters.isupper():
        return cost + fit["word_single_token"]
    cost += (fit["word_per_letter"] * past_4 + fit["word_per_letter_past_8"] * max(0, length - 8)
             + (fit["word_alone_per_letter"] * past_4 if not prefix else 0.0))
    if length > 1 and letters.isupper():
        cost += ((fit["word_allcaps_after_space"] if prefix == " " else fit["word_allcaps"])
                 + fit["word_allcaps_per_letter"] * past_4)
    elif prefix == " " and letters[0].isupper():
        cost += fit["word_capitalized_per_letter"] * past_4
    if length > 5 and not _VOWEL.search(letters):
        cost += fit["word_vowelless_per_letter"] * length
    return cost


def _punctuation_cost(piece, fit):
    """About one token up to 3 chars, then by the runs of one repeated char."""
    runs = [len(list(chars)) for _, chars in itertools.groupby(piece.strip())]
    capped, run_count = sum(min(run, 3) for run in runs), len(runs)
    return (fit["punctuation_run"] + fit["punctuation_per_char_past_3"] * max(0, capped - 3)
            + fit["punctuation_per_char_past_6"] * max(0, capped - 6)
            + fit["punctuation_per_run_past_4"] * max(0, run_count - 4)
            + fit["punctuation_per_run_past_6"] * max(0, run_count - 6)
            + fit["punctuation_per_repeat_past_3"] * sum(max(0, run - 3) for run in runs))


def _script_cost(piece, traditional, fit):
    """A piece with non-ASCII chars, by script: CJK per character, the rest by letter or symbol
    (before the floor of one token _piece_cost puts under it)."""
    han = kana = hangul = latin = other = symbols = ascii_chars = 0
    for char in piece:
        codepoint = ord(char)
        if codepoint < 128:
            ascii_chars += 1
        elif 0x3400 <= codepoint <= 0x9FFF or 0xF900 <= codepoint <= 0xFAFF:
            han += 1
        elif 0x3040 <= codepoint <= 0x30FF:
            kana += 1
        elif 0xAC00 <= codepoint <= 0xD7AF or 0x1100 <= codepoint <= 0x11FF or 0x3130 <= codepoint <= 0x318F:
            hangul += 1
        elif char.isalpha():
            latin += codepoint < 0x370
            other += codepoint >= 0x370
        else:
            symbols += fit["script_astral_symbol"] if codepoint > 0xFFFF else fit["script_symbol"]
    han_cost = (fit["script_han_beside_kana"] if kana else fit["script_han_traditional"] if traditional
                else fit["script_han"])
    return (fit["script_piece"] + han_cost * han + fit["script_kana"] * kana + fit["script_hangul"] * hangul
            + (fit["script_hangul_piece"] if hangul else 0) + fit["script_latin"] * latin
            + (fit["script_other_piece"] + fit["script_other_letter"] * other if other else 0)
            + symbols + fit["script_ascii"] * ascii_chars)


TOKEN_SLICE = 32 * 1024  # characters a regex pass takes at once: each pass holds the GIL (~3 ms)


def text_slices(text):
    """`text` in pieces of about TOKEN_SLICE characters, cut before a space where there is one
    (a piece never spans one), so that a thread counting a long text lets the event loop run."""
    start = 0
    while start < len(text):
        end = text.find(" ", start + TOKEN_SLICE, start + 2 * TOKEN_SLICE)
        end = len(text) if len(text) - start <= TOKEN_SLICE else end if end != -1 else start + TOKEN_SLICE
        yield text[start:end]
        start = end


def estimate_text_tokens(text):
    """Estimated o200k_base token count of ``text`` (see the section's comment)."""
    if not text:
        return 0
    traditional = mostly_traditional(text)
    counts = collections.Counter()
    for part in text_slices(text):
        counts.update(_PIECE.findall(part))
    return int(round(sum(count * _piece_cost(piece, traditional) for piece, count in counts.items())))


def mostly_traditional(text):
    """Whether the Han characters of `text` are mostly Traditional Chinese, which uses ~25% more
    tokens per character (judged by the common characters whose two forms differ)."""
    if text.isascii():
        return False
    variants = [char for part in text_slices(text) for char in _VARIANT_HAN.findall(part)]
    return sum(char in _TRADITIONAL_HAN for char in variants) * 2 > len(variants)


def _image_size(data):
    """(width, height) of PNG/GIF/JPEG/WebP bytes, or None."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        return struct.unpack("<HH", data[6:10])
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(data) >= 30:
        kind = data[12:16]
        if kind == b"VP8 ":
            width, height = struct.unpack("<HH", data[26:30])
            return width & 0x3FFF, height & 0x3FFF
        if kind == b"VP8L":
            bits = int.from_bytes(data[21:25], "little")
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        if kind == b"VP8X":
            return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    if data[:2] == b"\xff\xd8":  # JPEG: walk the segments up to a SOFn marker
        at = 2
        while at + 9 < len(data):
            marker = data[at + 1]
            if data[at] != 0xFF or marker == 0xFF:
                at += 1
            elif 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                height, width = struct.unpack(">HH", data[at + 5:at + 9])
                return width, height
            elif marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:
                at += 2
            else:
                at += 2 + struct.unpack(">H", data[at + 2:at + 4])[0]
    return None


IMAGE_HEAD = 256 * 1024  # base64 characters decoded to find an image's size (the whole only if need be)


def _data_url_bytes(url, head=None):
    """The bytes of a base64 data: URL, or of its first `head` characters; None if it is not one."""
    if not isinstance(url, str) or not url.startswith("data:") or "," not in url:
        return None
    start = url.index(",") + 1
    text = url[start:start + head // 4 * 4] if head else url[start:]
    try:
        return base64.b64decode(text, validate=False)
    except (binascii.Error, ValueError):
        return None


def image_tokens(image_url, detail="auto"):
    """OpenAI image cost: 85 for detail=low, else 85 + 170 per 512px tile."""
    if detail == "low":
        return 85
    data = _data_url_bytes(image_url, IMAGE_HEAD)
    size = _image_size(data) if data else None
    if size is None and data and len(image_url) > IMAGE_HEAD:  # a JPEG whose size comes late
        data = _data_url_bytes(image_url)
        size = _image_size(data) if data else None
    if not size or not size[0] or not size[1]:
        return 765
    width, height = float(size[0]), float(size[1])
    if max(width, height) > 2048:
        width, height = width * 2048 / max(width, height), height * 2048 / max(width, height)
    if min(width, height) > 768:
        width, height = width * 768 / min(width, height), height * 768 / min(width, height)
    return 85 + 170 * (-(-max(1, int(width)) // 512)) * (-(-max(1, int(height)) // 512))


def _file_tokens(part):
    data = _data_url_bytes(part.get("file_data"))
    if data is None:
        return 1500
    pages = len(re.findall(rb"/Type\s*/Page(?![a-zA-Z])", data))
    return 1500 * pages if pages else max(200, len(data) // 27)


def _value_tokens(value):
    """Tokens of a text, or of anything else as compact JSON."""
    if value is None or isinstance(value, str):
        return estimate_text_tokens(value or "")
    return estimate_text_tokens(compact_json(value))


def _content_tokens(content):
    if not isinstance(content, list):
        return _value_tokens(content)
    total = 0
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "input_image":
            url = part.get("image_url")
            total += image_tokens(url.get("url") if isinstance(url, dict) else url, part.get("detail", "auto"))
        elif kind == "input_file":
            total += _file_tokens(part) + _value_tokens(part.get("filename"))
        elif isinstance(part, dict) and ("text" in part or "refusal" in part):
            total += _value_tokens(part.get("text") or part.get("refusal"))
        else:
            total += _value_tokens(part)
    return total


QUICK_COUNT_CHARS = 32 * 1024  # beyond this, quick_request_tokens counts by size (the estimate takes ~0.1 ms/KB)


DATA_URL_JSON = re.compile(r'"data:[^"]*"')


def quick_request_tokens(body):
    """Input tokens of a request, estimated where the event loop must not wait long: as
    count_tokens does for a small one; for a large one by its size (4 characters a token),
    images and files at what a large image costs, not by their base64."""
    text = compact_json(body)
    if len(text) <= QUICK_COUNT_CHARS:
        return estimate_request_tokens(body)
    media = [match.end() - match.start() for match in DATA_URL_JSON.finditer(text)]
    return (len(text) - sum(media)) // 4 + 765 * len(media)


def estimate_request_tokens(body):
    """Estimated input tokens of a Responses-API request body (see module docstring)."""
    total = 3 + (4 + _content_tokens(body["instructions"]) if body.get("instructions") else 0)
    items = body.get("input") or []
    if isinstance(items, str):
        items = [{"type": "message", "role": "user", "content": items}]
    for item in items:
        if not isinstance(item, dict):
            continue
        kind = item.get("type", "message")
        total += 4  # chat framing per item
        if kind == "message":
            total += _content_tokens(item.get("content"))
        elif kind == "function_call":
            total += _value_tokens(item.get("name")) + _value_tokens(item.get("arguments"))
        elif kind == "function_call_output":
            total += _content_tokens(item.get("output"))
        elif kind == "reasoning":  # encrypted_content is opaque: only the summaries are counted
            total += sum(_value_tokens(summary.get("text")) for summary in item.get("summary") or []
                         if isinstance(summary, dict))
        elif drawn_image(item) is not None:  # a drawn image shown again: an image, not its base64's text
            total += image_tokens(drawn_image_url(item))
        else:
            total += _value_tokens(item)
    for tool in body.get("tools") or []:
        if isinstance(tool, dict) and tool.get("type") == "function":
            total += (8 + _value_tokens(tool.get("name")) + _value_tokens(tool.get("description"))
                      + _value_tokens(tool.get("parameters") or {}))
        else:
            total += 8 + _value_tokens(tool)
    return total


# ---- routes: dialects ----------------------------------------------------------

@dataclasses.dataclass(eq=False)
class Dialect:
    """One client API: everything that differs between the APIs the proxy speaks."""

    name: str
    translate: object  # (body, RequestOptions) -> (upstream Responses body, AnswerContext)
    stream: type  # the AnswerStream turning upstream events into this API's events
    fold: object  # (events, ctx) -> the one answer object those events amount to
    encode: object  # an event -> its SSE bytes
    error_body: object  # (status, message, code, param, details) -> this API's error shape
    done_marker: bytes = b""  # what ends a whole stream
    statuses: dict = dataclasses.field(default_factory=dict)  # how some read here (Anthropic: 529, not 503)
    session_headers: tuple = ()  # where its clients put a conversation id
    agent_header: str = None  # the header naming a sub-agent, whose prompts differ from the main agent's
    # (body, defaults) -> body: a request the public API serves in this dialect itself (API-key
    # mode), with the server's defaults where the client did not say; None: the API does not
    # speak it, and it is translated there too.
    server_defaults: object = None
    passes_events: bool = False  # its answers are upstream's events, passed on where not changed
    # What a stream gets when the upstream has been silent a while: bytes, or (translator) -> bytes.
    heartbeat: object = b""
    stream_type: str = "text/event-stream"  # the Content-Type of its streams

    def __post_init__(self):
        self.cut_event = self.encode(self.stream.error_event(CUT_ERROR))  # what a relayed stream cut off ends with

    def keep_alive(self, translator):
        """The heartbeat of the stream `translator` writes."""
        return self.heartbeat(translator) if callable(self.heartbeat) else self.heartbeat

    def error(self, status, message, code=None, param=None, details=None):
        """(status, body) of an error answer in this dialect."""
        status = self.statuses.get(status, status)
        return status, self.error_body(status, message, code, param, details)

    def session_id(self, headers):
        """The conversation id the request's headers carry; a sub-agent's gets
        one of its own, so that its prompt cache is not the main agent's."""
        session = next((headers.get(name) for name in self.session_headers if headers.get(name)), None)
        agent = headers.get(self.agent_header) if self.agent_header else None
        return derive_cache_key(session, agent) if session and agent else session


OPENAI_CHAT = Dialect(
    "openai-chat", chat_request_to_responses, ResponsesToChatStream, chat_completion_from_chunks, text_delta_sse,
    openai_error, done_marker=b"data: [DONE]\n\n", session_headers=("session_id", "session-id"),
    heartbeat=b": keep-alive\n\n", server_defaults=chat_with_server_defaults)
OPENAI_RESPONSES = Dialect(
    "openai-responses", responses_request_for_codex, ResponsesStream, response_from_events, responses_sse,
    openai_error, session_headers=("session_id", "session-id"), passes_events=True, heartbeat=b": keep-alive\n\n",
    server_defaults=with_server_defaults)
ANTHROPIC_MESSAGES = Dialect(
    "anthropic-messages", messages_request_to_responses, ResponsesToMessagesStream, message_from_events,
    anthropic_sse, anthropic_error, statuses={503: 529}, heartbeat=sse_event({"type": "ping"}, "ping"),
    session_headers=("x-claude-code-session-id", "session_id", "session-id"), agent_header="x-claude-code-agent-id")

OPENAI_IMAGES = Dialect(
    "openai-images", image_request_to_responses, ImageStream, image_from_events, responses_sse, openai_error,
    heartbeat=b": keep-alive\n\n", server_defaults=lambda body, defaults: body)  # the API draws as asked
OLLAMA = Dialect(
    "ollama", ollama_chat_to_responses, ResponsesToOllamaStream, ollama_answer_from_lines, ndjson_line, ollama_error,
    heartbeat=ollama_keep_alive, stream_type="application/x-ndjson")



# ---- routes: the app -----------------------------------------------------------

# Upstream answer headers worth passing on (rate limits; its request id goes as x-upstream-request-id).
RELAYED_HEADER = re.compile(r"^(x-codex-|x-ratelimit-|openai-)")
# Client headers of the official Codex CLI that the backend understands.
FORWARDED_HEADER = re.compile(r"^(x-codex-|x-client-request-id$|thread-id$|session-id$|session_id$)")


@functools.lru_cache(maxsize=256)
def is_loopback(host):
    """Whether a host name or address is this machine's loopback."""
    host = host.lower().rstrip(".")
    if host in ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback") \
            or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(value):
    """The name in a Host header, without its port ('' when malformed)."""
    value = value.strip().lower()
    if value.startswith("["):  # [::1]:8765
        end = value.find("]")
        return value[1:end] if end != -1 else ""
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def origin_of(url):
    """An origin (scheme://host[:port]) as browsers send it: lower case, no path."""
    return url.strip().rstrip("/").lower()


REPEATED_V1 = re.compile(r"^(/v1)+(?=/|$)")  # /v1/v1/x: a base URL ending in /v1, with /v1 added again


def route_path(path, roots=()):
    """/v1/x for /x, /v1/x/ and /v1/v1/x alike (a base URL that ends in /v1, to which the client
    adds /v1 again: the commonest mistake in setting up an Anthropic client); a path under one of
    `roots` (the first segments of the routes outside /v1: /health, Ollama's /api) stays as it is."""
    path = REPEATED_V1.sub("/v1", "/" + path.strip("/"))
    if path == "/v1" or path.startswith("/v1/") or path.split("/")[1] in roots:
        return path
    return "/v1" + path


class BaseURLAdvice:
    """Tells, once per client (user agent), a client that adds /v1 to a base URL that ends in
    /v1 which base URL to use; its requests are served as if it had not."""

    MAX_CLIENTS = 256  # told at most this many (the set must not grow without bound)

    def __init__(self):
        self.told = set()

    def note(self, request, route):
        match = REPEATED_V1.match("/" + request.path.strip("/"))
        if route is None or match is None or match.end() <= len("/v1"):
            return
        agent = request.headers.get("user-agent") or "a client"
        if agent in self.told or len(self.told) >= self.MAX_CLIENTS:
            return
        self.told.add(agent)
        url = "http://%s" % (request.headers.get("host") or "HOST:PORT")
        use = ("ANTHROPIC_BASE_URL=%s, with no /v1" % url if route.dialect is ANTHROPIC_MESSAGES
               else "the base URL %s/v1, with /v1 once" % url)
        log.warning("%s asks for %s: its base URL ends in /v1 and it adds /v1 again. Served as %s; set %s.",
                    agent, request.path, route.template, use)


@dataclasses.dataclass(eq=False)
class Route:
    """A method and a path template ({name} is one segment, {name*} the rest) served by a handler,
    whose errors are in `dialect`."""

    method: str
    template: str
    handler: object  # (request, responder, dialect, the path's params) -> awaitable
    dialect: Dialect
    open: bool = False  # served without the local API key
    dumped: bool = True  # its exchanges go to --dump-dir (not the proxy's pages about itself)
    calls_model: bool = False  # it answers with the model (its log line names the dialect)
    # In API-key mode the public API serves it itself: the request goes there as it came (a model
    # call with the server's defaults: Dialect.server_defaults).
    forwarded: bool = False
    takes_connection: bool = False  # its handler reads the connection itself (a WebSocket's frames)

    def __post_init__(self):
        self.parts = self.template.strip("/").split("/")

    def match(self, parts):
        """The template's {names} for path segments, or None."""
        if self.parts == [""]:  # the root
            return {} if parts == [""] else None
        params = {}
        for at, want in enumerate(self.parts):
            if want.endswith("*}"):
                rest = parts[at:]
                if not rest or not all(rest):
                    return None
                params[want[1:-2]] = "/".join(rest)
                return params
            if at >= len(parts) or not parts[at]:
                return None
            if want.startswith("{"):
                params[want[1:-1]] = parts[at]
            elif want != parts[at]:
                return None
        return params if len(parts) == len(self.parts) else None

    def shared_prefix(self, parts):
        """How many leading path segments this route's template shares with `parts`."""
        count = 0
        for want, got in zip(self.parts, parts):
            if want != got and not want.startswith("{"):
                break
            count += 1
        return count


def decoded_body(request, limit):
    """The request body, un-gzipped if the client compressed it."""
    encoding = (request.headers.get("content-encoding") or "identity").strip().lower()
    if encoding in ("identity", ""):
        return request.body
    if encoding not in ("gzip", "deflate"):
        raise ClientError("Content-Encoding %r is not supported (send identity, gzip or deflate)." % encoding, 415)
    inflater = zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib, by their headers
    try:
        data = inflater.decompress(request.body, limit + 1)
    except zlib.error as exc:
        raise ClientError("The %s request body is corrupt: %s" % (encoding, exc))
    if len(data) > limit:
        raise ClientError("Request body too large once decompressed (limit %d MB)" % (limit // (1024 * 1024)), 413)
    return data


MAX_JSON_DEPTH = 128
LONE_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def parse_json_body(request, limit):
    """(the request's JSON body, its size once decoded); a 400 for anything but a JSON object."""
    raw = decoded_body(request, limit)
    if not raw:
        raise ClientError("The request body is empty; expected a JSON object.")
    try:
        body = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ClientError("The request body is not valid JSON: %s" % exc)
    except RecursionError:
        body = None
    if body is None or json_depth_over(body, MAX_JSON_DEPTH):
        raise ClientError("The request body is nested too deeply (more than %d levels)." % MAX_JSON_DEPTH)
    if not isinstance(body, dict):
        raise ClientError("The request body must be a JSON object.")
    if LONE_SURROGATE_ESCAPE.search(raw):  # a \ud800 no character can be made of cannot be sent on
        body = without_lone_surrogates(body)
    return body, len(raw)


def json_depth_over(value, limit):
    """Whether parsed JSON nests deeper than `limit` (looked at level by level, without recursion)."""
    level = [value] if isinstance(value, (dict, list)) else []
    for _ in range(limit):
        if not level:
            return False
        level = [child for node in level for child in (node.values() if isinstance(node, dict) else node)
                 if isinstance(child, (dict, list))]
    return bool(level)


def without_lone_surrogates(value):
    """Parsed JSON with each unpaired surrogate in its strings replaced by U+FFFD."""
    if isinstance(value, str):
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, list):
        return [without_lone_surrogates(item) for item in value]
    if isinstance(value, dict):
        return {without_lone_surrogates(key): without_lone_surrogates(item) for key, item in value.items()}
    return value


def describe_failure(exc):
    """The error answer (status, message, code, param, details, headers) for an exception a handler raised:
    a ProxyError's own, else a 500 (logged: a bug)."""
    if not isinstance(exc, ProxyError):
        log.exception("internal error")
        return dict(status=500, message="Internal proxy error (%s); the proxy log has details." % type(exc).__name__)
    details, message, retry = exc.limit_details(), exc.message, exc.retry_after()
    if details and isinstance(details.get("resets_at"), (int, float)):
        message += " The limit resets %s." % moment_for_people(details["resets_at"])
    headers = with_upstream_id({"Retry-After": retry} if retry else {}, getattr(exc, "headers", {}))
    return dict(status=exc.status, message=message, code=exc.code, param=exc.param, details=details,
                headers=headers or None)


RETRY_SOON = 60  # seconds: a limit that resets within this is worth a client's retry


def retry_advice(status, headers=None):
    """An error answer's headers, saying whether a retry can help. What no retry fixes (every
    4xx but a timeout, 408, and a limit that resets within RETRY_SOON) gets `x-should-retry:
    false`, which Claude Code and the official SDKs obey: without it Claude Code retries a
    401 for minutes, silent. 5xx and a near limit keep their Retry-After."""
    retry_after = number_or_none((headers or {}).get("Retry-After"))
    if status >= 500 or status == 408 or status == 429 and (retry_after is None or retry_after <= RETRY_SOON):
        return headers
    return dict(headers or {}, **{"x-should-retry": "false"})


def relayed_headers(stream):
    return with_upstream_id({name: value for name, value in stream.headers.items() if RELAYED_HEADER.match(name)},
                            stream.headers)


def with_upstream_id(headers, upstream_headers):
    """`headers` and, if the upstream answer named itself, its id as x-upstream-request-id (the
    client's x-request-id is the proxy's own, the one its log line starts with)."""
    upstream_id = upstream_request_id(upstream_headers)
    return dict(headers, **{"x-upstream-request-id": upstream_id}) if upstream_id else headers


SAFE_HEADER_VALUE = re.compile(r"^[\x21-\x7e][\x20-\x7e]{0,255}$")


def header_safe(value):
    """`value` if it can go into an upstream header as it is (printable
    ASCII, at most 256 characters), else a stable stand-in derived from it."""
    if isinstance(value, str) and SAFE_HEADER_VALUE.match(value):
        return value
    return derive_cache_key(value)


def upstream_headers(request, body, session_id, accept="text/event-stream"):
    """Headers for a Codex backend call: the conversation id, and Codex CLI's own headers."""
    headers = {"Accept": accept}
    for name, value in request.headers.pairs:
        if FORWARDED_HEADER.match(name.lower()):
            headers[name.lower()] = header_safe(value)
    session = headers.pop("session-id", None) or headers.get("session_id") or session_id \
        or body.get("prompt_cache_key") or derive_cache_key(new_id("session"))
    headers["session_id"] = header_safe(session)
    return headers


OFF_LOOP_BYTES = 64 * 1024  # requests from this size are parsed and translated off the event loop (~0.1 ms/KB)


async def in_thread(function, *args):
    """function(*args) in a thread: it blocks, or takes long (a token refresh, a probe, a count). In
    the caller's context, so that what it logs names the caller's request."""
    return await asyncio.get_running_loop().run_in_executor(None, contextvars.copy_context().run, function, *args)


def work_size(request, body_size=0, history_size=0):
    """What parsing or translating a request works through, in bytes: its body as received or as
    decoded (`body_size`), with the history a previous_response_id brings in. A compressed body
    counts as large: how large it is decoded is known only once it is."""
    if "content-encoding" in request.headers:
        return OFF_LOOP_BYTES
    return max(request.size, body_size + history_size)


async def read_json(request, limit):
    """(the request's JSON body, its size decoded); the model it asks for goes into its log line at
    once (a failure before translation names it too). The raw bytes are let go: a long answer need
    not keep them (request.size says what they weighed)."""
    parsed = await off_loop(work_size(request), parse_json_body, request, limit)
    request.body = b""
    note_requested_model(parsed[0])
    return parsed


def note_requested_model(body):
    """The model a request asks for, into its log line (a failure before translation names it too)."""
    record, model = REQUEST.get(), as_object(body).get("model")
    if record is not None and isinstance(model, str) and model:
        record["model"] = one_line(model, 100)


def parse_image_edit(request, limit):
    """An images edit request's multipart form: (body, images, mask), as image_edit_form gives them."""
    parts = parse_form_data(decoded_body(request, limit), request.headers.get("content-type") or "")
    return image_edit_form(*form_fields(parts))


async def off_loop(size, function, *args):
    """function(*args), in a worker thread when `size` (work_size) is large enough that the work,
    proportional to it, would hold up other streams."""
    if size < OFF_LOOP_BYTES:
        return function(*args)
    return await in_thread(function, *args)


async def upstream_chunks(stream):
    """An upstream answer's body as it arrives. A break-off ends it (logged):
    what the client then hears is for the caller's stream translator to say."""
    try:
        async for chunk in stream.chunks():
            yield chunk
    except UpstreamUnavailable as exc:
        log.warning("upstream stream broke off: %s", exc)
    finally:
        stream.close()


async def upstream_events(stream, as_received=False):
    """Upstream SSE events as dicts, a chunk's worth at a time (so that a
    chunk's client events leave in one write)."""
    parser = SSEParser()
    async for chunk in upstream_chunks(stream):
        events = parse_events(parser, chunk, as_received)
        if events:
            yield events


async def relay(responder, stream, dialect):
    """Pass an upstream answer through as it arrives (API-key mode). An SSE
    stream that breaks off before its terminal event gets the dialect's cut
    event appended, so no client takes a cut answer for a whole one."""
    content_type = stream.headers.get("content-type", "application/json")
    if not content_type.startswith("text/event-stream"):
        return await responder.send(200, await stream.read(), content_type, relayed_headers(stream))
    parser = SSEParser()
    terminal = False
    await responder.start(200, content_type, relayed_headers(stream))
    try:
        async for chunk in upstream_chunks(stream):
            await responder.write(chunk)
            for name, data in parser.feed(chunk):
                if is_terminal_event(name, data):
                    terminal = True
                    note_relayed_failure(responder.record, name, data)
    except asyncio.CancelledError:  # shutting down (a client that left hears nothing anyway)
        responder.finish_now(b"" if terminal else dialect.cut_event)
        raise
    finally:
        stream.close()
    if not terminal:
        note_failure(responder.record, CUT_ERROR["message"], CUT_ERROR["code"])
        await responder.write(dialect.cut_event)
    await responder.end()


def note_relayed_failure(record, name, data):
    """A relayed stream's terminal event that says it failed (response.failed, error): into the
    request's log line, as a translated stream's failure goes."""
    if (name or "") not in ("response.failed", "error") and '"response.failed"' not in data[:40] \
            and '"error"' not in data[:24]:
        return
    try:
        event = json.loads(data)
    except ValueError:
        return
    if isinstance(event, dict) and event.get("type") in ("response.failed", "error"):
        failure = stream_error(event_failure(event))
        note_failure(record, failure["message"], failure.get("code"))


class Heartbeat:
    """Writes `data` into a stream whenever nothing was written for `interval`
    seconds: long silent reasoning must not look like a dead connection to
    clients, SDK read timeouts and proxies on the way (Claude Code gives up
    after 300 s). Written between whole events only."""

    def __init__(self, responder, data, interval):
        self.responder, self.data, self.interval = responder, data, interval
        self.loop = asyncio.get_running_loop()
        self.last = self.loop.time()
        self.timer = self.loop.call_later(interval, self.tick) if data and interval > 0 else None

    def tick(self):
        idle = self.loop.time() - self.last
        if idle >= self.interval * 0.99:
            self.responder.write_now(self.data)
            self.last, idle = self.loop.time(), 0
        self.timer = self.loop.call_later(self.interval - idle, self.tick)

    def cancel(self):
        if self.timer is not None:
            self.timer.cancel()


async def stream_answer(responder, stream, dialect, translator, heartbeat_interval=0, store_answer=None):
    """A translated answer as a stream: upstream events in, client events out. `store_answer(final)`
    is called with the whole answer before its last events are written (so that a client chaining
    on it at once finds it stored)."""
    await responder.start(200, dialect.stream_type, relayed_headers(stream))
    heartbeat = Heartbeat(responder, dialect.keep_alive(translator), heartbeat_interval)
    batches = upstream_events(stream, dialect.passes_events)
    try:
        async for events in batches:
            if responder.dump is not None:
                responder.dump.upstream_events.extend(events)
            data = b"".join(dialect.encode(out) for event in events for out in translator.feed(event))
            if store_answer is not None and translator.final:
                store_answer(translator.final)
                store_answer = None
            await responder.write(data)
            heartbeat.last = heartbeat.loop.time()
            if translator.stopped:
                break  # the upstream request is closed below: the model stops writing
    except asyncio.CancelledError:  # shutting down (a client that left hears nothing anyway)
        responder.finish_now(b"".join(dialect.encode(out) for out in translator.fail(SHUTDOWN_FAILURE)))
        if not responder.client_gone():
            note_failure(responder.record, SHUTDOWN_FAILURE["message"], SHUTDOWN_FAILURE["code"])
        raise
    finally:
        heartbeat.cancel()
        stream.close()
        await batches.aclose()
    tail = b"".join(dialect.encode(out) for out in translator.finish())
    if translator.error is None:
        tail += dialect.done_marker
    else:  # a 200 whose stream failed or was cut: the log line says so
        note_failure(responder.record, translator.error["message"], translator.error.get("code"))
    await responder.write(tail)
    await responder.end()


async def collect_answer(stream, translator, dump=None):
    """Every client event of a translated answer, for a reply in one piece."""
    events = []
    batches = upstream_events(stream)
    try:
        async for batch in batches:
            if dump is not None:
                dump.upstream_events.extend(batch)
            for event in batch:
                events.extend(translator.feed(event))
            if translator.stopped:
                break
    finally:
        stream.close()
        await batches.aclose()
    events.extend(translator.finish())
    return events


class ResponseStore:
    """Finished Responses, kept in memory under their ids, so that
    previous_response_id, retrieve, input_items and delete work although the
    Codex backend stores nothing. Bounded by count and size: the oldest go
    first. Nothing is written to disk.

    A response may have an `owner` (a WebSocket, for its store: false responses): then only that
    owner can continue it, HTTP never sees it, and it goes when its owner does (drop)."""

    def __init__(self, max_responses, max_bytes):
        self.max_responses, self.max_bytes = max_responses, max_bytes
        self.entries = collections.OrderedDict()  # id -> (response, input items, size, owner)
        self.size = 0

    def put(self, response, input_items, request_size, owner=None):
        """Keep a response and its input items. Its size: `request_size` (what its input holds:
        the request, and the whole response it continues, see held()) and the response's own."""
        key = response.get("id")
        if self.max_responses <= 0 or not isinstance(key, str) \
                or response.get("status") not in ("completed", "incomplete"):
            return
        size = request_size + len(compact_json(response))
        self.delete(key)
        if size > self.max_bytes:
            log.info("response %s (%d bytes) is too large to keep (--store-max-mb)", key, size)
            return
        self.entries[key] = (response, input_items, size, owner)
        self.size += size
        while len(self.entries) > self.max_responses or self.size > self.max_bytes:
            self.size -= self.entries.popitem(last=False)[1][2]

    def visible(self, key, owner=None):
        """The entry of `key` that `owner` (None: HTTP) may see, or None."""
        entry = self.entries.get(key) if isinstance(key, str) else None
        return entry if entry is not None and entry[3] in (None, owner) else None

    def get(self, key):
        entry = self.visible(key)
        if entry is None:
            raise ClientError(RESPONSE_NOT_FOUND % ("Response", key), 404, code="response_not_found")
        return entry[0], entry[1]

    def held(self, key, owner=None):
        """The size counted for a response (0 if not kept). One continuing it holds all of that
        too: its items are shared, not copied, but counted again, so that the bound still holds
        once the earlier one is gone."""
        entry = self.visible(key, owner)
        return entry[2] if entry else 0

    def history(self, key, owner=None):
        """The items a response continuing `key` starts with: its input, then its output as input."""
        entry = self.visible(key, owner)
        return None if entry is None else entry[1] + codex_input_items(entry[0].get("output") or [])

    def drop(self, owner):
        """Forget what `owner` kept (a WebSocket that closed)."""
        for key in [key for key, entry in self.entries.items() if entry[3] is owner]:
            self.delete(key)

    def delete(self, key):
        entry = self.entries.pop(key, None)
        if entry is not None:
            self.size -= entry[2]
        return entry is not None


class ResponsesEndpoints:
    """/v1/responses beyond creating one: retrieve, delete and input_items
    (from the proxy's store), compact (the backend's) and input_tokens (the
    proxy's estimate). In API-key mode the API does all of these itself."""

    def __init__(self, app):
        self.app = app
        self.store = ResponseStore(app.config.store_max_responses, app.config.store_max_bytes)

    def routes(self, dialect):
        return [Route("POST", "/v1/responses/compact", self.compact, dialect, forwarded=True),
                Route("POST", "/v1/responses/input_tokens", self.input_tokens, dialect, forwarded=True),
                Route("GET", "/v1/responses/{id}", self.retrieve, dialect, forwarded=True),
                Route("DELETE", "/v1/responses/{id}", self.delete, dialect, forwarded=True),
                Route("GET", "/v1/responses/{id}/input_items", self.input_items, dialect, forwarded=True)]

    def answer_storer(self, ctx, request_size, owner=None):
        """What stores an answer (before the client has it, for previous_response_id), or None when
        it is not to be kept; `request_size` counts its request with the history it continued. A
        store: false answer is kept only for an `owner` (its WebSocket), and only for it."""
        if ctx.stored_input is None or ctx.private and owner is None:
            return None
        return functools.partial(self.store.put, input_items=ctx.stored_input, request_size=request_size,
                                 owner=owner if ctx.private else None)

    async def retrieve(self, request, responder, dialect, params):
        await responder.send_json(200, self.store.get(params["id"])[0])

    async def delete(self, request, responder, dialect, params):
        self.store.get(params["id"])  # 404 when unknown
        self.store.delete(params["id"])
        await responder.send_json(200, {"id": params["id"], "object": "response", "deleted": True})

    async def input_items(self, request, responder, dialect, params):
        _, items = self.store.get(params["id"])
        await responder.send_json(200, input_items_page(params["id"], items, urllib.parse.parse_qs(request.query)))

    async def compact(self, request, responder, dialect, params):
        """The backend's remote compaction (what the Codex CLI uses), one JSON answer."""
        body, body_size = await read_json(request, self.app.config.max_body_bytes)
        opts = await self.app.request_options(request, dialect, body)
        upstream_body = await off_loop(work_size(request, body_size, opts.history_size), compact_request_for_codex,
                                       body, opts)
        headers = upstream_headers(request, upstream_body, opts.session_id, "application/json")
        await relay(responder, await self.app.upstream.open("POST", "/responses/compact", upstream_body, headers),
                    dialect)

    async def input_tokens(self, request, responder, dialect, params):
        """The proxy's estimate for the request as it would go upstream (the backend counts nothing)."""
        count = await self.app.estimated_tokens(request, dialect)
        await responder.send_json(200, {"object": "response.input_tokens", "input_tokens": count})


class ResponsesSockets:
    """The Responses API over WebSocket (GET /v1/responses with Upgrade: websocket), as OpenAI's
    WebSocket mode and the Codex CLI speak it. The upgrade passes the guard as any request does
    (Host, Origin, the local key: App.check_head, before the 101). Then each `response.create`
    message is answered as POST /v1/responses with stream: true is, by the same handler, its SSE
    events sent as messages (SocketResponder); one at a time, in order. Responses made on a socket
    can be continued there whatever their `store` (its store: false ones are its own: the store
    keeps them under the socket, and forgets them when it closes)."""

    def __init__(self, app):
        self.app = app
        self.route = Route("POST", "/v1/responses", self.create, OPENAI_RESPONSES, calls_model=True)

    def routes(self, dialect):
        return [Route("GET", "/v1/responses", self.open, dialect, takes_connection=True)]

    async def open(self, request, responder, dialect, params):
        """The upgrade (or, for a request that cannot have one, an HTTP error), then the socket's
        messages until it closes."""
        try:
            head = websocket_upgrade(request)
        except WebSocketRefused as exc:
            return await self.app.send_error(responder, dialect, exc.status, exc.message, exc.code,
                                             headers=exc.answer_headers)
        session = WebSocketSession(responder.connection, self.app.config.max_body_bytes)
        responder.status, responder.started, responder.finished = 101, True, True
        responder.note_sent(head)
        await session.open(head)
        responder.connection.websocket = session
        metrics = self.app.metrics
        metrics.sockets_opened += 1
        metrics.sockets_open += 1
        metrics.in_flight -= 1  # an open socket is no request in flight (its messages are, while answered)
        try:
            await self.serve(request, session)
        finally:
            metrics.in_flight += 1
            metrics.sockets_open -= 1
            session.close(CLOSE_GOING_AWAY, "The proxy is shutting down.")  # unless closed already
            self.app.responses.store.drop(session)
            await session.stop()

    async def serve(self, request, session):
        # What each message is answered with, as if it had come as a POST: the upgrade's headers
        # (its conversation id, the client's headers for the backend), but none about a body.
        headers = Headers([(name, value) for name, value in request.headers.pairs
                           if name.lower() not in ("content-encoding", "content-length", "transfer-encoding")])
        while True:
            text = await session.next_message()
            if text is None:
                return
            key_name = presented_key_name(request, self.app.config.api_key)  # the keys of now (a reload's)
            if key_name is None:
                session.close(CLOSE_POLICY_VIOLATION, "The key this socket opened with is no longer accepted.")
                return
            await session.answer(self.answer(session, headers, text, key_name or None))
            if session.connection.server.draining:
                session.close(CLOSE_GOING_AWAY, "The proxy is shutting down.")
                return

    async def answer(self, session, headers, text, key_name):
        """One message: its answer, its log line (marked ws, with the upgrade's key) and its count."""
        record = {"id": new_id("req_"), "transport": "ws", "key": key_name}
        message = Request("POST", "/v1/responses", "1.1", headers, text.encode("utf-8"))
        responder = SocketResponder(session, message, record)
        token = REQUEST.set(record)
        try:
            await self.app.handle(message, responder, (self.route, {}))
        finally:
            self.app.finished(responder, session.connection.state.client_gone)
            REQUEST.reset(token)

    async def create(self, request, responder, dialect, params):
        """A `response.create` message: POST /v1/responses's body, with `stream` implied; with
        `generate: false`, checked and kept (to be continued) with nothing generated."""
        body, body_size = await read_json(request, self.app.config.max_body_bytes)
        if responder.dump is not None:  # the message as it came (type, generate and all), whatever answers it
            responder.dump.request_body = dict(body)
        kind = body.pop("type", None)
        if kind != "response.create":
            raise ClientError("Unknown message type %s: this socket takes {\"type\": \"response.create\", ...}."
                              % one_line(json.dumps(kind), 60), param="type", code="invalid_type")
        generate = body.pop("generate", True)
        if not isinstance(generate, bool):
            raise ClientError("generate must be true or false.", param="generate")
        body.pop("stream_id", None)
        body["stream"] = True
        if not generate:
            return await self.warm_up(request, responder, dialect, body, body_size)
        if self.app.upstream.mode() == "apikey":
            return await self.forward_to_api(responder, dialect, body, body_size)
        await self.app.call_model(request, responder, dialect, params, (body, body_size), owner=responder.session)

    async def warm_up(self, request, responder, dialect, body, body_size):
        """generate: false (what Codex sends first on a socket): the request is translated, which
        checks it, and its answer is kept with no output, so that the next request continuing it
        starts with its items; nothing goes upstream."""
        opts = await self.app.request_options(request, dialect, body, owner=responder.session)
        _, ctx = await off_loop(work_size(request, body_size, opts.history_size), dialect.translate, body, opts)
        response = ungenerated_response(body, ctx)
        store_answer = self.app.responses.answer_storer(ctx, body_size + opts.history_size, responder.session)
        if store_answer is not None:
            store_answer(response)
        await responder.start(200)
        await responder.write(b"".join(dialect.encode(event) for event in ungenerated_events(response)))
        await responder.end()

    async def forward_to_api(self, responder, dialect, body, body_size):
        """API-key mode: the request goes to the API's /responses as a stream. The socket keeps
        each answer (store: false ones the API does not), and one continuing an answer it keeps
        gets that answer's items inline."""
        store, session = self.app.responses.store, responder.session
        history, held = store.history(body.get("previous_response_id"), session), \
            store.held(body.get("previous_response_id"), session)
        items = body.get("input")
        if isinstance(items, str):
            items = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": items}]}]
        if history is not None:
            if not isinstance(items, list):
                raise ClientError("input must be a string or an array of items.", param="input")
            body["input"] = items = history + items
            del body["previous_response_id"]
        body = dialect.server_defaults(body, self.app.config.defaults())
        await relay(responder, await self.app.upstream.open("POST", "/responses", body), dialect)
        final = as_object(json.loads(responder.last_event)) if responder.last_event else {}
        if final.get("type") in ("response.completed", "response.incomplete") and isinstance(items, list):
            store.put(as_object(final.get("response")), items, body_size + held, owner=session)


def input_items_page(response_id, items, query):
    """A page of a stored response's input items, as the API lists them (newest first by default)."""
    def one(name, default):
        values = query.get(name)
        return values[-1] if values else default
    try:
        limit = int(one("limit", "20"))
    except ValueError:
        limit = 0
    order, after = one("order", "desc"), one("after", None)
    if not 1 <= limit <= 100 or order not in ("asc", "desc"):
        raise ClientError("limit must be 1 to 100 and order asc or desc.", param="limit" if order in (
            "asc", "desc") else "order")
    def item_id(n):
        return items[n].get("id") or "%s_item_%d" % (response_id, n)
    order_of = range(len(items) - 1, -1, -1) if order == "desc" else range(len(items))
    start = next((k + 1 for k, n in enumerate(order_of) if item_id(n) == after), 0) if after else 0
    page = [dict(items[n], id=item_id(n)) for n in order_of[start:start + limit]]  # only the page's items copied
    return {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None, "has_more": start + limit < len(items)}


def request_done(responder, client_left, metrics):
    """What a finished request leaves: its log line, its count in /metrics, its --dump-dir file."""
    record = responder.record
    record.update(status=responder.status or "-", client_left=client_left, total=time.monotonic() - record["started"])
    if record["first_byte"] is not None:
        record["ttfb"] = record["first_byte"] - record["started"]
    metrics.finished(record)
    line, fields = request_log_line(record)
    log.info(line, extra={"fields": fields})
    if responder.dump is not None:
        asyncio.get_running_loop().run_in_executor(None, contextvars.copy_context().run, responder.dump.write,
                                                   dict(record))  # (a warning it logs names the request)


def log_model_choice(opts, body):
    log.debug("model %r -> %r; prompt cache key from %s", opts.client_model, opts.model,
              "the client" if body.get("prompt_cache_key") else "its session id" if opts.session_id
              else "the conversation's start")


def refuse_while_shutting_down(responder, dialect):
    """The answer to a request the shutdown cut short before its answer began: a 503 to retry."""
    note_failure(responder.record, SHUTDOWN_FAILURE["message"], "server_shutting_down")
    status, body = dialect.error(503, SHUTDOWN_FAILURE["message"], "server_shutting_down")
    responder.finish_now(json.dumps(body).encode("utf-8"), status, {"Retry-After": "1"})


def explained(exc, ctx, plan_models):
    """An upstream refusal, said so that the user can act on it."""
    if ctx.prompt_too_long and context_overflow(exc.code, exc.message):
        return ClientError(ctx.prompt_too_long())
    if exc.status == 400 and "model" in exc.message.lower() and "not supported" in exc.message.lower() \
            and plan_models:
        exc.message += " Models of your plan: %s." % ", ".join(plan_models)
    return exc


class Metrics:
    """What GET /metrics counts, in Prometheus's text format (written by hand: it is a small format)."""

    TTFB_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

    def __init__(self):
        self.requests = collections.Counter()  # (route, status, the local key's name or None) -> answers
        self.tokens = collections.Counter()  # (input, cached, output or reasoning; the key's name) -> tokens
        self.ttfb = [0] * len(self.TTFB_BUCKETS)
        self.ttfb_sum, self.ttfb_count = 0.0, 0
        self.in_flight = 0
        self.sockets_opened = self.sockets_open = self.socket_responses = 0  # WebSockets (the Responses API's)

    def finished(self, record):
        key_name = record.get("key")
        self.requests[(record.get("route") or "-", record.get("status") or 0, key_name)] += 1
        self.socket_responses += record.get("transport") == "ws"
        for kind, value in (record.get("tokens") or {}).items():
            if kind != "total_tokens":
                self.tokens[(kind.replace("_tokens", ""), key_name)] += value
        if record.get("ttfb") is not None:
            self.ttfb_sum += record["ttfb"]
            self.ttfb_count += 1
            for at, bound in enumerate(self.TTFB_BUCKETS):
                self.ttfb[at] += record["ttfb"] <= bound

    def render(self, upstream):
        lines = []

        def metric(name, kind, help, samples, sample_name=None):
            lines.extend(("# HELP codex_proxy_%s %s" % (name, help), "# TYPE codex_proxy_%s %s" % (name, kind)))
            for labels, value in samples:
                label = ",".join('%s="%s"' % (k, str(v).replace("\\", "\\\\").replace('"', '\\"'))
                                 for k, v in labels)
                lines.append("codex_proxy_%s%s %s" % (sample_name or name, "{%s}" % label if label else "", value))
        metric("requests_total", "counter", "Answers, by route, status and local key.",
               [((("route", r), ("status", st)) + with_key(k), n)
                for (r, st, k), n in sorted(self.requests.items(), key=str)])
        metric("requests_in_flight", "gauge", "Requests being answered now.", [((), self.in_flight)])
        metric("websockets_opened_total", "counter", "WebSockets opened (the Responses API's).",
               [((), self.sockets_opened)])
        metric("websockets_open", "gauge", "WebSockets open now.", [((), self.sockets_open)])
        metric("websocket_responses_total", "counter", "Messages answered over WebSockets.",
               [((), self.socket_responses)])
        metric("upstream_streams", "gauge", "Upstream calls in flight now.", [((), upstream.streams())])
        metric("upstream_errors_total", "counter", "Upstream failures, by kind.",
               [((("kind", k),), n) for k, n in sorted(upstream.errors.items())])
        metric("token_refreshes_total", "counter", "Access-token refreshes.",
               [((), sum(store.refreshes for store in upstream.logins.stores))])
        metric("tokens_total", "counter", "Tokens of answers, by kind (cached and reasoning are included in "
               "input and output) and local key.", [((("kind", kind),) + with_key(k), n)
                                                    for (kind, k), n in sorted(self.tokens.items(), key=str)])
        metric("time_to_first_byte_seconds", "histogram", "Time from a request to its answer's first byte.",
               [((("le", "%g" % b),), n) for b, n in zip(self.TTFB_BUCKETS, self.ttfb)]
               + [((("le", "+Inf"),), self.ttfb_count)], sample_name="time_to_first_byte_seconds_bucket")
        lines += ["codex_proxy_time_to_first_byte_seconds_sum %g" % self.ttfb_sum,
                  "codex_proxy_time_to_first_byte_seconds_count %d" % self.ttfb_count]
        metric("plan_usage_percent", "gauge", "The plan's usage windows as the backend last reported them.",
               [((("window", k),), w["used_percent"]) for k, w in sorted(upstream.usage.windows.items())
                if w.get("used_percent") is not None])
        logins = upstream.logins
        metric("login_used_percent", "gauge", "Each login's used percent (its highest window) as the backend "
               "last reported it for that login.", [((("login", index + 1),), usage.used_percent())
                                                    for index, usage in enumerate(logins.usage) if usage.windows])
        with logins.lock:
            resting = sorted((index, until) for index, (until, _, _) in logins.resting.items() if until > wall_clock())
        metric("login_resting_until_seconds", "gauge", "When each resting login's rest ends at the latest "
               "(Unix time).", [((("login", index + 1),), "%d" % until) for index, until in resting])
        return "\n".join(lines) + "\n"


def with_key(name):
    """The label of a local key's name, where the request carried one (none without --api-key)."""
    return (("key", name),) if name else ()


def request_log_line(record):
    """(text, fields): the one line a request leaves in the log (fields for --log-format json): how it
    ended (`outcome`: ok, failed with its `reason`, or client_left), the proxy's and the upstream's
    ids; never a token, a key or prompt text."""
    tokens = record.get("tokens") or {}
    fields = {key: record.get(key) for key in ("id", "method", "path", "transport", "status", "key", "dialect",
                                               "model", "upstream_model", "stream")}
    images = record.get("images") or ()
    fields.update(images=len(images) or None, image_bytes=sum(n * 3 // 4 for n in images) if images else None)
    fields.update(input_tokens=tokens.get("input_tokens"), cached_tokens=tokens.get("cached_tokens"),
                  output_tokens=tokens.get("output_tokens"), reasoning_tokens=tokens.get("reasoning_tokens"),
                  ttfb_ms=round(record["ttfb"] * 1000, 1) if record.get("ttfb") is not None else None,
                  total_ms=round(record["total"] * 1000, 1), client_left=record.get("client_left") or None,
                  upstream_request_id=record.get("upstream_id"), reason=record.get("reason"),
                  outcome="failed" if record.get("reason") else "client_left" if record.get("client_left") else "ok")
    fields = {key: value for key, value in fields.items() if value is not None}
    line = "%(id)s %(method)s %(path)s" % fields + (" ws" if fields.get("transport") else "")
    line += " -> %(status)s" % fields
    if fields.get("dialect"):
        line += " %s %s" % (fields["dialect"], fields.get("model", "(no model)"))
        if fields.get("upstream_model", fields.get("model")) != fields.get("model"):
            line += "->%s" % fields["upstream_model"]
        line += " stream" if fields.get("stream") else ""
    if fields.get("key"):  # the local key's name, never the key
        line += " key %s" % fields["key"]
    if tokens:
        line += " tokens %d(%d cached)/%d/%d" % (tokens["input_tokens"], tokens["cached_tokens"],
                                                 tokens["output_tokens"], tokens["reasoning_tokens"])
    if images:  # drawn images: their size (what their base64 holds), never their bytes
        line += " images %d (%d KB)" % (fields["images"], -(-fields["image_bytes"] // 1024))
    if fields.get("ttfb_ms") is not None:
        line += " ttfb %.0fms" % fields["ttfb_ms"]
    line += " total %.0fms" % fields["total_ms"]
    if "upstream_request_id" in fields:
        line += " upstream %s" % fields["upstream_request_id"]
    line += " client left" if fields.get("client_left") else ""
    return line + (" failed: %s" % fields["reason"] if "reason" in fields else ""), fields


REASON_CHARS = 200  # a failure's reason in the request log: one line, at most this long
# What looks like a credential in an error message (an upstream's may quote one): masked in the log.
CREDENTIAL_LIKE = re.compile(r"(?i)\bbearer\s+\S+|\beyJ[\w-]*\.[\w.-]*|\b(?:sk|rt|at)[-_][\w-]{6,}")


def one_line(text, limit=REASON_CHARS):
    """`text` for a log line: on one line, at most `limit` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def note_failure(record, message, code=None):
    """Say in a request's log line why it failed (its code and message, on one line; credentials masked)."""
    text = str(message or "")
    if code and code not in text:
        text = "%s: %s" % (code, text) if text else code
    record["reason"] = one_line(CREDENTIAL_LIKE.sub("[redacted]", text))


SECRET_NAME = re.compile(r"(token|key|secret|password|authorization|cookie)", re.I)


class ExchangeDump:
    """One request's exchange for --dump-dir: the client's request, what went
    upstream, the upstream events, the answer; tokens, keys and Authorization
    values replaced by "[redacted]", each base64 image by its length and hash,
    so that it can go into a bug report."""

    def __init__(self, request, folder):
        self.request = request
        self.folder = folder  # --dump-dir as the request began (a reload may change it meanwhile)
        self.request_body = None
        self.upstream_request = None
        self.upstream_events = []
        self.sent = []  # the bytes of the answer, as the client got them

    def write(self, record):
        """Called in a thread: the JSON of a long answer takes a while."""
        folder = self.folder
        query = urllib.parse.parse_qsl(urllib.parse.urlsplit(self.request.target).query, keep_blank_values=True)
        data = {"id": record["id"], "status": record.get("status"),
                "request": {"method": self.request.method, "path": self.request.path, "query": dict(query),
                            "headers": dict(self.request.headers.pairs), "body": self.request_body},
                "upstream_request": self.upstream_request, "upstream_events": self.upstream_events,
                "answer": without_images(b"".join(self.sent).decode("utf-8", "replace"))}
        name = "%s-%s.json" % (time.strftime("%Y%m%d-%H%M%S", time.localtime(wall_clock())), record["id"])
        path = os.path.join(folder, name)
        try:
            os.makedirs(folder, exist_ok=True)
            with open(path + ".part", "w", encoding="utf-8") as handle:  # whole or not there, for its readers
                json.dump(redacted(data), handle, indent=1, ensure_ascii=False)
            os.replace(path + ".part", path)
        except OSError as exc:
            log.warning("cannot write the exchange to --dump-dir %s: %s", folder, exc)


# A base64 image in JSON text or in a string: a data: URL's, or a drawn one's (an image_generation_call's
# result, a partial image, an Images API answer's b64_json), JSON's escaped slashes (\/) and all.
BASE64_IMAGE = re.compile(r'(data:image/[\w.+-]+;base64,|"(?:result|partial_image_b64|b64_json)"\s*:\s*")'
                          r'([A-Za-z0-9+/=\\]{64,})')
IMAGE_FIELDS = frozenset(("partial_image_b64", "b64_json"))


def image_stand_in(b64):
    """What --dump-dir shows for a base64 image: its length and a hash of its base64, never the image."""
    b64 = b64.replace("\\/", "/")
    return "[image: %d base64 chars, sha256 %s]" % (len(b64), hashlib.sha256(b64.encode("ascii", "replace"))
                                                    .hexdigest()[:16])


def without_images(text):
    """JSON text, or a data: URL, with each BASE64_IMAGE replaced by its stand-in."""
    return BASE64_IMAGE.sub(lambda match: match.group(1) + image_stand_in(match.group(2)), text)


def redacted(value, parent=None, name=None):
    """`value` (found in `parent` under `name`) with whatever sits under a name like token, key,
    secret or authorization replaced, and each base64 image by its stand-in (image_stand_in)."""
    if isinstance(value, dict):
        return {k: redacted(v, value, k) for k, v in value.items()}
    if isinstance(value, list):  # (Ollama's `images`: bare base64 strings)
        return [image_stand_in(item) if name == "images" and isinstance(item, str) else redacted(item)
                for item in value]
    if not isinstance(value, str):
        return value
    if isinstance(name, str) and SECRET_NAME.search(name) and name != "max_tokens":
        return "[redacted]"
    if name in IMAGE_FIELDS or name == "result" and parent.get("type") == "image_generation_call":
        return image_stand_in(value)
    return without_images(value) if value.startswith("data:image/") else value


def presented_key_name(request, keys):
    """The name of the local key (of `keys`, (name, key) pairs) that a request carries, None when it
    carries none of them, "" when there are none (anyone is let in). Each key is compared, in
    constant time, so that the time taken does not tell which one is near."""
    if not keys:
        return ""
    presented = request.headers.get("x-api-key") or ""
    bearer = request.headers.get("authorization") or ""
    if bearer[:7].lower() == "bearer ":
        presented = presented or bearer[7:].strip()
    presented = presented.encode("utf-8", "replace")
    matches = [name for name, key in keys if hmac.compare_digest(presented, key.encode("utf-8"))]
    return matches[0] if matches else None


def key_presented(request, keys):
    """Whether a request carries one of the local keys (always true without any)."""
    return presented_key_name(request, keys) is not None


class Guard:
    """Who may use the proxy. Any web page in the user's browser can send
    requests to 127.0.0.1: a Host that is not ours means DNS rebinding (a page
    reading our answers), an Origin or Sec-Fetch-Site header a page's request;
    both are refused unless allowed by a flag. Then the local API key, where
    one is set."""

    def __init__(self, config):
        self.config = config
        self.origins = {origin_of(origin) for origin in config.allow_origins}
        self.allowed_hosts = {name.lower() for name in config.allowed_hosts}

    def host_allowed(self, name):
        allowed = self.allowed_hosts
        return is_loopback(name) or name == self.config.host.lower().strip("[]") or name in allowed or "*" in allowed

    def check(self, request, route):
        """Refuse (ClientError) what must not reach a handler."""
        host = request.headers.get("host")
        if host is not None and not self.host_allowed(host_name(host)):
            raise ClientError("Requests addressed to %r are refused: this proxy answers requests for localhost, "
                              "so that a web page cannot reach it through DNS rebinding. Start it with "
                              "--allowed-host %s to allow that name." % (host, host_name(host) or host), 403,
                              code="host_not_allowed")
        origin = request.headers.get("origin")
        if origin is not None and origin_of(origin) not in self.origins:
            raise ClientError("Requests from web pages (Origin %s) are refused: any site you visit could "
                              "otherwise use your ChatGPT plan. Start the proxy with --allow-origin %s to allow "
                              "that origin." % (origin, origin), 403, code="origin_not_allowed")
        if origin is None and request.headers.get("sec-fetch-site") in ("cross-site", "same-site"):
            raise ClientError("Requests from web pages are refused (Sec-Fetch-Site: %s); --allow-origin lets "
                              "a page's origin in." % request.headers.get("sec-fetch-site"), 403,
                              code="origin_not_allowed")
        if request.method == "OPTIONS" or route is not None and route.open:
            return  # a CORS preflight never carries credentials
        name = presented_key_name(request, self.config.api_key)
        if name is None:  # (no key's name in the answer: it would tell a guesser what to name)
            raise ClientError("Missing or wrong API key for this proxy "
                              "(send Authorization: Bearer KEY or x-api-key: KEY).", 401)
        if name and REQUEST.get() is not None:
            REQUEST.get()["key"] = name


class App:
    """The route table, the guard in front of it, and the handlers; every
    error leaves in the dialect of the route it was meant for."""

    def __init__(self, config, upstream=None):
        self.config = config
        self.upstream = upstream or Upstream(config)
        self.catalog = ModelCatalog(self.upstream, config)
        self.started = wall_clock()
        self.guard, self.base_url_advice = Guard(config), BaseURLAdvice()
        self.metrics = Metrics()
        self.pages = Pages(self)
        self.routes = self.pages.routes(OPENAI_CHAT) + [
            Route("POST", "/v1/responses", self.call_model, OPENAI_RESPONSES, calls_model=True, forwarded=True),
            Route("POST", "/v1/chat/completions", self.call_model, OPENAI_CHAT, calls_model=True, forwarded=True),
            Route("POST", "/v1/messages", self.call_model, ANTHROPIC_MESSAGES, calls_model=True),
            Route("POST", "/v1/messages/count_tokens", self.count_tokens, ANTHROPIC_MESSAGES),
        ]
        self.responses = ResponsesEndpoints(self)
        self.routes += self.responses.routes(OPENAI_RESPONSES) + ResponsesSockets(self).routes(OPENAI_RESPONSES) \
            + ImageEndpoints(self).routes(OPENAI_IMAGES) + OllamaEndpoints(self).routes(OLLAMA)
        self.roots = {route.parts[0] for route in self.routes} - {"", "v1"}  # paths served as they are

    def find(self, method, path):
        """(route, its params), or (None, methods the path takes). HEAD goes wherever GET does."""
        parts = path.strip("/").split("/") if path != "/" else [""]
        methods = []
        for route in self.routes:
            params = route.match(parts)
            if params is not None:
                if route.method == method or route.method == "GET" and method == "HEAD":
                    return route, params
                methods.append(route.method)
        return None, methods

    def finished(self, responder, client_left):
        """A request is done: its log line, its count, its dump."""
        request_done(responder, client_left, self.metrics)

    def dialect_for(self, path):
        """The dialect of the route a path is meant for: the one sharing most of its segments
        (an unknown /v1/messages/x is still Anthropic's, and so is /v1/v1/messages)."""
        parts = route_path(path, self.roots).strip("/").split("/")
        return max(self.routes, key=lambda route: route.shared_prefix(parts)).dialect

    def early_error(self, target, status, message, code=None):
        """(status, body, headers) for a request refused before it reached a route."""
        try:
            path = urllib.parse.urlsplit(target).path
        except ValueError:
            path = "/"
        status, body = self.dialect_for(path).error(status, message, code)
        return status, body, retry_advice(status, {"Content-Type": "application/json"})

    def check_head(self, request):
        """The guard, on a request's head: what it refuses is refused before the body is read
        (a page could otherwise make the proxy take in 64 MB it then refuses). Returns where the
        request goes (find's answer), for handle()."""
        routing = self.find(request.method, route_path(request.path, self.roots) if request.path != "/" else "/")
        try:
            self.guard.check(request, routing[0])
        except ClientError as exc:
            raise HTTPError(exc.status, exc.message, request.target, exc.code) from None
        self.base_url_advice.note(request, routing[0])
        return routing

    async def handle(self, request, responder, routing):
        """Answer a request the guard let in; `routing` is check_head's (route, params or methods)."""
        path = route_path(request.path, self.roots) if request.path != "/" else "/"
        route, found = routing
        dialect = route.dialect if route else self.dialect_for(path)
        responder.record.update(route=route.template if route else "-",
                                dialect=dialect.name if route and route.calls_model else None)
        if self.config.dump_dir and (route is None or route.dumped):
            responder.dump = ExchangeDump(request, self.config.dump_dir)
        self.metrics.in_flight += 1
        try:
            await self.routed(request, responder, route, found, path, dialect)
        finally:
            self.metrics.in_flight -= 1

    async def routed(self, request, responder, route, found, path, dialect):
        try:  # the guard has let it in (check_head, before its body was read)
            if request.headers.get("origin") is not None:
                responder.headers.update({"Access-Control-Allow-Origin": request.headers.get("origin"),
                                          "Access-Control-Expose-Headers": "*", "Vary": "Origin"})
            if request.method == "OPTIONS" and found:
                return await preflight(request, responder, found)
            if route is None and found:
                allow = allowed_methods(found)
                return await self.send_error(responder, dialect, 405, "Method %s not allowed on %s (%s are)."
                                             % (request.method, path, ", ".join(allow)),
                                             headers={"Allow": ", ".join(allow)})
            if route is None:
                raise ClientError(not_found_message(request), 404)
            if route.forwarded and self.upstream.mode() == "apikey":
                return await self.forward_to_api(request, responder, route)
            await route.handler(request, responder, route.dialect, found)
        except ClientGone:
            raise
        except asyncio.CancelledError:
            if not responder.started and not responder.client_gone():
                refuse_while_shutting_down(responder, dialect)
            raise
        except Exception as exc:  # every failure becomes an answer in the client's dialect
            if responder.started:
                log.warning("%s %s failed mid-answer: %s", request.method, path, exc)
                note_failure(responder.record, exc)
                return
            await self.send_error(responder, dialect, **describe_failure(exc))

    async def send_error(self, responder, dialect, status, message, code=None, param=None, details=None,
                         headers=None):
        note_failure(responder.record, message, code)
        status, body = dialect.error(status, message, code, param, details)
        await responder.send_json(status, body, retry_advice(status, headers))

    async def request_options(self, request, dialect, body, counting=False, owner=None):
        """What a translator needs to know beyond the request body (the model
        itself is checked by the translator, which knows how to say so). For
        `counting` (an estimate made here), a catalog out of reach is no error; `owner`: the
        WebSocket whose own responses the request may continue."""
        requested = body.get("model")
        model, info = requested, None
        if isinstance(requested, str) and requested:
            try:
                model, info = await self.catalog.resolve(requested)
            except ClientError:
                raise
            except ProxyError:  # the catalog is out of reach (a login, the network, a lock)
                if not counting:
                    raise
        previous = body.get("previous_response_id")
        return RequestOptions(model, requested, info, chatgpt_mode=self.upstream.mode() == "chatgpt",
                              defaults=self.config.defaults(), session_id=dialect.session_id(request.headers),
                              history=self.responses.store.history(previous, owner),
                              history_size=self.responses.store.held(previous, owner),
                              started=as_object(REQUEST.get()).get("started") or time.monotonic())

    async def forward_to_api(self, request, responder, route):
        """API-key mode, where the public API serves a route itself: the request goes there, its answer
        comes back. A model call gets the server's defaults, not the client's query (it may hold a local key)."""
        keep_query = request.query and not route.calls_model
        path = route_path(request.path, self.roots)[len("/v1"):] + ("?" + request.query if keep_query else "")
        body = None
        if request.method == "POST":
            body, _ = await read_json(request, self.config.max_body_bytes)
            if responder.dump is not None:
                responder.dump.request_body = body
            if route.calls_model:
                body = route.dialect.server_defaults(body, self.config.defaults())
        await relay(responder, await self.upstream.open(request.method, path, body), route.dialect)

    # -- handlers: (request, responder, the route's dialect, the path's params)
    async def call_model(self, request, responder, dialect, params, read=None, translate=None, owner=None):
        """Translate a request to the Responses API, and its answer back. `read`: (body, its size)
        where the route's handler has read it; `translate`: the route's translator, else the dialect's;
        `owner`: the WebSocket it came on, whose own responses it may continue."""
        body, body_size = read or await read_json(request, self.config.max_body_bytes)
        if responder.dump is not None and responder.dump.request_body is None:
            responder.dump.request_body = body
        opts = await self.request_options(request, dialect, body, owner=owner)
        upstream_body, ctx = await off_loop(work_size(request, body_size, opts.history_size),
                                            translate or dialect.translate, body, opts)
        headers = upstream_headers(request, upstream_body, opts.session_id)
        responder.record.update(upstream_model=opts.model, stream=ctx.stream)
        log_model_choice(opts, body)
        if responder.dump is not None:
            responder.dump.upstream_request = upstream_body
        try:
            stream = await self.upstream.open("POST", "/responses", upstream_body, headers,
                                              drawing=draws(upstream_body))
        except UpstreamError as exc:
            raise explained(exc, ctx, self.catalog.cached_slugs())
        translator = dialect.stream(ctx)
        store_answer = self.responses.answer_storer(ctx, body_size + opts.history_size, owner)
        if ctx.stream:
            await stream_answer(responder, stream, dialect, translator, self.config.heartbeat_interval,
                                store_answer)
        else:
            events = await collect_answer(stream, translator, responder.dump)
            if translator.error:
                return await self.send_error(responder, dialect, **translator.error)
            answer = dialect.fold(events, ctx)
            if store_answer is not None and answer:
                store_answer(answer)
            await responder.send_json(200, answer, relayed_headers(stream))
        responder.record.update(tokens=translator.usage, images=translator.images)

    async def count_tokens(self, request, responder, dialect, params):
        await responder.send_json(200, {"input_tokens": await self.estimated_tokens(request, dialect)})

    async def estimated_tokens(self, request, dialect):
        """The input tokens of a request as it would go upstream, estimated here (the backend has no
        counting endpoint); no login needed."""
        body, _ = await read_json(request, self.config.max_body_bytes)
        opts = await self.request_options(request, dialect, body, counting=True)
        # In a thread at any size: counting costs ~0.1 ms per KB, a hundred times translating.
        return await in_thread(lambda: estimate_request_tokens(dialect.translate(body, opts)[0]))


class ImageEndpoints:
    """POST /v1/images/generations: n images, each one upstream call with the image tool, all sent at
    once; the answer has them in order. A stream relays each call's partial images and image in
    turn (the calls after the first wait in their upstream streams meanwhile)."""

    def __init__(self, app):
        self.app = app

    def routes(self, dialect):
        return [Route("POST", "/v1/images/generations", self.generate, dialect, calls_model=True, forwarded=True),
                Route("POST", "/v1/images/edits", self.edit, dialect, calls_model=True)]

    async def generate(self, request, responder, dialect, params):
        body, _ = await read_json(request, self.app.config.max_body_bytes)
        if responder.dump is not None:
            responder.dump.request_body = body
        check_image_request(body)
        await self.draw(request, responder, dialect, body, functools.partial(image_request_to_responses, body))

    async def edit(self, request, responder, dialect, params):
        """An images edit (multipart/form-data): its images, in order, go with the prompt; its mask
        to the tool."""
        body, images, mask = await off_loop(work_size(request), parse_image_edit, request,
                                            self.app.config.max_body_bytes)
        request.body = b""
        note_requested_model(body)
        if responder.dump is not None:
            responder.dump.request_body = dict(body, image=["(%d base64 characters)" % len(url) for url in images])
        check_image_request(body)
        await self.draw(request, responder, dialect, body,
                        functools.partial(image_request_to_responses, body, images=images, mask=mask))

    async def drawing_options(self, request, dialect, body):
        """RequestOptions for the chat model that draws: --image-model, else the catalog's default."""
        app = self.app
        model = app.config.image_model
        if not model:
            slugs = [entry.get("slug") for entry in await app.catalog.entries()]
            model = claude_default_model(None, app.upstream.mode(), slugs) or next(iter(slugs), None)
        if not model:
            raise ClientError("No model to draw with: the catalog lists none; set --image-model.", 503)
        model, info = await app.catalog.resolve(model)
        return RequestOptions(model, body.get("model") or "gpt-image-1", info,
                              chatgpt_mode=app.upstream.mode() == "chatgpt", defaults=app.config.defaults(),
                              session_id=dialect.session_id(request.headers))

    async def draw(self, request, responder, dialect, body, translate):
        """Draw body's n images, each from `translate(opts)`'s Responses request, and answer."""
        opts = await self.drawing_options(request, dialect, body)
        upstream_body, ctx = translate(opts)
        responder.record.update(upstream_model=opts.model, stream=ctx.stream)
        if responder.dump is not None:
            responder.dump.upstream_request = upstream_body
        headers = upstream_headers(request, upstream_body, opts.session_id)
        opened = await asyncio.gather(*(self.app.upstream.open("POST", "/responses", upstream_body, headers,
                                                               drawing=True) for _ in range(body.get("n") or 1)),
                                      return_exceptions=True)
        streams = [item for item in opened if not isinstance(item, BaseException)]
        failure = next((item for item in opened if isinstance(item, BaseException)), None)
        if failure is not None:
            for stream in streams:
                stream.close()
            raise explained(failure, ctx, self.app.catalog.cached_slugs()) \
                if isinstance(failure, UpstreamError) else failure
        calls = [(stream, dialect.stream(ctx)) for stream in streams]
        if ctx.stream:
            await stream_drawings(responder, calls, dialect, self.app.config.heartbeat_interval)
        else:
            await self.answer_drawings(responder, dialect, calls, ctx)
        responder.record.update(tokens=summed_usage([translator.usage for _, translator in calls]),
                                images=[size for _, translator in calls for size in translator.images])

    async def answer_drawings(self, responder, dialect, calls, ctx):
        """The drawn images in one JSON answer (nothing is written before it, however long they take)."""
        try:
            await asyncio.gather(*(collect_answer(stream, translator, responder.dump) for stream, translator in calls))
        finally:  # gather leaves the other calls running when one raises: none may go on drawing
            for stream, _ in calls:
                stream.close()
        failed = next((translator.error for _, translator in calls if translator.error), None)
        if failed is not None:
            return await self.app.send_error(responder, dialect, **failed)
        await responder.send_json(200, images_response([translator.final for _, translator in calls], ctx.created),
                                  relayed_headers(calls[0][0]))


def summed_usage(usages):
    """read_usage's figures of several answers, added up (None when none has any)."""
    usages = [usage for usage in usages if usage]
    return {key: sum(usage[key] for usage in usages) for key in usages[0]} if usages else None


async def stream_drawings(responder, calls, dialect, heartbeat_interval):
    """Images calls as one stream: each call's events in turn, keep-alives while the backend draws;
    a failure ends the stream with its error event, and the calls after it are closed."""
    await responder.start(200, "text/event-stream", relayed_headers(calls[0][0]))
    heartbeat = Heartbeat(responder, dialect.heartbeat, heartbeat_interval)
    try:
        for stream, translator in calls:
            batches = upstream_events(stream)
            try:
                async for events in batches:
                    if responder.dump is not None:
                        responder.dump.upstream_events.extend(events)
                    await responder.write(b"".join(dialect.encode(out) for event in events
                                                   for out in translator.feed(event)))
                    heartbeat.last = heartbeat.loop.time()
            finally:
                stream.close()
                await batches.aclose()
            await responder.write(b"".join(dialect.encode(out) for out in translator.finish()))
            if translator.error is not None:
                note_failure(responder.record, translator.error["message"], translator.error.get("code"))
                break
    finally:
        heartbeat.cancel()
        for stream, _ in calls:
            stream.close()
    await responder.end()


class OllamaEndpoints:
    """Ollama's API on the same port: /api/chat and /api/generate through the model (App.call_model,
    with this dialect's translators); the model list, show and ps from the catalog; a clear refusal
    for what a proxy of a remote plan cannot do (embeddings, pulling, creating, deleting models)."""

    def __init__(self, app):
        self.app = app

    def routes(self, dialect):
        return [Route("GET", "/api/version", self.version, dialect, open=True, dumped=False),
                Route("GET", "/api/tags", self.tags, dialect, dumped=False),
                Route("GET", "/api/ps", self.running, dialect, dumped=False),
                Route("POST", "/api/show", self.show, dialect, dumped=False),
                Route("POST", "/api/chat", functools.partial(self.call, "messages", ollama_chat_to_responses),
                      dialect, calls_model=True),
                Route("POST", "/api/generate", functools.partial(self.call, "prompt", ollama_generate_to_responses),
                      dialect, calls_model=True),
                ] + [Route(method, path, functools.partial(self.refuse, why), dialect)
                     for method, path, why in OLLAMA_REFUSED]

    def modified_at(self):
        return utc_stamp(self.app.started)  # when this proxy began serving the catalog's models

    async def version(self, request, responder, dialect, params):
        await responder.send_json(200, {"version": OLLAMA_VERSION})

    async def tags(self, request, responder, dialect, params):
        entries = await self.app.catalog.entries()
        await responder.send_json(200, {"models": [ollama_model(entry, self.modified_at()) for entry in entries]})

    async def running(self, request, responder, dialect, params):
        await responder.send_json(200, {"models": []})  # nothing is loaded here: the backend runs the models

    async def show(self, request, responder, dialect, params):
        body, _ = await read_json(request, self.app.config.max_body_bytes)
        check_fields(body, {"model": str, "name": str, "verbose": bool})
        entry = await self.catalog_entry(body.get("model") or body.get("name"), required=True)  # older clients: name
        await responder.send_json(200, ollama_show(entry, self.modified_at()))

    async def catalog_entry(self, name, required=False):
        """The catalog entry of a model name (with or without :latest); a 404 naming the available ones
        for a name the catalog lacks (unless, not `required`, there is no catalog to tell)."""
        if not isinstance(name, str) or not name:
            raise ClientError("model is required", param="model")
        model, entry = await self.app.catalog.resolve(name)
        available = self.app.catalog.cached_slugs()
        if entry is None and (required or available):
            raise ClientError("model '%s' not found; the models of this account are: %s." % (
                name, ", ".join(available) or "(none: the catalog is out of reach)"), 404, param="model",
                code="model_not_found")
        return entry

    async def call(self, conversation, translate, request, responder, dialect, params):
        """/api/chat (`conversation`: messages) or /api/generate (prompt). An empty one is a client
        loading the model: answered done, with nothing sent upstream."""
        body, body_size = await read_json(request, self.app.config.max_body_bytes)
        check_fields(body, {"model": str, "stream": bool, conversation: list if conversation == "messages" else str})
        await self.catalog_entry(body.get("model"))
        if body.get(conversation):
            return await self.app.call_model(request, responder, dialect, params, (body, body_size), translate)
        answer = ollama_load_answer(body["model"], chat=conversation == "messages")
        if body.get("stream") is False:
            return await responder.send_json(200, answer)
        await responder.send(200, dialect.encode(answer), dialect.stream_type)

    async def refuse(self, why, request, responder, dialect, params):
        raise ClientError(why, 501, code="not_implemented")


INDEX_PAGE = """codex-proxy {version}: your Codex login (a ChatGPT plan) for OpenAI, Anthropic and Ollama tools.

Endpoints
  POST {url}/v1/chat/completions   OpenAI Chat Completions
  POST {url}/v1/responses          OpenAI Responses (also /compact, /input_tokens; GET and DELETE /{id};
                                   GET with Upgrade: websocket, its WebSocket mode)
  GET  {url}/v1/models             the models of your plan
  POST {url}/v1/messages           Anthropic Messages (and /v1/messages/count_tokens)
  POST {url}/v1/images/generations images drawn on your plan
  POST {url}/api/chat              Ollama (also /api/generate, /api/tags, /api/show, /api/ps, /api/version)
  GET  {url}/health                alive, with which login and plan
  GET  {url}/metrics               Prometheus metrics

Use it
  Claude Code:  ANTHROPIC_BASE_URL={url} ANTHROPIC_AUTH_TOKEN=unused claude
  OpenAI SDKs:  OPENAI_BASE_URL={url}/v1 OPENAI_API_KEY=unused
  Ollama:       OLLAMA_HOST={url}
  Codex CLI:    python3 codex_proxy.py codex  (or, in its config file, a [model_providers.codex-proxy]
                with base_url = "{url}/v1", wire_api = "responses" and supports_websockets = true)
  (Where the proxy runs with --api-key, that key goes where these say unused.)
"""


def not_found_message(request):
    """A 404 that says what to change in the client."""
    return "No route for %s %s." % (request.method, request.path) + (
        " The proxy serves /v1/chat/completions, /v1/responses, /v1/models, /v1/messages, /v1/messages/count_tokens, "
        "/v1/images/generations and Ollama's /api/chat, /api/generate, /api/tags and /api/show (GET / lists them).")


class Pages:
    """What the proxy says about itself: GET / (what this is), /health, /metrics,
    and the model catalog (/v1/models)."""

    def __init__(self, app):
        self.app = app

    def routes(self, dialect):
        return [Route("GET", "/", self.index, dialect, open=True, dumped=False),
                Route("GET", "/health", self.health, dialect, open=True, dumped=False),
                Route("GET", "/metrics", self.metrics, dialect, dumped=False),
                Route("GET", "/v1/models", self.models, dialect, dumped=False),
                Route("GET", "/v1/models/{model*}", self.model, dialect, dumped=False)]

    async def index(self, request, responder, dialect, params):
        url = "http://%s" % (request.headers.get("host") or "127.0.0.1:%d" % self.app.config.port)
        await responder.send(200, INDEX_PAGE.replace("{url}", url).replace("{version}", __version__).encode(),
                             "text/plain; charset=utf-8")

    async def health(self, request, responder, dialect, params):
        """Alive; to whoever may use the proxy (the local key lets in) also with which logins and plan."""
        app = self.app
        status = {"status": "ok", "version": __version__, "uptime_seconds": round(wall_clock() - app.started, 3)}
        mode = app.upstream.mode()
        status["logins"] = [] if mode == "apikey" else app.upstream.logins.status(key_presented(request, app.config.api_key))
        if key_presented(request, app.config.api_key):
            status.update(auth={"mode": mode, "file": app.upstream.auth_store.path}, usage=app.upstream.usage.windows,
                          streams=app.upstream.streams())
        await responder.send_json(200, status)

    async def metrics(self, request, responder, dialect, params):
        await responder.send(200, self.app.metrics.render(self.app.upstream).encode("utf-8"),
                             "text/plain; version=0.0.4; charset=utf-8")

    async def models(self, request, responder, dialect, params):
        if "client_version" in urllib.parse.parse_qs(request.query, keep_blank_values=True):  # the Codex CLI's own catalog
            return await responder.send_json(200, await self.app.catalog.for_codex())
        entries = await self.app.catalog.entries()
        if "anthropic-version" in request.headers:  # the Anthropic SDK's models.list()
            data = [{"type": "model", "id": m["slug"], "display_name": m.get("display_name") or m["slug"],
                     "created_at": "1970-01-01T00:00:00Z"} for m in entries]
            return await responder.send_json(200, {"data": data, "has_more": False,
                                                   "first_id": data[0]["id"] if data else None,
                                                   "last_id": data[-1]["id"] if data else None})
        await responder.send_json(200, {"object": "list", "data": [model_object(m) for m in entries]})

    async def model(self, request, responder, dialect, params):
        slug = urllib.parse.unquote(params["model"])
        entry = await self.app.catalog.entry(slug)
        if entry is None:
            raise ClientError("The model '%s' does not exist in this account's catalog." % slug, 404,
                              param="model", code="model_not_found")
        await responder.send_json(200, model_object(entry))


def allowed_methods(methods):
    """A path's Allow list: its routes' methods, HEAD wherever GET is, and OPTIONS."""
    return sorted(set(methods) | ({"HEAD"} if "GET" in methods else set()) | {"OPTIONS"})


async def preflight(request, responder, methods):
    """An OPTIONS request: the methods a path takes and, for an allowed origin (the guard has let it
    in), what its page may send."""
    headers = {"Allow": ", ".join(allowed_methods(methods))}
    if request.headers.get("origin") is not None:
        asked = request.headers.get("access-control-request-headers") or ""
        headers.update({"Access-Control-Allow-Methods": headers["Allow"],
                        "Access-Control-Allow-Headers": ", ".join(re.findall(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+",
                                                                              asked)) or None,
                        "Access-Control-Max-Age": "600", "Vary": "Origin, Access-Control-Request-Headers"})
        if (request.headers.get("access-control-request-private-network") or "").lower() == "true":
            headers["Access-Control-Allow-Private-Network"] = "true"  # Chrome's Private Network Access
    await responder.send(204, b"", headers=headers)


def model_object(entry):
    """A catalog entry as an OpenAI model object."""
    if "object" in entry:  # API-key mode: the API's own object
        return {k: v for k, v in entry.items() if k != "slug"}
    return {"id": entry["slug"], "object": "model", "created": 0, "owned_by": "openai",
            "display_name": entry.get("display_name") or entry["slug"]}


# ---- command line and main() -------------------------------------------------

COMMANDS = (  # every command, with what it does: for the help, and for a word that is none of them
    ("login", "log in to ChatGPT and write auth.json, as `codex login` does"),
    ("logout", "remove the ChatGPT login from auth.json"),
    ("doctor", "check the setup step by step, with the fix for what fails"),
    ("usage", "show the plan's 5-hour and weekly usage windows"),
    ("claude", "run Claude Code on the proxy (started for it, unless one is running)"),
    ("codex", "run the Codex CLI on the proxy (started for it, unless one is running)"),
    ("config", "print the settings as a config file for --config (config --print)"),
    ("install-service", "run the proxy in the background at login (a systemd or launchd service)"),
)


def command_list():
    return ["  %-15s %s" % command for command in COMMANDS]


class CommandLineParser(argparse.ArgumentParser):
    """argparse, but a refusal is one line and where to read more (exit status 2, as argparse's), not
    the usage block; a flag that is none of the parser's is told the nearest one, and for the
    server's parser (`takes_commands`) a word that is no command the nearest command and the list."""

    def __init__(self, command=None, takes_commands=False, **kwargs):
        argparse.ArgumentParser.__init__(self, prog="codex_proxy.py" + (" " + command if command else ""),
                                         **kwargs)
        self.takes_commands = takes_commands

    def parse_args(self, args=None, namespace=None):
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            self.error(self.not_taken(extra[0]))
        return parsed

    def not_taken(self, word):
        """Why `word` is refused, with the flag or command nearest to what was meant."""
        if word.startswith("-"):
            flag = word.split("=", 1)[0]
            if any(flag in setting.flags for setting in SETTINGS):
                return "%s is the server's flag, not one of this command's" % flag
            flags = [name for action in self._actions for name in action.option_strings if name.startswith("--")]
            nearest = difflib.get_close_matches(flag, flags, 1)
            return "no flag %s%s" % (flag, "; did you mean %s?" % nearest[0] if nearest else "")
        if not self.takes_commands:
            return "takes no argument %r" % word
        if word in dict(COMMANDS):  # after server flags: only claude and codex take those first
            return "the %s command's flags go after it: codex_proxy.py %s [FLAGS]" % (word, word)
        nearest = difflib.get_close_matches(word, [name for name, _ in COMMANDS], 1)
        return "\n".join(["no command %r%s" % (word, "; did you mean %r?" % nearest[0] if nearest else ""),
                          "The commands:"] + command_list())

    def error(self, message):
        if message.endswith(": expected one argument"):  # argparse's words for a flag without its value
            message = message[:-len(": expected one argument")] + " needs a value"
        message = re.sub(r"^argument (\S+?)(/\S+)?:? ", r"\1 ", message)  # argparse's "argument --x: ..."
        self.exit(2, "%s: %s\nSee `python3 %s --help`.\n" % (self.prog, message, self.prog))


def build_arg_parser():
    parser = CommandLineParser(
        takes_commands=True, formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="codex_proxy.py [FLAGS]             serve clients on your Codex login (the flags below)\n"
              "       codex_proxy.py COMMAND [FLAGS]     run a command (see COMMAND --help)",
        description="Serve OpenAI- and Anthropic-compatible clients (Claude Code, Codex CLI, the OpenAI and\n"
                    "Anthropic SDKs, aider, Continue...) on your Codex login.\n\n"
                    "Credentials: the ChatGPT login in $CODEX_HOME/auth.json (default ~/.codex/auth.json),\n"
                    "else an API key (--auth). To log in there, run `python3 codex_proxy.py login` or `codex login`.\n"
                    "Every flag can also be set as an environment variable CODEX_PROXY_<FLAG>, e.g.\n"
                    "CODEX_PROXY_PORT=9000 or CODEX_PROXY_FAST=1; both are checked before the proxy starts\n"
                    "(and a CODEX_PROXY_ variable that is no setting is warned of).\n\n"
                    "Commands (each has --help):\n" + "\n".join(command_list()),
        epilog="Endpoints: /v1/chat/completions, /v1/responses, /v1/models (OpenAI), /v1/messages,\n"
               "/v1/messages/count_tokens (Anthropic), /health, /metrics. Example:\n"
               "  python3 codex_proxy.py --port 8765\n"
               "  ANTHROPIC_BASE_URL=http://127.0.0.1:8765 ANTHROPIC_AUTH_TOKEN=unused claude\n"
               "  python3 codex_proxy.py claude      the same, in one command\n\n"
               "claude and codex: every word after the client's name is the client's; flags before it, the\n"
               "server's. Each uses the codex-proxy running on --host/--port, else starts one for the run.")
    parser.add_argument("--version", action="version", version="codex-proxy %s" % __version__)
    add_settings(parser)
    return parser


def add_settings(parser, names=None):
    """A flag for each setting of SETTINGS (or of those `names`), on a parser or an argument group."""
    for setting in SETTINGS:
        if names is not None and setting.name not in names:
            continue
        if setting.switch:
            parser.add_argument(*setting.flags, dest=setting.name, action="store_const", const="1",
                                help=setting.help)
        else:
            parser.add_argument(*setting.flags, dest=setting.name, metavar=setting.metavar,
                                action="append" if setting.repeat else "store", help=setting.help)


class SettingRefused(ValueError):
    """A setting that cannot be had: a value its check refuses (from a flag, the config file or a
    variable), or a config file that cannot be used. Its text is one line naming where it came from."""


def read_settings(parser, args):
    """The value of every setting that the parser has a flag for (settings_texts), each checked the
    same way; a bad one a usage error naming where it came from."""
    try:
        return settings_values(settings_texts(args))
    except SettingRefused as exc:
        parser.error(str(exc))


def settings_texts(args):
    """{setting name: (its text, a list of them for a repeatable one; where it came from)} for each
    setting the parsed `args` have a flag for, and something sets: its flag, else --config's file,
    else its variable; else it is not there (the Config's default). A flag, even a repeatable one's,
    replaces the file's value and the variable's."""
    path = config_file_path(args)
    in_file = config_file_texts(path) if path else {}
    texts = {}
    for setting in SETTINGS:
        if not hasattr(args, setting.name):
            continue  # a command that does not take it
        given, source = getattr(args, setting.name), setting.flags[0]
        if given is None and setting.name in in_file:
            given, source = in_file[setting.name]
        if given is None:
            variable = next((name for name in setting.variables if from_environment(name)), None)
            if variable is None:
                continue
            given, source = from_environment(variable), "%s (%s)" % (variable, setting.flags[0])
            if variable in setting.whole_variables:
                given = [WholeText(given)]
            elif setting.repeat:
                given = [item.strip() for item in given.split(",") if item.strip()]
        texts[setting.name] = given, source
    return texts


def config_file_path(args):
    """The config file of a command line that takes --config: the flag's, else CODEX_PROXY_CONFIG's."""
    path = hasattr(args, CONFIG_FILE.name) and (getattr(args, CONFIG_FILE.name) or
                                                from_environment(*CONFIG_FILE.variables))
    return os.path.expanduser(path) if path else None


def settings_values(texts):
    """{setting name: its value} of settings_texts's texts; SettingRefused for one its check refuses."""
    values = {}
    for setting in SETTINGS:
        if setting.name in texts:
            given, source = texts[setting.name]
            try:
                values[setting.name] = setting.value(given)
            except ValueError as exc:
                raise SettingRefused("%s %s" % (source, exc)) from None
    return values


def config_file_texts(path):
    """{setting name: (its text(s), as its flag would give them; "FILE: KEY")} of a config file: a
    JSON object whose keys are the settings' long flags (Setting.file_keys). SettingRefused, naming
    the file (and the key), for a file that cannot be read, is no JSON object, or has a key that is
    no setting's."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except OSError as exc:
        raise SettingRefused("cannot read the config file %s: %s" % (path, exc.strerror or exc)) from None
    except (ValueError, RecursionError) as exc:
        raise SettingRefused("the config file %s is not JSON: %s" % (path, exc)) from None
    if not isinstance(data, dict):
        raise SettingRefused("the config file %s must hold a JSON object ({\"port\": 9000, ...}), not %s"
                             % (path, json_type_name(data)))
    by_key = {key: setting for setting in SETTINGS if setting is not CONFIG_FILE for key in setting.file_keys()}
    texts = {}
    for key, value in data.items():
        where = "%s: %s" % (path, key)
        setting = by_key.get(key)
        if key in CONFIG_FILE.file_keys():
            raise SettingRefused("%s: a config file cannot name another (--config or CODEX_PROXY_CONFIG does)"
                                 % where)
        if setting is None:
            nearest = difflib.get_close_matches(key, list(by_key), 1)
            raise SettingRefused("%s is no setting%s" % (where, "; did you mean %s?" % nearest[0] if nearest else ""))
        if setting.name in texts:
            raise SettingRefused("%s sets what %s does" % (where, texts[setting.name][1]))
        if value is not None:  # null: as if it were not there
            texts[setting.name] = file_value_text(setting, value, where), where
    return texts


def file_value_text(setting, value, where):
    """A config file's value as its flag's text: a string, number or true/false; for a repeatable
    setting, a list of those or an object of NAME: VALUE (api_key's NAME=KEY, model_map's
    PATTERN=MODEL), its names checked to be read back as they were given."""
    if not setting.repeat:
        return scalar_text(value, where)
    if isinstance(value, dict):
        texts = ["%s=%s" % (name, scalar_text(item, where)) for name, item in value.items()]
        for name, text in zip(value, texts):
            try:
                parsed = setting.parse(text)
            except ValueError:
                continue  # said by settings_values, as for a flag
            if isinstance(parsed, tuple) and parsed[0] != name:
                raise SettingRefused("%s: %r cannot be a name here (letters, digits, . _ and -)" % (where, name))
        return texts
    return [scalar_text(item, where) for item in (value if isinstance(value, list) else [value])]


def scalar_text(value, where):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    raise SettingRefused("%s must be a string, a number or true/false, not %s" % (where, json_type_name(value)))


def config_from_args(argv=None):
    return parse_command_line(build_arg_parser(), argv)[0]


def parse_command_line(parser, argv=None):
    """(the Config that the flags and the environment describe, the parsed arguments): for the
    server's parser, or a command's, which has some of the settings and flags of its own."""
    args = parser.parse_args(argv)
    return Config(**read_settings(parser, args)), args


OTHER_VARIABLES = {  # CODEX_PROXY_ variables that are no setting, and what reads them: none is warned of
    "CODEX_PROXY_ISSUER": "login: the auth server, replaced in tests",
    "CODEX_PROXY_REQUIRE_OPTIONAL": "tests: the optional tests fail rather than skip",
    "CODEX_PROXY_CLIENTS_DIR": "tests: where the real Claude Code and Codex CLI are installed",
    "CODEX_PROXY_CHROMIUM": "tests: the Chromium of the browser tests",
    "CODEX_PROXY_FUZZ_SEED": "tests: the fuzz test's seed",
    "CODEX_PROXY_FUZZ_FULL": "tests: every fuzz case, not a sample",
    "CODEX_PROXY_FUZZ_REPORT": "tests: the file of the fuzz test's report",
}


def unknown_variable_warnings(environment):
    """A line for each CODEX_PROXY_ variable that is no setting (a misspelt one would be ignored
    silently), with the nearest setting's."""
    prefix = "CODEX_PROXY_"
    flags = {variable: setting.flags[0] for setting in SETTINGS for variable in setting.variables}
    known = [name for name in list(flags) + list(OTHER_VARIABLES) if name.startswith(prefix)]
    lines = []
    for name in sorted(environment):
        if name.startswith(prefix) and name not in known:  # likeness of what follows the prefix that all share
            nearest = [prefix + near for near in difflib.get_close_matches(
                name[len(prefix):], [known_name[len(prefix):] for known_name in known], 1)]
            lines.append("%s is not a setting (ignored)%s" % (name, "; did you mean %s%s?" % (
                nearest[0], " (%s)" % flags[nearest[0]] if nearest[0] in flags else "") if nearest else ""))
    return lines


def ca_bundle_problem(config):
    """What is wrong with the CA bundle named in the environment, or None: said at start, or it would be
    a confusing failure at the first call."""
    if config.ca_file and not os.access(config.ca_file, os.R_OK):
        return "cannot use the CA bundle %s (from SSL_CERT_FILE or REQUESTS_CA_BUNDLE): no such readable file" \
            % config.ca_file
    return None


def build_login_parser(command):
    """The flags of `login` or `logout` (the server's are build_arg_parser's)."""
    if command == "logout":
        parser = CommandLineParser(
            "logout", description="Remove the ChatGPT login from auth.json (the file goes: "
            "nothing stays behind that a later login, or the proxy, would trip on), saying whose it was.")
    else:
        parser = CommandLineParser(
            "login", formatter_class=argparse.RawDescriptionHelpFormatter,
            description="Log in to ChatGPT and write auth.json as `codex login` does (the Codex CLI can use it "
                        "too),\nfor machines without the Codex CLI. By default with a device code: it prints a "
                        "page and a\ncode to enter there in any browser, on any machine (works over SSH).",
            epilog="Each machine needs its own login: a refresh token is spent by its first use, so an\n"
                   "auth.json copied from another machine breaks as soon as either one refreshes.\n"
                   "Testing aid: CODEX_PROXY_ISSUER=URL replaces %s (a fake auth server)." % ISSUER)
        parser.add_argument("--browser", action="store_true",
                            help="log in with a browser on this machine instead (it comes back to "
                                 "http://localhost:%d; opened for you where there is a display)"
                                 % LOGIN_CALLBACK_PORT)
        add_settings(parser, ("proxy",))  # to the auth server, checked as the server's is
        parser.add_argument("--callback-port", type=int, default=LOGIN_CALLBACK_PORT, help=argparse.SUPPRESS)
        parser.add_argument("--give-up-after", type=float, default=LOGIN_GIVE_UP_AFTER, help=argparse.SUPPRESS)
    parser.add_argument("--codex-home", metavar="DIR", default=default_codex_home(),
                        help="the folder of auth.json (default $CODEX_HOME, else ~/.codex)")
    return parser


def login_command(argv):
    """`python3 codex_proxy.py login`: a new login in --codex-home; exit status 0, 1 failed, 130 cancelled."""
    parser = build_login_parser("login")
    args = parser.parse_args(argv)
    config = Config(codex_home=os.path.expanduser(args.codex_home), **read_settings(parser, args))
    problem = ca_bundle_problem(config)
    if problem:
        print("codex_proxy.py login: %s" % problem, file=sys.stderr)
        return 1
    login = Login(config, from_environment("CODEX_PROXY_ISSUER") or ISSUER)
    try:
        if args.browser:
            tokens = login.with_browser(args.callback_port, args.give_up_after)
        else:
            tokens = login.with_device_code(args.give_up_after)
    except KeyboardInterrupt:
        print("\nLogin cancelled; nothing was written.", file=sys.stderr)
        return 130
    except (LoginFailed, UpstreamUnavailable) as exc:
        print("codex_proxy.py login: %s" % exc, file=sys.stderr)
        return 1
    finally:
        login.pool.discard_idle()
    before = AuthStore(config, None).identity()
    try:
        identity = save_login(config.codex_home, tokens)
    except (OSError, LockTimeout) as exc:
        print("codex_proxy.py login: cannot write %s: %s" % (config.auth_path, exc), file=sys.stderr)
        return 1
    replaced = " (in place of %s)" % before["email"] if before and before["email"] != identity["email"] else ""
    print("Logged in as %s, %s plan%s: %s now holds the login, for this proxy and the Codex CLI alike." % (
        identity["email"] or "(no email in the id token)", identity["plan"] or "unknown", replaced,
        config.auth_path), flush=True)
    return 0


def logout_command(argv):
    """`python3 codex_proxy.py logout`: remove --codex-home's auth.json, after saying whose login it held."""
    args = build_login_parser("logout").parse_args(argv)
    store = AuthStore(Config(codex_home=os.path.expanduser(args.codex_home)), None)
    if not os.path.lexists(store.path):
        print("No login in %s: nothing to do." % store.home)
        return 0
    identity = store.identity()
    try:
        with FileLock(store.path + ".lock"):  # not in the middle of a running proxy's refresh
            os.remove(store.path)
    except (OSError, LockTimeout) as exc:
        print("codex_proxy.py logout: cannot remove %s: %s" % (store.path, exc), file=sys.stderr)
        return 1
    who = "%s (%s plan)" % (identity["email"] or "an account without email", identity["plan"] or "unknown") \
        if identity else "a login without ChatGPT tokens"
    print("Logged out %s: removed %s." % (who, store.path))
    return 0


LOGIN_COMMANDS = {"login": login_command, "logout": logout_command}


async def start_proxy(config):
    """Start listening; returns the running ProxyServer (its .app, .url, .port)."""
    app = App(config)
    app.upstream.logins.watch()
    return await ProxyServer(app, config).start()


def install_stop_signals(loop, stop, hurry):
    """SIGINT (Ctrl-C) and SIGTERM start a graceful shutdown, a second one
    hurries it; also where the loop cannot watch signals itself (Windows)."""
    def on_signal(*_):
        (hurry if stop.is_set() else stop).set()
    for name in ("SIGINT", "SIGTERM"):
        number = getattr(signal, name, None)
        if number is None:
            continue
        try:
            loop.add_signal_handler(number, on_signal)
        except (NotImplementedError, RuntimeError, ValueError):
            signal.signal(number, lambda *_: loop.call_soon_threadsafe(on_signal))


class SettingsReload:
    """--config's file re-read in the running proxy, with the command line and environment it
    started with: on SIGHUP, or where there is none (Windows) when the file's modification time
    changes. What changed is set on the running Config between two steps of the event loop, each
    field given a new value (none changed in place): a request takes its model, defaults and login
    when it starts, so one in flight ends on those. A file that cannot be used changes nothing;
    the listening host and port, and a few more (Setting.reloads), need a restart."""

    POLL_SECONDS = 3.0

    def __init__(self, app, args):
        self.app, self.args = app, args

    def install(self, loop):
        """SIGHUP re-reads the file; without SIGHUP, the task that watches the file (else None). With
        no file, SIGHUP keeps its usual meaning (a closed terminal ends the proxy)."""
        if not config_file_path(self.args):
            return None
        try:
            loop.add_signal_handler(signal.SIGHUP, self.reload)
            return None
        except (AttributeError, NotImplementedError, RuntimeError):
            return asyncio.ensure_future(self.poll(self.POLL_SECONDS))

    async def poll(self, interval):
        def signature():
            try:
                return file_signature(config_file_path(self.args))
            except OSError:  # (gone for a moment, while an editor replaces it)
                return None
        seen = signature()
        while True:
            await asyncio.sleep(interval)
            now = signature()
            if now != seen and now is not None:
                seen = now
                self.reload()

    def reload(self):
        path = config_file_path(self.args)  # (there is one: install() watches nothing without it)
        try:
            new = Config(**settings_values(settings_texts(self.args)))
        except SettingRefused as exc:
            return log.error("the settings stay as they were: %s", exc)
        config = self.app.config
        if not is_loopback(config.host) and not new.api_key:
            return log.error("the settings stay as they were: %s leaves no --api-key, and the proxy listens on "
                             "%s, where anyone who can reach it would use your Codex login", path, config.host)
        changed = [setting for setting in SETTINGS if getattr(new, setting.name) != getattr(config, setting.name)]
        later = [setting.flags[0] for setting in changed if not setting.reloads]
        applied = [setting for setting in changed if setting.reloads]
        for setting in applied:  # (a Config built anew holds no half-changed value: fast filled in)
            setattr(config, setting.name, getattr(new, setting.name))
        config.codex_home = config.codex_homes[0]  # (derived, as Config makes it)
        apply_reloaded(self.app, {setting.name for setting in applied})
        log.info("re-read %s: %s", path, "changed " + ", ".join(setting.flags[0] for setting in applied)
                 if applied else "no change to apply")
        if later:
            log.warning("%s changed in %s: kept as it was until a restart (the proxy listens where it did)",
                        ", ".join(later), path)


def apply_reloaded(app, names):
    """What a reload changed beyond the Config's fields, for those read once: the logins, the guard's
    hosts and origins, the log level."""
    if "codex_homes" in names:
        app.upstream.use_logins(app.config)
    if names & {"allowed_hosts", "allow_origins"}:
        app.guard = Guard(app.config)
    if "log_level" in names:
        logging.getLogger().setLevel(getattr(logging, app.config.log_level.upper()))


class JsonLogFormatter(logging.Formatter):
    """--log-format json: one JSON object per line; a request's line carries its fields."""

    def format(self, record):
        line = {"time": datetime.datetime.fromtimestamp(record.created).isoformat(timespec="milliseconds"),
                "level": record.levelname.lower()}
        fields = getattr(record, "fields", None)
        if fields:
            line.update(fields)
        else:
            line["message"] = record.getMessage()
            if getattr(record, "request_id", None):
                line["request_id"] = record.request_id
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def set_up_logging(config, handler=None):
    handler = handler or logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter() if config.log_format == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(getattr(logging, config.log_level.upper()))


def usable_url(server):
    """The URL a client on this machine uses (not http://0.0.0.0:PORT)."""
    return local_url(server.config.host, server.port)


def local_url(host, port):
    """The URL a client on this machine uses for a server listening on host:port."""
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
    return "http://%s:%d" % ("[%s]" % host if ":" in host else host, port)


def login_line(upstream, config):
    """Which credentials serve the requests: mode, account, plan, token expiry; never a token. Only
    what the files say: whether the login still works, the first call upstream tells (LoginWatch)."""
    auth_store = upstream.auth_store
    if upstream.mode() == "apikey" or upstream.logins.several:
        return upstream.logins.describe()
    identity = auth_store.identity()
    if identity is None:
        return "NO LOGIN: %s" % auth_store.problem()
    line = "ChatGPT %s" % login_summary(auth_store)
    if identity.get("expires"):
        line += "; access token %s" % token_lifetime(identity["expires"], None)
    if config.openai_api_key and config.auth == "auto":
        line += "\n  note:   OPENAI_API_KEY is set but not used: the ChatGPT login is (--auth apikey bills the API)"
    return line


def announces_plan(upstream):
    """Whether the start lines go on with what the backend says of the plan (announce_plan)."""
    return upstream.mode() == "chatgpt" and upstream.auth_store.identity() is not None


def models_by_default(config, mode):
    """Where claude-* names go, as said without the catalog (API-key mode, no login yet)."""
    if mode == "apikey":
        return "claude-* names go to %s, *haiku* ones to a small model the API lists" % (
            config.default_model or "the newest gpt-N model the API lists")
    return "claude-* names go to %s, *haiku* ones to a small model of the plan" % (
        config.default_model or "the plan's first model")


def start_banner(server, config):
    """The start lines: where, with which login (and a warning for an auth.json others can read),
    and what to paste into each client."""
    url = usable_url(server)
    token = "<your --api-key>" if config.api_key else "unused"
    upstream = server.app.upstream
    lines = ["codex-proxy %s listening on %s%s" % (__version__, url, " (all addresses)" if url != server.url else ""),
             "  login:  " + login_line(upstream, config)]
    lines += ["  warning: " + with_fix(*exposure) for exposure in
              (auth_file_exposure(store.path) for store in upstream.logins.stores) if exposure]
    if not announces_plan(upstream):  # else announce_plan's models line names the catalog's models
        lines.append("  models: " + models_by_default(config, upstream.mode()))
    return lines + [
        "  Claude Code:  ANTHROPIC_BASE_URL=%s ANTHROPIC_AUTH_TOKEN=%s claude" % (url, token),
        "  OpenAI SDKs:  OPENAI_BASE_URL=%s/v1 OPENAI_API_KEY=%s" % (url, token),
        "  Codex CLI:    " + launcher_command(config, server.port, "codex")]


async def announce_plan(server):
    """After the start lines, what only the backend knows, each asked on its own (one failing hides
    nothing of the other): the models claude-* names reach, and the plan's usage windows."""
    app = server.app
    config = app.config
    try:
        slugs = [m.get("slug") for m in await app.catalog.entries()]
        lines, failed = ["  models: %s; claude-* -> %s, claude-*haiku* -> %s" % (
            ", ".join(slugs), resolve_model("claude", slugs, config.model_map, config.default_model),
            resolve_model("claude-haiku", slugs, config.model_map, config.default_model))], None
    except ProxyError as exc:
        lines, failed = ["  models: not listed (%s)" % plan_failure(app.upstream, exc)], exc
    if app.upstream.logins.several:
        failures = await fetch_each_login_usage(app.upstream)
        lines += ["  usage:  " + line for line in login_usage_lines(app.upstream.logins, failures)]
    elif not isinstance(failed, AuthError):  # (the login would fail the usage call the same way)
        try:
            lines += ["  usage:  " + line for line in (await app.upstream.fetch_usage()).lines()]
        except ProxyError as exc:
            lines.append("  usage:  not known (%s)" % failure_text(exc))
    print("\n".join(lines), file=sys.stderr, flush=True)


def plan_failure(upstream, exc):
    """Why the backend could not be asked, for the start lines: once only (a login that stopped
    working has been logged, with its fix, by its LoginWatch)."""
    said = upstream.auth_store.watch.said
    if isinstance(exc, AuthError) and said and str(exc) in said:
        return "no working login: see the warning above"
    return with_fix(failure_text(exc), exc.fix)


def give_back_memory():
    """Return to the operating system the memory compiling and importing left
    free (glibc keeps freed memory otherwise: about a third of an idle proxy)."""
    if not sys.platform.startswith("linux"):
        return  # glibc's malloc_trim; CDLL(None) even raises TypeError on Windows
    try:
        import ctypes
        ctypes.CDLL(None).malloc_trim(0)
    except (ImportError, OSError, AttributeError):  # not glibc: nothing to do
        pass


class CannotListen(ProxyError):
    """The server's socket cannot be opened (the port is taken, the address is not this machine's)."""

    code = "cannot_listen"


PROBE_SECONDS = 1.0  # how long a codex-proxy on a taken port has to answer /health


def codex_proxy_health(host, port, key=None, timeout=PROBE_SECONDS):
    """What the codex-proxy listening on host:port says at /health (with the local key, also its
    auth), or None where none answers there."""
    status, server, health = local_get(local_url(host, port) + "/health", key, timeout)
    health = as_object(health)
    if status == 200 and server.startswith("codex-proxy/") and health.get("status") == "ok" and "version" in health:
        return health
    return None


def listening_sockets(port):
    """[(socket inode, owner's uid)] of the TCP sockets listening on this port, as /proc/net/tcp{,6}
    tell (Linux); None where no such table can be read."""
    found, readable = [], False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as handle:
                rows = [row.split() for row in handle.read().splitlines()[1:]]
        except OSError:
            continue
        readable = True
        found += [(row[9], int(row[7])) for row in rows
                  if len(row) > 9 and row[3] == "0A" and int(row[1].rsplit(":", 1)[1], 16) == port]
    return found if readable else None


def port_holder(port):
    """'process PID (NAME)' that listens on this TCP port, where /proc tells (Linux, and only for
    processes this user may look into), else None. Its name only: a command line may hold a key."""
    sockets = {"socket:[%s]" % inode for inode, _ in listening_sockets(port) or ()}
    if not sockets:
        return None
    for pid in sorted(name for name in os.listdir("/proc") if name.isdigit()):
        try:
            if any(os.readlink("/proc/%s/fd/%s" % (pid, fd)) in sockets for fd in os.listdir("/proc/%s/fd" % pid)):
                with open("/proc/%s/comm" % pid) as handle:
                    return "process %s (%s)" % (pid, handle.read().strip())
        except OSError:  # gone, or not ours to look into
            continue
    return None


def free_port_after(host, port, tries=20):
    """The first port after `port` that can be listened on at `host` now, or None."""
    for candidate in range(port + 1, min(port + tries, 65535) + 1):
        try:
            with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
                probe.bind((host, candidate))
            return candidate
        except OSError:
            continue
    return None


def cannot_listen(config, exc):
    """The CannotListen for `exc`, the failure to open the server's socket: for a taken port, who
    has it (a codex-proxy: its version and URL), and the --port to use instead."""
    where = "cannot listen on %s:%s" % (config.host, config.port)
    if exc.errno != errno.EADDRINUSE:
        return CannotListen("%s: %s" % (where, exc))
    health = codex_proxy_health(config.host, config.port)
    if health:
        taken = "a codex-proxy %s already answers there, at %s (up %s)" % (
            health["version"], local_url(config.host, config.port), duration(health.get("uptime_seconds") or 0))
    else:
        taken = "the port is taken by %s" % (port_holder(config.port) or "another program (not a codex-proxy)")
    free = free_port_after(config.host, config.port)
    return CannotListen("%s: %s" % (where, taken), fix="%sstart this one on another port: %s--port 0 (any free "
                        "one)" % ("use it, or " if health else "", "--port %d or " % free if free else ""))


async def run_forever(config, args=None):
    """The server until SIGINT/SIGTERM; `args`, the command line it started with, to re-read its
    --config on SIGHUP (SettingsReload)."""
    try:
        server = await start_proxy(config)
    except OSError as exc:
        raise cannot_listen(config, exc) from None
    give_back_memory()
    stop, hurry = asyncio.Event(), asyncio.Event()  # (signals are handled before the start lines say it runs)
    install_stop_signals(asyncio.get_running_loop(), stop, hurry)
    polling = SettingsReload(server.app, args).install(asyncio.get_running_loop()) if args is not None else None
    announcing = None  # held here: the loop keeps only a weak reference to a task
    if not config.quiet:
        print("\n".join(start_banner(server, config)), file=sys.stderr, flush=True)
        if announces_plan(server.app.upstream):
            announcing = asyncio.ensure_future(announce_plan(server))
    await stop.wait()
    for task in (announcing, polling):
        if task is not None:
            task.cancel()
    print("codex-proxy: stopping; requests in flight get up to %gs (again to stop now)" % config.shutdown_grace,
          file=sys.stderr, flush=True)
    try:
        await server.shutdown(config.shutdown_grace, hurry)
    finally:
        server.app.upstream.shutdown(wait=config.shutdown_grace)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    for warning in unknown_variable_warnings(os.environ):  # the server's and every command's
        print("codex_proxy.py: WARNING: " + warning, file=sys.stderr, flush=True)
    if argv and argv[0] in LOGIN_COMMANDS:
        return LOGIN_COMMANDS[argv[0]](argv[1:])
    if argv and argv[0] in DIAGNOSTIC_COMMANDS:  # doctor, usage: no server
        return DIAGNOSTIC_COMMANDS[argv[0]](argv[1:])
    if argv and argv[0] in SETUP_COMMANDS:  # config, install-service
        return SETUP_COMMANDS[argv[0]](argv[1:])
    launch = launch_words(argv)  # [SETTINGS] claude|codex [ARGS...]
    if launch:
        return launch_command(*launch)
    config, args = parse_command_line(build_arg_parser(), argv)
    set_up_logging(config)
    if not is_loopback(config.host) and not config.api_key:
        print("codex_proxy.py: refusing to listen on %s without --api-key: anyone who can reach it would "
              "use your Codex login. Add --api-key KEY (or CODEX_PROXY_API_KEY), or use --host 127.0.0.1."
              % config.host, file=sys.stderr)
        return 2
    problem = ca_bundle_problem(config)  # else a confusing failure at the first call
    if problem:
        print("codex_proxy.py: " + problem, file=sys.stderr)
        return 2
    if config_file_path(args) and hasattr(signal, "SIGHUP"):  # a reload (systemctl reload) that comes
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # before its handler is in place must not kill it
    try:
        asyncio.run(run_forever(config, args))
    except KeyboardInterrupt:  # before the signal handlers were in place
        pass
    except CannotListen as exc:
        print("codex_proxy.py: %s%s" % (exc, "\n  " + exc.fix if exc.fix else ""), file=sys.stderr)
        return 1
    for name in ("SIGINT", "SIGTERM"):  # a late second signal must not turn a clean exit into a kill
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    print("codex-proxy stopped.", file=sys.stderr)
    return 0


# ---- commands: doctor and usage -----------------------------------------------
# Commands that run without the server: each builds its Config from the settings
# it reads (their flags and CODEX_PROXY_* variables), an Upstream, does its work
# and shuts the Upstream down. `doctor` checks the setup in the order a request
# needs it; `usage` shows the plan's usage windows.

TEST_REQUEST_INPUT = "ping"  # one word: the cheapest answer there is
CLAUDE_MODEL_NAME = "claude-sonnet-4-5"  # a name Claude Code sends: what it maps to is the default model


class CheckFailed(ProxyError):
    """A doctor check that failed: what is wrong, and what fixes it."""

    code = "check_failed"

    def __init__(self, message, fix=None):
        ProxyError.__init__(self, message, fix=fix)


class CheckSkipped(Exception):  # not a ProxyError: nothing failed, the check does not apply here
    """A doctor check with nothing to check here; the message says why."""


def with_fix(text, fix):
    return text + (" -> " + fix if fix else "")


def failure_text(exc):
    """What a login or an upstream call failed with, in one line."""
    if isinstance(exc, UpstreamError):
        return "HTTP %d: %s" % (exc.status, exc.message)
    return str(exc)


def account_summary(auth_store):
    """'user@example.com, plus' as far as the login says (never a token)."""
    account = auth_store.identity() or {}
    return ", ".join(str(account[key]) for key in ("email", "plan") if account.get(key))


def token_lifetime(expires, last_refresh):
    """'expires <when>', 'expired <when>', or 'has no expiry' (with when it was last refreshed, if known)."""
    if expires:
        return "%s %s" % ("expired" if expires < wall_clock() else "expires", moment_for_people(expires))
    refreshed = parse_timestamp(last_refresh)
    return "has no expiry" + ("; last refreshed %s" % moment_for_people(refreshed) if refreshed else "")


async def ask_one_word(upstream, model, model_info):
    """The Response to a one-word /v1/responses request (not streamed), sent upstream as a
    client's would be, with the server's defaults."""
    body = {"model": model, "input": TEST_REQUEST_INPUT, "store": False}
    defaults = upstream.config.defaults()
    if upstream.mode() == "apikey":
        return await upstream.fetch_json("POST", "/responses", OPENAI_RESPONSES.server_defaults(body, defaults))
    upstream_body, ctx = OPENAI_RESPONSES.translate(body, RequestOptions(model, model_info=model_info,
                                                                          defaults=defaults))
    translator = OPENAI_RESPONSES.stream(ctx)
    stream = await upstream.open("POST", "/responses", upstream_body, {
        "Accept": "text/event-stream", "session_id": upstream_body["prompt_cache_key"]})
    events = await collect_answer(stream, translator)
    if translator.error:
        raise CheckFailed("the answer failed: %s" % translator.error["message"],
                          "try again later" if translator.error.get("status", 500) >= 500 else None)
    return OPENAI_RESPONSES.fold(events, ctx)


def response_text(response):
    """The text of a Response's messages, on one line."""
    texts = [as_object(part).get("text") or "" for item in as_object(response).get("output") or ()
             if as_object(item).get("type") == "message"
             for part in as_object(item).get("content") or () if as_object(part).get("type") == "output_text"]
    return " ".join(" ".join(texts).split())


class Doctor:
    """`doctor`: the checks in the order a request needs them, one line each,
    with the fix when one fails; a check that needs one that failed is not tried."""

    def __init__(self, upstream, offline=False):
        self.upstream = upstream
        self.config = upstream.config
        self.auth_store = upstream.auth_store
        self.offline = offline
        self.broken = set()  # the checks that failed or could not be tried
        self.model = self.model_info = None  # the default model, for the test request

    async def run(self):
        """Every check's line; 0 when all passed, else 1."""
        checks = (("python", self.python, ()), ("credentials", self.credentials, ()),
                  ("permissions", self.permissions, ()), ("token", self.token, ("credentials",)),
                  ("upstream", self.reachable, ()), ("models", self.models, ("credentials", "token", "upstream")),
                  ("request", self.request, ("models",)))
        for name, check, needs in checks:
            blocked = [need for need in needs if need in self.broken]
            if blocked:
                status, text, fix = "skip", "not tried: %s failed" % " and ".join(blocked), None
            else:
                status, text, fix = await self.outcome(check)
            if blocked or status == "FAIL":
                self.broken.add(name)
            print(with_fix("%-4s %s: %s" % (status, name, text), fix), flush=True)
        return 1 if self.broken else 0

    @staticmethod
    async def outcome(check):
        """(status, text, fix) of one check."""
        try:
            return "ok", await check(), None
        except CheckSkipped as exc:
            return "skip", str(exc), None
        except CheckFailed as exc:
            return "FAIL", str(exc), exc.fix
        except ProxyError as exc:
            return "FAIL", failure_text(exc), exc.fix

    async def python(self):
        version = "%d.%d.%d" % sys.version_info[:3]
        if sys.version_info < (3, 8):
            raise CheckFailed("Python %s is older than 3.8" % version, "run it with Python 3.8 or newer")
        return "Python %s (%s)" % (version, sys.executable)

    async def credentials(self):
        """Which credentials requests will use, and that they can be read."""
        path = self.auth_store.path
        if self.upstream.mode() == "apikey":
            try:
                self.auth_store.api_key()
            except AuthError as exc:
                raise CheckFailed(str(exc), "set OPENAI_API_KEY, or log in: " + LOGIN_WAYS)
            return self.upstream.logins.describe()
        if not os.path.exists(path):
            raise CheckFailed("no login found at %s" % path,
                              "run %s (or set OPENAI_API_KEY to use an API key)" % LOGIN_WAYS)
        try:
            tokens = as_object(self.auth_store.read(patience=0).get("tokens"))
        except AuthError as exc:  # unreadable, or not a JSON object
            raise CheckFailed(str(exc), "log in again to rewrite it: " + LOGIN_WAYS)
        if not tokens.get("access_token"):
            raise CheckFailed("%s holds no ChatGPT login" % path, "log in: " + LOGIN_WAYS)
        about = account_summary(self.auth_store)
        return "ChatGPT login in %s%s" % (path, " (%s)" % about if about else "")

    async def permissions(self):
        """auth.json holds a login or a key: nobody but its owner should be able to read it."""
        path = self.auth_store.path
        if os.name != "posix":
            raise CheckSkipped("not checked on this system")
        if not os.path.exists(path):
            raise CheckSkipped("there is no %s" % path)
        exposure = auth_file_exposure(path)
        if exposure:
            raise CheckFailed(*exposure)
        return "%s is yours alone (mode %04o)" % (path, os.stat(path).st_mode & 0o777)

    async def token(self):
        """When the access token expires; refreshed now if that is soon, as before a request."""
        if self.upstream.mode() == "apikey":
            raise CheckSkipped("API keys do not expire")
        data = self.auth_store.read()
        before = token_lifetime((self.auth_store.identity() or {}).get("expires"), data.get("last_refresh"))
        stale = as_object(data.get("tokens")).get("access_token")
        try:
            fresh, _ = await in_thread(self.auth_store.chatgpt_credentials)
        except ProxyError as exc:  # an AuthError here: the login is over
            raise CheckFailed("the access token %s, and its refresh failed: %s" % (before, exc),
                              "log in again: " + LOGIN_WAYS if isinstance(exc, AuthError) else exc.fix)
        if fresh == stale:
            return "the access token " + before
        return "refreshed: the old access token %s; the new one %s" % (
            before, token_lifetime((self.auth_store.identity() or {}).get("expires"), None))

    async def reachable(self):
        """The upstream answers through the configured proxy and CA bundle (asked without credentials:
        any answer means the way there works)."""
        problem = ca_bundle_problem(self.config)
        if problem:
            raise CheckFailed(problem, "point SSL_CERT_FILE (or REQUESTS_CA_BUNDLE) at a readable PEM file")
        url = self.upstream.base_url().rstrip("/") + "/models"
        status, _ = await in_thread(self.upstream.pool.get, url, self.config.connect_timeout)
        parts = urllib.parse.urlsplit(url)
        target = "%s:%d" % (parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
        return "%s answers (HTTP %d without credentials)%s" % (target, status, self.route(url))

    def route(self, url):
        """', through the proxy HOST:PORT, CA bundle FILE' as configured (a proxy's credentials never)."""
        if not url.startswith("https:"):
            return ""  # plain HTTP: neither a proxy nor certificates on the way
        proxy = proxy_for(url, self.config.proxy)
        notes = []
        if proxy:
            proxy = urllib.parse.urlsplit(proxy if "://" in proxy else "http://" + proxy)
            notes.append("through the proxy %s:%s" % (proxy.hostname, proxy.port or 80))
        if self.config.ca_file:
            notes.append("CA bundle %s" % self.config.ca_file)
        return "".join(", " + note for note in notes)

    async def models(self):
        catalog = ModelCatalog(self.upstream, self.config)
        entries = await catalog.entries()
        if not entries:
            raise CheckFailed("the catalog lists no models", "check that your plan (or API key) includes models")
        self.model, self.model_info = await catalog.resolve(CLAUDE_MODEL_NAME)
        return "%d listed; the default is %s (what claude-* names get)" % (len(entries), self.model)

    async def request(self):
        """One tiny request through the real Upstream: the whole way works."""
        if self.offline:
            raise CheckSkipped("--offline")
        started = time.monotonic()
        answer = await ask_one_word(self.upstream, self.model, self.model_info)
        return "%s answered %r to %r in %.1fs" % (self.model, response_text(answer)[:60], TEST_REQUEST_INPUT,
                                                  time.monotonic() - started)


async def show_usage(upstream, args):
    """`usage`: the plan's usage windows (ChatGPT mode); 0, or 1 saying why not."""
    if upstream.mode() == "apikey":
        print("API-key mode (%s): there are no plan usage windows; the API bills per token."
              % upstream.logins.describe())
        return 0
    if upstream.logins.several:
        failures = await fetch_each_login_usage(upstream)
        print("ChatGPT plan usage of %d logins:" % len(upstream.logins.stores))
        for line in login_usage_lines(upstream.logins, failures):
            print("  " + line)
        return 1 if len(failures) == len(upstream.logins.stores) else 0
    try:
        usage = await upstream.fetch_usage()
    except ProxyError as exc:
        print(with_fix("codex_proxy.py usage: " + failure_text(exc), exc.fix), file=sys.stderr)
        return 1
    about = account_summary(upstream.auth_store)
    print("ChatGPT plan usage%s:" % (" of " + about if about else ""))
    for line in usage.lines() or ["no usage windows reported"]:
        print("  " + line)
    return 0


# The settings a command without the server reads (as flags, and as CODEX_PROXY_ variables): those
# of the way upstream and its credentials; the doctor's test request also the server's defaults.
UPSTREAM_SETTINGS = ("config_file", "auth", "codex_homes", "chatgpt_base_url", "openai_base_url", "proxy", "log_level")
REQUEST_SETTINGS = UPSTREAM_SETTINGS + ("default_model", "model_map", "reasoning_effort", "verbosity",
                                        "service_tier", "fast", "upstream_idle_timeout")


def command_parser(name, description, settings=None):
    """A command's parser: the server's flags and variables of the settings it reads (all of them
    where `settings` is None), and room for its own."""
    parser = CommandLineParser(name, description=description)
    add_settings(parser.add_argument_group("settings, as for the server (also as CODEX_PROXY_* variables)"),
                 settings)
    return parser


def run_command(parser, argv, work):
    """Run `await work(upstream, args)` without the server, on the Config the
    arguments describe, and shut the Upstream down after; work's exit status."""
    config, args = parse_command_line(parser, argv)
    level = getattr(logging, config.log_level.upper())
    # The command's own lines say what happened: log lines below warnings (a retry, a refresh) would repeat them.
    logging.basicConfig(level=level if level == logging.DEBUG else max(level, logging.WARNING),
                        format="%(levelname)s %(name)s: %(message)s")

    async def run():
        upstream = Upstream(config)
        try:
            return await work(upstream, args)
        finally:
            upstream.shutdown()
    try:
        return asyncio.run(run())
    except KeyboardInterrupt:
        return 130


def doctor_command(argv):
    parser = command_parser("doctor", "Check the setup, one line per check, each with its fix when it fails: "
                                      "Python, credentials, auth.json's permissions, the token's expiry (refreshed "
                                      "if due), the upstream through the proxy and CA bundle, the model catalog, "
                                      "and one tiny test request. Exit status 0 when every check passes, else 1.",
                            REQUEST_SETTINGS)
    parser.add_argument("--offline", action="store_true", help="skip the test request (the one check that uses "
                                                                "a little of your plan)")
    return run_command(parser, argv, lambda upstream, args: Doctor(upstream, args.offline).run())


def usage_command(argv):
    parser = command_parser("usage", "Show the plan's usage windows (5-hour and weekly: percent used, when each "
                                     "resets, in local time) as the Codex backend reports them. Exit status 0, "
                                     "or 1 saying what failed.", UPSTREAM_SETTINGS)
    return run_command(parser, argv, show_usage)


DIAGNOSTIC_COMMANDS = {"doctor": doctor_command, "usage": usage_command}


# ---- commands: claude and codex launchers -------------------------------------
# `python3 codex_proxy.py [SETTINGS] claude|codex [ARGS...]` runs the client already pointed at a
# proxy, as claude-code-router's `ccr code` does: at the codex-proxy answering on --host/--port
# when there is one that takes the local key, else at one of its own, run in a thread of this
# process for the length of the client's run. That one listens on a free loopback port, never the
# configured one: a later `python3 codex_proxy.py`, or another launcher, would find it there and
# lose it when this client ends. Its log goes to a file, not over the client's screen.

PLACEHOLDER_KEY = "unused"  # the key a client sends to a proxy that wants none (so it asks for no login)
CODEX_PROVIDER = "codex-proxy"  # the Codex CLI's [model_providers.NAME], as in the README's recipe
LOCAL_ANSWER_TIMEOUT = 5.0  # seconds a local server may take to answer the launcher's GET


def claude_pointed_at(url, key, model, args):
    """(Claude Code's arguments, its environment's changes: None removes) for the proxy at `url`:
    the base URL and a token, so that it asks for no login of its own; an Anthropic ANTHROPIC_API_KEY
    is kept from it (it would ask whether to use that instead). The base URL also goes as --settings,
    which outranks the `env` of the user's settings.json (where the README's recipe puts one)."""
    settings = json.dumps({"env": {"ANTHROPIC_BASE_URL": url}})
    return ["--settings", settings] + list(args), {"ANTHROPIC_BASE_URL": url,
                                                   "ANTHROPIC_AUTH_TOKEN": key or PLACEHOLDER_KEY,
                                                   "ANTHROPIC_API_KEY": None}


def codex_pointed_at(url, key, model, args):
    """(the Codex CLI's arguments, its environment's changes) for the proxy at `url`: the provider,
    and the model unless the user names one, as -c overrides before the user's words (the root's
    overrides reach every subcommand, `exec` too), so the user's config file stays as it is. Its
    model calls go over the Responses WebSocket (one socket a run, each turn sending only what is new)."""
    table = "model_providers.%s." % CODEX_PROVIDER
    settings = [("model_provider", CODEX_PROVIDER), (table + "name", CODEX_PROVIDER),
                (table + "base_url", url + "/v1"), (table + "wire_api", "responses"),
                (table + "supports_websockets", True)]
    changes = {}
    if key:  # the variable of --api-key's own setting: the key is in the client's environment already, or now
        settings.append((table + "env_key", "CODEX_PROXY_API_KEY"))
        changes["CODEX_PROXY_API_KEY"] = key
    if model and not codex_model_named(args):
        settings.append(("model", model))
    overrides = [word for name, value in settings for word in ("-c", "%s=%s" % (name, json.dumps(value)))]
    return overrides + list(args), changes  # json.dumps: a TOML basic string


def codex_model_named(args):
    """Whether the Codex CLI's arguments choose the model: -m/--model, -c model=..., or a profile
    (-p/--profile), which may name one."""
    for word, after in zip(args, list(args[1:]) + [""]):
        if word == "--":
            return False
        if word in ("-m", "--model", "-p", "--profile") or word.startswith(("--model=", "--profile=")) \
                or word[:2] in ("-m", "-p") and word[2:3] not in ("-", ""):
            return True
        if word in ("-c", "--config") and after.startswith("model=") or word.startswith("--config=model="):
            return True
    return False


def codex_config_model(codex_home=None):
    """The model the Codex CLI's own config file names at its top level, or None (then the launcher
    gives the proxy's default model; a model the user chose there stays the user's)."""
    codex_home = codex_home or os.environ.get("CODEX_HOME") or os.path.expanduser("~/.codex")
    try:
        with open(os.path.join(codex_home, "config.toml"), encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError):
        return None
    top = re.split(r"(?m)^\s*\[", text, maxsplit=1)[0]  # before the first [table]
    found = re.search(r"""(?m)^\s*model\s*=\s*["']([^"'\n]+)["']""", top)
    return found.group(1) if found else None


@dataclasses.dataclass(frozen=True)
class Launchable:
    """A client the launcher runs: what it is called, its npm package, how it is pointed at a proxy
    (a *_pointed_at function), and whether that needs the proxy's default model."""

    name: str
    package: str
    pointed_at: object
    needs_model: bool = False


LAUNCHABLE = {"claude": Launchable("Claude Code", "@anthropic-ai/claude-code", claude_pointed_at),
              "codex": Launchable("the Codex CLI", "@openai/codex", codex_pointed_at, needs_model=True)}


def launch_words(argv):
    """(the server's flags, the client's program, the client's words) when `argv` names a client
    after the server's flags, else None. A flag's value is no command word: `--port 9000 claude`."""
    takes_value = {flag for setting in SETTINGS if not setting.switch for flag in setting.flags}
    flags = {flag for setting in SETTINGS for flag in setting.flags} | {"-h", "--help", "--version"}
    at = 0
    while at < len(argv):
        word = argv[at]
        if word in LAUNCHABLE:
            return argv[:at], word, argv[at + 1:]
        if not word.startswith("-") or word == "--":
            return None  # no launcher: argparse says what is wrong with the word
        named = [word] if word in flags else [flag for flag in flags if flag.startswith(word)]  # argparse's
        at += 2 if "=" not in word and len(named) == 1 and named[0] in takes_value else 1  # abbreviations too
    return None


def local_get(url, key, timeout):
    """(status, Server header, JSON answer or None) of a GET to a server on this machine, with the
    local key; (None, "", None) when it gives no HTTP answer in time."""
    import http.client
    pool = ConnectionPool(Config(connect_timeout=timeout))
    headers = {"Accept": "application/json"}
    if key:
        headers["Authorization"] = "Bearer " + key
    try:
        origin, conn, response = pool.request("GET", url, headers, None, timeout)
        try:
            raw = response.read()
        finally:
            conn.close()
    except (ProxyError, OSError, http.client.HTTPException):
        return None, "", None
    return response.status, response.getheader("Server") or "", _json_or_none(raw)


def running_proxy(config):
    """(URL, /health, None) of the codex-proxy answering on the configured host and port, if it takes
    the local key; else (None, None, why not: None when nothing listens there)."""
    if not config.port:
        return None, None, None
    url = local_url(config.host, config.port)
    try:
        socket.create_connection((urllib.parse.urlsplit(url).hostname, config.port), LOCAL_ANSWER_TIMEOUT).close()
    except OSError:
        return None, None, None
    # The local key goes only to a listener of this user's: on a shared machine anyone may bind
    # the port while our proxy is down, and answer as a codex-proxy would.
    owners = {uid for _, uid in listening_sockets(config.port) or ()}
    if owners != {os.getuid()}:
        return None, None, ("%s is not this user's (or who holds it cannot be told here), so it does not "
                            "get the key" % url[len("http://"):])
    health = codex_proxy_health(config.host, config.port, config.key_for_clients(), LOCAL_ANSWER_TIMEOUT)
    if health is None:
        return None, None, "%s is taken by something that is not a codex-proxy" % url[len("http://"):]
    if "auth" not in health:  # told only to those who present the key it wants
        return None, None, "the codex-proxy on %s wants another key (--api-key, CODEX_PROXY_API_KEY)" % url
    return url, health, None


def launch_model(url, config, health):
    """The model claude-* names get from the proxy at `url` (the Codex CLI needs a real one), as
    `doctor` names it; None when its catalog cannot be had (the client's first request says why)."""
    status, _, listed = local_get(url + "/v1/models", config.key_for_clients(), LOCAL_ANSWER_TIMEOUT)
    slugs = [as_object(entry).get("id") for entry in as_object(listed).get("data") or ()] if status == 200 else []
    mode = as_object(as_object(health).get("auth")).get("mode")
    default = claude_default_model(config.default_model, mode, slugs)
    model = resolve_model(CLAUDE_MODEL_NAME, slugs, config.model_map, default)
    return None if model == CLAUDE_MODEL_NAME else model  # not mapped: no catalog, no setting


class LaunchedProxy:
    """The launcher's own proxy: the server on an event loop in a thread of this process, for the
    length of one client's run, on 127.0.0.1 and a free port, its log in a file of its own (in
    $TMPDIR, kept for reading after the run)."""

    def __init__(self, config):
        self.config = dataclasses.replace(config, host="127.0.0.1", port=0, quiet=True)
        self.thread = threading.Thread(target=self.run, name="codex-proxy", daemon=True)
        self.ready = threading.Event()
        self.loop = self.stopping = self.server = self.error = self.log = self.log_path = None

    def start(self):
        """Listen and log to the file; the URL (CannotListen if it cannot listen)."""
        fd, self.log_path = tempfile.mkstemp(prefix="codex-proxy-", suffix=".log")  # 0600, a name no one chose
        os.close(fd)
        self.log = logging.FileHandler(self.log_path, "w", encoding="utf-8")
        set_up_logging(self.config, self.log)
        self.thread.start()
        self.ready.wait()
        if self.error is not None:
            raise self.error
        return local_url(self.config.host, self.server.port)

    def run(self):
        try:
            asyncio.run(self.serve())
        except Exception as exc:  # told by start(), in the thread that can say it
            self.error = exc
        finally:
            self.ready.set()  # also when it never got to listen

    async def serve(self):
        self.loop, self.stopping = asyncio.get_running_loop(), asyncio.Event()
        try:
            self.server = await start_proxy(self.config)
        except OSError as exc:
            raise CannotListen("cannot listen on %s: %s" % (self.config.host, exc)) from None
        self.ready.set()
        try:
            await self.stopping.wait()
            await self.server.shutdown(0)  # the client has gone: nothing in flight is wanted
            await asyncio.sleep(0.01)  # closed transports release their sockets
        finally:  # a token refresh in flight gets to write auth.json (else its new token is lost)
            self.server.app.upstream.shutdown(wait=self.config.shutdown_grace)

    def stop(self):
        """Stop it and wait until it has (again: nothing more)."""
        if self.thread.ident is not None:  # started: once it listens (or failed to), it can be told to stop
            self.ready.wait()
            if self.error is None and self.thread.is_alive():
                self.loop.call_soon_threadsafe(self.stopping.set)
            self.thread.join()
        if self.log is not None:
            logging.getLogger().removeHandler(self.log)
            self.log.close()


def run_client(argv, changes):
    """Run the client in the foreground with its environment changed (None removes a variable); its
    exit status (128+N when signal N ended it). Ctrl-C at the terminal reaches the client (the whole
    foreground group gets it): here a handler that does nothing lets it pass (not SIG_IGN: an ignored
    signal would stay ignored in the client). SIGTERM, sent to this process alone, is passed on."""
    import subprocess
    env = dict(os.environ)
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    handlers = {}
    try:
        handlers[signal.SIGINT] = signal.signal(signal.SIGINT, lambda *_: None)
        try:
            client = subprocess.Popen(argv, env=env)
        except OSError as exc:
            print("codex_proxy.py: cannot run %s: %s" % (argv[0], exc), file=sys.stderr)
            return 126
        if hasattr(signal, "SIGTERM"):
            handlers[signal.SIGTERM] = signal.signal(signal.SIGTERM, lambda number, _: client.send_signal(number))
        status = client.wait()
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)
    return 128 - status if status < 0 else status


def proxy_for_launch(config, program):
    """(URL, /health, our own LaunchedProxy or None) for the client to use, saying which on stderr in
    one line; None when there is none (also said)."""
    url, health, why_not = running_proxy(config)
    if url is not None:
        print("codex-proxy: %s uses the codex-proxy running on %s" % (program, url), file=sys.stderr, flush=True)
        return url, health, None
    problem = ca_bundle_problem(config)  # else a confusing failure at the client's first request
    if problem:
        print("codex_proxy.py: " + problem, file=sys.stderr)
        return None
    own = LaunchedProxy(config)
    try:
        url = own.start()
    except BaseException as exc:
        own.stop()
        if not isinstance(exc, CannotListen):
            raise
        print("codex_proxy.py: %s" % exc, file=sys.stderr)
        return None
    print("codex-proxy: started on %s for this %s run, its log in %s%s" % (
        url, program, own.log_path, "; " + why_not if why_not else ""), file=sys.stderr, flush=True)
    health = local_get(url + "/health", config.key_for_clients(), LOCAL_ANSWER_TIMEOUT)[2]
    if no_working_login(health):  # else the client's first request is the first to say so
        print("codex-proxy: no working login: %s" % login_advice(config.codex_home), file=sys.stderr, flush=True)
    return url, health, own


def no_working_login(health):
    """Whether a proxy's /health (with the key) says ChatGPT mode and no login that works."""
    health = as_object(health)
    if as_object(health.get("auth")).get("mode") == "apikey":
        return False
    return not any(as_object(login).get("state") in ("ok", "resting") for login in health.get("logins") or ())


def launcher_command(config, port, program):
    """The command line that runs `program` on the proxy listening on `port` with this config: what
    the start lines give to paste (the file's own path, so that it works from any folder)."""
    words = ["python3", os.path.abspath(__file__)]
    if config.host not in ("127.0.0.1", "localhost"):
        words += ["--host", config.host]
    if port != Config().port:  # the default port needs no flag
        words += ["--port", str(port)]
    # The key through its variable, not argv, where any user of the machine could read it (ps).
    key = ["CODEX_PROXY_API_KEY=<your --api-key>"] if config.api_key else []
    return " ".join(key + [shlex.quote(word) for word in words] + [program])


def launch_command(server_argv, program, client_argv):
    """`python3 codex_proxy.py [SETTINGS] claude|codex [ARGS...]`: the client's exit status."""
    client = LAUNCHABLE[program]
    config = config_from_args(server_argv)
    try:
        config.key_for_clients()
    except ValueError as exc:
        print("codex_proxy.py %s: %s" % (program, exc), file=sys.stderr)
        return 2
    executable = shutil.which(program)
    if executable is None:
        print("codex_proxy.py: %s is not installed (no %s on PATH): npm install -g %s" % (
            client.name, program, client.package), file=sys.stderr)
        return 127
    own = None
    try:
        found = proxy_for_launch(config, program)
        if found is None:
            return 1
        url, health, own = found
        # (A model the Codex CLI's config file names is the user's choice: it stays.)
        model = launch_model(url, config, health) if client.needs_model and not codex_config_model() else None
        args, changes = client.pointed_at(url, config.key_for_clients(), model, client_argv)
        return run_client([executable] + args, changes)
    except KeyboardInterrupt:  # before the client ran: it has Ctrl-C from then on
        return 130
    finally:
        if own is not None:
            own.stop()


# ---- commands: setup: config and install-service ---------------------------------
# `config --print` writes the settings that the flags, --config's file and the variables make, as a
# config file; `install-service` runs the proxy with such a file at login (systemd, launchd).

SERVICE_NAME = "codex-proxy"
DEFAULT_CONFIG_PATH = os.path.join("~", ".config", "codex-proxy", "config.json")


def config_command(argv):
    """`python3 codex_proxy.py config --print [--show-keys] [SETTINGS]`: the effective settings as JSON."""
    parser = command_parser("config", "Print the settings that the flags, --config's file and the "
                            "CODEX_PROXY_* variables make, as a config file: the easy way to start one.")
    parser.add_argument("--print", action="store_true", help="print them (on stdout)")
    parser.add_argument("--show-keys", action="store_true", help="the --api-key keys themselves, not [redacted]")
    args = parser.parse_args(argv)
    if not args.print:
        parser.error("prints the settings: config --print")
    try:
        texts = settings_texts(args)
        settings_values(texts)  # checked as the server checks them
    except SettingRefused as exc:
        parser.error(str(exc))
    print(json.dumps(config_file_object(texts, args.show_keys), indent=2))
    return 0


def config_file_object(texts, show_keys=False):
    """settings_texts's settings as a config file: each under its flag's name, as given or its default
    (null: not set); switches true/false, numbers as numbers; a repeatable one a list, or an object
    where its values are NAME=VALUE; secrets (the keys) [redacted] unless `show_keys`."""
    data = {}
    for setting in SETTINGS:
        if setting is CONFIG_FILE:
            continue
        given = texts[setting.name][0] if setting.name in texts else setting.default
        given = given() if callable(given) else given
        if setting.repeat:
            items = [] if given is None else given if isinstance(given, list) else [given]
            pairs = [setting.parse(item) for item in items]
            value = dict(pairs) if pairs and all(isinstance(pair, tuple) for pair in pairs) else items
            if SECRET_NAME.search(setting.name) and not show_keys:
                value = dict.fromkeys(value, "[redacted]") if isinstance(value, dict) else ["[redacted]"] * len(value)
        elif setting.switch:
            value = yes_or_no(given or "0")
        else:
            value = file_number(given) if setting.parse is not text_value else given
        data[setting.flags[0][2:].replace("-", "_")] = value
    return data


def file_number(text):
    """A number's text as a JSON number; any other text as it is."""
    try:
        return json.loads(text) if text is not None and isinstance(json.loads(text), (int, float)) else text
    except ValueError:
        return text


def install_service_command(argv):
    """`python3 codex_proxy.py install-service [--print] [--config FILE]`: the proxy at login."""
    parser = CommandLineParser("install-service", description="Run the proxy in the background at login, "
                               "with a config file: a systemd user service on Linux, a launchd agent on macOS; "
                               "elsewhere, the command to run at login.")
    parser.add_argument("--print", action="store_true", help="print what would be written; write nothing")
    parser.add_argument("--config", dest="config_file", metavar="FILE", help="the service's config file (default "
                        "CODEX_PROXY_CONFIG, else %s)" % DEFAULT_CONFIG_PATH)
    args = parser.parse_args(argv)
    config = os.path.abspath(config_file_path(args) or os.path.expanduser(DEFAULT_CONFIG_PATH))
    command = [sys.executable, os.path.abspath(__file__), "--config", config]
    path, text, then = service_definition(command)
    if not os.path.exists(config):
        then = ["mkdir -p %s && python3 %s config --print > %s   # the config file first, to edit" % (
            shlex.quote(os.path.dirname(config)), shlex.quote(command[1]), shlex.quote(config))] + then
    if args.print or path is None:
        print(text, end="")
    else:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
        print("Wrote %s." % path)
    print("\n".join(["", "Then run:"] + ["  " + line for line in then]) if then else "", end="\n" if then else "")
    return 0


def service_definition(command):
    """(where it goes (None: nowhere), its text, the commands to run then) of the service that runs
    `command` at login on this system."""
    if sys.platform.startswith("linux"):
        home = from_environment("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
        return os.path.join(home, "systemd", "user", SERVICE_NAME + ".service"), systemd_unit(command), [
            "systemctl --user daemon-reload", "systemctl --user enable --now %s.service" % SERVICE_NAME]
    if sys.platform == "darwin":
        path = os.path.join(os.path.expanduser("~"), "Library", "LaunchAgents", "com.%s.plist" % SERVICE_NAME)
        return path, launchd_plist(command), ["launchctl load -w %s" % shlex.quote(path)]
    return None, "Run at login (e.g. from the Task Scheduler):\n  %s\n" % subprocess_line(command), []


def systemd_unit(command):
    quoted = " ".join('"%s"' % word.replace("\\", "\\\\").replace('"', '\\"') if re.search(r'[\s"\'\\]', word)
                      else word for word in command).replace("%", "%%")
    return "\n".join([
        "[Unit]", "Description=codex-proxy: OpenAI-, Anthropic- and Ollama-compatible clients on a Codex login",
        "After=network-online.target", "", "[Service]", "ExecStart=" + quoted,
        "ExecReload=/bin/kill -HUP $MAINPID", "Restart=on-failure", "RestartSec=5", "",
        "[Install]", "WantedBy=default.target", ""])


def launchd_plist(command):
    logs = os.path.join(os.path.expanduser("~"), "Library", "Logs", SERVICE_NAME + ".log")
    return plistlib.dumps({"Label": "com." + SERVICE_NAME, "ProgramArguments": command, "RunAtLoad": True,
                           "KeepAlive": {"SuccessfulExit": False}, "StandardErrorPath": logs}).decode("utf-8")


def subprocess_line(command):
    return " ".join('"%s"' % word if " " in word else word for word in command)


SETUP_COMMANDS = {"config": config_command, "install-service": install_service_command}


if __name__ == "__main__":
    sys.exit(main())
