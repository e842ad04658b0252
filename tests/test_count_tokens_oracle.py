"""count_tokens estimate vs the exact o200k_base tokenizer (bpe-openai, used only as a test oracle).

estimate_text_tokens must stay within 15% of the true o200k_base count on English
prose, Python and JavaScript source, JSON tool schemas, Chinese, Japanese, Korean
and a Claude Code-sized system prompt; estimate_request_tokens must stay within 15%
of a reference built from exact counts of the same texts, the same few tokens of
chat framing per item/tool, and the image cost (see test_token_estimate.py).

Fixtures come only from the Python standard library's own source and docstrings
and from text embedded here.  The whole module is skipped when bpe_openai is not
installed (pip install bpe-openai), unless CODEX_PROXY_REQUIRE_OPTIONAL is set.
"""
import base64
import inspect
import json
import os
import struct
import sys
import unittest
import zlib

try:
    import bpe_openai
except ImportError:  # the oracle is optional: codex_proxy.py itself never imports it
    if os.environ.get("CODEX_PROXY_REQUIRE_OPTIONAL"):
        raise
    raise unittest.SkipTest("bpe_openai not installed (pip install bpe-openai): no o200k_base oracle")

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.append(os.path.dirname(os.path.abspath(__file__)))  # fit_token_estimate, also as tests.test_...
from codex_proxy import estimate_request_tokens, estimate_text_tokens, image_tokens  # noqa: E402

TOLERANCE = 0.15
_ENC = bpe_openai.get_encoding("o200k_base")


def true_count(text):
    return len(_ENC.encode_ordinary(text))


ENGLISH = (
    "The proxy sits between a command-line coding assistant and a model provider. It accepts requests in "
    "one wire format, rewrites them into another, and streams the answer back as if nothing had happened "
    "in between. Most of the work is bookkeeping: every message, tool call and tool result has to keep "
    "its identity across the translation, and every streamed event has to arrive in an order the client "
    "expects.\n"
    "\n"
    "When a request arrives, the proxy first validates the headers and the body. Missing fields are "
    "filled with sensible defaults, unknown fields are dropped with a warning in the log, and anything "
    "that cannot be translated is rejected early with a clear error message instead of a confusing "
    "failure halfway through a stream. This makes problems easier to diagnose, because the error points "
    "at the exact field that caused it.\n"
    "\n"
    "Counting tokens is a surprisingly subtle problem. The exact number depends on the tokenizer, and "
    "each model family uses a different vocabulary. Short common words are usually a single token, while "
    "long or rare words are split into several pieces. Numbers are grouped into chunks of up to three "
    "digits, runs of spaces collapse into one token, and punctuation often merges with the characters "
    "around it. Text in Chinese, Japanese or Korean uses far more tokens per character than English, so "
    "an estimate based only on the length of the text in bytes would be badly wrong for those languages.\n"
    "\n"
    "We chose a simple approach that is good enough for the client's purposes. The client only uses the "
    "count to decide when a conversation is getting close to the context limit and should be summarized, "
    "so an error of a few percent is harmless, whereas a call to a remote service on every keystroke "
    "would make the interface feel sluggish. The estimate is computed locally, it needs no network "
    "access, and it takes well under a millisecond for a typical message.\n"
    "\n"
    "If you find a case where the estimate is far off, please open an issue with a small example that "
    "reproduces it. Include the text, the number reported by the proxy, and the number you expected, "
    "together with the name of the model you were using at the time.\n"
)

CHINESE = (
    "在软件开发的过程中，代码审查是保证质量的重要环节。一个好的审查者不仅会指出明显的错误，还会关注代码的"
    "可读性、可维护性以及潜在的性能问题。团队成员之间通过审查互相学习，逐渐形成统一的编码风格和最佳实践。"
    "\n"
    "\n"
    "近年来，大型语言模型的发展速度令人惊叹。它们能够理解自然语言的指令，生成流畅的文章，甚至编写和调试程"
    "序。然而，这些模型也存在局限性：它们有时会自信地给出错误的答案，对最新发生的事件缺乏了解，并且在需要"
    "精确计算的任务上表现不稳定。因此，在实际应用中，我们需要设计合理的验证机制，把模型的输出与可靠的数据"
    "源进行比对。\n"
    "\n"
    "北京是中国的首都，也是一座拥有三千多年历史的文化名城。故宫、天坛和长城吸引了来自世界各地的游客。每到"
    "秋天，香山的红叶漫山遍野，市民们喜欢在周末登山赏景。近年来，城市的公共交通系统不断完善，地铁线路已经"
    "覆盖了大部分城区，大大方便了人们的日常出行。\n"
    "\n"
    "请帮我检查一下这个函数为什么在处理空列表时会抛出异常。我已经尝试在循环之前添加判断条件，但是测试仍然"
    "失败。错误信息显示索引超出了范围，我怀疑问题出在边界条件的处理上。如果你需要更多的上下文，我可以把完"
    "整的测试用例和日志发给你。\n"
    "\n"
    "数据库迁移是一项需要谨慎对待的工作。在执行迁移之前，应当先在测试环境中完整地演练一遍，确认所有的表结"
    "构变更和数据转换都符合预期。同时，要准备好回滚方案，以便在出现问题时能够迅速恢复服务。对于数据量较大"
    "的表，可以考虑分批处理，避免长时间锁表影响线上业务。\n"
    "\n"
    "春节是中国最重要的传统节日。在除夕夜，家家户户都会团聚在一起吃年夜饭，包饺子、贴春联、放鞭炮。孩子们"
    "最期待的是长辈发的红包。节日期间，人们走亲访友，互相拜年，表达对新一年的美好祝愿。\n"
)

