// FHIR CRUD / read load scenario for k6. Runs identically against any FHIR R4 base URL.
//
// Env:  BASE      FHIR base URL, e.g. http://127.0.0.1:8090/fhir   (required)
//       SCENARIO  crud (default) | read
//       VUS       concurrent virtual users (default 1)
//       DURATION  e.g. 60s (default 60s)
//       TOKEN     optional bearer token -> "Authorization: Bearer $TOKEN"
//       READ_POOL number of patients pre-created in setup() for the read scenario (default 200)
//       SUMMARY_JSON optional path for a machine-readable summary
//
// CRUD iteration (Patient and Observation only):
//   create Patient (unique, valid Chinese resident ID, system urn:oid:2.16.156.10011.1.3)
//   -> read it -> update it (PUT, changed name) -> search Patient?identifier=system|value
//   -> create Observation (LOINC 8867-4 heart rate, valueQuantity) for it
//   -> search Observation?patient=<id>&code=http://loinc.org|8867-4 -> delete the Observation
import http from 'k6/http';
import encoding from 'k6/encoding';
import exec from 'k6/execution';
import { Counter, Gauge } from 'k6/metrics';

const BASE = (__ENV.BASE || '').replace(/\/+$/, '');
if (!BASE) throw new Error('set BASE, e.g. -e BASE=http://127.0.0.1:8090/fhir');
const SCENARIO = __ENV.SCENARIO || 'crud';
const VUS = parseInt(__ENV.VUS || '1', 10);
const DURATION = __ENV.DURATION || '60s';
const READ_POOL = parseInt(__ENV.READ_POOL || '200', 10);
const ID_SYSTEM = 'urn:oid:2.16.156.10011.1.3';
const LOINC = 'http://loinc.org';

const OPS = SCENARIO === 'read'
  ? ['read_patient']
  : ['create_patient', 'read_patient', 'update_patient', 'search_patient_identifier',
     'create_observation', 'search_observation', 'delete_observation'];

const fhirErrors = new Counter('fhir_errors');
// wall-clock (ms) before/after every measured request: min..max = the measured window (setup excluded)
const reqTs = new Gauge('req_ts');

const thresholds = {
  'http_req_duration{scenario:main}': ['max>=0'],   // overall, measured phase only (no setup)
  'http_reqs{scenario:main}': ['count>=0'],
};
for (const op of OPS) {
  // always-true thresholds: they only make k6 keep per-operation sub-metrics for the summary
  thresholds[`http_req_duration{op:${op}}`] = ['max>=0'];
  thresholds[`http_reqs{op:${op}}`] = ['count>=0'];
  thresholds[`fhir_errors{op:${op}}`] = ['count>=0'];
}

export const options = {
  scenarios: {
    main: { executor: 'constant-vus', vus: VUS, duration: DURATION, exec: SCENARIO === 'read' ? 'readOnly' : 'crud' },
  },
  thresholds,
  summaryTrendStats: ['avg', 'min', 'med', 'p(95)', 'p(99)', 'max'],
  setupTimeout: '300s',
  noConnectionReuse: false,
};

const HDRS = { 'Content-Type': 'application/fhir+json', 'Accept': 'application/fhir+json' };
if (__ENV.TOKEN) HDRS['Authorization'] = `Bearer ${__ENV.TOKEN}`;

// Long runs (a soak): with TOKEN_URL, CLIENT_ID and CLIENT_SECRET each VU gets its own client-credentials token
// and renews it a minute before it expires, as a real backend client does (tokens live minutes).
let renewAt = 0;
function renewToken() {
  if (!__ENV.TOKEN_URL || Date.now() < renewAt) return;
  const r = http.post(__ENV.TOKEN_URL, { grant_type: 'client_credentials', scope: __ENV.SCOPE || 'system/*.cruds' },
    { headers: { Authorization: `Basic ${encoding.b64encode(`${__ENV.CLIENT_ID}:${__ENV.CLIENT_SECRET}`)}` },
      tags: { op: 'token', name: 'token' } });
  if (r.status !== 200) throw new Error(`token: ${r.status} ${String(r.body).slice(0, 200)}`);
  const t = JSON.parse(r.body);
  HDRS['Authorization'] = `Bearer ${t.access_token}`;
  renewAt = Date.now() + Math.max(10, (t.expires_in || 300) - 60) * 1000;
}

function p(op) { renewToken(); reqTs.add(Date.now()); return { headers: HDRS, tags: { op, name: op } }; }

