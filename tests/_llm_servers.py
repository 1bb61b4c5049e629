"""Scripted LLM servers for tests: the real wire protocols on 127.0.0.1, port 0.

`ScriptedServer("openai" | "anthropic", steps)` answers each POST with the next step:
- `Reply(text, tokens_in, tokens_out)`: a normal completion (Anthropic: SSE when the
  request asks for `stream: true`, JSON otherwise);
- `ToolUse(name, input)`: an Anthropic `tool_use` block (stop_reason `tool_use`);
- `Status(code, headers, body)`: an HTTP error (429 with retry-after, 500, ...);
- `Sleep(seconds, then)`: wait (longer than the client's timeout), then answer `then`;
- `Raw(body)`: a 200 whose body is whatever bytes are given (malformed JSON).
A step may also be a callable `f(request_json) -> step` that looks at the conversation.
When the script runs out, `default` (a step or callable) answers; without one, a 500.
Every request body is kept in `.requests` (with `.paths` and `.headers`) for assertions.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional, Union


@dataclass
class Reply:
    text: str
    tokens_in: Optional[int] = None  # None: estimated from the request size
    tokens_out: Optional[int] = None


@dataclass
class ToolUse:
    name: str
    input: dict[str, Any]
    text: str = ""


@dataclass
class Status:
    code: int
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""


@dataclass
class Sleep:
    seconds: float
    then: Any = None


@dataclass
class Raw:
    body: bytes
    content_type: str = "application/json"


Step = Union[Reply, ToolUse, Status, Sleep, Raw, Callable[[dict], Any]]


class ScriptedServer:
    def __init__(self, protocol: str, steps: Optional[list[Step]] = None, default: Optional[Step] = None):
        assert protocol in ("openai", "anthropic")
        self.protocol = protocol
        self.steps = list(steps or [])
        self.default = default
        self.requests: list[dict] = []
        self.paths: list[str] = []
        self.headers: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self._ids = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                self._send(404, {"error": {"type": "not_found", "message": "no GET here"}})

            def do_HEAD(self):
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def do_POST(self):
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {"_raw": raw.decode("utf-8", "replace")}
                if "count_tokens" in self.path:
                    self._send(200, {"input_tokens": _estimate(body)})
                    return
                with server._lock:
                    server.requests.append(body)
                    server.paths.append(self.path)
                    server.headers.append({k.lower(): v for k, v in self.headers.items()})
                    step = server.steps.pop(0) if server.steps else server.default
                    server._ids += 1
                    n = server._ids
                try:
                    self._answer(step, body, n)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test): that is the point

            def _answer(self, step, body: dict, n: int) -> None:
                while callable(step) and not isinstance(step, type):
                    step = step(body)
                if step is None:
                    self._send(500, {"error": {"type": "api_error", "message": "script exhausted"}})
                elif isinstance(step, Sleep):
                    time.sleep(step.seconds)
                    self._answer(step.then, body, n)
                elif isinstance(step, Status):
                    payload = step.body or json.dumps({"error": {"type": "error", "message": f"scripted {step.code}"}})
                    self._send(step.code, payload, step.headers)
                elif isinstance(step, Raw):
                    self._send(200, step.body, {"content-type": step.content_type})
                elif server.protocol == "openai":
                    self._send(200, _openai_completion(step, body, n))
                elif body.get("stream"):
                    self._sse(_anthropic_events(step, body, n))
                else:
                    self._send(200, _anthropic_message(step, body, n))

            def _send(self, code: int, payload: Any, headers: Optional[dict[str, str]] = None) -> None:
                data = payload if isinstance(payload, bytes) else (
                    payload.encode() if isinstance(payload, str) else json.dumps(payload).encode())
                self.send_response(code)
                headers = {"content-type": "application/json", **(headers or {})}
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _sse(self, events: list[tuple[str, dict]]) -> None:
                chunks = b"".join(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events)
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("cache-control", "no-cache")
                self.send_header("content-length", str(len(chunks)))
                self.end_headers()
                self.wfile.write(chunks)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}" + ("/v1" if self.protocol == "openai" else "")

    def __enter__(self) -> "ScriptedServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _estimate(body: dict) -> int:
    return max(1, len(json.dumps(body)) // 4)


def _openai_completion(step: Reply, body: dict, n: int) -> dict:
    tin = step.tokens_in if step.tokens_in is not None else _estimate(body)
    tout = step.tokens_out if step.tokens_out is not None else max(1, len(step.text) // 4)
    return {
        "id": f"chatcmpl-{n}", "object": "chat.completion", "created": int(time.time()),
        "model": body.get("model", "scripted"),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": step.text}, "finish_reason": "stop",
                     "logprobs": None}],
        "usage": {"prompt_tokens": tin, "completion_tokens": tout, "total_tokens": tin + tout},
    }


def _anthropic_blocks(step) -> list[dict]:
    if isinstance(step, ToolUse):
        blocks = [{"type": "text", "text": step.text}] if step.text else []
        return blocks + [{"type": "tool_use", "id": f"toolu_{abs(hash((step.name, json.dumps(step.input)))) % 10**12:012d}",
                          "name": step.name, "input": step.input}]
    return [{"type": "text", "text": step.text}]


def _anthropic_message(step, body: dict, n: int) -> dict:
    tin = getattr(step, "tokens_in", None) or _estimate(body)
    blocks = _anthropic_blocks(step)
    tout = getattr(step, "tokens_out", None) or max(1, len(json.dumps(blocks)) // 4)
    return {"id": f"msg_{n:08d}", "type": "message", "role": "assistant", "model": body.get("model", "scripted"),
            "content": blocks, "stop_reason": "tool_use" if isinstance(step, ToolUse) else "end_turn",
            "stop_sequence": None, "usage": {"input_tokens": tin, "output_tokens": tout}}


def _anthropic_events(step, body: dict, n: int) -> list[tuple[str, dict]]:
    msg = _anthropic_message(step, body, n)
    start = dict(msg, content=[], stop_reason=None, usage={"input_tokens": msg["usage"]["input_tokens"],
                                                           "output_tokens": 1})
    events: list[tuple[str, dict]] = [("message_start", {"type": "message_start", "message": start})]
    for i, block in enumerate(msg["content"]):
        if block["type"] == "text":
            events.append(("content_block_start", {"type": "content_block_start", "index": i,
                                                   "content_block": {"type": "text", "text": ""}}))
            text = block["text"]
            for j in range(0, max(1, len(text)), 400):  # several deltas, as a real stream
                events.append(("content_block_delta", {"type": "content_block_delta", "index": i,
                                                       "delta": {"type": "text_delta", "text": text[j:j + 400]}}))
        else:
            events.append(("content_block_start", {"type": "content_block_start", "index": i, "content_block": {
                "type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}}))
            events.append(("content_block_delta", {"type": "content_block_delta", "index": i, "delta": {
                "type": "input_json_delta", "partial_json": json.dumps(block["input"])}}))
        events.append(("content_block_stop", {"type": "content_block_stop", "index": i}))
    events.append(("message_delta", {"type": "message_delta", "delta": {"stop_reason": msg["stop_reason"],
                                                                         "stop_sequence": None},
                                     "usage": {"output_tokens": msg["usage"]["output_tokens"]}}))
    events.append(("message_stop", {"type": "message_stop"}))
    return events


def last_user_text(body: dict) -> str:
    """The text of the last user message (OpenAI or Anthropic shape), tool results included."""
    for m in reversed(body.get("messages", [])):
        if m.get("role") != "user":
            continue
        c = m.get("content")
        if isinstance(c, str):
            return c
        parts = []
        for block in c or []:
            if block.get("type") == "text":
                parts.append(block.get("text", ""))
            elif block.get("type") == "tool_result":
                inner = block.get("content")
                parts.append(inner if isinstance(inner, str) else json.dumps(inner))
        return "\n".join(parts)
    return ""


def tool_results(body: dict) -> int:
    """How many tool results the conversation holds so far (Anthropic shape)."""
    n = 0
    for m in body.get("messages", []):
        if isinstance(m.get("content"), list):
            n += sum(1 for b in m["content"] if b.get("type") == "tool_result")
    return n
