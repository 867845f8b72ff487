// The official `@anthropic-ai/sdk` node SDK against llmgw: one case per run, driven by
// tests/clients_test.py (NODE_PATH = build/clients/node_modules).
//   node anthropic_sdk.cjs CASE MODEL [MODEL...]     CASE: count_tokens | models
// Environment: GW_URL (http://127.0.0.1:PORT, the SDK's baseURL as is), GW_KEY (a client key,
// sent as x-api-key). count_tokens takes one model; models takes every model the gateway's
// config names (each must be listed).
// Prints one JSON line {"ok": bool, "case", ...what was seen} and exits 0, or 1 when a check
// failed or the SDK threw ({"ok": false, "error", "status"}).
'use strict';
const mod = require('@anthropic-ai/sdk');
const Anthropic = mod.Anthropic || mod.default || mod;

const [, , kase, ...models] = process.argv;
const client = new Anthropic({ baseURL: process.env.GW_URL, apiKey: process.env.GW_KEY, maxRetries: 0, timeout: 20000 });

function check(cond, what, seen) {
  if (!cond) {
    const e = new Error('check failed: ' + what + (seen === undefined ? '' : ': ' + JSON.stringify(seen).slice(0, 600)));
    e.check = true;
    throw e;
  }
}

const cases = {
  async count_tokens() {
    const r = await client.messages.countTokens({
      model: models[0],
      system: 'You are terse.',
      messages: [{ role: 'user', content: 'How many tokens is this message, roughly? ' + 'word '.repeat(40) }],
      tools: [{ name: 'get_weather', description: 'Weather of a city.',
        input_schema: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] } }],
    });
    check(Number.isInteger(r.input_tokens) && r.input_tokens > 0, 'input_tokens a positive integer', r);
    return { input_tokens: r.input_tokens, keys: Object.keys(r) };
  },

  async models() {
    const ids = [];
    const types = new Set();
    for await (const m of client.models.list()) {
      ids.push(m.id);
      types.add(m.type);
      check(typeof m.display_name === 'string' && typeof m.created_at === 'string', 'display_name and created_at', m);
      if (ids.length > 1000) break;
    }
    check(types.size === 1 && types.has('model'), 'every entry has type "model"', [...types]);
    for (const want of models) check(ids.includes(want), 'models.list holds ' + want, ids);
    const page = await client.models.list({ limit: 1 });
    check(page.data.length === 1, 'limit 1 gives one model', page.data);
    check(page.has_more === (ids.length > 1), 'has_more with limit 1', { has_more: page.has_more, n: ids.length });
    return { ids, first_page: { data: page.data.map((m) => m.id), has_more: page.has_more,
      first_id: page.first_id, last_id: page.last_id } };
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