JAPANESE = (
    "ソフトウェア開発において、テストは品質を保証するための欠かせない工程です。単体テストで個々の関数の動"
    "作を確認し、結合テストで複数のモジュールが正しく連携することを検証します。自動化されたテストを継続的"
    "に実行することで、変更による不具合を早い段階で発見できます。\n"
    "\n"
    "東京は日本の首都であり、世界でも有数の大都市です。渋谷や新宿のような賑やかな繁華街がある一方で、浅草"
    "や谷中のように昔ながらの街並みが残る地域もあります。春になると上野公園や目黒川沿いの桜が満開になり、"
    "多くの人々がお花見を楽しみます。\n"
    "\n"
    "このプルリクエストでは、設定ファイルの読み込み処理を見直しました。これまでは起動時に一度だけ読み込ん"
    "でいましたが、ファイルの変更を検知して自動的に再読み込みするように変更しています。また、不正な値が指"
    "定された場合には分かりやすいエラーメッセージを表示するようにしました。レビューをよろしくお願いします"
    "。\n"
    "\n"
    "最近、機械学習を使った翻訳サービスの精度が大きく向上しました。以前は不自然な訳文が多かったのですが、"
    "今では日常的なメールや技術文書であれば、ほとんど修正なしで使えることもあります。ただし、専門用語や文"
    "化的な背景を含む表現については、まだ人間による確認が必要です。\n"
    "\n"
    "京都には千年以上の歴史を持つ寺院や神社が数多く残っています。金閣寺や清水寺は観光客に特に人気があり、"
    "季節ごとに異なる美しさを見せてくれます。秋の紅葉の時期には、夜間のライトアップも行われ、幻想的な雰囲"
    "気を味わうことができます。\n"
    "\n"
    "サーバーのログを確認したところ、深夜二時ごろにメモリ使用量が急激に増加していることが分かりました。バ"
    "ッチ処理が大量のデータを一度に読み込んでいることが原因と考えられます。データを分割して処理するように"
    "修正し、再度様子を見てみます。\n"
)

KOREAN = (
    "소프트웨어 개발에서 코드 리뷰는 품질을 높이는 중요한 과정입니다. 리뷰어는 단순한 버그뿐만 아니라 코드의 "
    "가독성과 유지보수성, 그리고 성능 문제까지 함께 살펴봅니다. 팀원들은 리뷰를 통해 서로의 경험을 나누고 "
    "일관된 코딩 스타일을 만들어 갑니다.\n"
    "\n"
    "서울은 대한민국의 수도이자 육백 년이 넘는 역사를 가진 도시입니다. 경복궁과 창덕궁 같은 고궁에서는 전통 "
    "건축의 아름다움을 느낄 수 있고, 강남과 홍대 주변에서는 활기찬 현대 도시의 모습을 볼 수 있습니다. 한강 "
    "공원에서는 많은 시민들이 자전거를 타거나 산책을 즐깁니다.\n"
    "\n"
    "이 함수는 입력 값이 비어 있을 때 예외를 발생시킵니다. 반복문을 시작하기 전에 길이를 확인하는 조건을 "
    "추가했지만 테스트는 여전히 실패하고 있습니다. 오류 메시지를 보면 인덱스가 범위를 벗어났다고 나오는데, "
    "경계 조건 처리에 문제가 있는 것 같습니다. 전체 로그가 필요하시면 말씀해 주세요.\n"
    "\n"
    "최근 인공지능 기술이 빠르게 발전하면서 많은 기업들이 업무 자동화에 관심을 가지고 있습니다. 고객 상담, "
    "문서 요약, 번역과 같은 작업은 이미 상당 부분 자동화되었습니다. 하지만 중요한 결정을 내려야 하는 "
    "상황에서는 여전히 사람의 판단과 검토가 필요합니다.\n"
    "\n"
    "추석은 한국의 대표적인 명절 가운데 하나입니다. 가족들이 고향에 모여 차례를 지내고 송편을 빚으며 함께 "
    "시간을 보냅니다. 보름달을 바라보며 소원을 비는 풍습도 있습니다. 명절 기간에는 고속도로가 귀성 차량으로 "
    "크게 붐빕니다.\n"
    "\n"
    "데이터베이스 마이그레이션을 진행하기 전에 반드시 테스트 환경에서 먼저 검증해야 합니다. 테이블 구조 변경과 "
    "데이터 변환이 예상대로 동작하는지 확인하고, 문제가 생겼을 때 되돌릴 수 있는 방법도 미리 준비해 두어야 "
    "합니다.\n"
)

