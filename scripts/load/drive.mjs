#!/usr/bin/env node
// The load driver of the benchmarks: FHIR scenarios run by concurrent virtual users (VUs) against any FHIR R4
// base URL, with Node's own http module (no packages to install; Node 18 or later).
//
//   node scripts/load/drive.mjs --base http://127.0.0.1:8080/fhir --scenario crud --vus 8 --duration 60s \
//        [--token T | --token-url URL --client-id ID --client-secret S [--scope S]] [--summary out.json]
//
// Scenarios (each VU runs iterations back to back until the duration is over; an iteration under way finishes):
//   crud    create a Patient (unique valid resident ID number, system urn:oid:2.16.156.10011.1.3, birth date and
//           sex consistent) -> read it -> update it (PUT, changed name) -> search Patient?identifier=system|value
//           -> create an Observation (LOINC 8867-4, valueQuantity) -> search Observation?patient=<id>&code=...
//           -> delete the Observation. A search that misses what was just created counts as an error.
//   read    --read-pool Patients created first (default 200, not measured); each iteration reads a random one.
//   verify  POST [base]/$ehc-verify once for each QR token of --input (a JSON array), until they run out or the
//           duration is over; each must answer valid = true.
//   qrcode  POST [base]/Patient/<id>/$ehc-qrcode for random ids of --input; --image false asks for no image.
//
// Tokens: --token is sent as "Authorization: Bearer"; for long runs --token-url with a client's id and secret
// gives each VU its own client-credentials token, renewed a minute before it expires (token requests are not
// measured). Output: req/s overall and per operation, p50/p95/p99/max in ms, errors, and with --summary a JSON
// file with the same figures and each whole minute's answers (2xx and other) and p95.
import http from 'node:http';
import { readFileSync, writeFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';

const opt = flags({
  options: {
    base: { type: 'string' },
    scenario: { type: 'string', default: 'crud' },
    vus: { type: 'string', default: '1' },
    duration: { type: 'string', default: '60s' },
    token: { type: 'string' },
    'token-url': { type: 'string' },
    'client-id': { type: 'string' },
    'client-secret': { type: 'string' },
    scope: { type: 'string', default: 'system/*.cruds' },
    'read-pool': { type: 'string', default: '200' },
    input: { type: 'string' },
    image: { type: 'string', default: 'true' },
    'id-offset': { type: 'string' },
    summary: { type: 'string' },
    debug: { type: 'boolean', default: false },
    help: { type: 'boolean', default: false },
  },
});
function flags(config) {  // a bad flag is a message, not a stack trace
  try {
    return parseArgs(config).values;
  } catch (e) {
    return fail(`${e.message} (give a value that starts with "-" as --flag=value)`);
  }
}
if (opt.help || !opt.base) {
  console.log(readFileSync(new URL(import.meta.url), 'utf8').split('\nimport ')[0].replace(/^#!.*\n/, ''));
  process.exit(opt.help ? 0 : 2);
}

const BASE = opt.base.replace(/\/+$/, '');
const SCENARIO = opt.scenario;
const VUS = positive('vus', opt.vus);
const SECONDS = seconds(opt.duration);
const ID_SYSTEM = 'urn:oid:2.16.156.10011.1.3';
const LOINC = 'http://loinc.org';
const OPS = {
  crud: ['create_patient', 'read_patient', 'update_patient', 'search_patient_identifier', 'create_observation',
    'search_observation', 'delete_observation'],
  read: ['read_patient'],
  verify: ['verify'],
  qrcode: ['qrcode'],
}[SCENARIO];
if (!OPS) fail(`unknown --scenario ${SCENARIO}: crud, read, verify or qrcode`);

function fail(message) { console.error(message); process.exit(2); }
function positive(name, text) {
  const n = Number(text);
  if (!Number.isInteger(n) || n < 1) fail(`--${name} must be a positive integer, not ${text}`);
  return n;
}
function seconds(text) {  // 60s, 2m, 1m30s, 90
  const m = /^(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s?)?$/.exec(text);
  const s = m ? Number(m[1] || 0) * 60 + Number(m[2] || 0) : 0;
  if (!(s > 0)) fail(`--duration: say 60s, 2m or 1m30s, not ${text}`);
  return s;
}

// ---- HTTP: one keep-alive connection per VU, as a client library would hold -------------------------------
const agent = new http.Agent({ keepAlive: true, maxSockets: VUS + 1 });

function send(method, url, body, headers) {
  return new Promise((resolve) => {
    const start = performance.now();
    const done = (status, text) => resolve({ status, body: text, start, end: performance.now() });
    const h = body === undefined ? headers : { ...headers, 'Content-Length': Buffer.byteLength(body) };
    const req = http.request(url, { method, headers: h, agent }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => done(res.statusCode, Buffer.concat(chunks).toString('utf8')));
      res.on('error', (e) => done(0, String(e)));
    });
    req.on('error', (e) => done(0, String(e)));
    req.end(body);
  });
}

class VirtualUser {
  constructor() {
    this.headers = { 'Content-Type': 'application/fhir+json', Accept: 'application/fhir+json' };
    if (opt.token) this.headers.Authorization = `Bearer ${opt.token}`;
    this.renewAt = 0;
  }

  async renewToken() {
    if (!opt['token-url'] || performance.now() < this.renewAt) return;
    const basic = Buffer.from(`${opt['client-id']}:${opt['client-secret']}`).toString('base64');
    const form = new URLSearchParams({ grant_type: 'client_credentials', scope: opt.scope }).toString();
    const r = await send('POST', opt['token-url'], form,
      { Authorization: `Basic ${basic}`, 'Content-Type': 'application/x-www-form-urlencoded' });
    if (r.status !== 200) throw new Error(`token: ${r.status} ${r.body.slice(0, 200)}`);
    const t = JSON.parse(r.body);
    this.headers.Authorization = `Bearer ${t.access_token}`;
    this.renewAt = performance.now() + Math.max(10, (t.expires_in || 300) - 60) * 1000;
  }

  // One measured request: its answer's body when the status is expected and `test` holds, else null (an error).
  async call(op, method, url, body, expected, test) {
    await this.renewToken();
    const r = await send(method, url, body, this.headers);
    let ok = expected.includes(r.status);
    let parsed = {};
    if (ok && r.body.length) {
      try { parsed = JSON.parse(r.body); } catch { ok = false; }
    }
    if (ok && test) ok = Boolean(test(parsed));
    stats.record(op, r, ok);
    if (!ok && opt.debug) console.warn(`${op} -> ${r.status} ${r.body.slice(0, 300)}`);
    return ok ? parsed : null;
  }
}

// ---- figures ---------------------------------------------------------------------------------------------
class Stats {
  constructor() {
    this.ops = Object.fromEntries(OPS.map((op) => [op, { ms: [], errors: 0 }]));
    this.first = Infinity;
    this.last = -Infinity;
    this.minutes = [];  // per whole minute since the first request: [2xx answers, other answers, their ms]
  }

  record(op, r, ok) {
    const o = this.ops[op];
    o.ms.push(r.end - r.start);
    o.errors += ok ? 0 : 1;
    this.first = Math.min(this.first, r.start);
    this.last = Math.max(this.last, r.end);
    const minute = Math.floor((r.end - this.first) / 60000);
    const m = (this.minutes[minute] ||= [0, 0, []]);
    if (r.status >= 200 && r.status < 300) {
      m[0] += 1;
      m[2].push(r.end - r.start);
    } else {
      m[1] += 1;
    }
  }

  summary(iterations, started) {
    const secs = this.last > this.first ? (this.last - this.first) / 1000 : SECONDS;
    const all = [];
    const ops = OPS.map((op) => {
      const { ms, errors } = this.ops[op];
      all.push(...ms);
      return { op, count: ms.length, rps: ms.length / secs, errors, ...latency(ms) };
    });
    const whole = this.minutes.length > 1 ? this.minutes.slice(0, -1) : this.minutes;  // the last is cut short
    return {
      base: BASE, scenario: SCENARIO, vus: VUS, duration_s: secs, started,
      total_requests: all.length, total_rps: all.length / secs, iterations, iterations_per_s: iterations / secs,
      errors: ops.reduce((n, o) => n + o.errors, 0), latency_ms: latency(all), ops,
      minutes: whole.map((m) => ({ ok: m ? m[0] : 0, other: m ? m[1] : 0, p95: m ? latency(m[2]).p95 : null })),
    };
  }
}

function latency(ms) {
  if (!ms.length) return { p50: null, p95: null, p99: null, avg: null, max: null };
  const s = Float64Array.from(ms).sort();
  const at = (q) => {  // linear between the two nearest ranks
    const i = q * (s.length - 1);
    const lo = Math.floor(i);
    return s[lo] + (s[Math.min(lo + 1, s.length - 1)] - s[lo]) * (i - lo);
  };
  return { p50: at(0.5), p95: at(0.95), p99: at(0.99), avg: ms.reduce((a, b) => a + b, 0) / ms.length,
    max: s[s.length - 1] };
}

const stats = new Stats();

// ---- the resources: valid Chinese resident identity numbers (GB 11643-1999) --------------------------------
const W = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
const CHK = '10X98765432';
const DAY0 = Date.UTC(1930, 0, 1);
const NDAYS = Math.floor((Date.UTC(2019, 11, 31) - DAY0) / 86400000) + 1;  // 32,872 birth dates
const SEQ_PER_SEX = 499;  // 3-digit sequences per sex
const SPACE = NDAYS * SEQ_PER_SEX * 2;
const pad = (n, w) => String(n).padStart(w, '0');

// n -> a unique (sex, birth date, sequence) for n in [0, SPACE)
function person(n) {
  n %= SPACE;
  const male = n % 2 === 1;
  const m = Math.floor(n / 2);
  const k = m % SEQ_PER_SEX;
  const d = new Date(DAY0 + Math.floor(m / SEQ_PER_SEX) * 86400000);
  const ymd = `${d.getUTCFullYear()}${pad(d.getUTCMonth() + 1, 2)}${pad(d.getUTCDate(), 2)}`;
  const body17 = `110101${ymd}${pad(male ? 2 * k + 1 : 2 * k + 2, 3)}`;  // odd sequence: male
  let s = 0;
  for (let i = 0; i < 17; i++) s += (body17.charCodeAt(i) - 48) * W[i];
  return { idno: body17 + CHK[s % 11], gender: male ? 'male' : 'female',
    birthDate: `${ymd.slice(0, 4)}-${ymd.slice(4, 6)}-${ymd.slice(6, 8)}` };
}

function patient(who, n, id, family) {
  return JSON.stringify({
    resourceType: 'Patient', ...(id ? { id } : {}),
    identifier: [{ system: ID_SYSTEM, value: who.idno }], active: true,
    name: [{ use: 'official', family, given: [`Load${n}`] }], gender: who.gender, birthDate: who.birthDate,
  });
}

function observation(pid) {
  return JSON.stringify({
    resourceType: 'Observation', status: 'final',
    category: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/observation-category',
      code: 'vital-signs', display: 'Vital Signs' }] }],
    code: { coding: [{ system: LOINC, code: '8867-4', display: 'Heart rate' }], text: 'Heart rate' },
    subject: { reference: `Patient/${pid}` }, effectiveDateTime: new Date().toISOString(),
    valueQuantity: { value: 50 + Math.floor(Math.random() * 60), unit: 'beats/minute',
      system: 'http://unitsofmeasure.org', code: '/min' },
  });
}

