/**
 * The catalog: persistent control-plane state in one SQLite file (node:sqlite). All SQL lives in this folder.
 * Rows hold JSON bodies validated by the core schemas on the way out, plus the columns queries filter on.
 * Secrets are sealed (secrets.ts) before they are written; nothing here ever holds them in clear on disk.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { DatabaseSync, type SQLInputValue } from 'node:sqlite';
import { ConflictError, NotFoundError } from '../core/index.ts';
import {
  ActionRunSchema,
  ApplicationSchema,
  PolicySchema,
  ProfileSchema,
  RestorePointSchema,
  redactProfile,
  type ActionRun,
  type ActionState,
  type ActionType,
  type Application,
  type Policy,
  type Profile,
  type RedactedProfile,
  type RestorePoint,
} from '../core/model.ts';
import { MIGRATIONS } from './migrations.ts';
import { loadMasterKey, SecretBox } from './secrets.ts';

export interface CatalogOptions {
  /** Master key file; default `<db>.key`. Ignored when env TERN_CATALOG_KEY is set. */
  keyFile?: string;
  env?: NodeJS.ProcessEnv;
}

export interface PolicyRow {
  policy: Policy;
  createdAt: string;
  lastRunAt?: string;
}

export interface ActionQuery {
  app?: string;
  policy?: string;
  type?: ActionType;
  state?: ActionState;
  states?: readonly ActionState[];
  run?: string;
  limit?: number;
  /** Oldest first (recovery order) instead of newest first. */
  ascending?: boolean;
}

export interface RestorePointQuery {
  app?: string;
  policy?: string;
}

type Row = Record<string, SQLInputValue>;

function str(v: unknown): string {
  return typeof v === 'string' ? v : String(v);
}
function optStr(v: unknown): string | undefined {
  return v === null || v === undefined ? undefined : str(v);
}

function isUniqueViolation(err: unknown): boolean {
  return err instanceof Error && /UNIQUE constraint failed|PRIMARY KEY/.test(err.message);
}

export class Catalog {
  readonly db: DatabaseSync;
  readonly file: string;
  private readonly box: SecretBox;
  private seq = 0;

  private constructor(db: DatabaseSync, file: string, box: SecretBox) {
    this.db = db;
    this.file = file;
    this.box = box;
  }

  /** Opens (creating when missing) the catalog at `file` (':memory:' for a throwaway one) and migrates it. */
  static open(file: string, opts: CatalogOptions = {}): Catalog {
    const memory = file === ':memory:';
    if (!memory) fs.mkdirSync(path.dirname(path.resolve(file)), { recursive: true });
    const key = loadMasterKey(memory ? opts.keyFile : (opts.keyFile ?? `${file}.key`), opts.env);
    const db = new DatabaseSync(file);
    db.exec('PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;');
    if (!memory) db.exec('PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;');
    if (!memory) fs.chmodSync(file, 0o600);
    const c = new Catalog(db, file, new SecretBox(key));
    c.migrate();
    const r = db
      .prepare(
        'SELECT max(s) AS s FROM (SELECT max(seq) AS s FROM actions UNION ALL SELECT max(seq) FROM restore_points)',
      )
      .get() as { s: number | null } | undefined;
    c.seq = r?.s ?? 0;
    return c;
  }

  close(): void {
    if (this.db.isOpen) this.db.close();
  }

  private migrate(): void {
    this.db.exec(
      'CREATE TABLE IF NOT EXISTS migrations (version INTEGER PRIMARY KEY, name TEXT, applied_at TEXT)',
    );
    const done = new Set(
      (this.db.prepare('SELECT version FROM migrations').all() as { version: number }[]).map(
        (r) => r.version,
      ),
    );
    for (const m of MIGRATIONS) {
      if (done.has(m.version)) continue;
      this.tx(() => {
        this.db.exec(m.sql);
        this.db
          .prepare('INSERT INTO migrations (version, name, applied_at) VALUES (?, ?, ?)')
          .run(m.version, m.name, new Date().toISOString());
      });
    }
  }