JAVASCRIPT = """\
'use strict';

const http = require('node:http');
const { URL } = require('node:url');
const { EventEmitter } = require('node:events');

const DEFAULT_TIMEOUT_MS = 30_000;
const RETRYABLE = new Set([408, 429, 500, 502, 503, 504]);

class RateLimiter extends EventEmitter {
  constructor({ capacity = 10, refillPerSecond = 5 } = {}) {
    super();
    this.capacity = capacity;
    this.tokens = capacity;
    this.refillPerSecond = refillPerSecond;
    this.lastRefill = Date.now();
  }

  refill() {
    const now = Date.now();
    const elapsed = (now - this.lastRefill) / 1000;
    this.tokens = Math.min(this.capacity, this.tokens + elapsed * this.refillPerSecond);
    this.lastRefill = now;
  }

  tryRemove(count = 1) {
    this.refill();
    if (this.tokens >= count) {
      this.tokens -= count;
      return true;
    }
    this.emit('throttled', { wanted: count, available: this.tokens });
    return false;
  }
}

async function fetchJson(url, { method = 'GET', headers = {}, body, retries = 3 } = {}) {
  let lastError;
  for (let attempt = 0; attempt <= retries; attempt++) {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), DEFAULT_TIMEOUT_MS);
    try {
      const res = await fetch(url, {
        method,
        headers: { 'content-type': 'application/json', ...headers },
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: controller.signal,
      });
      if (!res.ok) {
        if (RETRYABLE.has(res.status) && attempt < retries) {
          await new Promise((resolve) => setTimeout(resolve, 2 ** attempt * 250));
          continue;
        }
        throw new Error(`Request to ${url} failed with status ${res.status}: ${await res.text()}`);
      }
      return await res.json();
    } catch (err) {
      lastError = err;
      if (err.name !== 'AbortError') throw err;
    } finally {
      clearTimeout(timer);
    }
  }
  throw lastError;
}

function createServer(limiter) {
  return http.createServer(async (req, res) => {
    const url = new URL(req.url, `http://${req.headers.host}`);
    if (!limiter.tryRemove()) {
      res.writeHead(429, { 'retry-after': '1' });
      return res.end(JSON.stringify({ error: { type: 'rate_limit_error', message: 'Too many requests' } }));
    }
    if (req.method === 'GET' && url.pathname === '/health') {
      res.writeHead(200, { 'content-type': 'application/json' });
      return res.end(JSON.stringify({ ok: true, uptime: process.uptime() }));
    }
    const chunks = [];
    for await (const chunk of req) chunks.push(chunk);
    let payload;
    try {
      payload = JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}');
    } catch (e) {
      res.writeHead(400, { 'content-type': 'application/json' });
      return res.end(JSON.stringify({ error: { type: 'invalid_request_error', message: e.message } }));
    }
    const items = Array.isArray(payload.items) ? payload.items : [];
    const totals = items.reduce((acc, item) => {
      acc[item.kind] = (acc[item.kind] ?? 0) + Number(item.amount || 0);
      return acc;
    }, {});
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ count: items.length, totals }));
  });
}

module.exports = { RateLimiter, fetchJson, createServer };
"""