const hasEntry = (id) => (b) => Array.isArray(b.entry) && b.entry.some((e) => e.resource && e.resource.id === id);
const named = (b, name) => (b.parameter || []).find((p) => p.name === name) || {};
const parameter = (name, value) => JSON.stringify({ resourceType: 'Parameters', parameter: [{ name, ...value }] });

// ---- the scenarios: each returns one iteration of a VU, or null when there is no more work ------------------
// A random offset into the identifier space, so that repeated runs do not reuse ID numbers.
const OFFSET = opt['id-offset'] !== undefined ? Number(opt['id-offset']) : Math.floor(Math.random() * SPACE);
let nextIteration = 0;

async function crud(vu) {
  const n = OFFSET + nextIteration++;
  const who = person(n);
  const created = await vu.call('create_patient', 'POST', `${BASE}/Patient`, patient(who, n, null, 'Bench'),
    [200, 201], (b) => b.id);
  if (!created) return;
  const pid = created.id;
  await vu.call('read_patient', 'GET', `${BASE}/Patient/${pid}`, undefined, [200], (b) => b.id === pid);
  await vu.call('update_patient', 'PUT', `${BASE}/Patient/${pid}`, patient(who, n, pid, 'BenchUpdated'), [200, 201]);
  await vu.call('search_patient_identifier', 'GET',
    `${BASE}/Patient?identifier=${encodeURIComponent(`${ID_SYSTEM}|${who.idno}`)}`, undefined, [200], hasEntry(pid));
  const obs = await vu.call('create_observation', 'POST', `${BASE}/Observation`, observation(pid), [200, 201],
    (b) => b.id);
  if (!obs) return;
  await vu.call('search_observation', 'GET',
    `${BASE}/Observation?patient=${encodeURIComponent(pid)}&code=${encodeURIComponent(`${LOINC}|8867-4`)}`,
    undefined, [200], hasEntry(obs.id));
  await vu.call('delete_observation', 'DELETE', `${BASE}/Observation/${obs.id}`, undefined, [200, 202, 204]);
}