  /** Migrations applied, in order. */
  migrations(): { version: number; name: string }[] {
    return (
      this.db.prepare('SELECT version, name FROM migrations ORDER BY version').all() as {
        version: number;
        name: string;
      }[]
    ).map((r) => ({ version: r.version, name: r.name }));
  }

  /** Runs `fn` in one transaction (nested calls join the outer one). */
  tx<T>(fn: () => T): T {
    if (this.db.isTransaction) return fn();
    this.db.exec('BEGIN IMMEDIATE');
    try {
      const r = fn();
      this.db.exec('COMMIT');
      return r;
    } catch (err) {
      this.db.exec('ROLLBACK');
      throw err;
    }
  }

  nextSeq(): number {
    return ++this.seq;
  }

  // ---------- profiles ----------

  insertProfile(p: Profile, createdAt: string): void {
    const { secrets, ...body } = p;
    try {
      this.db
        .prepare('INSERT INTO profiles (name, kind, body, secrets, created_at) VALUES (?, ?, ?, ?, ?)')
        .run(p.name, p.kind, JSON.stringify(body), this.box.seal(secrets, p.name), createdAt);
    } catch (err) {
      if (isUniqueViolation(err)) throw new ConflictError(`profile "${p.name}" already exists`);
      throw err;
    }
  }

  /** With decrypted secrets: for the engine only, never for API output. */
  getProfile(name: string): Profile {
    const r = this.db.prepare('SELECT body, secrets FROM profiles WHERE name = ?').get(name) as
      { body: string; secrets: Uint8Array } | undefined;
    if (!r) throw new NotFoundError(`profile "${name}" not found`);
    return ProfileSchema.parse({
      ...(JSON.parse(r.body) as object),
      secrets: this.box.open(r.secrets, name),
    });
  }

  /** Redacted listing (secret names only; the values are decrypted to learn the names and dropped). */
  listProfiles(kind?: 'location' | 'infra'): RedactedProfile[] {
    const rows = (
      kind
        ? this.db.prepare('SELECT name FROM profiles WHERE kind = ? ORDER BY name').all(kind)
        : this.db.prepare('SELECT name FROM profiles ORDER BY name').all()
    ) as { name: string }[];
    return rows.map((r) => redactProfile(this.getProfile(r.name)));
  }

  hasProfile(name: string, kind?: 'location' | 'infra'): boolean {
    const r = this.db.prepare('SELECT kind FROM profiles WHERE name = ?').get(name) as
      { kind: string } | undefined;
    return r !== undefined && (kind === undefined || r.kind === kind);
  }

  deleteProfile(name: string): void {
    this.tx(() => {
      if (!this.hasProfile(name)) throw new NotFoundError(`profile "${name}" not found`);
      const app = this.db.prepare('SELECT name FROM apps WHERE infra_profile = ? LIMIT 1').get(name) as
        { name: string } | undefined;
      if (app) throw new ConflictError(`profile "${name}" is used by app "${app.name}"`);
      const pol = this.db
        .prepare('SELECT name FROM policies WHERE location_profile = ? LIMIT 1')
        .get(name) as { name: string } | undefined;
      if (pol) throw new ConflictError(`profile "${name}" is used by policy "${pol.name}"`);
      this.db.prepare('DELETE FROM profiles WHERE name = ?').run(name);
    });
  }

  // ---------- applications ----------

  insertApp(app: Application, createdAt: string): void {
    try {
      this.db
        .prepare('INSERT INTO apps (name, infra_profile, body, created_at) VALUES (?, ?, ?, ?)')
        .run(app.name, app.infraProfile, JSON.stringify(app), createdAt);
    } catch (err) {
      if (isUniqueViolation(err)) throw new ConflictError(`application "${app.name}" already exists`);
      throw err;
    }
  }

