// The official `openai` node SDK against llmgw: one case per run, driven by
// tests/clients_test.py (NODE_PATH = build/clients/node_modules).
//   node openai_sdk.cjs CASE MODEL       CASE: create | stream | tool | json | models
// Environment: GW_URL (http://127.0.0.1:PORT, the SDK gets GW_URL/v1), GW_KEY (a client key),
// TOKEN_FILE (tool: the file the scripted tool call reads; its command is run for real).
// Prints one JSON line {"ok": bool, "case", ...what was seen} and exits 0, or 1 when a
// check failed or the SDK threw ({"ok": false, "error", "status"}).
'use strict';
const { execSync } = require('child_process');
const mod = require('openai');
const OpenAI = mod.OpenAI || mod.default || mod;

const [, , kase, model] = process.argv;
const client = new OpenAI({
  baseURL: process.env.GW_URL + '/v1',
  apiKey: process.env.GW_KEY,
  maxRetries: 0,
  timeout: 20000,
});

function check(cond, what, seen) {
  if (!cond) {
    const e = new Error('check failed: ' + what + (seen === undefined ? '' : ': ' + JSON.stringify(seen).slice(0, 600)));
    e.check = true;
    throw e;
  }
}

function deepEqual(a, b) {
  return JSON.stringify(a) === JSON.stringify(b);
}

const TOOLS = [{
  type: 'function', name: 'run_shell', description: 'Runs a shell command and returns its output.',
  strict: false,
  parameters: { type: 'object', properties: { cmd: { type: 'string' } }, required: ['cmd'] },
}];

const cases = {
  async create() {
    const r = await client.responses.create({ model, input: 'Say hello.', max_output_tokens: 100 });
    check(r.object === 'response' && r.status === 'completed', 'object/status', { object: r.object, status: r.status });
    check(r.output_text === 'hello', 'output_text', r.output_text);
    check(r.usage && Number.isInteger(r.usage.input_tokens) && Number.isInteger(r.usage.output_tokens),
      'usage', r.usage);
    return { id: r.id, output_text: r.output_text, usage: r.usage, items: r.output.map((i) => i.type) };
  },

  async stream() {
    const s = await client.responses.create({ model, input: 'Say hello.', stream: true });
    const types = [];
    const seqs = [];
    let text = '';
    let done = null;
    for await (const ev of s) {
      types.push(ev.type);
      seqs.push(ev.sequence_number);
      if (ev.type === 'response.output_text.delta') text += ev.delta;
      if (ev.type === 'response.completed') done = ev.response;
    }
    check(types[0] === 'response.created', 'first event response.created', types);
    check(types[types.length - 1] === 'response.completed', 'last event response.completed', types);
    check(seqs.every((n, i) => n === i), 'sequence_number 0, 1, 2...', seqs);
    check(text === 'hello', 'joined output_text deltas', text);
    check(done && done.output.some((i) => i.type === 'message'), 'response.completed holds the message', done);
    check(done.usage && Number.isInteger(done.usage.output_tokens), 'completed usage', done.usage);
    return { types, text, usage: done.usage };
  },

  async tool() {
    const input = [{ role: 'user', content: 'Run a command that prints the token file.' }];
    const r1 = await client.responses.create({ model, input, tools: TOOLS });
    const call = r1.output.find((i) => i.type === 'function_call');
    check(call && call.name === 'run_shell' && call.call_id, 'a run_shell function_call', r1.output);
    const args = JSON.parse(call.arguments);
    check(typeof args.cmd === 'string', 'arguments.cmd', args);
    const out = execSync(args.cmd, { encoding: 'utf8', timeout: 5000 });
    // the second turn streams: the whole conversation back, the call and its output
    const s = await client.responses.create({
      model, tools: TOOLS, stream: true,
      input: input.concat(r1.output, [{ type: 'function_call_output', call_id: call.call_id, output: out }]),
    });
    let text = '';
    let last = null;
    for await (const ev of s) {
      if (ev.type === 'response.output_text.delta') text += ev.delta;
      last = ev.type;
    }
    check(last === 'response.completed', 'second turn completed', last);
    check(text === 'TOOL SAID: ' + out, 'the model quotes the tool output', text);
    return { call: { name: call.name, call_id: call.call_id, arguments: args }, tool_output: out, text };
  },

  async json() {
    const schema = {
      type: 'object',
      properties: { word: { type: 'string' }, n: { type: 'integer' }, ok: { type: 'boolean' } },
      required: ['word', 'n', 'ok'],
      additionalProperties: false,
    };
    const r = await client.responses.create({
      model, input: 'Answer as JSON.',
      text: { format: { type: 'json_schema', name: 'answer', schema, strict: true } },
    });
    let parsed;
    try { parsed = JSON.parse(r.output_text); } catch (e) { check(false, 'output_text is JSON', r.output_text); }
    check(deepEqual(parsed, { word: 'hello', n: 42, ok: true }), 'the JSON answer', parsed);
    return { output_text: r.output_text };
  },

  async models() {
    const m = await client.models.retrieve(model);
    check(m.id === model && m.object === 'model', 'id and object', m);
    const list = [];
    for await (const x of client.models.list()) list.push(x.id);
    check(list.includes(model), 'models.list holds the model', list);
    return { model: m, list };
  },
};

(async () => {
  if (!cases[kase]) {
    console.log(JSON.stringify({ ok: false, error: 'unknown case ' + kase }));
    process.exit(2);
  }
  try {
    const seen = await cases[kase]();
    console.log(JSON.stringify({ ok: true, case: kase, ...seen }));
  } catch (e) {
    console.log(JSON.stringify({ ok: false, case: kase, error: String(e && e.message || e), status: e && e.status,
      check: !!(e && e.check), body: e && e.error }));
    process.exit(1);
  }
})();