SYSTEM_PROMPT = (
    "You are an interactive CLI agent that helps users with software engineering tasks. Use the "
    "instructions below and the tools available to you to assist the user.\n"
    "\n"
    "IMPORTANT: Assist with defensive security tasks only. Refuse to create, modify, or improve code "
    "that may be used maliciously. Do not generate or guess URLs for the user unless you are confident "
    "that the URLs are for helping the user with programming.\n"
    "\n"
    "If the user asks for help or wants to give feedback inform them of the following:\n"
    "- /help: Get help with using the CLI\n"
    "- To give feedback, users should report the issue on the project's issue tracker\n"
    "\n"
    "# Tone and style\n"
    "You should be concise, direct, and to the point. When you run a non-trivial bash command, you "
    "should explain what the command does and why you are running it, to make sure the user understands "
    "what you are doing (this is especially important when you are running a command that will make "
    "changes to the user's system).\n"
    "Remember that your output will be displayed on a command line interface. Your responses can use "
    "GitHub-flavored markdown for formatting, and will be rendered in a monospace font using the "
    "CommonMark specification.\n"
    "Output text to communicate with the user; all text you output outside of tool use is displayed to "
    "the user. Only use tools to complete tasks. Never use tools like Bash or code comments as means to "
    "communicate with the user during the session.\n"
    "\n"
    "<example>\n"
    "user: 2 + 2\n"
    "assistant: 4\n"
    "</example>\n"
    "\n"
    "<example>\n"
    "user: what command should I run to watch files in the current directory?\n"
    "assistant: [runs ls to list the files in the current directory, then read docs/commands in the "
    "relevant file to find out how to watch files]\n"
    "npm run dev\n"
    "</example>\n"
    "\n"
    "# Following conventions\n"
    "When making changes to files, first understand the file's code conventions. Mimic code style, use "
    "existing libraries and utilities, and follow existing patterns.\n"
    "- NEVER assume that a given library is available, even if it is well known. Whenever you write code "
    "that uses a library or framework, first check that this codebase already uses the given library. "
    "For example, you might look at neighboring files, or check the package.json (or cargo.toml, and so "
    "on depending on the language).\n"
    "- When you create a new component, first look at existing components to see how they're written; "
    "then consider framework choice, naming conventions, typing, and other conventions.\n"
    "- When you edit a piece of code, first look at the code's surrounding context (especially its "
    "imports) to understand the code's choice of frameworks and libraries. Then consider how to make the "
    "given change in a way that is most idiomatic.\n"
    "- Always follow security best practices. Never introduce code that exposes or logs secrets and "
    "keys. Never commit secrets or keys to the repository.\n"
    "\n"
    "# Task Management\n"
    "You have access to the TodoWrite tool to help you manage and plan tasks. Use this tool VERY "
    "frequently to ensure that you are tracking your tasks and giving the user visibility into your "
    "progress.\n"
    "It is critical that you mark todos as completed as soon as you are done with a task. Do not batch "
    "up multiple tasks before marking them as completed.\n"
    "\n"
    "# Doing tasks\n"
    "The user will primarily request you perform software engineering tasks. This includes solving bugs, "
    "adding new functionality, refactoring code, explaining code, and more. For these tasks the "
    "following steps are recommended:\n"
    "1. Use the available search tools to understand the codebase and the user's query. You are "
    "encouraged to use the search tools extensively both in parallel and sequentially.\n"
    "2. Implement the solution using all tools available to you.\n"
    "3. Verify the solution if possible with tests. NEVER assume specific test framework or test script. "
    "Check the README or search codebase to determine the testing approach.\n"
    "4. VERY IMPORTANT: When you have completed a task, you MUST run the lint and typecheck commands "
    "(e.g. `npm run lint`, `npm run typecheck`, `ruff`, etc.) with Bash if they were provided to you to "
    "ensure your code is correct.\n"
    "\n"
    "# Tool usage policy\n"
    "- When doing file search, prefer to use the Task tool in order to reduce context usage.\n"
    "- You have the capability to call multiple tools in a single response. When multiple independent "
    "pieces of information are requested, batch your tool calls together for optimal performance. When "
    "making multiple bash tool calls, you MUST send a single message with multiple tools calls to run "
    "the calls in parallel.\n"
    "\n"
    "## Code references\n"
    "When referencing specific functions or pieces of code include the pattern `file_path:line_number` "
    "to allow the user to easily navigate to the source code location.\n"
    "\n"
    "<example>\n"
    "user: Where are errors from the client handled?\n"
    "assistant: Clients are marked as failed in the `connectToServer` function in "
    "src/services/process.ts:712.\n"
    "</example>\n"
    "\n"
    "## Committing changes with git\n"
    "When the user asks you to create a new git commit, follow these steps carefully:\n"
    "1. Run `git status`, `git diff` and `git log -n 5 --oneline` in parallel to understand the current "
    "state.\n"
    "2. Draft a commit message that focuses on the \"why\" rather than the \"what\".\n"
    "3. Create the commit with a message ending with a blank line and the co-author trailer, using a "
    "HEREDOC:\n"
    "\n"
    "```bash\n"
    "git commit -m \"$(cat <<'EOF'\n"
    "   Fix race condition in session cleanup\n"
    "\n"
    "   The cleanup task could run while a request still held the lock.\n"
    "   EOF\n"
    "   )\"\n"
    "```\n"
    "\n"
    "4. If the commit fails due to pre-commit hook changes, retry the commit ONCE to include these "
    "automated changes.\n"
    "\n"
    "Here is useful information about the environment you are running in:\n"
    "<env>\n"
    "Working directory: /home/user/projects/codex-proxy\n"
    "Is directory a git repo: Yes\n"
    "Platform: linux\n"
    "OS Version: Linux 6.8.0-45-generic\n"
    "Today's date: 2025-06-14\n"
    "</env>\n"
    "You are powered by the model named Opus 4. The exact model ID is claude-opus-4-20250514.\n"
    "\n"
    "gitStatus: This is the git status at the start of the conversation.\n"
    "Current branch: main\n"
    "\n"
    "Status:\n"
    "M codex_proxy.py\n"
    "?? tests/test_streaming.py\n"
    "\n"
    "Recent commits:\n"
    "3f2a9c1 Translate tool_result images into input_image parts\n"
    "8b7d0e4 Map stop_reason from response.incomplete_details\n"
    "a41c2f7 Add /v1/messages/count_tokens estimate\n"
)

