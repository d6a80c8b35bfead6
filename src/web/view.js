// @ts-check
/**
 * Views: API objects in, DOM nodes out. Text only ever goes in through textContent (never innerHTML), so
 * names and error messages from the server cannot inject markup.
 */
import {
  TIERS,
  ageSeconds,
  currentPhase,
  drChoice,
  errorText,
  exportText,
  formatAge,
  formatBytes,
  formatMs,
  formatTime,
  frequencyText,
  isActive,
  lastRun,
  liveTiers,
  newestByTier,
  policyIntervalSeconds,
} from './model.js';

/**
 * @param {string} tag
 * @param {Record<string, string | undefined>} [attrs]
 * @param {...(Node | string | undefined | null | false)} children
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== undefined) el.setAttribute(k, v);
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    el.append(typeof c === 'string' ? document.createTextNode(c) : c);
  }
  return el;
}

export function badge(text, kind = String(text).toLowerCase()) {
  return h('span', { class: `badge badge-${kind}` }, text);
}

function empty(text) {
  return h('p', { class: 'empty' }, text);
}

/** @param {string[]} head @param {HTMLElement[]} rows */
function table(head, rows, cls = '') {
  return h(
    'table',
    { class: cls },
    h('thead', {}, h('tr', {}, ...head.map((c) => h('th', {}, c)))),
    h('tbody', {}, ...rows),
  );
}

function td(...children) {
  return h('td', {}, ...children);
}

function age(iso, now) {
  return iso ? h('span', { title: formatTime(iso) }, `${formatAge(ageSeconds(iso, now))} ago`) : '—';
}

export function renderSummary(s, now) {
  const active = [...s.actions.values()].filter((a) => isActive(a.state)).length;
  const failed = [...s.actions.values()].filter(
    (a) => a.state === 'Failed' && ageSeconds(a.endedAt ?? a.createdAt, now) < 86400,
  ).length;
  const card = (label, value, kind = '') =>
    h(
      'div',
      { class: `stat ${kind}` },
      h('div', { class: 'stat-value' }, String(value)),
      h('div', { class: 'stat-label' }, label),
    );
  return [
    card('applications', s.apps.length),
    card('policies', s.policies.length),
    card('restore points', s.points.length),
    card('actions running', active, active > 0 ? 'stat-busy' : ''),
    card('failed (24 h)', failed, failed > 0 ? 'stat-bad' : ''),
  ];
}

export function renderApps(s, now) {
  if (s.apps.length === 0)
    return empty('No applications yet. Register one with `tern app create` or POST /v1/apps.');
  const rows = s.apps.map((app) => {
    const { byTier, newest } = newestByTier(s.points, app.name);
    const policies = s.policies.filter((p) => p.app === app.name);
    const interval = Math.min(...policies.map(policyIntervalSeconds).filter((x) => x !== undefined));
    const rpo = newest ? ageSeconds(newest.consistentAt, now) : undefined;
    let rpoCell;
    if (rpo === undefined) rpoCell = badge('no restore point', 'failed');
    else {
      // Late when the newest point is older than two scheduled intervals.
      const late = Number.isFinite(interval) && rpo > 2 * interval;
      rpoCell = h(
        'span',
        { class: late ? 'rpo rpo-late' : 'rpo', title: `newest point ${formatTime(newest.consistentAt)}` },
        formatAge(rpo),
      );
    }
    return h(
      'tr',
      { 'data-app': app.name },
      td(
        h('strong', {}, app.name),
        h('div', { class: 'muted small' }, `${app.infraProfile} · ${app.region}`),
      ),
      td(app.volumes.map((v) => v.name).join(', ')),
      ...TIERS.map((t) =>
        td(byTier[t] ? age(byTier[t].consistentAt, now) : h('span', { class: 'muted' }, '—')),
      ),
      td(rpoCell),
    );
  });
  return table(
    ['Application', 'Volumes', 'Local snapshot', 'Repository', 'Region copy', 'Current RPO'],
    rows,
  );
}

function nextRunText(iso, now) {
  const s = (Date.parse(iso) - now) / 1000;
  return s <= 0 ? 'due now' : `in ${formatAge(s)}`;
}

export function renderPolicies(s, now) {
  if (s.policies.length === 0) return empty('No policies.');
  const actions = sortedActions(s);
  const rows = s.policies.map((p) => {
    const run = lastRun(p.name, actions);
    return h(
      'tr',
      { 'data-policy': p.name },
      td(h('strong', {}, p.name), h('div', { class: 'muted small' }, `app ${p.app}`)),
      td(frequencyText(p.frequency), h('div', { class: 'muted small' }, exportText(p.export))),
      td(p.paused ? badge('paused') : badge('active', 'complete')),
      td(
        run ? badge(run.state) : h('span', { class: 'muted' }, 'never run'),
        run ? h('div', { class: 'muted small' }, age(run.at, now)) : undefined,
      ),
      td(p.nextRunAt ? h('span', { title: formatTime(p.nextRunAt) }, nextRunText(p.nextRunAt, now)) : '—'),
    );
  });
  return table(['Policy', 'Frequency', 'Schedule', 'Last run', 'Next run'], rows);
}

