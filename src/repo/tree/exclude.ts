/**
 * Exclude patterns for tree backups, in the spirit of restic/gitignore:
 * - a pattern without '/' matches an entry's name at any depth (`*.tmp`, `node_modules`);
 * - a pattern with '/' matches the path relative to the backup root (`/build/out`, `cache/**`); an absolute
 *   pattern under the root is made relative to it;
 * - `*` matches within one component, `**` across components, `?` one character.
 * An excluded directory is skipped with everything below it.
 */
import path from 'node:path';
import { InputError } from '../../core/base.ts';

function globToRegExp(glob: string): RegExp {
  let re = '';
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i]!;
    if (c === '*') {
      if (glob[i + 1] === '*') {
        // "**/" also matches zero directories.
        if (glob[i + 2] === '/') {
          re += '(?:.*/)?';
          i += 2;
        } else {
          re += '.*';
          i += 1;
        }
      } else re += '[^/]*';
    } else if (c === '?') re += '[^/]';
    else re += c.replace(/[\\^$.|+()[\]{}]/g, '\\$&');
  }
  return new RegExp(`^${re}$`);
}

export class ExcludeMatcher {
  private readonly byName: RegExp[] = [];
  private readonly byPath: RegExp[] = [];

  constructor(patterns: readonly string[], root: string) {
    const absRoot = path.resolve(root);
    for (const raw of patterns) {
      let p = raw.trim();
      if (p === '') continue;
      if (p.endsWith('/') && p.length > 1) p = p.slice(0, -1);
      if (path.isAbsolute(p) && (p === absRoot || p.startsWith(absRoot + '/'))) p = p.slice(absRoot.length);
      if (p.includes('\0')) throw new InputError(`invalid exclude pattern ${JSON.stringify(raw)}`);
      if (p.includes('/')) this.byPath.push(globToRegExp(p.replace(/^\/+/, '')));
      else this.byName.push(globToRegExp(p));
    }
  }

  get empty(): boolean {
    return this.byName.length === 0 && this.byPath.length === 0;
  }

  /** `rel` is the '/'-separated path below the root, `name` its last component. */
  excludes(rel: string, name: string): boolean {
    for (const r of this.byName) if (r.test(name)) return true;
    for (const r of this.byPath) if (r.test(rel)) return true;
    return false;
  }
}