function check(op, res, expected, extraOk) {
  reqTs.add(Date.now());
  let ok = expected.indexOf(res.status) >= 0;
  let body = null;
  if (ok && res.body && res.body.length) {
    try { body = JSON.parse(res.body); } catch (e) { ok = false; }
  }
  if (ok && extraOk) ok = !!extraOk(body, res);
  fhirErrors.add(ok ? 0 : 1, { op });
  if (!ok && __ENV.DEBUG) console.warn(`${op} -> ${res.status} ${String(res.body).slice(0, 300)}`);
  return ok ? (body || {}) : null;
}

// ---- valid Chinese resident identity number (GB 11643-1999) ----
const W = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
const CHK = '10X98765432';
const DAY0 = Date.UTC(1930, 0, 1);
const NDAYS = Math.floor((Date.UTC(2019, 11, 31) - DAY0) / 86400000) + 1;   // 32,872 birth dates
const SEQ_PER_SEX = 499;                                                     // 3-digit sequences per sex
const SPACE = NDAYS * SEQ_PER_SEX * 2;
const pad = (n, w) => String(n).padStart(w, '0');

// n -> unique (sex, birth date, sequence); bijective for n in [0, SPACE)
function makePerson(n) {
  n = n % SPACE;
  const male = (n % 2) === 1;
  const m = Math.floor(n / 2);
  const k = m % SEQ_PER_SEX;
  const day = Math.floor(m / SEQ_PER_SEX);
  const d = new Date(DAY0 + day * 86400000);
  const ymd = `${d.getUTCFullYear()}${pad(d.getUTCMonth() + 1, 2)}${pad(d.getUTCDate(), 2)}`;
  const seq = male ? 2 * k + 1 : 2 * k + 2;       // odd = male, even = female; 001..998
  const body17 = `110101${ymd}${pad(seq, 3)}`;
  let s = 0;
  for (let i = 0; i < 17; i++) s += (body17.charCodeAt(i) - 48) * W[i];
  return {
    idno: body17 + CHK[s % 11],
    gender: male ? 'male' : 'female',
    birthDate: `${ymd.slice(0, 4)}-${ymd.slice(4, 6)}-${ymd.slice(6, 8)}`,
  };
}

function patientResource(person, n, id, family) {
  const r = {
    resourceType: 'Patient',
    identifier: [{ system: ID_SYSTEM, value: person.idno }],
    active: true,
    name: [{ use: 'official', family: family, given: [`Load${n}`] }],
    gender: person.gender,
    birthDate: person.birthDate,
  };
  if (id) r.id = id;
  return r;
}

function observationResource(pid) {
  return {
    resourceType: 'Observation',
    status: 'final',
    category: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/observation-category', code: 'vital-signs', display: 'Vital Signs' }] }],
    code: { coding: [{ system: LOINC, code: '8867-4', display: 'Heart rate' }], text: 'Heart rate' },
    subject: { reference: `Patient/${pid}` },
    effectiveDateTime: new Date().toISOString(),
    valueQuantity: { value: 50 + Math.floor(Math.random() * 60), unit: 'beats/minute', system: 'http://unitsofmeasure.org', code: '/min' },
  };
}

const hasEntryWithId = (id) => (b) => b && Array.isArray(b.entry) && b.entry.some((e) => e.resource && e.resource.id === id);

// random per-run offset into the identifier space so repeated runs do not reuse identifiers
const RUN_OFFSET = parseInt(__ENV.ID_OFFSET || String(Math.floor(Math.random() * SPACE)), 10);

export function setup() {
  if (SCENARIO !== 'read') return { offset: RUN_OFFSET };
  renewToken();
  const ids = [];
  for (let i = 0; i < READ_POOL; i++) {
    const person = makePerson(RUN_OFFSET + 1000003 + i);
    const r = http.post(`${BASE}/Patient`, JSON.stringify(patientResource(person, i, null, 'ReadPool')), { headers: HDRS, tags: { op: 'setup', name: 'setup' } });
    if (r.status !== 201 && r.status !== 200) throw new Error(`setup: create Patient -> ${r.status} ${String(r.body).slice(0, 300)}`);
    ids.push(JSON.parse(r.body).id);
  }
  return { offset: RUN_OFFSET, ids };
}

