/** Repository URLs → object stores (no server is contacted: stores connect lazily). */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { InputError } from '../../src/core/index.ts';
import { openStore } from '../../src/storage/index.ts';

test('s3:// and azblob:// URLs open the cloud stores; locations carry no secret', async () => {
  const s3 = await openStore('s3://my-bucket/a/b/', {
    env: {
      AWS_ENDPOINT_URL: 'http://127.0.0.1:9',
      AWS_ACCESS_KEY_ID: 'AKIA1',
      AWS_SECRET_ACCESS_KEY: 'topsecret1',
    },
  });
  assert.equal(s3.location, 's3://my-bucket/a/b (http://127.0.0.1:9)');
  await s3.close?.();
  const aws = await openStore('s3://other-bucket', { env: { AWS_REGION: 'eu-west-1' } });
  assert.equal(aws.location, 's3://other-bucket/');
  await aws.close?.();
  const key = Buffer.alloc(32, 7).toString('base64');
  const az = await openStore('azblob://acct1/cont/x/y', {
    env: { AZURE_STORAGE_KEY: key, AZURE_STORAGE_ENDPOINT: 'http://127.0.0.1:10000/acct1' },
  });
  assert.equal(az.location, 'azblob://acct1/cont/x/y (http://127.0.0.1:10000/acct1)');
  const sas = await openStore('azblob://acct1/cont', {
    env: { AZURE_STORAGE_SAS_TOKEN: '?sv=1&sig=abc%2Bdef' },
  });
  assert.equal(sas.location, 'azblob://acct1/cont/');
});

test('bad repository URLs are InputError, without secrets', async () => {
  await assert.rejects(openStore('s3:///prefix', { env: {} }), InputError);
  await assert.rejects(openStore('s3://Bad_Bucket/x', { env: {} }), InputError);
  await assert.rejects(openStore('azblob://acct1', { env: { AZURE_STORAGE_KEY: 'a2V5' } }), InputError);
  await assert.rejects(
    openStore('azblob://acct1/cont', { env: {} }),
    /AZURE_STORAGE_KEY, AZURE_STORAGE_SAS_TOKEN/,
  );
  await assert.rejects(openStore('gs://bucket/x'), /unsupported repository URL scheme/);
  const secret = 'AccountKey-like-secret-value';
  await assert.rejects(
    openStore('azblob://acct1/cont', {
      env: { AZURE_STORAGE_CONNECTION_STRING: `garbage;AccountKey=${secret}` },
    }),
    (err: Error) => err instanceof InputError && !err.message.includes(secret),
  );
});
