/** `tern` entry point: parse, call, print. Errors are translated once, here, into messages and exit codes. */
import module from 'node:module';

// Node caches the type-stripped and compiled sources across runs (os.tmpdir()/node-compile-cache, checked
// against each file's content): starting the CLI takes about half the CPU time. It must be enabled before the
// command modules load, hence the dynamic imports below.
module.enableCompileCache();
// A reader that stops early (`tern ls | head`) closes the pipe: the output is not wanted any more, which is
// no error of ours. Without this Node threw an unhandled EPIPE with its stack.
process.stdout.on('error', (err: NodeJS.ErrnoException) => {
  if (err.code === 'EPIPE') process.exit(0);
  throw err;
});
const { Command, CommanderError } = await import('commander');
const { describeError, exitCodeFor, errorCodeOf } = await import('../core/base.ts');
/**
 * Verbs that commands/repo.ts alone registers: for these only that module is loaded. The other modules pull in
 * the engine, platforms and cloud SDKs (~0.5 s of CPU), which the datamover verbs never need.
 */
const REPO_VERBS = new Set([
  'repo',
  'backup',
  'snapshots',
  'ls',
  'restore',
  'verify',
  'forget',
  'prune',
  'stats',
  'key',
]);
const verb = process.argv.slice(2).find((a) => !a.startsWith('-'));
const modules =
  verb !== undefined && REPO_VERBS.has(verb)
    ? [(await import('./commands/repo.ts')).registerRepo]
    : (await import('./commands/index.ts')).modules;

export function buildProgram(): InstanceType<typeof Command> {
  const program = new Command('tern')
    .description('Tern: backup and disaster recovery for Kubernetes applications')
    .version('0.1.0')
    .showHelpAfterError()
    .exitOverride();
  for (const register of modules) register(program);
  return program;
}

async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv, { from: 'user' });
    return 0;
  } catch (err) {
    if (err instanceof CommanderError) return err.exitCode === 0 ? 0 : 2;
    const json = argv.includes('--json');
    if (json) {
      process.stdout.write(
        JSON.stringify({ error: { code: errorCodeOf(err), message: describeError(err) } }, null, 2) + '\n',
      );
    } else {
      process.stderr.write(`tern: error: ${describeError(err)}\n`);
      if (process.env.TERN_DEBUG && err instanceof Error) process.stderr.write(`${err.stack}\n`);
    }
    return exitCodeFor(err);
  }
}

process.exitCode = await main(process.argv.slice(2));
