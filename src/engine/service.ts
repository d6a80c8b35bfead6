/**
 * The one facade the HTTP server (`src/server`) and the CLI (`src/cli`) call. Entry points stay thin: they parse
 * a request, call one method here and print or serialize the result. Everything behind it (catalog, platforms,
 * object stores, repository, scheduler) is reached only through this interface.
 *
 * Contract for callers:
 * - Inputs are validated inside (zod, `parseInput`): pass request bodies as they are. Malformed input (bad cron,
 *   retention of -1, unknown profile, duplicate name) throws `InputError` / `NotFoundError` / `ConflictError`
 *   from `src/core/errors.ts` and changes nothing. Map them with the existing error → status/exit code tables.
 * - Secrets go in (profile `secrets`) and never come out: every profile read returns a `RedactedProfile`.
 * - Long work (policy runs, restores) is an action record: the call returns its id at once; follow it with
 *   `getAction`, `waitForAction` or `subscribe` (CLI `--watch`, server-sent events).
 * - Times are ISO 8601 strings (UTC), sizes and byte counts are integers.
 *
 * Implementation: `Engine` in `./engine.ts` (`openEngine(options)`).
 */
import type { z } from 'zod';
import type {
  ActionRun,
  ActionState,
  ActionType,
  Application,
  ApplicationSchema,
  Policy,
  PolicySchema,
  ProfileSchema,
  RedactedProfile,
  RestorePoint,
  Tier,
} from '../core/model.ts';

export type ApplicationInput = z.input<typeof ApplicationSchema>;
/** A location profile (object store URL + credentials) or an infra profile (platform + credentials). */
export type ProfileInput = z.input<typeof ProfileSchema>;
export type PolicyInput = z.input<typeof PolicySchema>;
/** Fields to change; `name` and `app` cannot change. */
export type PolicyPatch = Partial<Omit<PolicyInput, 'name' | 'app'>>;

export type TierKind = Tier['kind'];

/** A policy as shown: its definition plus what the scheduler knows. */
export interface PolicyView extends Policy {
  /** The frequency as one UTC cron expression. */
  cron: string;
  /** Next scheduled run (absent when paused). */
  nextRunAt?: string;
  /** Scheduled time of the last run started by the scheduler or on demand. */
  lastRunAt?: string;
}

export interface PolicyRunHandle {
  /** The first action of the run (type 'backup'); follow-on actions (export, retention) carry `params.run` = this id. */
  actionId: string;
}

export type RestoreSource = 'snapshot' | 'repository' | 'auto';

export interface RestoreRequest {
  restorePoint: string;
  /** 'auto' (default): the local snapshot when it still exists, else the repository. */
  source?: RestoreSource;
  /** Restore into a new application of this name (created with the restored volumes); default: in place. */
  targetApp?: string;
  /** Names of the volumes to restore; default all of the restore point. */
  volumes?: string[];
  /** Only compute and return the plan; nothing is written and no action is created. */
  dryRun?: boolean;
}

export interface RestorePlanVolume {
  volume: string;
  /** Local snapshot id or repository snapshot id, depending on `source`. */
  from: string;
  /** Volume ref (platform id of the volume) that will be written. */
  to: string;
  region: string;
  sizeBytes: number;
  /** True when an existing volume is replaced. */
  overwrite: boolean;
}

export interface RestorePlan {
  restorePoint: string;
  app: string;
  targetApp: string;
  inPlace: boolean;
  /** The resolved source ('auto' never appears here). */
  source: 'snapshot' | 'repository';
  consistentAt: string;
  volumes: RestorePlanVolume[];
  totalBytes: number;
}

export interface RestoreResult {
  plan: RestorePlan;
  /** Absent for a dry run. */
  actionId?: string;
}

export interface ActionFilter {
  app?: string;
  policy?: string;
  type?: ActionType;
  state?: ActionState;
  /** Actions of one policy run (`PolicyRunHandle.actionId`). */
  run?: string;
  /** Newest first; default 100. */
  limit?: number;
}

export interface RestorePointFilter {
  app?: string;
  policy?: string;
  /** Only points whose data still lives in a (non-expired) tier of this kind. */
  tier?: TierKind;
  /** Include points whose every tier has expired; default false. */
  includeExpired?: boolean;
}