  getApp(name: string): Application {
    const r = this.db.prepare('SELECT body FROM apps WHERE name = ?').get(name) as
      { body: string } | undefined;
    if (!r) throw new NotFoundError(`application "${name}" not found`);
    return ApplicationSchema.parse(JSON.parse(r.body));
  }

  hasApp(name: string): boolean {
    return this.db.prepare('SELECT 1 FROM apps WHERE name = ?').get(name) !== undefined;
  }

  listApps(): Application[] {
    return (this.db.prepare('SELECT body FROM apps ORDER BY name').all() as { body: string }[]).map((r) =>
      ApplicationSchema.parse(JSON.parse(r.body)),
    );
  }

  deleteApp(name: string): void {
    this.tx(() => {
      if (!this.hasApp(name)) throw new NotFoundError(`application "${name}" not found`);
      const pol = this.db.prepare('SELECT name FROM policies WHERE app = ? LIMIT 1').get(name) as
        { name: string } | undefined;
      if (pol) throw new ConflictError(`application "${name}" is used by policy "${pol.name}"`);
      this.db.prepare('DELETE FROM apps WHERE name = ?').run(name);
    });
  }

  // ---------- policies ----------

  insertPolicy(p: Policy, createdAt: string): void {
    try {
      this.db
        .prepare(
          'INSERT INTO policies (name, app, body, paused, location_profile, created_at) VALUES (?, ?, ?, ?, ?, ?)',
        )
        .run(
          p.name,
          p.app,
          JSON.stringify(p),
          p.paused ? 1 : 0,
          p.export?.mode === 'datamover' ? p.export.locationProfile : null,
          createdAt,
        );
    } catch (err) {
      if (isUniqueViolation(err)) throw new ConflictError(`policy "${p.name}" already exists`);
      throw err;
    }
  }

  updatePolicy(p: Policy): void {
    const r = this.db
      .prepare('UPDATE policies SET body = ?, paused = ?, location_profile = ? WHERE name = ?')
      .run(
        JSON.stringify(p),
        p.paused ? 1 : 0,
        p.export?.mode === 'datamover' ? p.export.locationProfile : null,
        p.name,
      );
    if (r.changes === 0) throw new NotFoundError(`policy "${p.name}" not found`);
  }

  private policyRow(r: { body: string; created_at: string; last_run_at: string | null }): PolicyRow {
    const row: PolicyRow = { policy: PolicySchema.parse(JSON.parse(r.body)), createdAt: r.created_at };
    if (r.last_run_at) row.lastRunAt = r.last_run_at;
    return row;
  }

  getPolicy(name: string): PolicyRow {
    const r = this.db
      .prepare('SELECT body, created_at, last_run_at FROM policies WHERE name = ?')
      .get(name) as { body: string; created_at: string; last_run_at: string | null } | undefined;
    if (!r) throw new NotFoundError(`policy "${name}" not found`);
    return this.policyRow(r);
  }

  listPolicies(app?: string): PolicyRow[] {
    const rows = (
      app
        ? this.db
            .prepare('SELECT body, created_at, last_run_at FROM policies WHERE app = ? ORDER BY name')
            .all(app)
        : this.db.prepare('SELECT body, created_at, last_run_at FROM policies ORDER BY name').all()
    ) as { body: string; created_at: string; last_run_at: string | null }[];
    return rows.map((r) => this.policyRow(r));
  }

  setPolicyLastRun(name: string, at: string): void {
    this.db.prepare('UPDATE policies SET last_run_at = ? WHERE name = ?').run(at, name);
  }

  deletePolicy(name: string): void {
    const r = this.db.prepare('DELETE FROM policies WHERE name = ?').run(name);
    if (r.changes === 0) throw new NotFoundError(`policy "${name}" not found`);
  }

  // ---------- restore points ----------

  newId(prefix: string): string {
    return `${prefix}-${crypto.randomBytes(8).toString('hex')}`;
  }

