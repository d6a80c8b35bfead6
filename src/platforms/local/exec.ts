import { execFile } from 'node:child_process';
import { StorageError } from '../../core/index.ts';

/** Runs a host tool (btrfs, cp, filefrag, stat); failures become StorageError with stderr in the message. */
export function run(cmd: string, args: string[], signal?: AbortSignal): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { maxBuffer: 256 * 1024 * 1024, signal }, (err, stdout, stderr) => {
      if (err) {
        const msg = String(stderr).trim().split('\n').slice(-3).join('; ');
        reject(new StorageError(`${cmd} ${args[0] ?? ''} failed: ${msg || err.message}`, { cause: err }));
      } else resolve(String(stdout));
    });
  });
}