TOOLS = [
    {'type': 'function',
     'name': 'Bash',
     'description': 'Executes a given bash command in a persistent shell session with optional timeout, '
                    'ensuring proper handling and security measures.\n'
                    '\n'
                    'Before executing the command, please follow these steps:\n'
                    '\n'
                    '1. Directory Verification:\n'
                    '   - If the command will create new directories or files, first use `ls` to verify the '
                    'parent directory exists and is the correct location\n'
                    '   - For example, before running "mkdir foo/bar", first use `ls foo` to check that '
                    '"foo" exists and is the intended parent directory\n'
                    '\n'
                    '2. Command Execution:\n'
                    '   - Always quote file paths that contain spaces with double quotes (e.g., cd "path '
                    'with spaces/file.txt")\n'
                    '   - After ensuring proper quoting, execute the command.\n'
                    '   - Capture the output of the command.\n'
                    '\n'
                    'Usage notes:\n'
                    '  - The command argument is required.\n'
                    '  - You can specify an optional timeout in milliseconds (up to 600000ms / 10 minutes). '
                    'If not specified, commands will timeout after 120000ms (2 minutes).\n'
                    '  - If the output exceeds 30000 characters, output will be truncated before being '
                    'returned to you.\n'
                    '  - VERY IMPORTANT: You MUST avoid using search commands like `find` and `grep`. '
                    'Instead use Grep, Glob, or Task to search.',
     'parameters': {'type': 'object',
                    'properties': {'command': {'type': 'string', 'description': 'The command to execute'},
                                   'timeout': {'type': 'number',
                                               'description': 'Optional timeout in milliseconds (max '
                                                              '600000)'},
                                   'description': {'type': 'string',
                                                   'description': 'Clear, concise description of what this '
                                                                  'command does in 5-10 words. Examples:\n'
                                                                  'Input: ls\n'
                                                                  'Output: Lists files in current directory'},
                                   'run_in_background': {'type': 'boolean',
                                                         'description': 'Set to true to run this command in '
                                                                        'the background.'}},
                    'required': ['command'],
                    'additionalProperties': False,
                    '$schema': 'http://json-schema.org/draft-07/schema#'}},
    {'type': 'function',
     'name': 'Read',
     'description': 'Reads a file from the local filesystem. You can access any file directly by using this '
                    'tool.\n'
                    'Assume this tool is able to read all files on the machine. If the User provides a path '
                    'to a file assume that path is valid. It is okay to read a file that does not exist; an '
                    'error will be returned.\n'
                    '\n'
                    'Usage:\n'
                    '- The file_path parameter must be an absolute path, not a relative path\n'
                    '- By default, it reads up to 2000 lines starting from the beginning of the file\n'
                    '- You can optionally specify a line offset and limit (especially handy for long files)\n'
                    '- Any lines longer than 2000 characters will be truncated\n'
                    '- Results are returned using cat -n format, with line numbers starting at 1\n'
                    '- This tool allows Claude Code to read images (eg PNG, JPG, etc). When reading an image '
                    'file the contents are presented visually as Claude Code is a multimodal LLM.\n'
                    '- This tool can read PDF files (.pdf). PDFs are processed page by page, extracting both '
                    'text and visual content for analysis.',
     'parameters': {'type': 'object',
                    'properties': {'file_path': {'type': 'string',
                                                 'description': 'The absolute path to the file to read'},
                                   'offset': {'type': 'number',
                                              'description': 'The line number to start reading from. Only '
                                                             'provide if the file is too large to read at '
                                                             'once'},
                                   'limit': {'type': 'number',
                                             'description': 'The number of lines to read. Only provide if '
                                                            'the file is too large to read at once.'}},
                    'required': ['file_path'],
                    'additionalProperties': False,
                    '$schema': 'http://json-schema.org/draft-07/schema#'}},
    {'type': 'function',
     'name': 'Edit',
     'description': 'Performs exact string replacements in files.\n'
                    '\n'
                    'Usage:\n'
                    '- You must use your `Read` tool at least once in the conversation before editing. This '
                    'tool will error if you attempt an edit without reading the file.\n'
                    '- When editing text from Read tool output, ensure you preserve the exact indentation '
                    '(tabs/spaces) as it appears AFTER the line number prefix.\n'
                    '- ALWAYS prefer editing existing files in the codebase. NEVER write new files unless '
                    'explicitly required.\n'
                    '- The edit will FAIL if `old_string` is not unique in the file. Either provide a larger '
                    'string with more surrounding context to make it unique or use `replace_all` to change '
                    'every instance of `old_string`.',
     'parameters': {'type': 'object',
                    'properties': {'file_path': {'type': 'string',
                                                 'description': 'The absolute path to the file to modify'},
                                   'old_string': {'type': 'string', 'description': 'The text to replace'},
                                   'new_string': {'type': 'string',
                                                  'description': 'The text to replace it with (must be '
                                                                 'different from old_string)'},
                                   'replace_all': {'type': 'boolean',
                                                   'default': False,
                                                   'description': 'Replace all occurences of old_string '
                                                                  '(default false)'}},
                    'required': ['file_path', 'old_string', 'new_string'],
                    'additionalProperties': False,
                    '$schema': 'http://json-schema.org/draft-07/schema#'}},
    {'type': 'function',
     'name': 'Glob',
     'description': '- Fast file pattern matching tool that works with any codebase size\n'
                    '- Supports glob patterns like "**/*.js" or "src/**/*.ts"\n'
                    '- Returns matching file paths sorted by modification time\n'
                    '- Use this tool when you need to find files by name patterns',
     'parameters': {'type': 'object',
                    'properties': {'pattern': {'type': 'string',
                                               'description': 'The glob pattern to match files against'},
                                   'path': {'type': 'string',
                                            'description': 'The directory to search in. If not specified, '
                                                           'the current working directory will be used.'}},
                    'required': ['pattern'],
                    'additionalProperties': False,
                    '$schema': 'http://json-schema.org/draft-07/schema#'}},
    {'type': 'function',
     'name': 'Grep',
     'description': 'A powerful search tool built on ripgrep\n'
                    '\n'
                    '  Usage:\n'
                    '  - ALWAYS use Grep for search tasks. NEVER invoke `grep` or `rg` as a Bash command.\n'
                    '  - Supports full regex syntax (e.g., "log.*Error", "function\\s+\\w+")\n'
                    '  - Filter files with glob parameter (e.g., "*.js", "**/*.tsx") or type parameter '
                    '(e.g., "js", "py", "rust")\n'
                    '  - Output modes: "content" shows matching lines, "files_with_matches" shows only file '
                    'paths (default), "count" shows match counts',
     'parameters': {'type': 'object',
                    'properties': {'pattern': {'type': 'string',
                                               'description': 'The regular expression pattern to search for '
                                                              'in file contents'},
                                   'path': {'type': 'string',
                                            'description': 'File or directory to search in (rg PATH). '
                                                           'Defaults to current working directory.'},
                                   'glob': {'type': 'string',
                                            'description': 'Glob pattern to filter files (e.g. "*.js", '
                                                           '"*.{ts,tsx}") - maps to rg --glob'},
                                   'output_mode': {'type': 'string',
                                                   'enum': ['content', 'files_with_matches', 'count'],
                                                   'description': 'Output mode. Defaults to '
                                                                  '"files_with_matches".'},
                                   '-i': {'type': 'boolean',
                                          'description': 'Case insensitive search (rg -i)'},
                                   '-n': {'type': 'boolean',
                                          'description': 'Show line numbers in output (rg -n). Requires '
                                                         'output_mode: "content".'},
                                   'head_limit': {'type': 'number',
                                                  'description': 'Limit output to first N lines/entries'},
                                   'multiline': {'type': 'boolean',
                                                 'description': 'Enable multiline mode where . matches '
                                                                'newlines and patterns can span lines (rg -U '
                                                                '--multiline-dotall). Default: false.'}},
                    'required': ['pattern'],
                    'additionalProperties': False,
                    '$schema': 'http://json-schema.org/draft-07/schema#'}},
    {'type': 'function',
     'name': 'TodoWrite',
     'description': 'Use this tool to create and manage a structured task list for your current coding '
                    'session. This helps you track progress, organize complex tasks, and demonstrate '
                    'thoroughness to the user.\n'
                    '\n'
                    '## When to Use This Tool\n'
                    '1. Complex multi-step tasks - When a task requires 3 or more distinct steps or actions\n'
                    '2. User explicitly requests todo list\n'
                    '3. After receiving new instructions - Immediately capture user requirements as todos',
     'parameters': {'type': 'object',
                    'properties': {'todos': {'type': 'array',
                                             'items': {'type': 'object',
                                                       'properties': {'content': {'type': 'string',
                                                                                  'minLength': 1},
                                                                      'status': {'type': 'string',
                                                                                 'enum': ['pending',
                                                                                          'in_progress',
                                                                                          'completed']},
                                                                      'activeForm': {'type': 'string',
                                                                                     'minLength': 1}},
                                                       'required': ['content', 'status', 'activeForm'],
                                                       'additionalProperties': False},
                                             'description': 'The updated todo list'}},
                    'required': ['todos'],
                    'additionalProperties': False,
                    '$schema': 'http://json-schema.org/draft-07/schema#'}},
    {'type': 'function',
     'name': 'WebFetch',
     'description': '- Fetches content from a specified URL and processes it using an AI model\n'
                    '- Takes a URL and a prompt as input\n'
                    '- Fetches the URL content, converts HTML to markdown\n'
                    "- Returns the model's response about the content\n"
                    '- The URL must be a fully-formed valid URL\n'
                    '- HTTP URLs will be automatically upgraded to HTTPS',
     'parameters': {'type': 'object',
                    'properties': {'url': {'type': 'string',
                                           'format': 'uri',
                                           'description': 'The URL to fetch content from'},
                                   'prompt': {'type': 'string',
                                              'description': 'The prompt to run on the fetched content'}},
                    'required': ['url', 'prompt'],
                    'additionalProperties': False,
                    '$schema': 'http://json-schema.org/draft-07/schema#'}},
    {'type': 'web_search'},
]