export function sortedActions(s) {
  return [...s.actions.values()].sort((a, b) => b.createdAt.localeCompare(a.createdAt));
}

export function renderActions(s, now, limit = 30) {
  const list = sortedActions(s).slice(0, limit);
  if (list.length === 0) return empty('No actions yet.');
  const rows = list.map((a) => {
    const phase = currentPhase(a);
    // A bar while the action runs (indeterminate when the total is unknown), or where a failed one stopped.
    const progress =
      isActive(a.state) || (a.state !== 'Complete' && a.progress !== undefined)
        ? a.progress !== undefined
          ? h('progress', { max: '1', value: String(a.progress), title: `${Math.round(a.progress * 100)} %` })
          : h('progress', {})
        : undefined;
    const bytes =
      a.bytesRead || a.bytesTransferred
        ? `read ${formatBytes(a.bytesRead)} · sent ${formatBytes(a.bytesTransferred)}`
        : isActive(a.state)
          ? 'starting…'
          : '—';
    const end = a.endedAt ? Date.parse(a.endedAt) : now;
    const took = a.startedAt ? formatMs(end - Date.parse(a.startedAt)) : '—';
    return h(
      'tr',
      {
        'data-action': a.id,
        'data-type': a.type,
        'data-state': a.state,
        class: a.state === 'Failed' ? 'row-failed' : '',
      },
      td(h('strong', {}, a.type), h('div', { class: 'muted small mono' }, a.id.slice(0, 12))),
      td(a.app ?? '—', a.policy ? h('div', { class: 'muted small' }, a.policy) : undefined),
      td(
        badge(a.state),
        a.attempt > 1
          ? h('div', { class: 'muted small' }, `attempt ${a.attempt}/${a.maxAttempts}`)
          : undefined,
      ),
      td(phase ?? '—'),
      td(progress, h('div', { class: progress ? 'muted small' : 'small' }, bytes)),
      td(age(a.createdAt, now), h('div', { class: 'muted small' }, took)),
      td(a.error ? h('span', { class: 'error-text' }, `${a.error.code}: ${errorText(a.error)}`) : ''),
    );
  });
  return table(
    ['Action', 'App / policy', 'State', 'Phase', 'Progress', 'Started / took', 'Error'],
    rows,
    'actions',
  );
}

export function renderPoints(s, now, limit = 50) {
  if (s.points.length === 0) return empty('No restore points yet.');
  const rows = s.points
    .slice(0, limit)
    .map((p) =>
      h(
        'tr',
        { 'data-point': p.id },
        td(h('span', { class: 'mono', title: p.id }, p.id.slice(0, 12))),
        td(p.app, p.policy ? h('div', { class: 'muted small' }, p.policy) : undefined),
        td(formatTime(p.consistentAt), h('div', { class: 'muted small' }, age(p.consistentAt, now))),
        td(formatBytes(p.sizeBytes)),
        td(...liveTiers(p).map((t) => badge(t.kind, 'tier'))),
        td(p.exportCompletedAt ? formatTime(p.exportCompletedAt) : h('span', { class: 'muted' }, '—')),
      ),
    );
  return table(
    ['Restore point', 'App / policy', 'Consistent at', 'Size', 'Tiers', 'Off-site copy done'],
    rows,
  );
}

export function renderDr(s) {
  if (s.drError) return empty(s.drError);
  if (!s.dr || s.dr.length === 0)
    return empty(
      'No DR streams at this site. Import export details (tern dr import-policy) to see RPO and RTO per path.',
    );
  return h(
    'div',
    {},
    ...s.dr.map((app) => {
      const choice = drChoice(app);
      const rows = app.paths.map((p) =>
        h(
          'tr',
          { class: p === choice.fastest || p === choice.leastLoss ? 'row-best' : '' },
          td(h('strong', {}, p.path), h('div', { class: 'muted small' }, p.location)),
          td(formatAge(p.rpoSeconds)),
          td(formatMs(p.restoreMs)),
          td(formatMs(p.exportFirstMs), ' / ', formatMs(p.exportIncrementalMs)),
          td(
            p.rule321.ok
              ? badge('3-2-1', 'complete')
              : badge(`${p.rule321.copies}-${p.rule321.media}-${p.rule321.offsite}`, 'failed'),
          ),
        ),
      );
      return h(
        'div',
        { class: 'dr-app', 'data-dr-app': app.app },
        h('h3', {}, app.app),
        h('p', { class: 'verdict' }, choice.verdict),
        table(['Path', 'RPO', 'RTO', 'Export first / incr.', '3-2-1'], rows),
      );
    }),
  );
}