async function readPool() {  // the read scenario's residents, created before the measured run
  const vu = new VirtualUser();
  const ids = [];
  for (let i = 0; i < positive('read-pool', opt['read-pool']); i++) {
    await vu.renewToken();
    const r = await send('POST', `${BASE}/Patient`, patient(person(OFFSET + 1000003 + i), i, null, 'ReadPool'),
      vu.headers);
    if (r.status !== 201 && r.status !== 200) fail(`setup: create Patient -> ${r.status} ${r.body.slice(0, 300)}`);
    ids.push(JSON.parse(r.body).id);
  }
  return ids;
}

function input() {
  if (!opt.input) fail(`--scenario ${SCENARIO} needs --input, a JSON array`);
  return JSON.parse(readFileSync(opt.input, 'utf8'));
}

async function scenario() {
  const pick = (items) => items[Math.floor(Math.random() * items.length)];
  if (SCENARIO === 'crud') return crud;
  if (SCENARIO === 'read') {
    const ids = await readPool();
    return (vu) => {
      const pid = pick(ids);
      return vu.call('read_patient', 'GET', `${BASE}/Patient/${pid}`, undefined, [200], (b) => b.id === pid);
    };
  }
  const items = input();
  if (SCENARIO === 'verify') {  // each token once: every request spends a fresh nonce
    return (vu) => (nextIteration >= items.length ? null
      : vu.call('verify', 'POST', `${BASE}/$ehc-verify`, parameter('token', { valueString: items[nextIteration++] }),
        [200], (b) => named(b, 'valid').valueBoolean === true));
  }
  const body = parameter('image', { valueBoolean: opt.image !== 'false' });
  return (vu) => vu.call('qrcode', 'POST', `${BASE}/Patient/${pick(items)}/$ehc-qrcode`, body, [200],
    (b) => String(named(b, 'token').valueString || '').startsWith('EHC1:'));
}

