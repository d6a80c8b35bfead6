import { test } from 'node:test';
import assert from 'node:assert/strict';
import { AuthError, InputError, createExportDetails, readExportDetails } from '../../src/core/index.ts';

const base = {
  source: { site: 'east', app: 'shop' },
  location: { profile: 'offsite', repository: 's3://backups/shop' },
  restorePoints: [
    {
      id: 'rp-1',
      consistentAt: '2026-11-24T10:00:00.000Z',
      exportedAt: '2026-11-24T10:01:00.000Z',
      repositorySnapshots: { data: 'abc123' },
      copies: [
        { volume: 'data', region: 'west', snapshotId: 'west/data/s1', provider: 'local', sizeBytes: 4096 },
      ],
    },
  ],
};

test('export details round-trip and unwrap the repository password only with the secret', () => {
  const token = createExportDetails(base, 'correct horse battery', 'repo-pass-123');
  assert.match(token, /^tern-x1\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/);
  assert.ok(!token.includes('repo-pass-123'));
  assert.ok(!Buffer.from(token.split('.')[1]!, 'base64url').toString().includes('repo-pass-123'));
  const got = readExportDetails(token, 'correct horse battery');
  assert.equal(got.repositoryPassword, 'repo-pass-123');
  assert.equal(got.payload.restorePoints[0]?.copies[0]?.region, 'west');
  assert.throws(() => readExportDetails(token, 'wrong secret!!'), AuthError);
});

test('tampered, truncated and foreign tokens are rejected clearly', () => {
  const token = createExportDetails(base, 'correct horse battery');
  const [p, body, sig] = token.split('.') as [string, string, string];
  const payload = JSON.parse(Buffer.from(body, 'base64url').toString());
  payload.source.app = 'evil';
  const tampered = `${p}.${Buffer.from(JSON.stringify(payload)).toString('base64url')}.${sig}`;
  assert.throws(() => readExportDetails(tampered, 'correct horse battery'), AuthError);
  assert.throws(
    () => readExportDetails(token.slice(0, token.length - 10), 'correct horse battery'),
    AuthError,
  );
  assert.throws(() => readExportDetails(token.slice(0, 40), 'correct horse battery'), InputError);
  assert.throws(() => readExportDetails('hello', 'correct horse battery'), /malformed or truncated/);
  // whitespace from copy-paste is tolerated
  assert.equal(readExportDetails(token.replace(/(.{60})/g, '$1\n'), 'correct horse battery').payload.v, 1);
});

test('a token that fails its schema names the field', () => {
  const bad = `tern-x1.${Buffer.from(JSON.stringify({ v: 1, restorePoints: 'x' })).toString('base64url')}.AAAA`;
  assert.throws(() => readExportDetails(bad, 'correct horse battery'), /malformed: .*restorePoints/);
});
