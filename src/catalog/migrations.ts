/**
 * Schema migrations, applied in order inside one transaction each; `migrations` records what ran.
 * Never edit a released migration: append a new one.
 */
export const MIGRATIONS: { version: number; name: string; sql: string }[] = [
  {
    version: 1,
    name: 'initial',
    sql: `
CREATE TABLE profiles (
  name TEXT PRIMARY KEY,
  kind TEXT NOT NULL CHECK (kind IN ('location', 'infra')),
  body TEXT NOT NULL,          -- JSON of the profile without secrets
  secrets BLOB NOT NULL,       -- AES-256-GCM sealed JSON (secrets.ts)
  created_at TEXT NOT NULL
);
CREATE TABLE apps (
  name TEXT PRIMARY KEY,
  infra_profile TEXT NOT NULL REFERENCES profiles(name),
  body TEXT NOT NULL,
  created_at TEXT NOT NULL
);
CREATE TABLE policies (
  name TEXT PRIMARY KEY,
  app TEXT NOT NULL REFERENCES apps(name),
  body TEXT NOT NULL,
  paused INTEGER NOT NULL DEFAULT 0,
  location_profile TEXT REFERENCES profiles(name),
  created_at TEXT NOT NULL,
  last_run_at TEXT             -- scheduled time of the last run (scheduler state)
);
CREATE TABLE restore_points (
  id TEXT PRIMARY KEY,
  app TEXT NOT NULL,
  policy TEXT,
  consistent_at TEXT NOT NULL,
  export_completed_at TEXT,
  size_bytes INTEGER NOT NULL,
  tiers TEXT NOT NULL,
  seq INTEGER NOT NULL
);
CREATE INDEX restore_points_app ON restore_points(app, consistent_at);
CREATE INDEX restore_points_policy ON restore_points(policy, consistent_at);
CREATE TABLE actions (
  id TEXT PRIMARY KEY,
  seq INTEGER NOT NULL,
  type TEXT NOT NULL,
  state TEXT NOT NULL,
  app TEXT,
  policy TEXT,
  restore_point TEXT,
  run TEXT,
  created_at TEXT NOT NULL,
  started_at TEXT,
  ended_at TEXT,
  attempt INTEGER NOT NULL,
  max_attempts INTEGER NOT NULL,
  phases TEXT NOT NULL,
  bytes_read INTEGER NOT NULL DEFAULT 0,
  bytes_transferred INTEGER NOT NULL DEFAULT 0,
  progress REAL,
  error TEXT,
  params TEXT NOT NULL
);
CREATE INDEX actions_state ON actions(state);
CREATE INDEX actions_app ON actions(app, seq);
CREATE INDEX actions_run ON actions(run);
`,
  },
];