  insertRestorePoint(rp: RestorePoint): void {
    const v = RestorePointSchema.parse(rp);
    this.db
      .prepare(
        'INSERT INTO restore_points (id, app, policy, consistent_at, export_completed_at, size_bytes, tiers, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?)',
      )
      .run(
        v.id,
        v.app,
        v.policy ?? null,
        v.consistentAt,
        v.exportCompletedAt ?? null,
        v.sizeBytes,
        JSON.stringify(v.tiers),
        this.nextSeq(),
      );
  }

  updateRestorePoint(rp: RestorePoint): void {
    const v = RestorePointSchema.parse(rp);
    const r = this.db
      .prepare('UPDATE restore_points SET export_completed_at = ?, size_bytes = ?, tiers = ? WHERE id = ?')
      .run(v.exportCompletedAt ?? null, v.sizeBytes, JSON.stringify(v.tiers), v.id);
    if (r.changes === 0) throw new NotFoundError(`restore point "${rp.id}" not found`);
  }

  private rpFrom(r: Row): RestorePoint {
    const rp: RestorePoint = {
      id: str(r['id']),
      app: str(r['app']),
      consistentAt: str(r['consistent_at']),
      sizeBytes: Number(r['size_bytes']),
      tiers: JSON.parse(str(r['tiers'])) as RestorePoint['tiers'],
    };
    const policy = optStr(r['policy']);
    if (policy) rp.policy = policy;
    const exp = optStr(r['export_completed_at']);
    if (exp) rp.exportCompletedAt = exp;
    return RestorePointSchema.parse(rp);
  }

  getRestorePoint(id: string): RestorePoint {
    const r = this.db.prepare('SELECT * FROM restore_points WHERE id = ?').get(id) as Row | undefined;
    if (!r) throw new NotFoundError(`restore point "${id}" not found`);
    return this.rpFrom(r);
  }

  /** Newest first. */
  listRestorePoints(q: RestorePointQuery = {}): RestorePoint[] {
    const where: string[] = [];
    const args: SQLInputValue[] = [];
    if (q.app) {
      where.push('app = ?');
      args.push(q.app);
    }
    if (q.policy) {
      where.push('policy = ?');
      args.push(q.policy);
    }
    const sql = `SELECT * FROM restore_points ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY consistent_at DESC, seq DESC`;
    return (this.db.prepare(sql).all(...args) as Row[]).map((r) => this.rpFrom(r));
  }

  // ---------- actions ----------