def _stdlib_modules():
    import argparse
    import collections
    import csv
    import difflib
    import json.decoder
    import json.encoder
    import shutil
    import subprocess
    import textwrap
    return [argparse, collections, csv, difflib, json.decoder, json.encoder, shutil, subprocess, textwrap]


def _docstrings():
    """English prose from the stdlib's own docstrings."""
    docs = []
    for mod in _stdlib_modules():
        docs.append(inspect.getdoc(mod) or "")
        for name, obj in sorted(vars(mod).items()):
            if not name.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj)) \
                    and getattr(obj, "__module__", "") == mod.__name__:
                docs.append(inspect.getdoc(obj) or "")
    return "\n\n".join(d for d in docs if d)


def _python_source():
    import json.decoder
    import json.encoder
    import shutil
    import textwrap
    return "\n\n".join(inspect.getsource(m) for m in (json.encoder, json.decoder, textwrap, shutil))


def _stdlib_tools():
    """Function tools (OpenAI Responses shape) generated from documented stdlib functions."""
    import shutil
    import textwrap
    tools = []
    for mod in (shutil, textwrap, os.path):
        for name, fn in sorted(vars(mod).items()):
            if name.startswith("_") or not inspect.isfunction(fn) or not inspect.getdoc(fn):
                continue
            try:
                sig = inspect.signature(fn)
            except (TypeError, ValueError):
                continue
            props, required = {}, []
            for p in sig.parameters.values():
                if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                    continue
                kind = {bool: "boolean", int: "integer", float: "number"}.get(type(p.default), "string")
                props[p.name] = {"type": kind, "description": "The %s argument of %s.%s" % (p.name, mod.__name__, name)}
                if p.default is p.empty:
                    required.append(p.name)
            tools.append({"type": "function", "name": "%s_%s" % (mod.__name__.replace(".", "_"), name),
                          "description": inspect.getdoc(fn),
                          "parameters": {"type": "object", "properties": props, "required": required,
                                         "additionalProperties": False}})
    return tools


