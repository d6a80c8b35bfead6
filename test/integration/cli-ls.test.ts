/**
 * `tern ls` through the real CLI: printed as the listing is read (text and one JSON array), and quiet when the
 * reader stops early (`tern ls | head`).
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';

const ROOT = path.resolve(import.meta.dirname, '../..');
const NODE = path.join(ROOT, 'node_modules/.bin/node');
const MAIN = path.join(ROOT, 'src/cli/main.ts');
const env = { ...process.env, TERN_PASSWORD: 'ls-test-passphrase' };

test('tern ls streams every entry (text and --json) and exits 0 when its reader closes the pipe early', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-cli-ls-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const src = path.join(dir, 'src');
  fs.mkdirSync(path.join(src, 'sub'), { recursive: true });
  // ~3000 lines of ~60 bytes: more than a pipe holds, so the CLI still writes after the reader has gone.
  for (let i = 0; i < 3000; i++)
    fs.writeFileSync(path.join(src, i % 2 ? 'sub' : '', `file-${i}.txt`), `${i}`);
  const repo = path.join(dir, 'repo');
  const run = (...args: string[]) =>
    spawnSync(NODE, [MAIN, ...args, '--repo', repo], { env, encoding: 'utf8' });
  assert.equal(run('repo', 'init').status, 0);
  assert.equal(run('backup', src).status, 0);

  const text = run('ls', 'latest');
  assert.equal(text.status, 0, text.stderr);
  const lines = text.stdout.trim().split('\n');
  assert.equal(lines.length, 3001); // the files and sub/
  assert.match(lines[0]!, /^-rw-r--r-- +\d+ \d{4}-\d\d-\d\dT[\d:]+ file-0\.txt$/);
  const json = run('ls', 'latest', '--json');
  assert.equal(json.status, 0, json.stderr);
  const entries = JSON.parse(json.stdout) as { path: string; type: string }[];
  assert.equal(entries.length, 3001);
  assert.deepEqual(entries.find((e) => e.path === 'sub/file-1.txt')?.type, 'file');

  for (const extra of [[], ['--json']]) {
    const child = spawn(NODE, [MAIN, 'ls', 'latest', '--repo', repo, ...extra], { env });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.stdout.once('data', () => child.stdout.destroy());
    const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
    assert.equal(code, 0, stderr);
    assert.doesNotMatch(stderr, /EPIPE|Error/);
  }
});
