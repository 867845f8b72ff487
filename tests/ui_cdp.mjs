// tests/ui_cdp.mjs - drives headless Chromium over the DevTools protocol (node's own WebSocket,
// no other package) for tests/ui_browser_test.py:
//   node --experimental-websocket tests/ui_cdp.mjs CHROMIUM BASE_URL ADMIN_KEY SCREENSHOT.png
// Opens BASE_URL/ui, tries a wrong key, logs in with the right one, waits for the page's first
// refresh, reads the tables and the chart out of the DOM, applies a filter, saves a screenshot,
// and prints one JSON object: what it saw, console errors, exceptions, CSP violations.
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync, existsSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const [chrome, base, key, shot] = process.argv.slice(2);
const prof = mkdtempSync(join(tmpdir(), 'llmgw-ui-'));
const proc = spawn(chrome, ['--headless=new', '--no-sandbox', '--disable-gpu', '--no-first-run',
  '--disable-extensions', '--disable-background-networking', '--remote-debugging-port=0',
  '--user-data-dir=' + prof, '--window-size=1280,1600', 'about:blank'], { stdio: ['ignore', 'ignore', 'pipe'] });
let stderr = '';
proc.stderr.on('data', (d) => { stderr += d; });
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const out = { console: [], exceptions: [], csp: [] };
function done(code) {
  proc.kill('SIGKILL');
  try { rmSync(prof, { recursive: true, force: true }); } catch (e) { /* */ }
  process.stdout.write(JSON.stringify(out) + '\n');
  process.exit(code);
}
setTimeout(() => { out.error = 'timed out'; done(2); }, 60000);
process.on('uncaughtException', (e) => { out.error = String(e && e.stack || e); done(3); });
process.on('unhandledRejection', (e) => { out.error = String(e && e.stack || e); done(3); });

let port = 0;
for (let i = 0; i < 200 && !port; i++) {
  const f = join(prof, 'DevToolsActivePort');
  if (existsSync(f)) port = parseInt(readFileSync(f, 'utf8').split('\n')[0], 10);
  else await sleep(100);
}
if (!port) { out.error = 'chromium did not start: ' + stderr.slice(-800); done(2); }
const list = await (await fetch(`http://127.0.0.1:${port}/json/list`)).json();
const page = list.find((t) => t.type === 'page');
const ws = new WebSocket(page.webSocketDebuggerUrl);
await new Promise((r, j) => { ws.onopen = r; ws.onerror = j; });
let seq = 0;
const waiting = new Map();
const loads = [];
ws.onmessage = (m) => {
  const d = JSON.parse(m.data);
  if (d.id && waiting.has(d.id)) { waiting.get(d.id)(d); waiting.delete(d.id); return; }
  if (d.method === 'Runtime.consoleAPICalled' && (d.params.type === 'error' || d.params.type === 'warning'))
    out.console.push(d.params.args.map((a) => a.value || a.description).join(' '));
  if (d.method === 'Runtime.exceptionThrown') out.exceptions.push(d.params.exceptionDetails.text +
    ' ' + ((d.params.exceptionDetails.exception || {}).description || ''));
  if (d.method === 'Log.entryAdded' && (d.params.entry.level === 'error')) {
    const t = d.params.entry.text;
    if ((d.params.entry.url || '').endsWith('/favicon.ico')) return; // the browser's own request
    if (/Content.Security.Policy|Refused to/i.test(t)) out.csp.push(t); else out.console.push(t);
  }
  if (d.method === 'Page.loadEventFired') loads.forEach((f) => f()), loads.length = 0;
};
const send = (method, params = {}) => new Promise((r) => { const id = ++seq; waiting.set(id, r); ws.send(JSON.stringify({ id, method, params })); });
const evalJs = async (expr) => {
  const r = await send('Runtime.evaluate', { expression: expr, returnByValue: true, awaitPromise: true });
  if (r.result.exceptionDetails) throw new Error('eval: ' + JSON.stringify(r.result.exceptionDetails).slice(0, 300));
  return r.result.result.value;
};
const loaded = () => new Promise((r) => loads.push(r));
async function until(expr, ms = 10000) {
  for (let t = 0; t < ms; t += 100) { if (await evalJs(expr)) return true; await sleep(100); }
  return false;
}
const tables = `(() => { const t = {}; for (const id of ['top', 'keys', 'health', 'reqs'])
  t[id] = [...document.querySelectorAll('#' + id + ' tbody tr')].map((tr) => [...tr.cells].map((c) => c.textContent));
  return t; })()`;

