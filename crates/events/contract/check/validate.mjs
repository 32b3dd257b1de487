// Validates the committed contract (SPEC §3.4) with real tools: the AsyncAPI document
// with the AsyncAPI project's own parser (errors fail, warnings are printed), and every
// golden sample against its version's JSON Schema and its message's headers; then shows
// the check can fail, on a version-2 OrderCreated without its deadline.
import { readFileSync, readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import { Parser } from '@asyncapi/parser';
import Ajv from 'ajv';
import addFormats from 'ajv-formats';

const contract = join(dirname(fileURLToPath(import.meta.url)), '..');
const read = (path) => JSON.parse(readFileSync(join(contract, path), 'utf8'));
let failures = 0;
const fail = (what) => { failures += 1; console.error(`FAIL ${what}`); };

const { document, diagnostics } = await new Parser().parse(readFileSync(join(contract, 'asyncapi.json'), 'utf8'));
for (const d of diagnostics) {
  const line = `${d.code}: ${d.message} at /${d.path.join('/')}`;
  if (d.severity === 0) fail(`asyncapi.json ${line}`); else console.log(`note ${line}`);
}
if (!document) {
  console.error('asyncapi.json does not parse');
  process.exit(1);
}
console.log(`asyncapi.json: AsyncAPI ${document.version()}, ${document.channels().length} channels, ${document.operations().length} operations, ${document.messages().length} messages`);

const ajv = new Ajv({ allErrors: true, strict: false });
addFormats(ajv);
const headersOf = new Map(document.messages().all().map((m) => [m.id(), m.headers()?.json()]));

const validators = new Map();
const validator = (key, schema) => {
  if (!validators.has(key)) validators.set(key, ajv.compile(schema()));
  return validators.get(key);
};

/** The errors of one entry (`[name, value]` pairs) of `type` in `version`. */
function check(version, type, pairs) {
  const fields = Object.fromEntries(pairs);
  const errors = [];
  const schema = `schemas/v${version}/${type}.schema.json`;
  const payload = validator(schema, () => read(schema));
  if (!payload(JSON.parse(fields.payload))) errors.push(...payload.errors);
  const { payload: _, ...rest } = fields;
  const message = `${type}V${version}`;
  const headers = validator(message, () => headersOf.get(message));
  if (!headers(rest)) errors.push(...headers.errors);
  return errors;
}

let samples = 0;
for (const dir of readdirSync(join(contract, 'samples'))) {
  const version = dir.replace(/^v/, '');
  for (const file of readdirSync(join(contract, 'samples', dir))) {
    const type = file.replace(/\.json$/, '');
    const errors = check(version, type, read(`samples/${dir}/${file}`));
    samples += 1;
    if (errors.length) fail(`samples/${dir}/${file}: ${ajv.errorsText(errors)}`);
  }
}
console.log(`${samples} golden samples checked against their schemas and headers`);

const undated = read('samples/v2/OrderCreated.json').map(([name, value]) => {
  if (name !== 'payload') return [name, value];
  const { pay_by: _, ...rest } = JSON.parse(value);
  return [name, JSON.stringify(rest)];
});
if (check('2', 'OrderCreated', undated).length === 0) fail('a version-2 OrderCreated without pay_by passed');
else console.log('a version-2 OrderCreated without pay_by is refused, as it must be');

if (failures) {
  console.error(`${failures} contract check(s) failed`);
  process.exit(1);
}
console.log('contract: ok');
