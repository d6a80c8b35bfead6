#!/usr/bin/env node
// The `tern` command. On Node ≥ 24 it runs the TypeScript CLI in this process, with the compile cache turned on
// first: an entry in TypeScript (cli/main.ts) is type-stripped before it can turn the cache on, which loads
// Node's TypeScript stripper (~10 ms) on every run even when every module comes from the cache. On an older
// Node it runs itself again on the Node 24 that `npm install` puts in node_modules (type stripping,
// node:sqlite, zstd).
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import module from 'node:module';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

const major = Number(process.versions.node.split('.')[0]);
if (major >= 24) {
  module.enableCompileCache();
  await import('../src/cli/main.ts');
} else {
  const root = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
  const local = path.join(root, 'node_modules', '.bin', 'node');
  if (!existsSync(local)) {
    process.stderr.write(`tern: needs Node 24 or later (this is ${process.version}); run npm install\n`);
    process.exit(1);
  }
  const child = spawn(local, [fileURLToPath(import.meta.url), ...process.argv.slice(2)], {
    stdio: 'inherit',
  });
  for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => child.kill(sig));
  child.on('exit', (code, signal) => process.exit(code ?? (signal ? 128 : 1)));
}