await send('Runtime.enable');
await send('Log.enable');
await send('Page.enable');
let l = loaded();
await send('Page.navigate', { url: base + '/ui' });
await l;
out.first = await evalJs(`({title: document.title, form: !!document.querySelector('form input[name=key]'),
  msg: (document.getElementById('msg') || {}).textContent, app: !!document.getElementById('reqs')})`);
// a wrong key
l = loaded();
await evalJs(`document.querySelector('input[name=key]').value = 'wrong-key'; document.querySelector('form').submit(); true`);
await l;
out.wrong = await evalJs(`({form: !!document.querySelector('input[name=key]'), msg: (document.getElementById('msg') || {}).textContent,
  app: !!document.getElementById('reqs'), cookie: document.cookie})`);
// the admin key (the refusals so far are the login form's own 401s)
out.before_login = out.console;
out.console = [];
l = loaded();
await evalJs(`document.querySelector('input[name=key]').value = ${JSON.stringify(key)}; document.querySelector('form').submit(); true`);
await l;
out.ready = await until(`document.body.dataset.ready === '1'`);
out.cookie_visible = await evalJs('document.cookie');
out.url = await evalJs('location.href');
out.facts = await evalJs(`document.getElementById('facts').textContent`);
out.tables = await evalJs(tables);
out.chart = await evalJs(`[...document.querySelectorAll('#chart polyline')].map((p) => ({name: p.dataset.name, total: p.dataset.total,
  points: p.getAttribute('points').split(' ').length}))`);
out.chart_max = await evalJs(`(document.getElementById('chart-max') || {}).textContent`);
out.injected = await evalJs(`document.querySelectorAll('main img, main b, main script').length`);
// the per-model view of the chart
await evalJs(`(() => { const s = document.getElementById('by'); s.value = 'model'; s.dispatchEvent(new Event('change')); return true; })()`);
await until(`[...document.querySelectorAll('#top tbody tr')].some((tr) => tr.cells[0].textContent === 'm1')`);
out.by_model = (await evalJs(tables)).top;
// a filter on the request log
await evalJs(`(() => { const k = document.getElementById('f-key'); k.value = 'alice'; k.dispatchEvent(new Event('change')); return true; })()`);
await until(`[...document.querySelectorAll('#reqs tbody tr')].every((tr) => tr.cells[2].textContent === 'alice')`);
await sleep(300);
out.filtered = (await evalJs(tables)).reqs;
// the drill-down of the first row
await evalJs(`document.querySelector('#reqs tbody tr').dispatchEvent(new MouseEvent('click', {bubbles: true})); true`);
await until(`document.getElementById('detail').textContent.length > 10`);
out.detail = await evalJs(`document.getElementById('detail').textContent`);
await evalJs(`(() => { const k = document.getElementById('f-key'); k.value = ''; k.dispatchEvent(new Event('change'));
  const s = document.getElementById('by'); s.value = 'key'; s.dispatchEvent(new Event('change')); return true; })()`);
await sleep(800);
const png = await send('Page.captureScreenshot', { format: 'png', captureBeyondViewport: true });
writeFileSync(shot, Buffer.from(png.result.data, 'base64'));
out.screenshot = shot;
out.xss = await evalJs(`window.__xss === 1`);
done(0);
