#!/usr/bin/env python3
"""Scripted mock upstream for the real-client suite (tests/clients_test.py): it speaks the
three wire formats the coding agents and SDKs reach through llmgw, and drives one tool round
trip with whatever tool the client declared.

    python3 tests/climock.py --port 0 [--log FILE]   # prints "PORT <n>", serves until killed
    python3 tests/climock.py --selftest              # renders every reply once and checks it

Threaded HTTP/1.1 (http.server), keep-alive, Content-Length or chunked request bodies
(gzip/deflate Content-Encoding decoded), replies as Content-Length JSON or chunked SSE (one
HTTP chunk per event). Loopback only. The reference for the shapes is
/work/shared/PROVIDERS.md (sections 1, 2, 9 and 10).

Wire format by path (a `?query` is ignored for the choice, logged as sent):
    POST .../responses, .../responses/compact     OpenAI Responses (stream or not)
    POST .../messages/count_tokens                Anthropic count_tokens -> {"input_tokens": n}
    POST .../messages                             Anthropic Messages (stream or not)
    POST .../chat/completions                     OpenAI Chat Completions (stream or not)
    GET  .../models, .../models/{id}              a model list / one model (Anthropic shape
                                                  when the request carries anthropic-version)
    anything else                                 404 in the OpenAI error shape (logged)

The script ("smart"), the same for every wire format, decided on the conversation:
  1. the turn after the last assistant turn holds a tool result (Responses
     function_call_output / custom_tool_call_output, Anthropic tool_result, chat role tool):
     reply text "TOOL SAID: <the tool output>";
  2. the request forces a tool (tool_choice naming one: how llmgw may carry a JSON schema),
     or asks for structured output (Responses text.format / chat response_format /
     Anthropic output_format json_schema): answer that tool call / that JSON, built from
     the schema (strings "hello", integers 42, numbers 1.5, booleans true, enums' first);
  3. a file to read is set (POST /_config) and the request declares a tool the script can
     drive: a call of it reading that file. Known tools, in this order: `Read` with
     `file_path` (Claude Code), any tool with a string `cmd` (Codex's exec_command:
     "cat FILE"), `shell_command` / any tool with a string `command` ("cat FILE"), `shell`
     with an array `command` (["bash", "-lc", "cat FILE"]). A Responses request that sets
     `reasoning` gets a reasoning item (summary + encrypted_content) before the call, an
     Anthropic request with `thinking` enabled a thinking block with a signature;
  4. otherwise the text "hello" (titles, quota checks with max_tokens 1, anything else).

Control paths (never forwarded by llmgw; tests call them directly):
    GET  /_requests   JSON list of recorded requests: seq, t, method, path, headers (lowercase
                      names; a repeated header joined with ", "), header_list, body (text),
                      json (parsed, or null), kind, reply (what the script answered:
                      tool-result, forced, json, tool:<name>, text, ...)
    POST /_reset      forget the recorded requests
    POST /_config     {"file": "/abs/path" | null}: the file the scripted tool call reads
With --log FILE every request is also appended to FILE as one JSON line.
"""
import argparse
import gzip
import http.server
import json
import socketserver
import sys
import threading
import time
import zlib

LOCK = threading.Lock()
STATE = {"requests": [], "file": None, "seq": 0, "log": None}
USAGE = {"in": 21, "out": 9, "cached": 0}
RS_SIG = "gAAAAclimock-encrypted-reasoning=="
AN_SIG = "EqQBCkYIARgCIkBjbGltb2NrLXNpZ25hdHVyZQ=="


# =======================================================================================
# the conversation, whatever the wire format