  insertAction(a: ActionRun): void {
    const v = ActionRunSchema.parse(a);
    this.db
      .prepare(
        `INSERT INTO actions (id, seq, type, state, app, policy, restore_point, run, created_at, started_at, ended_at,
           attempt, max_attempts, phases, bytes_read, bytes_transferred, progress, error, params)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      )
      .run(
        v.id,
        this.nextSeq(),
        v.type,
        v.state,
        v.app ?? null,
        v.policy ?? null,
        v.restorePoint ?? null,
        typeof v.params['run'] === 'string' ? v.params['run'] : v.id,
        v.createdAt,
        v.startedAt ?? null,
        v.endedAt ?? null,
        v.attempt,
        v.maxAttempts,
        JSON.stringify(v.phases),
        v.bytesRead,
        v.bytesTransferred,
        v.progress ?? null,
        v.error ? JSON.stringify(v.error) : null,
        JSON.stringify(v.params),
      );
  }

  updateAction(a: ActionRun): void {
    const r = this.db
      .prepare(
        `UPDATE actions SET state = ?, restore_point = ?, started_at = ?, ended_at = ?, attempt = ?, phases = ?,
           bytes_read = ?, bytes_transferred = ?, progress = ?, error = ?, params = ? WHERE id = ?`,
      )
      .run(
        a.state,
        a.restorePoint ?? null,
        a.startedAt ?? null,
        a.endedAt ?? null,
        a.attempt,
        JSON.stringify(a.phases),
        Math.round(a.bytesRead),
        Math.round(a.bytesTransferred),
        a.progress ?? null,
        a.error ? JSON.stringify(a.error) : null,
        JSON.stringify(a.params),
        a.id,
      );
    if (r.changes === 0) throw new NotFoundError(`action "${a.id}" not found`);
  }

  private actionFrom(r: Row): ActionRun {
    const a: ActionRun = {
      id: str(r['id']),
      type: str(r['type']) as ActionType,
      state: str(r['state']) as ActionState,
      createdAt: str(r['created_at']),
      attempt: Number(r['attempt']),
      maxAttempts: Number(r['max_attempts']),
      phases: JSON.parse(str(r['phases'])) as ActionRun['phases'],
      bytesRead: Number(r['bytes_read']),
      bytesTransferred: Number(r['bytes_transferred']),
      params: JSON.parse(str(r['params'])) as Record<string, unknown>,
    };
    const set = <K extends 'app' | 'policy' | 'restorePoint' | 'startedAt' | 'endedAt'>(
      k: K,
      col: string,
    ) => {
      const v = optStr(r[col]);
      if (v !== undefined) a[k] = v;
    };
    set('app', 'app');
    set('policy', 'policy');
    set('restorePoint', 'restore_point');
    set('startedAt', 'started_at');
    set('endedAt', 'ended_at');
    if (r['progress'] !== null && r['progress'] !== undefined) a.progress = Number(r['progress']);
    if (r['error'] !== null && r['error'] !== undefined)
      a.error = JSON.parse(str(r['error'])) as ActionRun['error'];
    return a;
  }

  getAction(id: string): ActionRun {
    const r = this.db.prepare('SELECT * FROM actions WHERE id = ?').get(id) as Row | undefined;
    if (!r) throw new NotFoundError(`action "${id}" not found`);
    return this.actionFrom(r);
  }

  listActions(q: ActionQuery = {}): ActionRun[] {
    const where: string[] = [];
    const args: SQLInputValue[] = [];
    for (const [col, v] of [
      ['app', q.app],
      ['policy', q.policy],
      ['type', q.type],
      ['state', q.state],
      ['run', q.run],
    ] as const) {
      if (v !== undefined) {
        where.push(`${col} = ?`);
        args.push(v);
      }
    }
    if (q.states) {
      where.push(`state IN (${q.states.map(() => '?').join(', ')})`);
      args.push(...q.states);
    }
    const sql = `SELECT * FROM actions ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY seq ${q.ascending ? 'ASC' : 'DESC'} LIMIT ?`;
    args.push(q.limit ?? 100);
    return (this.db.prepare(sql).all(...args) as Row[]).map((r) => this.actionFrom(r));
  }

  /** Per type and state: count, and for terminal actions the sum and last of durations. */
  actionStats(): {
    type: ActionType;
    state: ActionState;
    count: number;
    sumSeconds: number;
    lastSeconds: number;
    bytesRead: number;
    bytesTransferred: number;
  }[] {
    const rows = this.db
      .prepare(
        `SELECT type, state, count(*) AS n,
           sum(CASE WHEN ended_at IS NOT NULL AND started_at IS NOT NULL
               THEN (julianday(ended_at) - julianday(started_at)) * 86400.0 ELSE 0 END) AS sum_s,
           sum(bytes_read) AS br, sum(bytes_transferred) AS bt
         FROM actions GROUP BY type, state`,
      )
      .all() as { type: string; state: string; n: number; sum_s: number; br: number; bt: number }[];
    const last = this.db.prepare(
      `SELECT (julianday(ended_at) - julianday(started_at)) * 86400.0 AS s FROM actions
       WHERE type = ? AND state = ? AND ended_at IS NOT NULL AND started_at IS NOT NULL ORDER BY seq DESC LIMIT 1`,
    );
    return rows.map((r) => ({
      type: r.type as ActionType,
      state: r.state as ActionState,
      count: r.n,
      sumSeconds: r.sum_s,
      lastSeconds: (last.get(r.type, r.state) as { s: number } | undefined)?.s ?? 0,
      bytesRead: r.br,
      bytesTransferred: r.bt,
    }));
  }
}
