// fhir-kit-client in the client smoke matrix (tests/client_matrix.py): every step for every resource type in one
// process. Usage: node matrix.js <spec.json>, the spec holding base, token, patient and types: [{type, resource,
// compartment, member}]. Prints {type: {step: "ok" | "n/a: why" | what went wrong}} as one JSON object.
import { readFileSync } from 'node:fs';
import { randomUUID } from 'node:crypto';
import { Client } from 'fhir-kit-client';

const STEPS = ['create', 'read', 'update', 'vread', 'history', 'search', 'transaction', 'paging', 'compartment',
  'xml-read', 'xml-create', 'delete'];
const JSON_ONLY = 'n/a: fhir-kit-client reads and writes JSON only';
const spec = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const client = new Client({ baseUrl: spec.base, bearerToken: spec.token });

function expect(condition, message) {
  if (!condition) throw new Error(message);
}

function ids(bundle) {
  return (bundle.entry || []).filter((e) => (e.search || {}).mode !== 'outcome').map((e) => e.resource.id);
}

function steps(entry, s) {
  const resourceType = entry.type;
  const fresh = () => structuredClone(entry.resource);
  return {
    async create() {
      const created = await client.create({ resourceType, body: fresh() });
      expect(created.id && created.meta.versionId === '1', `created ${JSON.stringify(created.meta)}`);
      s.id = created.id;
    },
    async read() {
      s.current = await client.read({ resourceType, id: s.id });
      expect(s.current.id === s.id && s.current.resourceType === resourceType, `read ${s.current.id}`);
    },
    async update() {
      const body = { ...s.current, meta: { tag: [{ system: 'http://example.org/tags', code: 'client-matrix' }] } };
      const updated = await client.update({ resourceType, id: s.id, body });
      expect(updated.meta.versionId === '2', `updated to ${updated.meta.versionId}`);
    },
    async vread() {
      const old = await client.vread({ resourceType, id: s.id, version: '1' });
      expect(old.id === s.id && old.meta.versionId === '1', `vread ${old.meta.versionId}`);
    },
    async history() {
      const bundle = await client.history({ resourceType, id: s.id });
      const versions = (bundle.entry || []).map((e) => e.resource.meta.versionId);
      expect(JSON.stringify(versions) === '["2","1"]', `history versions ${versions}`);
    },
    async search() {
      const bundle = await client.search({ resourceType, searchParams: { _id: s.id } });
      expect(JSON.stringify(ids(bundle)) === JSON.stringify([s.id]), `search gave ${ids(bundle)}`);
    },
    async transaction() {
      const body = { resourceType: 'Bundle', type: 'transaction', entry: [{
        fullUrl: `urn:uuid:${randomUUID()}`, resource: fresh(), request: { method: 'POST', url: resourceType } }] };
      const response = await client.transaction({ body });
      expect(response.type === 'transaction-response' && response.entry.length === 1,
        `transaction response ${response.type}`);
      const { status, location } = response.entry[0].response;
      expect(status.startsWith('201'), `status ${status}`);
      const parts = location.split('/');
      expect(parts.at(-4) === resourceType && parts.at(-2) === '_history', `location ${location}`);
      s.tx = parts.at(-3);
    },
    async paging() {
      let page = await client.search({ resourceType, searchParams: { _id: `${s.id},${s.tx}`, _count: 1 } });
      const sizes = [];
      const found = [];
      while (page && sizes.length < 5) {
        sizes.push((page.entry || []).length);
        found.push(...ids(page));
        page = await client.nextPage({ bundle: page }); // undefined when there is no next link
      }
      const want = [s.id, s.tx].sort();
      expect(JSON.stringify(sizes) === '[1,1]' && JSON.stringify(found.sort()) === JSON.stringify(want),
        `pages ${sizes} gave ${found}`);
    },
    async compartment() {
      if (!entry.compartment) return 'n/a: not in the patient compartment';
      const bundle = await client.compartmentSearch({ resourceType,
        compartment: { resourceType: 'Patient', id: spec.patient } });
      const got = ids(bundle);
      if (resourceType === 'Patient') {
        expect(JSON.stringify(got) === JSON.stringify([spec.patient]), `Patient/${spec.patient}/Patient gave ${got}`);
      } else if (entry.member) {
        expect(got.includes(s.id) && got.includes(s.tx), `compartment gave ${got}`);
      }
    },
    async 'xml-read'() {
      return JSON_ONLY;
    },
    async 'xml-create'() {
      return JSON_ONLY;
    },
    async delete() {
      await client.delete({ resourceType, id: s.id });
      try {
        await client.read({ resourceType, id: s.id });
      } catch (err) {
        expect(err.response && err.response.status === 410, `read after delete: ${err.message}`);
        return 'ok';
      }
      throw new Error('read after delete did not fail');
    },
  };
}

function describe(err) {
  const data = err.response && err.response.data;
  const detail = data && data.issue ? ` ${JSON.stringify(data.issue).slice(0, 300)}` : '';
  return `${err.name}: ${err.message}${detail}`.slice(0, 400);
}

const out = {};
for (const entry of spec.types) {
  const s = {};
  const run = steps(entry, s);
  const cells = {};
  for (const step of STEPS) {
    if (!s.id && step !== 'create' && step !== 'xml-create') {
      cells[step] = 'not run: create failed';
      continue;
    }
    try {
      cells[step] = (await run[step]()) || 'ok';
    } catch (err) {
      cells[step] = describe(err);
    }
  }
  out[entry.type] = cells;
}
process.stdout.write(`${JSON.stringify(out)}\n`);
