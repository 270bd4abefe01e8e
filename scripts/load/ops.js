// Operations load for k6: $ehc-verify over fresh dynamic tokens, or $ehc-qrcode over a pool of residents.
// Used by scripts/bench_ops.py, which issues the tokens and picks the residents.
//
// Env:  BASE      FHIR base URL (required)        TOKEN   bearer token (required: auth is on)
//       SCENARIO  verify | qrcode                  VUS     concurrent virtual users (default 8)
//       INPUT     JSON file: verify -> array of QR tokens (each verified once); qrcode -> array of Patient ids
//       DURATION  qrcode: run length (default 30s); verify: at most this long, or until the tokens run out
//       IMAGE     qrcode: "false" asks for the token without the QR image
//       SUMMARY_JSON  where the machine-readable summary goes
import http from 'k6/http';
import exec from 'k6/execution';
import { SharedArray } from 'k6/data';
import { Counter } from 'k6/metrics';

const BASE = (__ENV.BASE || '').replace(/\/+$/, '');
const SCENARIO = __ENV.SCENARIO || 'verify';
const VUS = parseInt(__ENV.VUS || '8', 10);
const DURATION = __ENV.DURATION || '30s';
const items = new SharedArray('input', () => JSON.parse(open(__ENV.INPUT)));
const failures = new Counter('op_failures');

export const options = {
  scenarios: {
    main: SCENARIO === 'verify'
      ? { executor: 'shared-iterations', vus: VUS, iterations: items.length, maxDuration: DURATION, exec: 'verify' }
      : { executor: 'constant-vus', vus: VUS, duration: DURATION, exec: 'qrcode' },
  },
  summaryTrendStats: ['med', 'p(95)', 'p(99)', 'max'],
};

const headers = { 'Content-Type': 'application/fhir+json', Authorization: `Bearer ${__ENV.TOKEN}` };
const param = (name, value) => JSON.stringify({ resourceType: 'Parameters', parameter: [Object.assign({ name }, value)] });

function expect(res, test) {
  let ok = res.status === 200;
  if (ok) {
    try { ok = test(JSON.parse(res.body)); } catch (e) { ok = false; }
  }
  failures.add(ok ? 0 : 1);
  if (!ok && __ENV.DEBUG) console.warn(`${res.status} ${String(res.body).slice(0, 300)}`);
}

const named = (body, name) => (body.parameter || []).find((p) => p.name === name) || {};

export function verify() {
  const token = items[exec.scenario.iterationInTest];
  const res = http.post(`${BASE}/$ehc-verify`, param('token', { valueString: token }), { headers });
  expect(res, (b) => named(b, 'valid').valueBoolean === true);   // fresh tokens: every one is valid once
}

const QR_BODY = param('image', { valueBoolean: __ENV.IMAGE !== 'false' });

export function qrcode() {
  const id = items[Math.floor(Math.random() * items.length)];
  const res = http.post(`${BASE}/Patient/${id}/$ehc-qrcode`, QR_BODY, { headers });
  expect(res, (b) => String(named(b, 'token').valueString || '').startsWith('EHC1:'));
}

export function handleSummary(data) {
  const m = data.metrics;
  const reqs = m.http_reqs ? m.http_reqs.values.count : 0;
  const seconds = data.state.testRunDurationMs / 1000;
  const d = m.http_req_duration ? m.http_req_duration.values : {};
  const out = { scenario: SCENARIO, vus: VUS, requests: reqs, seconds, rps: reqs / seconds,
                failures: m.op_failures ? m.op_failures.values.count : 0,
                p50: d.med, p95: d['p(95)'], p99: d['p(99)'], max: d.max };
  const res = { stdout: `${SCENARIO}: ${reqs} requests in ${seconds.toFixed(1)} s = ${out.rps.toFixed(0)}/s, ` +
                `p50 ${Number(d.med).toFixed(1)} ms, p95 ${Number(d['p(95)']).toFixed(1)} ms, ${out.failures} failed\n` };
  if (__ENV.SUMMARY_JSON) res[__ENV.SUMMARY_JSON] = JSON.stringify(out);
  return res;
}