/** Emitted on every state, phase and (throttled) progress change of an action. */
export interface ActionEvent {
  kind: 'action';
  action: ActionRun;
}

export interface MetricsSnapshot {
  at: string;
  /** Count of actions per type and state (every state present, zeros included). */
  actions: { type: ActionType; state: ActionState; count: number }[];
  /** Durations of terminal actions per type and state. */
  durations: {
    type: ActionType;
    state: ActionState;
    count: number;
    sumSeconds: number;
    lastSeconds: number;
  }[];
  /** Totals over all actions per type. */
  bytes: { type: ActionType; read: number; transferred: number }[];
  /** Age of the newest restore point per app and tier (the RPO a disaster now would cost). */
  lastRestorePoint: { app: string; tier: TierKind; consistentAt: string; ageSeconds: number }[];
  policies: { total: number; paused: number };
}

export interface TernService {
  // ----- applications -----
  createApp(input: ApplicationInput): Promise<Application>;
  getApp(name: string): Promise<Application>;
  listApps(): Promise<Application[]>;
  /** ConflictError while a policy still names the app. Restore points stay (they are history). */
  deleteApp(name: string): Promise<void>;

  // ----- profiles -----
  /**
   * Validates before storing: a location profile must accept writing, reading back and deleting a test object
   * at its URL; an infra profile must open its platform. A location profile gets a generated repository
   * password (secret `repositoryPassword`) unless one is given; the repository is created on first export.
   */
  createProfile(input: ProfileInput, opts?: { signal?: AbortSignal }): Promise<RedactedProfile>;
  getProfile(name: string): Promise<RedactedProfile>;
  listProfiles(kind?: 'location' | 'infra'): Promise<RedactedProfile[]>;
  /** ConflictError while an app or policy uses it. */
  deleteProfile(name: string): Promise<void>;

  // ----- policies -----
  createPolicy(input: PolicyInput): Promise<PolicyView>;
  updatePolicy(name: string, patch: PolicyPatch): Promise<PolicyView>;
  getPolicy(name: string): Promise<PolicyView>;
  listPolicies(filter?: { app?: string }): Promise<PolicyView[]>;
  deletePolicy(name: string): Promise<void>;
  pausePolicy(name: string): Promise<PolicyView>;
  /** Resuming does not replay the runs missed while paused; the next run is the next scheduled time. */
  resumePolicy(name: string): Promise<PolicyView>;
  /** On-demand run (also for paused policies): backup → export → retention. */
  runPolicy(name: string): Promise<PolicyRunHandle>;

  // ----- restore points -----
  listRestorePoints(filter?: RestorePointFilter): Promise<RestorePoint[]>;
  getRestorePoint(id: string): Promise<RestorePoint>;
  /** Plans, and unless `dryRun`, starts a restore action. Validation errors (unknown volume, target exists…) throw before any action is created. */
  restore(req: RestoreRequest): Promise<RestoreResult>;

  // ----- actions -----
  listActions(filter?: ActionFilter): Promise<ActionRun[]>;
  getAction(id: string): Promise<ActionRun>;
  /** Requests cancellation (any phase). Resolves with the action as it is then; it reaches Cancelled shortly after. */
  cancelAction(id: string): Promise<ActionRun>;
  /** Resolves when the action is terminal (Complete, Failed or Cancelled). */
  waitForAction(id: string, opts?: { signal?: AbortSignal }): Promise<ActionRun>;
  /** Calls `listener` on every action change. Returns the unsubscribe function. */
  subscribe(listener: (e: ActionEvent) => void): () => void;

  // ----- observability -----
  metrics(): Promise<MetricsSnapshot>;

  // ----- lifecycle -----
  /**
   * Restart recovery (actions left Running by a killed process are resumed as a new attempt, or marked Failed
   * with reason "interrupted by a restart" when no attempt is left; Pending ones are queued), then starts the
   * scheduler. Missed scheduled runs during downtime become ONE catch-up run per policy.
   */
  start(): Promise<void>;
  /** Stops the scheduler, interrupts running actions (recorded AttemptFailed; the next start resumes them), closes the catalog. */
  close(): Promise<void>;
}