export function crud(data) {
  const n = data.offset + exec.scenario.iterationInTest;
  const person = makePerson(n);

  // 1 create Patient
  let b = check('create_patient', http.post(`${BASE}/Patient`, JSON.stringify(patientResource(person, n, null, 'Bench')), p('create_patient')), [200, 201], (x) => x && x.id);
  if (!b) return;
  const pid = b.id;

  // 2 read Patient
  check('read_patient', http.get(`${BASE}/Patient/${pid}`, p('read_patient')), [200], (x) => x && x.id === pid);

  // 3 update Patient (changed name)
  check('update_patient', http.put(`${BASE}/Patient/${pid}`, JSON.stringify(patientResource(person, n, pid, 'BenchUpdated')), p('update_patient')), [200, 201]);

  // 4 search Patient by identifier
  check('search_patient_identifier',
    http.get(`${BASE}/Patient?identifier=${encodeURIComponent(ID_SYSTEM + '|' + person.idno)}`, p('search_patient_identifier')),
    [200], hasEntryWithId(pid));

  // 5 create Observation
  b = check('create_observation', http.post(`${BASE}/Observation`, JSON.stringify(observationResource(pid)), p('create_observation')), [200, 201], (x) => x && x.id);
  if (!b) return;
  const oid = b.id;

  // 6 search Observation by patient + code
  check('search_observation',
    http.get(`${BASE}/Observation?patient=${encodeURIComponent(pid)}&code=${encodeURIComponent(LOINC + '|8867-4')}`, p('search_observation')),
    [200], hasEntryWithId(oid));

  // 7 delete Observation
  check('delete_observation', http.del(`${BASE}/Observation/${oid}`, null, p('delete_observation')), [200, 202, 204]);
}

export function readOnly(data) {
  const ids = data.ids;
  const pid = ids[Math.floor(Math.random() * ids.length)];
  check('read_patient', http.get(`${BASE}/Patient/${pid}`, p('read_patient')), [200], (x) => x && x.id === pid);
}

function f(x, d = 1) { return (x === undefined || x === null) ? '-' : Number(x).toFixed(d); }

export function handleSummary(data) {
  const m = data.metrics;
  const get = (name) => (m[name] ? m[name].values : null);
  const ts = get('req_ts');
  // measured window = first request start .. last request end (excludes setup; includes graceful-stop tail)
  const secs = ts && ts.max > ts.min ? (ts.max - ts.min) / 1000 : data.state.testRunDurationMs / 1000;
  const total = (get('http_reqs{scenario:main}') || { count: 0 }).count;
  const rows = [];
  let errs = 0;
  for (const op of OPS) {
    const c = (get(`http_reqs{op:${op}}`) || { count: 0 }).count;
    const d = get(`http_req_duration{op:${op}}`) || {};
    const e = (get(`fhir_errors{op:${op}}`) || { count: 0 }).count;
    errs += e;
    rows.push({ op, count: c, rps: c / secs, p50: d.med, p95: d['p(95)'], p99: d['p(99)'], avg: d.avg, max: d.max, errors: e });
  }
  const its = get('iterations') || { count: 0, rate: 0 };
  const out = {
    base: BASE, scenario: SCENARIO, vus: VUS, duration_s: secs, started: __ENV.STARTED || null,
    total_requests: total, total_rps: total / secs, iterations: its.count, iterations_per_s: its.count / secs,
    errors: errs, overall_latency_ms: (get('http_req_duration{scenario:main}') || {}), ops: rows,
  };
  let t = `\n== ${SCENARIO} scenario against ${BASE}: ${VUS} VUs, ${f(secs)} s ==\n`;
  t += `total: ${total} requests, ${f(total / secs)} req/s; ${its.count} iterations (${f(its.count / secs, 2)}/s); errors: ${errs}\n`;
  const ov = get('http_req_duration{scenario:main}') || {};
  t += `all requests latency ms: p50 ${f(ov.med)}  p95 ${f(ov['p(95)'])}  p99 ${f(ov['p(99)'])}  max ${f(ov.max)}\n`;
  t += 'operation                     count    req/s   p50ms   p95ms   p99ms   maxms  errors\n';
  for (const r of rows) {
    t += `${r.op.padEnd(28)}${String(r.count).padStart(7)}${f(r.rps).padStart(9)}${f(r.p50).padStart(8)}${f(r.p95).padStart(8)}${f(r.p99).padStart(8)}${f(r.max).padStart(8)}${String(r.errors).padStart(8)}\n`;
  }
  const res = { stdout: t };
  if (__ENV.SUMMARY_JSON) res[__ENV.SUMMARY_JSON] = JSON.stringify(out, null, 2);
  return res;
}
