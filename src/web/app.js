// @ts-check
/**
 * The dashboard: sign in with the API token (kept in sessionStorage), load apps, policies, restore points,
 * actions and the DR report, then follow action changes live over the events stream. When an action ends,
 * the lists it can change are reloaded.
 */
import { ApiError, createApi } from './api.js';
import { isActive } from './model.js';
import { renderActions, renderApps, renderDr, renderPoints, renderPolicies, renderSummary } from './view.js';

const TOKEN_KEY = 'tern.token';
const $ = (id) => /** @type {HTMLElement} */ (document.getElementById(id));

const state = {
  apps: [],
  policies: [],
  points: [],
  /** @type {Map<string, any>} */
  actions: new Map(),
  /** @type {any[] | undefined} */
  dr: undefined,
  /** @type {string | undefined} */
  drError: undefined,
};

/** @type {ReturnType<typeof createApi> | undefined} */
let api;
/** @type {AbortController | undefined} */
let session;
let reloadTimer = 0;

function show(id, on) {
  $(id).hidden = !on;
}

function setText(id, text) {
  $(id).textContent = text;
}

function render() {
  const now = Date.now();
  $('summary').replaceChildren(...renderSummary(state, now));
  $('apps').replaceChildren(renderApps(state, now));
  $('actions').replaceChildren(renderActions(state, now));
  $('policies').replaceChildren(renderPolicies(state, now));
  $('points').replaceChildren(renderPoints(state, now));
  $('dr').replaceChildren(renderDr(state));
}

function describe(err) {
  if (err instanceof ApiError)
    return err.status ? `${err.message} (HTTP ${err.status} ${err.code})` : err.message;
  return String(err);
}

/** The DR report, or why there is none (a server without DR routes answers 404). */
async function fetchDr(signal) {
  try {
    return { dr: await api.get('/v1/dr/report?refresh=false', signal), drError: undefined };
  } catch (err) {
    if (err instanceof ApiError && err.status === 404)
      return { dr: undefined, drError: 'This server has no DR routes.' };
    if (err instanceof ApiError) return { dr: undefined, drError: `DR report unavailable: ${describe(err)}` };
    throw err;
  }
}

let loadSeq = 0;
/** Action events that arrived while a load was in flight, per load (its list may predate them). */
const eventsDuringLoad = new Set();

/** Loads everything; throws on the first failure of the core lists (auth errors included). */
async function loadAll(signal) {
  const seq = ++loadSeq;
  const live = new Map();
  eventsDuringLoad.add(live);
  try {
    const [apps, policies, points, actions, dr] = await Promise.all([
      api.get('/v1/apps', signal),
      api.get('/v1/policies', signal),
      api.get('/v1/restorepoints', signal),
      api.get('/v1/actions?limit=100', signal),
      fetchDr(signal),
    ]);
    // Loads can overlap (refresh button, reload after an action ended): only the newest one's answers count.
    if (seq !== loadSeq) return;
    state.apps = apps;
    state.policies = policies;
    state.points = points;
    state.actions = new Map([...actions.map((a) => [a.id, a]), ...live]);
    state.dr = dr.dr;
    state.drError = dr.drError;
  } finally {
    eventsDuringLoad.delete(live);
  }
  setText('updated', `updated ${new Date().toLocaleTimeString()}`);
  render();
}

/** Reload the lists an ended action can change (debounced: a policy run ends several actions at once). */
function scheduleReload() {
  clearTimeout(reloadTimer);
  reloadTimer = window.setTimeout(() => {
    if (session) loadAll(session.signal).catch(onError);
  }, 300);
}

function onError(err) {
  if (session?.signal.aborted) return;
  if (err instanceof ApiError && err.status === 401) {
    signOut(`The server no longer accepts this token: ${err.message}.`);
    return;
  }
  setText('banner', describe(err));
  show('banner', true);
}

/** Follows /v1/actions/events; reconnects (and reloads, to catch missed changes) after a drop. */
async function follow(signal) {
  while (!signal.aborted) {
    try {
      await api.events(
        '/v1/actions/events',
        {
          onOpen: () => show('live', true),
          onEvent: (name, data) => {
            if (name !== 'action') return;
            const a = /** @type {any} */ (data);
            const before = state.actions.get(a.id);
            state.actions.set(a.id, a);
            for (const m of eventsDuringLoad) m.set(a.id, a);
            render();
            if (!isActive(a.state) && (!before || isActive(before.state))) scheduleReload();
          },
        },
        signal,
      );
    } catch (err) {
      if (signal.aborted) return;
      if (err instanceof ApiError && err.status === 401) return onError(err);
    }
    show('live', false);
    await new Promise((r) => setTimeout(r, 2000));
    if (!signal.aborted) await loadAll(signal).catch(onError);
  }
}

async function signIn(token) {
  api = createApi(token);
  session?.abort();
  session = new AbortController();
  const signal = session.signal;
  show('login-error', false);
  try {
    await loadAll(signal);
  } catch (err) {
    session.abort();
    session = undefined;
    sessionStorage.removeItem(TOKEN_KEY);
    const msg =
      err instanceof ApiError && err.status === 401
        ? `Wrong token: the server rejected it (${err.message}). Use the token from the server's data directory (api-token) or TERN_API_TOKEN.`
        : `Could not load the dashboard: ${describe(err)}`;
    setText('login-error', msg);
    show('login-error', true);
    show('login', true);
    show('dashboard', false);
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  show('login', false);
  show('dashboard', true);
  for (const id of ['refresh', 'signout']) show(id, true);
  void follow(signal);
}

function signOut(message) {
  session?.abort();
  session = undefined;
  api = undefined;
  sessionStorage.removeItem(TOKEN_KEY);
  show('dashboard', false);
  show('live', false);
  for (const id of ['refresh', 'signout', 'banner']) show(id, false);
  setText('updated', '');
  show('login', true);
  show('login-error', Boolean(message));
  if (message) setText('login-error', message);
  /** @type {HTMLInputElement} */ ($('token')).value = '';
}

function main() {
  fetch('/healthz')
    .then((r) => r.json())
    .then((j) => setText('version', `v${j.version}`))
    .catch(() => {});
  $('login-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const token = /** @type {HTMLInputElement} */ ($('token')).value.trim();
    if (token) void signIn(token);
  });
  $('signout').addEventListener('click', () => signOut());
  $('refresh').addEventListener('click', () => {
    show('banner', false);
    if (session) loadAll(session.signal).catch(onError);
  });
  // Ages ("5 min ago", RPO) move with the clock.
  setInterval(() => {
    if (session) render();
  }, 15_000);
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) void signIn(saved);
  else show('login', true);
}

main();