def _system_prompt():
    """~55 KB (~12k tokens) Claude Code-like system prompt: instructions, env, CLAUDE.md, code, docs."""
    import json.decoder
    import textwrap
    parts = [SYSTEM_PROMPT, "# claudeMd\nContents of /home/user/projects/codex-proxy/CLAUDE.md (project "
             "instructions):\n\n## Overview\n" + ENGLISH, "## Module reference\n"]
    for mod in _stdlib_modules():
        doc = inspect.getdoc(mod) or ""
        parts.append("### `%s`\n\n%s\n" % (mod.__name__, doc[:4000]))
    src = inspect.getsource(textwrap)
    parts.append("## Example source\n\n```python\n%s\n```\n" % src[:20000])
    parts.append("```python\n%s\n```\n" % inspect.getsource(json.decoder)[:12000])
    parts.append("## Tool schema example\n\n```json\n%s\n```\n" % json.dumps(TOOLS[:3], indent=2)[:6000])
    return "\n".join(parts)


def _png(width, height):
    """A real (solid colour) RGB PNG built with zlib, as a data URL."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    raw = (b"\x00" + b"\x20\x80\xc0" * width) * height
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _compact(obj):
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


class _Reference(object):
    """Exact counts of the texts a request carries, plus chat framing: 3 tokens of reply priming,
    4 per instructions block / input item, 8 per tool (a few tokens, like the real chat format)."""

    def __init__(self):
        self.total = 3

    def item(self, *texts):
        self.total += 4 + sum(true_count(t) for t in texts)

    def tool(self, tool):
        if tool.get("type") == "function":
            self.total += 8 + true_count(tool["name"]) + true_count(tool.get("description") or "") + true_count(
                _compact(tool.get("parameters") or {}))
        else:
            self.total += 8 + true_count(_compact(tool))


class EstimateTextTokensTest(unittest.TestCase):
    def assertClose(self, category, text):
        true = true_count(text)
        est = estimate_text_tokens(text)
        self.assertGreater(true, 100, category)
        err = (est - true) / float(true)
        self.assertLessEqual(abs(err), TOLERANCE, "%s: estimate %d vs o200k %d (%+.1f%%)" % (
            category, est, true, 100 * err))

    def test_english_prose(self):
        self.assertClose("english (embedded)", ENGLISH)
        self.assertClose("english (stdlib docstrings)", _docstrings())

    def test_python_source(self):
        self.assertClose("python (stdlib source)", _python_source())

    def test_javascript(self):
        self.assertClose("javascript", JAVASCRIPT)

    def test_json_tool_schemas(self):
        self.assertClose("json tools (claude-code-like)", _compact(TOOLS))
        self.assertClose("json tools (stdlib-generated)", _compact(_stdlib_tools()))
        self.assertClose("json schema (indented)", json.dumps([t.get("parameters") for t in TOOLS], indent=2))

    def test_chinese(self):
        self.assertClose("chinese", CHINESE)

    def test_japanese(self):
        self.assertClose("japanese", JAPANESE)

    def test_korean(self):
        self.assertClose("korean", KOREAN)

    def test_system_prompt(self):
        text = _system_prompt()
        self.assertGreater(len(text), 50000)
        self.assertClose("system prompt", text)

    def test_empty(self):
        self.assertEqual(estimate_text_tokens(""), 0)


class EstimateRequestTokensTest(unittest.TestCase):
    def assertClose(self, label, est, true):
        err = (est - true) / float(true)
        self.assertLessEqual(abs(err), TOLERANCE, "%s: estimate %d vs reference %d (%+.1f%%)" % (
            label, est, true, 100 * err))

    def test_full_request(self):
        image = _png(600, 400)
        code = _python_source()[:6000]
        user_text = "Here is the module I am working on:\n\n" + code + "\n\nWhy does the test fail?"
        arguments = _compact({"command": "python -m unittest tests.test_proxy -v", "timeout": 120000,
                              "description": "Run the proxy unit tests"})
        tool_output = "FAIL: test_stream_order (tests.test_proxy.StreamTest)\n" + code[:3000]
        summary = "**Investigating the failure**\n\nThe stream emits content_block_stop before message_delta."
        tools = TOOLS + _stdlib_tools()[:15] + [{"type": "web_search"}]
        body = {
            "model": "gpt-5.5",
            "instructions": _system_prompt(),
            "input": [
                {"type": "message", "role": "user", "content": [
                    {"type": "input_text", "text": user_text},
                    {"type": "input_image", "image_url": image, "detail": "auto"}]},
                {"type": "reasoning", "summary": [{"type": "summary_text", "text": summary}],
                 "encrypted_content": "gAAAAABo" + "Q" * 600},
                {"type": "function_call", "call_id": "call_1", "name": "Bash", "arguments": arguments},
                {"type": "function_call_output", "call_id": "call_1", "output": tool_output},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": CHINESE}]},
                {"type": "message", "role": "user", "content": [
                    {"type": "input_text", "text": JAPANESE}, {"type": "input_text", "text": KOREAN}]},
            ],
            "tools": tools,
        }
        ref = _Reference()
        ref.item(body["instructions"])
        ref.item(user_text)
        ref.total += image_tokens(image)  # checked against OpenAI's own numbers in test_token_estimate
        ref.item(summary)
        ref.item("Bash", arguments)
        ref.item(tool_output)
        ref.item(CHINESE)
        ref.item(JAPANESE, KOREAN)
        for tool in tools:
            ref.tool(tool)
        self.assertClose("full request", estimate_request_tokens(body), ref.total)

    def test_image_cost_uses_formula(self):
        text = "What is shown in this screenshot? Describe the layout."
        for detail in ("auto", "high", "low"):
            body = {"input": [{"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": text},
                {"type": "input_image", "image_url": _png(600, 400), "detail": detail}]}]}
            ref = _Reference()
            ref.item(text)
            ref.total += image_tokens(_png(600, 400), detail)  # 425 for auto/high, 85 for low
            self.assertClose("image detail=%s" % detail, estimate_request_tokens(body), ref.total)


class RefitTest(unittest.TestCase):
    def test_the_refit_command_fits_every_category_within_tolerance(self):
        import fit_token_estimate
        samples = report_samples()
        refit, _, held = fit_token_estimate.fit(fit_token_estimate.piece_counts(t for _, t in samples), true_count)
        self.assertEqual(set(refit), set(fit_token_estimate.codex_proxy.TOKEN_COST_FIT))
        self.assertIn("script_han_traditional", held)  # no Traditional Chinese in the samples
        self.assertIn('"word_alone": %r,' % refit["word_alone"], fit_token_estimate.table_source(refit))
        for name, text in samples:
            true = true_count(text)
            error = (fit_token_estimate.estimate_with(refit, text) - true) / float(true)
            self.assertLessEqual(abs(error), TOLERANCE, "%s: refit %+.1f%%" % (name, 100 * error))


def report_samples():
    """(category, text) for each category of the report; tests/fit_token_estimate.py fits on them."""
    return [("English prose", ENGLISH + _docstrings()), ("Python source", _python_source()),
            ("JavaScript", JAVASCRIPT), ("JSON tool schemas", _compact(TOOLS) + _compact(_stdlib_tools())),
            ("Chinese", CHINESE), ("Japanese", JAPANESE), ("Korean", KOREAN),
            ("Claude Code-sized system prompt", _system_prompt())]


def report():
    """Print the estimate's error per category (the numbers in the README)."""
    print("%-32s %9s %9s %7s" % ("category", "o200k", "estimate", "error"))
    for name, text in report_samples():
        true, est = true_count(text), estimate_text_tokens(text)
        print("%-32s %9d %9d %+6.1f%%" % (name, true, est, 100.0 * (est - true) / true))


if __name__ == "__main__":
    if "--report" in sys.argv:
        report()
    else:
        unittest.main()