// ---- run ----------------------------------------------------------------------------------------------------
const f = (x, d = 1) => (x === null || x === undefined ? '-' : Number(x).toFixed(d));

async function main() {
  const iteration = await scenario();
  const started = new Date().toISOString();
  const deadline = performance.now() + SECONDS * 1000;
  let iterations = 0;
  const runVu = async () => {
    const vu = new VirtualUser();
    while (performance.now() < deadline) {
      const work = iteration(vu);
      if (work === null) return;
      await work;
      iterations += 1;
    }
  };
  await Promise.all(Array.from({ length: VUS }, runVu));
  agent.destroy();
  const out = stats.summary(iterations, started);
  const lines = [`== ${SCENARIO} against ${BASE}: ${VUS} VUs, ${f(out.duration_s)} s ==`,
    `total: ${out.total_requests} requests, ${f(out.total_rps)} req/s; ${iterations} iterations; errors: ${out.errors}`,
    `latency ms: p50 ${f(out.latency_ms.p50)}  p95 ${f(out.latency_ms.p95)}  p99 ${f(out.latency_ms.p99)}  `
      + `max ${f(out.latency_ms.max)}`,
    'operation                     count    req/s   p50ms   p95ms   p99ms   maxms  errors'];
  for (const o of out.ops) {
    lines.push(`${o.op.padEnd(28)}${String(o.count).padStart(7)}${f(o.rps).padStart(9)}${f(o.p50).padStart(8)}`
      + `${f(o.p95).padStart(8)}${f(o.p99).padStart(8)}${f(o.max).padStart(8)}${String(o.errors).padStart(8)}`);
  }
  console.log(lines.join('\n'));
  if (opt.summary) writeFileSync(opt.summary, JSON.stringify(out, null, 2));
}

main().catch((e) => { console.error(e.stack || String(e)); process.exit(1); });
