import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

test('the TypeScript declarations type-check a program using the API', () => {
  const here = dirname(fileURLToPath(import.meta.url));
  const tsc = join(here, '..', 'node_modules', 'typescript', 'bin', 'tsc');
  const run = spawnSync(process.execPath, [tsc, '-p', join(here, 'types')], { encoding: 'utf8' });
  assert.equal(run.status, 0, run.stdout + run.stderr);
});