def _text_of(content):
    """Text of a tool output / message content: a string, or a list of parts with text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return _text_of(content.get("text") if "text" in content else content.get("content"))
    if isinstance(content, list):
        out = []
        for p in content:
            if isinstance(p, str):
                out.append(p)
            elif isinstance(p, dict):
                if isinstance(p.get("text"), str):
                    out.append(p["text"])
                elif "content" in p:
                    out.append(_text_of(p["content"]))
        return "\n".join(out)
    return json.dumps(content)


def tool_result_after_last_assistant(kind, body):
    """The output of a tool result in the turn after the last assistant turn, or None."""
    if kind == "responses":
        items = body.get("input")
        if not isinstance(items, list):
            return None
        found = None
        for it in reversed(items):
            if not isinstance(it, dict):
                continue
            t = it.get("type")
            if t in ("function_call_output", "custom_tool_call_output", "local_shell_call_output",
                     "tool_search_output"):
                if found is None:
                    found = _text_of(it.get("output"))
                continue
            if t in ("function_call", "custom_tool_call", "local_shell_call", "reasoning") or \
                    it.get("role") == "assistant":
                break
        return found
    msgs = body.get("messages")
    if not isinstance(msgs, list):
        return None
    found = None
    for m in reversed(msgs):
        if not isinstance(m, dict):
            continue
        role = m.get("role")
        if role == "assistant":
            break
        if kind == "chat" and role == "tool":
            if found is None:
                found = _text_of(m.get("content"))
        elif kind == "anthropic" and role == "user" and isinstance(m.get("content"), list):
            for b in m["content"]:
                if isinstance(b, dict) and b.get("type") == "tool_result" and found is None:
                    found = _text_of(b.get("content"))
    return found


def declared_tools(kind, body):
    """[(name, parameters schema)] of the function tools a request declares."""
    out = []
    for t in body.get("tools") or []:
        if not isinstance(t, dict):
            continue
        if kind == "chat" and isinstance(t.get("function"), dict):
            out.append((t["function"].get("name"), t["function"].get("parameters") or {}))
        elif kind == "anthropic" and "name" in t:
            out.append((t.get("name"), t.get("input_schema") or {}))
        elif kind == "responses" and t.get("type") == "function":
            out.append((t.get("name"), t.get("parameters") or {}))
        elif kind == "responses" and t.get("type") == "namespace":
            for sub in t.get("tools") or []:
                if isinstance(sub, dict) and sub.get("type") == "function":
                    out.append((sub.get("name"), sub.get("parameters") or {}))
    return out


def _prop_type(schema, prop):
    p = ((schema or {}).get("properties") or {}).get(prop)
    if not isinstance(p, dict):
        return None
    t = p.get("type")
    if isinstance(t, list):
        t = [x for x in t if x != "null"][0] if t else None
    return t or "any"


def drive_tool(tools, path):
    """(name, arguments dict) of the call reading `path` with a tool the script knows, or None."""
    def first(pred):
        for name, sch in tools:
            if pred(name, sch):
                return name, sch
        return None
    hit = first(lambda n, s: n == "Read" and _prop_type(s, "file_path"))
    if hit:
        return hit[0], {"file_path": path}
    hit = first(lambda n, s: _prop_type(s, "cmd") == "string")
    if hit:
        return hit[0], {"cmd": "cat %s" % path}
    hit = first(lambda n, s: n in ("shell_command", "shell", "Bash") and _prop_type(s, "command") == "string")
    if hit:
        return hit[0], {"command": "cat %s" % path}
    hit = first(lambda n, s: _prop_type(s, "command") == "array")
    if hit:
        return hit[0], {"command": ["bash", "-lc", "cat %s" % path]}
    return None


def from_schema(s, depth=0):
    """A value that satisfies a (simple) JSON schema."""
    if not isinstance(s, dict) or depth > 8:
        return "hello"
    if s.get("enum"):
        return s["enum"][0]
    if "const" in s:
        return s["const"]
    for k in ("anyOf", "oneOf", "allOf"):
        if isinstance(s.get(k), list) and s[k]:
            return from_schema(s[k][0], depth + 1)
    t = s.get("type")
    if isinstance(t, list):
        t = [x for x in t if x != "null"][0] if [x for x in t if x != "null"] else "null"
    if t == "object" or (t is None and "properties" in s):
        return {k: from_schema(v, depth + 1) for k, v in (s.get("properties") or {}).items()}
    if t == "array":
        return [from_schema(s.get("items") or {}, depth + 1)]
    if t == "integer":
        return 42
    if t == "number":
        return 1.5
    if t == "boolean":
        return True
    if t == "null":
        return None
    return "hello"


def forced_tool(kind, body):
    """The name of the tool tool_choice forces, or None."""
    tc = body.get("tool_choice")
    if not isinstance(tc, dict):
        return None
    if kind == "chat":
        return (tc.get("function") or {}).get("name")
    if kind == "anthropic":
        return tc.get("name") if tc.get("type") == "tool" else None
    return tc.get("name") if tc.get("type") == "function" else None


def json_schema_asked(kind, body):
    """The schema of a structured-output request, or None."""
    if kind == "responses":
        f = (body.get("text") or {}).get("format") or {}
        if f.get("type") == "json_schema":
            return f.get("schema") or {}
        if f.get("type") == "json_object":
            return {"type": "object", "properties": {"answer": {"type": "string"}}}
    elif kind == "chat":
        f = body.get("response_format") or {}
        if f.get("type") == "json_schema":
            return (f.get("json_schema") or {}).get("schema") or {}
        if f.get("type") == "json_object":
            return {"type": "object", "properties": {"answer": {"type": "string"}}}
    else:
        for f in (body.get("output_format"), (body.get("output_config") or {}).get("format")):
            if isinstance(f, dict) and f.get("type") == "json_schema":
                return f.get("schema") or {}
    return None


def decide(kind, body):
    """The script: (reply label, blocks). A block is ("text", str), ("tool", name, args dict)
    or ("reasoning", summary)."""
    out = tool_result_after_last_assistant(kind, body)
    if out is not None:
        return "tool-result", [("text", "TOOL SAID: " + out)]
    tools = declared_tools(kind, body)
    ft = forced_tool(kind, body)
    if ft:
        sch = dict(tools).get(ft) or {}
        return "forced", [("tool", ft, from_schema(sch))]
    sch = json_schema_asked(kind, body)
    if sch is not None:
        return "json", [("text", json.dumps(from_schema(sch)))]
    path = STATE["file"]
    hit = drive_tool(tools, path) if path else None
    if hit:
        blocks = []
        if kind == "responses" and isinstance(body.get("reasoning"), dict):
            blocks.append(("reasoning", "I will read the file."))
        th = body.get("thinking")
        if kind == "anthropic" and isinstance(th, dict) and th.get("type") in ("enabled", "adaptive"):
            blocks.append(("reasoning", "I will read the file."))
        blocks.append(("tool", hit[0], hit[1]))
        return "tool:" + hit[0], blocks
    return "text", [("text", "hello")]


def pieces(s, n=3):
    """s cut in up to n pieces (stream deltas)."""
    if len(s) < n:
        return [s] if s else []
    k = max(1, len(s) // n)
    return [s[i:i + k] for i in range(0, len(s), k)]


# =======================================================================================
# OpenAI Responses

def rs_usage():
    return {"input_tokens": USAGE["in"], "input_tokens_details": {"cached_tokens": USAGE["cached"]},
            "output_tokens": USAGE["out"], "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": USAGE["in"] + USAGE["out"]}


def rs_items(blocks, seq):
    items = []
    for i, b in enumerate(blocks):
        if b[0] == "text":
            items.append({"id": "msg_cm%d_%d" % (seq, i), "type": "message", "status": "completed",
                          "role": "assistant",
                          "content": [{"type": "output_text", "text": b[1], "annotations": [], "logprobs": []}]})
        elif b[0] == "tool":
            items.append({"id": "fc_cm%d_%d" % (seq, i), "type": "function_call", "status": "completed",
                          "call_id": "call_cm%d_%d" % (seq, i), "name": b[1], "arguments": json.dumps(b[2])})
        else:
            items.append({"id": "rs_cm%d_%d" % (seq, i), "type": "reasoning",
                          "summary": [{"type": "summary_text", "text": b[1]}], "encrypted_content": RS_SIG})
    return items


def rs_object(body, items, status, seq):
    return {"id": "resp_cm%d" % seq, "object": "response", "created_at": int(time.time()),
            "status": status, "model": body.get("model"), "output": items,
            "usage": rs_usage() if status == "completed" else None, "error": None,
            "incomplete_details": None, "instructions": None, "parallel_tool_calls": True,
            "tool_choice": body.get("tool_choice", "auto"), "tools": [], "text": {"format": {"type": "text"}},
            "reasoning": {"effort": None, "summary": None}, "store": False, "metadata": {}}


def rs_stream(body, blocks, seq):
    items = rs_items(blocks, seq)
    evs = []

    def ev(t, **kw):
        d = {"type": t, "sequence_number": len(evs)}
        d.update(kw)
        evs.append(("event: %s\ndata: %s\n\n" % (t, json.dumps(d))).encode())
    head = rs_object(body, [], "in_progress", seq)
    ev("response.created", response=head)
    ev("response.in_progress", response=head)
    for oi, it in enumerate(items):
        if it["type"] == "message":
            text = it["content"][0]["text"]
            ev("response.output_item.added", output_index=oi,
               item=dict(it, status="in_progress", content=[]))
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            ev("response.content_part.added", item_id=it["id"], output_index=oi, content_index=0, part=part)
            for p in pieces(text):
                ev("response.output_text.delta", item_id=it["id"], output_index=oi, content_index=0,
                   delta=p, logprobs=[])
            ev("response.output_text.done", item_id=it["id"], output_index=oi, content_index=0, text=text,
               logprobs=[])
            ev("response.content_part.done", item_id=it["id"], output_index=oi, content_index=0,
               part=it["content"][0])
        elif it["type"] == "function_call":
            ev("response.output_item.added", output_index=oi, item=dict(it, status="in_progress", arguments=""))
            for p in pieces(it["arguments"]):
                ev("response.function_call_arguments.delta", item_id=it["id"], output_index=oi, delta=p)
            ev("response.function_call_arguments.done", item_id=it["id"], output_index=oi,
               name=it["name"], arguments=it["arguments"])
        else:
            s = it["summary"][0]["text"]
            ev("response.output_item.added", output_index=oi, item=dict(it, summary=[]))
            ev("response.reasoning_summary_part.added", item_id=it["id"], output_index=oi, summary_index=0,
               part={"type": "summary_text", "text": ""})
            for p in pieces(s):
                ev("response.reasoning_summary_text.delta", item_id=it["id"], output_index=oi,
                   summary_index=0, delta=p)
            ev("response.reasoning_summary_text.done", item_id=it["id"], output_index=oi, summary_index=0, text=s)
            ev("response.reasoning_summary_part.done", item_id=it["id"], output_index=oi, summary_index=0,
               part={"type": "summary_text", "text": s})
        ev("response.output_item.done", output_index=oi, item=it)
    ev("response.completed", response=rs_object(body, items, "completed", seq))
    return evs


# =======================================================================================
# Anthropic Messages

def an_content(blocks, seq):
    out = []
    for i, b in enumerate(blocks):
        if b[0] == "text":
            out.append({"type": "text", "text": b[1]})
        elif b[0] == "tool":
            out.append({"type": "tool_use", "id": "toolu_cm%d_%d" % (seq, i), "name": b[1], "input": b[2]})
        else:
            out.append({"type": "thinking", "thinking": b[1], "signature": AN_SIG})
    return out


def an_stop(blocks):
    return "tool_use" if any(b[0] == "tool" for b in blocks) else "end_turn"


def an_full(body, blocks, seq):
    return {"id": "msg_cm%d" % seq, "type": "message", "role": "assistant", "model": body.get("model"),
            "content": an_content(blocks, seq), "stop_reason": an_stop(blocks), "stop_sequence": None,
            "usage": {"input_tokens": USAGE["in"], "output_tokens": USAGE["out"],
                      "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}


def an_stream(body, blocks, seq):
    evs = []

    def ev(t, **kw):
        d = {"type": t}
        d.update(kw)
        evs.append(("event: %s\ndata: %s\n\n" % (t, json.dumps(d))).encode())
    msg = an_full(body, blocks, seq)
    head = dict(msg, content=[], stop_reason=None,
                usage={"input_tokens": USAGE["in"], "output_tokens": 1,
                       "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0})
    ev("message_start", message=head)
    ev("ping")
    for i, c in enumerate(msg["content"]):
        if c["type"] == "text":
            ev("content_block_start", index=i, content_block={"type": "text", "text": ""})
            for p in pieces(c["text"]):
                ev("content_block_delta", index=i, delta={"type": "text_delta", "text": p})
        elif c["type"] == "tool_use":
            ev("content_block_start", index=i, content_block=dict(c, input={}))
            ev("content_block_delta", index=i, delta={"type": "input_json_delta", "partial_json": ""})
            for p in pieces(json.dumps(c["input"])):
                ev("content_block_delta", index=i, delta={"type": "input_json_delta", "partial_json": p})
        else:
            ev("content_block_start", index=i, content_block={"type": "thinking", "thinking": "", "signature": ""})
            for p in pieces(c["thinking"]):
                ev("content_block_delta", index=i, delta={"type": "thinking_delta", "thinking": p})
            ev("content_block_delta", index=i, delta={"type": "signature_delta", "signature": c["signature"]})
        ev("content_block_stop", index=i)
    ev("message_delta", delta={"stop_reason": msg["stop_reason"], "stop_sequence": None},
       usage={"output_tokens": USAGE["out"]})
    ev("message_stop")
    return evs


def count_tokens(body):
    n = len(json.dumps(body.get("messages") or [])) + len(json.dumps(body.get("system") or "")) + \
        len(json.dumps(body.get("tools") or []))
    return {"input_tokens": max(1, n // 4)}


# =======================================================================================
# OpenAI Chat Completions

def ch_message(blocks, seq):
    msg = {"role": "assistant", "content": None}
    text = "".join(b[1] for b in blocks if b[0] == "text")
    if text:
        msg["content"] = text
    calls = [{"id": "call_cm%d_%d" % (seq, i), "type": "function",
              "function": {"name": b[1], "arguments": json.dumps(b[2])}}
             for i, b in enumerate(blocks) if b[0] == "tool"]
    if calls:
        msg["tool_calls"] = calls
    return msg


def ch_usage():
    return {"prompt_tokens": USAGE["in"], "completion_tokens": USAGE["out"],
            "total_tokens": USAGE["in"] + USAGE["out"], "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0}}


def ch_full(body, blocks, seq):
    msg = ch_message(blocks, seq)
    return {"id": "chatcmpl-cm%d" % seq, "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model"),
            "choices": [{"index": 0, "message": msg,
                         "finish_reason": "tool_calls" if msg.get("tool_calls") else "stop"}],
            "usage": ch_usage()}


def ch_stream(body, blocks, seq):
    evs = []
    base = {"id": "chatcmpl-cm%d" % seq, "object": "chat.completion.chunk", "created": int(time.time()),
            "model": body.get("model")}

    def ch(delta, fin=None, **kw):
        d = dict(base, choices=[{"index": 0, "delta": delta, "finish_reason": fin}])
        d.update(kw)
        evs.append(("data: %s\n\n" % json.dumps(d)).encode())
    ch({"role": "assistant", "content": ""})
    msg = ch_message(blocks, seq)
    for p in pieces(msg.get("content") or ""):
        ch({"content": p})
    for i, c in enumerate(msg.get("tool_calls") or []):
        ch({"tool_calls": [{"index": i, "id": c["id"], "type": "function",
                            "function": {"name": c["function"]["name"], "arguments": ""}}]})
        for p in pieces(c["function"]["arguments"]):
            ch({"tool_calls": [{"index": i, "function": {"arguments": p}}]})
    ch({}, "tool_calls" if msg.get("tool_calls") else "stop")
    if (body.get("stream_options") or {}).get("include_usage"):
        evs.append(("data: %s\n\n" % json.dumps(dict(base, choices=[], usage=ch_usage()))).encode())
    evs.append(b"data: [DONE]\n\n")
    return evs


# =======================================================================================
# models

MODEL_IDS = ["climock-1", "climock-2"]


def models_list(anthropic, one=None):
    if anthropic:
        def m(i):
            return {"type": "model", "id": i, "display_name": i, "created_at": "2025-01-01T00:00:00Z"}
        if one:
            return m(one)
        return {"data": [m(i) for i in MODEL_IDS], "has_more": False, "first_id": MODEL_IDS[0],
                "last_id": MODEL_IDS[-1]}

    def m(i):
        return {"id": i, "object": "model", "created": 1735689600, "owned_by": "climock"}
    if one:
        return m(one)
    return {"object": "list", "data": [m(i) for i in MODEL_IDS]}


# =======================================================================================
# HTTP

def classify(method, path):
    p = path.split("?", 1)[0].rstrip("/")
    if p.startswith("/_"):
        return "control"
    if method == "POST" and (p.endswith("/responses") or p.endswith("/responses/compact")):
        return "responses"
    if method == "POST" and p.endswith("/messages/count_tokens"):
        return "count_tokens"
    if method == "POST" and p.endswith("/messages"):
        return "anthropic"
    if method == "POST" and p.endswith("/chat/completions"):
        return "chat"
    if method in ("GET", "HEAD") and ("/models" in p):
        return "models"
    return "other"


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "climock"
    sys_version = ""

    def log_message(self, fmt, *args):
        pass

    def _body(self):
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            data = b""
            while True:
                line = self.rfile.readline(65537)
                n = int(line.split(b";")[0].strip() or b"0", 16)
                if n == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                data += self.rfile.read(n)
                self.rfile.readline(3)
        else:
            data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        ce = (self.headers.get("Content-Encoding") or "").lower()
        try:
            if ce == "gzip":
                data = gzip.decompress(data)
            elif ce == "deflate":
                data = zlib.decompress(data)
        except (OSError, zlib.error):
            pass
        return data

    def _send(self, status, obj, extra=()):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _stream(self, events):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for e in events:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(e), e))
            self.wfile.flush()
            time.sleep(0.002)
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _handle(self):
        raw = self._body() if self.command in ("POST", "PUT", "PATCH") else b""
        kind = classify(self.command, self.path)
        if kind == "control":
            return self._control(raw)
        text = raw.decode("utf-8", "replace")
        try:
            body = json.loads(text) if text.strip() else None
        except ValueError:
            body = None
        hl = [[k.lower(), v] for k, v in self.headers.items()]
        hd = {}
        for k, v in hl:
            hd[k] = hd[k] + ", " + v if k in hd else v
        with LOCK:
            STATE["seq"] += 1
            seq = STATE["seq"]
            rec = {"seq": seq, "t": time.time(), "method": self.command, "path": self.path, "headers": hd,
                   "header_list": hl, "body": text, "json": body, "kind": kind, "reply": None}
            STATE["requests"].append(rec)
        try:
            rec["reply"] = self._answer(kind, body if isinstance(body, dict) else {}, seq, hd)
        finally:
            if STATE["log"]:
                with LOCK, open(STATE["log"], "a") as f:
                    f.write(json.dumps(rec) + "\n")

    def _answer(self, kind, body, seq, hd):
        if kind in ("responses", "anthropic", "chat"):
            label, blocks = decide(kind, body)
            stream = bool(body.get("stream"))
            if kind == "responses":
                if self.path.split("?")[0].rstrip("/").endswith("/compact"):
                    # the compaction endpoint: a summary of the history as one message
                    self._send(200, {"output": rs_items([("text", "summary: hello")], seq)})
                    return "compact"
                if stream:
                    self._stream(rs_stream(body, blocks, seq))
                else:
                    self._send(200, rs_object(body, rs_items(blocks, seq), "completed", seq))
            elif kind == "anthropic":
                if stream:
                    self._stream(an_stream(body, blocks, seq))
                else:
                    self._send(200, an_full(body, blocks, seq), [("request-id", "req_cm%d" % seq)])
            else:
                if stream:
                    self._stream(ch_stream(body, blocks, seq))
                else:
                    self._send(200, ch_full(body, blocks, seq))
            return label + (" stream" if stream else "")
        if kind == "count_tokens":
            self._send(200, count_tokens(body))
            return "count_tokens"
        if kind == "models":
            p = self.path.split("?", 1)[0].rstrip("/")
            one = p.rsplit("/models/", 1)[1] if "/models/" in p else None
            self._send(200, models_list("anthropic-version" in hd, one))
            return "models"
        self._send(404, {"error": {"message": "climock: no such endpoint: %s %s" % (self.command, self.path),
                                   "type": "invalid_request_error", "param": None, "code": "not_found"}})
        return "404"

    def _control(self, raw):
        p = self.path.split("?", 1)[0]
        if p == "/_requests":
            with LOCK:
                data = list(STATE["requests"])
            return self._send(200, data)
        if p == "/_reset" and self.command == "POST":
            with LOCK:
                STATE["requests"] = []
            return self._send(200, {"ok": True})
        if p == "/_config" and self.command == "POST":
            try:
                cfg = json.loads(raw or b"{}")
            except ValueError:
                return self._send(400, {"error": "not JSON"})
            with LOCK:
                STATE["file"] = cfg.get("file")
            return self._send(200, {"ok": True, "file": STATE["file"]})
        return self._send(404, {"error": "no such control path"})

    def do_POST(self):
        self._handle()

    def do_GET(self):
        self._handle()

    def do_HEAD(self):
        self._handle()

    def do_PUT(self):
        self._handle()

    def do_DELETE(self):
        self._handle()

    def do_OPTIONS(self):
        self._handle()


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


# =======================================================================================
# self-test

def selftest():
    import http.client
    srv = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    port = srv.server_address[1]
    bad = []

    def expect(name, cond):
        if not cond:
            bad.append(name)

    def post(path, body, headers=None):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("POST", path, json.dumps(body), dict({"Content-Type": "application/json"}, **(headers or {})))
        r = c.getresponse()
        data = r.read()
        c.close()
        return r.status, data

    def sse(data):
        out = []
        for blk in data.decode().split("\n\n"):
            for ln in blk.split("\n"):
                if ln.startswith("data: ") and ln[6:] != "[DONE]":
                    out.append(json.loads(ln[6:]))
        return out
    post("/_config", {"file": "/tmp/x.txt"})
    exec_tool = {"type": "function", "name": "exec_command",
                 "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}}}
    # Responses: tool call, then the tool result quoted; stream and not
    st, d = post("/v1/responses", {"model": "m", "input": "hi", "tools": [exec_tool], "reasoning": {"effort": "low"}})
    j = json.loads(d)
    expect("rs tool call", st == 200 and [i["type"] for i in j["output"]] == ["reasoning", "function_call"]
           and json.loads(j["output"][1]["arguments"]) == {"cmd": "cat /tmp/x.txt"})
    st, d = post("/v1/responses", {"model": "m", "stream": True, "input": "hi", "tools": [exec_tool]})
    ev = sse(d)
    expect("rs stream seq", [e["sequence_number"] for e in ev] == list(range(len(ev))))
    expect("rs stream end", ev[-1]["type"] == "response.completed" and
           ev[-1]["response"]["output"][0]["type"] == "function_call")
    args = "".join(e["delta"] for e in ev if e["type"] == "response.function_call_arguments.delta")
    expect("rs stream args", json.loads(args) == {"cmd": "cat /tmp/x.txt"})
    st, d = post("/v1/responses", {"model": "m", "stream": True, "tools": [exec_tool], "input": [
        {"role": "user", "content": "hi"},
        {"type": "function_call", "call_id": "c1", "name": "exec_command", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "TOKEN123"}]})
    ev = sse(d)
    text = "".join(e["delta"] for e in ev if e["type"] == "response.output_text.delta")
    expect("rs tool result", text == "TOOL SAID: TOKEN123")
    st, d = post("/v1/responses", {"model": "m", "input": "x", "text": {"format": {
        "type": "json_schema", "name": "t", "schema": {"type": "object", "properties": {
            "w": {"type": "string"}, "n": {"type": "integer"}}}}}})
    expect("rs json", json.loads(json.loads(d)["output"][0]["content"][0]["text"]) == {"w": "hello", "n": 42})
    # Anthropic: Read tool, thinking, tool result
    read = {"name": "Read", "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}}}}
    st, d = post("/v1/messages?beta=true", {"model": "m", "max_tokens": 10, "stream": True, "tools": [read],
                                            "thinking": {"type": "adaptive"},
                                            "messages": [{"role": "user", "content": "hi"}]})
    ev = sse(d)
    expect("an stream thinking", ev[2]["content_block"]["type"] == "thinking")
    pj = "".join(e["delta"].get("partial_json", "") for e in ev if e["type"] == "content_block_delta")
    expect("an tool args", json.loads(pj) == {"file_path": "/tmp/x.txt"})
    st, d = post("/v1/messages", {"model": "m", "max_tokens": 10, "tools": [read], "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Read", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1",
                                      "content": [{"type": "text", "text": "TOK9"}]},
                                     {"type": "text", "text": "<system-reminder>x</system-reminder>"}]}]})
    expect("an tool result", json.loads(d)["content"][0]["text"] == "TOOL SAID: TOK9")
    st, d = post("/v1/messages/count_tokens", {"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    expect("count_tokens", st == 200 and json.loads(d)["input_tokens"] >= 1)
    # chat: shell tool with an array command, tool result, stream with usage
    shell = {"type": "function", "function": {"name": "shell", "parameters": {
        "type": "object", "properties": {"command": {"type": "array", "items": {"type": "string"}}}}}}
    st, d = post("/v1/chat/completions", {"model": "m", "tools": [shell], "messages": [{"role": "user", "content": "x"}]})
    tc = json.loads(d)["choices"][0]["message"]["tool_calls"][0]
    expect("chat shell", json.loads(tc["function"]["arguments"])["command"][0] == "bash")
    st, d = post("/v1/chat/completions", {"model": "m", "stream": True, "stream_options": {"include_usage": True},
                                          "messages": [{"role": "user", "content": "x"},
                                                       {"role": "assistant", "tool_calls": []},
                                                       {"role": "tool", "tool_call_id": "a", "content": "OUT7"}]})
    ev = sse(d)
    expect("chat tool result", "".join((e["choices"][0]["delta"].get("content") or "") for e in ev if e["choices"])
           == "TOOL SAID: OUT7")
    expect("chat usage chunk", ev[-1]["usage"]["prompt_tokens"] == USAGE["in"])
    st, d = post("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "x"}],
                                          "tools": [{"type": "function", "function": {"name": "f", "parameters": {
                                              "type": "object", "properties": {"a": {"type": "boolean"}}}}}],
                                          "tool_choice": {"type": "function", "function": {"name": "f"}}})
    tc = json.loads(d)["choices"][0]["message"]["tool_calls"][0]
    expect("chat forced", json.loads(tc["function"]["arguments"]) == {"a": True})
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request("GET", "/_requests")
    recs = json.loads(c.getresponse().read())
    expect("log", len(recs) == 10 and recs[0]["kind"] == "responses" and recs[3]["reply"] == "json")
    srv.shutdown()
    print("selftest: %s" % ("OK" if not bad else "FAILED: " + ", ".join(bad)))
    return 1 if bad else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--log", default=None, help="append every request as a JSON line to this file")
    ap.add_argument("--selftest", action="store_true")
    a = ap.parse_args()
    if a.selftest:
        return selftest()
    STATE["log"] = a.log
    srv = Server(("127.0.0.1", a.port), Handler)
    print("PORT %d" % srv.server_address[1], flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
