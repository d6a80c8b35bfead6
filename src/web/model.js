// @ts-check
/**
 * What the dashboard derives from API objects: newest restore point per tier, current RPO (age), the state of
 * a policy's last run, an action's current phase, and which DR path is fastest / loses least. Pure functions.
 */

export const TIERS = /** @type {const} */ (['local', 'repository', 'region-copy']);

/** Live tiers of a restore point (a tier with expiredAt was retired). */
export function liveTiers(point) {
  return (point.tiers ?? []).filter((t) => !t.expiredAt);
}

/** For one app: tier kind → its newest restore point holding that tier; plus the newest point of any tier. */
export function newestByTier(points, app) {
  /** @type {Record<string, any>} */
  const byTier = {};
  let newest;
  for (const p of points) {
    if (p.app !== app) continue;
    const kinds = liveTiers(p).map((t) => t.kind);
    if (kinds.length === 0) continue;
    if (!newest || p.consistentAt > newest.consistentAt) newest = p;
    for (const k of kinds) if (!byTier[k] || p.consistentAt > byTier[k].consistentAt) byTier[k] = p;
  }
  return { byTier, newest };
}

/** Seconds between an ISO time and now. */
export function ageSeconds(iso, now = Date.now()) {
  return Math.max(0, (now - Date.parse(iso)) / 1000);
}

export function formatAge(seconds) {
  if (seconds === undefined || seconds === null || Number.isNaN(seconds)) return '—';
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h} h ${m % 60} min`;
  return `${Math.floor(h / 24)} d ${h % 24} h`;
}

export function formatMs(ms) {
  if (ms === undefined || ms === null) return '—';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 120_000) return `${(ms / 1000).toFixed(1)} s`;
  return formatAge(ms / 1000);
}

export function formatBytes(n) {
  if (n === undefined || n === null) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i === 0 ? v : v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
}

export function formatTime(iso) {
  if (!iso) return '—';
  const d = new Date(iso);
  return `${d.toISOString().slice(0, 10)} ${d.toISOString().slice(11, 19)} UTC`;
}

const WEEKDAYS = ['Sunday', 'Monday', 'Tuesday', 'Wednesday', 'Thursday', 'Friday', 'Saturday'];
const pad = (n) => String(n).padStart(2, '0');

/** A policy frequency in words (presets, cron, or { every, hour, minute, … }). */
export function frequencyText(f) {
  if (typeof f === 'string') return f.startsWith('@') ? f.slice(1) : `cron ${f}`;
  const at = `${pad(f.hour ?? 0)}:${pad(f.minute ?? 0)} UTC`;
  switch (f.every) {
    case 'hour':
      return `hourly at :${pad(f.minute ?? 0)}`;
    case 'day':
      return `daily at ${at}`;
    case 'week':
      return `${WEEKDAYS[f.weekday ?? 0]}s at ${at}`;
    case 'month':
      return `monthly on day ${f.day ?? 1} at ${at}`;
    default:
      return JSON.stringify(f);
  }
}

export function exportText(e) {
  if (!e) return 'local snapshots only';
  if (e.mode === 'datamover')
    return `repository → ${e.locationProfile}${e.repositoryPath ? `/${e.repositoryPath}` : ''}`;
  return `snapshot copy → ${e.region}`;
}

const ACTIVE = new Set(['Pending', 'Running', 'AttemptFailed']);
export function isActive(state) {
  return ACTIVE.has(state);
}

/**
 * The last run of a policy: its backup action plus the follow-ons (params.run = backup id). The run is
 * Failed when any of them failed, Running while any is active, else the state of the last one.
 * `actions` newest first.
 */
export function lastRun(policy, actions) {
  const backup = actions.find((a) => a.policy === policy && a.type === 'backup');
  if (!backup) return undefined;
  const run = actions.filter((a) => a.id === backup.id || a.params?.run === backup.id);
  let state = 'Complete';
  if (run.some((a) => a.state === 'Failed')) state = 'Failed';
  else if (run.some((a) => isActive(a.state))) state = 'Running';
  else if (run.some((a) => a.state === 'Cancelled')) state = 'Cancelled';
  return { state, at: backup.createdAt, actions: run };
}

/** The phase an action is in (or ended in). */
export function currentPhase(a) {
  const phases = a.phases ?? [];
  const open = [...phases].reverse().find((p) => !p.endedAt);
  return (open ?? phases.at(-1))?.name;
}

/** "message ← cause ← cause" */
export function errorText(e) {
  const parts = [];
  for (let c = e; c && parts.length < 8; c = c.cause) parts.push(c.message);
  return parts.join(' ← ');
}

/** Expected spacing of a policy's runs from its schedule (next − last), in seconds. */
export function policyIntervalSeconds(p) {
  if (!p || !p.nextRunAt || !p.lastRunAt) return undefined;
  const s = (Date.parse(p.nextRunAt) - Date.parse(p.lastRunAt)) / 1000;
  return s > 0 ? s : undefined;
}

/**
 * DR choice for one app of the report: the path with the shortest measured restore (RTO), the one with the
 * smallest RPO, and a sentence saying which to use.
 */
export function drChoice(appReport) {
  const paths = appReport.paths ?? [];
  const measured = paths.filter((p) => p.restoreMs !== undefined);
  const withRpo = paths.filter((p) => p.rpoSeconds !== undefined);
  const fastest = measured.reduce((b, p) => (!b || p.restoreMs < b.restoreMs ? p : b), undefined);
  const leastLoss = withRpo.reduce((b, p) => (!b || p.rpoSeconds < b.rpoSeconds ? p : b), undefined);
  let verdict;
  if (!fastest && !leastLoss) verdict = 'No restore point imported yet.';
  else if (!fastest)
    verdict = `Least loss: ${leastLoss.path} (RPO ${formatAge(leastLoss.rpoSeconds)}); no restore measured yet.`;
  else if (!leastLoss || fastest === leastLoss)
    verdict = `Use ${fastest.path}: fastest back (RTO ${formatMs(fastest.restoreMs)})${leastLoss ? ` and least loss (RPO ${formatAge(leastLoss.rpoSeconds)})` : ''}.`;
  else
    verdict = `Fastest back: ${fastest.path} (RTO ${formatMs(fastest.restoreMs)}); least loss: ${leastLoss.path} (RPO ${formatAge(leastLoss.rpoSeconds)}).`;
  return { fastest, leastLoss, verdict };
}
