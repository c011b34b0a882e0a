// Kiln dispatcher UI: a single page (hash routes `#/` and `#/batch/<id>`)
// that lists the tenant's batches and shows one batch's jobs as a live grid.
// Calls, all with `Authorization: Bearer <token>` (token in sessionStorage):
//   GET  /v1/batches?limit&cursor          the batch list, newest first
//   GET  /v1/events                        tenant event stream (SSE over fetch)
//   GET  /v1/batches/{id}                  one batch (also the polling fallback)
//   GET  /v1/batches/{id}/jobs?limit&cursor&state   its jobs, in submission order
//   GET  /v1/batches/{id}/events           batch event stream (SSE over fetch)
//   POST /v1/batches/{id}/cancel           cancel the batch
//   POST /v1/batches                       retry: failed + cancelled jobs, retry_of
//   GET  /v1/jobs/{id}, POST /v1/jobs/{id}/cancel
// API text is only ever put in the page with textContent / attributes.
'use strict';

const TOKEN_KEY = 'kiln-token';
const STATES = ['queued', 'running', 'succeeded', 'failed', 'cancelled'];
const JOB_PAGE = 500;       // jobs per request (the API allows 1..=1000)
const JOB_CAP = 2000;       // jobs read when a batch opens
const BATCH_PAGE = 50;
const POLL_MS = 2000;
// Parameters a request may state per engine (ParamsDto::for_engine).
const COMMON_PARAMS = ['width', 'height', 'seed', 'candidates', 'keep'];
const ENGINE_PARAMS = {
  'vqgan-clip': ['steps', 'lr', 'cutn', 'cut_pow', 'init_image', 'init_weight'],
  'dalle': ['temperature', 'top_k', 'supercondition_factor'],
  'test-pattern': ['steps', 'step_delay_ms'],
};

const $ = (sel) => document.querySelector(sel);
let current = null;   // the view shown: {kind, alive, live, ...}
let carriedNotice = '';  // a notice for the next view (after a retry)

// ---------- small helpers ----------

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

function safeUrl(u) {
  if (typeof u !== 'string' || !u) return null;
  try {
    const p = new URL(u, location.href);
    return p.protocol === 'http:' || p.protocol === 'https:' ? p.href : null;
  } catch { return null; }
}

const when = (t) => (t ? new Date(t).toLocaleString() : '—');
const nextFrame = () => new Promise((r) => requestAnimationFrame(() => r()));

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => { clearTimeout(t); resolve(); }, { once: true });
  });
}

function newKey() {
  if (crypto.randomUUID) return crypto.randomUUID();
  return Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, '0')).join('');
}

function showMessage(text) { $('#message').textContent = text; $('#message').hidden = !text; }
function showNotice(text) { $('#notice').textContent = text; $('#notice').hidden = !text; }
function setLive(text) { $('#live-status').textContent = text; }

function report(e) {
  if (!e || e.name === 'AbortError' || e.signedOut) return;
  showMessage(e.message || String(e));
}

// ---------- API ----------

class ApiError extends Error {
  constructor(status, message, signedOut = false) {
    super(message); this.status = status; this.signedOut = signedOut;
  }
}

const token = () => sessionStorage.getItem(TOKEN_KEY) || '';
const authHeaders = (extra = {}) => ({ Authorization: 'Bearer ' + token(), ...extra });

// The problem's `detail` (with its field errors), else its title.
async function problemText(res) {
  try {
    const p = await res.json();
    const fields = (p.errors || []).slice(0, 5).map((f) => `${f.pointer}: ${f.message}`);
    return [p.detail || p.title || `HTTP ${res.status}`, ...fields].join('\n');
  } catch {
    return `The dispatcher answered ${res.status} ${res.statusText}`;
  }
}

// A failed answer as an ApiError; a 401 signs out first.
async function failure(res) {
  if (res.status === 401) {
    signOut('Your token was refused (401 Unauthorized); sign in again.');
    return new ApiError(401, 'signed out', true);
  }
  return new ApiError(res.status, await problemText(res));
}

// JSON request; `background` calls (polls, page reads) leave #message alone.
async function api(path, { method = 'GET', body, headers = {}, background = false } = {}) {
  const h = authHeaders({ Accept: 'application/json', ...headers });
  if (body !== undefined) h['Content-Type'] = 'application/json';
  let res;
  try {
    res = await fetch(path, {
      method, headers: h, cache: 'no-store',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(0, `The dispatcher could not be reached (${e.message}).`);
  }
  if (!res.ok) throw await failure(res);
  if (!background) showMessage('');
  return res.json();
}

// Every item of a paged list (`next_cursor` → `cursor`), up to `cap`.
async function readAll(path, params, cap = Infinity) {
  const items = [];
  let cursor = null;
  do {
    const q = new URLSearchParams(params);
    if (cursor) q.set('cursor', cursor);
    const page = await api(`${path}?${q}`, { background: true });
    items.push(...page.items);
    cursor = page.next_cursor;
  } while (cursor && items.length < cap);
  return items;
}

// ---------- server-sent events over fetch ----------

// Reads a text/event-stream body, calling onEvent({type, data, id}) per event.
async function readEventStream(body, onEvent) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  let ev = { type: '', data: [], id: null };
  const line = (l) => {
    if (l === '') {                       // a blank line ends an event
      if (ev.data.length) onEvent({ type: ev.type || 'message', data: ev.data.join('\n'), id: ev.id });
      ev = { type: '', data: [], id: null };
      return;
    }
    if (l.startsWith(':')) return;        // comment: keep-alive
    const i = l.indexOf(':');
    const field = i < 0 ? l : l.slice(0, i);
    let value = i < 0 ? '' : l.slice(i + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'event') ev.type = value;
    else if (field === 'data') ev.data.push(value);
    else if (field === 'id' && !value.includes('\0')) ev.id = value;
    else if (field === 'retry' && /^\d+$/.test(value)) onEvent({ type: 'retry', data: value, id: null });
  };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    // A "\r" at the end may be the first half of "\r\n": keep it for later.
    const held = buf.endsWith('\r');
    const lines = (held ? buf.slice(0, -1) : buf).split(/\r\n|\r|\n/);
    buf = lines.pop() + (held ? '\r' : '');
    lines.forEach(line);
  }
}

// A stream kept open: reconnects (1 s growing to 10 s) with Last-Event-ID;
// after repeated 404/429/5xx answers calls `poll` every 2 s until the
// stream opens again. Returns {stop}.
function openLive(url, onEvent, poll) {
  const ctl = new AbortController();
  let lastId = '', failures = 0, refusals = 0, retryMs = 1000, pollTimer = null;
  const stopPolling = () => { clearInterval(pollTimer); pollTimer = null; };
  const startPolling = () => {
    if (pollTimer || !poll) return;
    setLive('polling every 2 s (live updates unavailable)');
    poll();
    pollTimer = setInterval(poll, POLL_MS);
  };
  const dispatch = (ev) => {
    if (ev.type === 'retry') { retryMs = Math.max(500, Number(ev.data)); return; }
    // After a reset the old id means nothing: the next connection starts afresh.
    if (ev.type === 'reset') lastId = '';
    if (ev.id !== null) lastId = ev.id;
    let data = ev.data;
    if (ev.type !== 'reset') {
      try { data = JSON.parse(ev.data); } catch { return; }
    }
    onEvent(ev.type, data);
  };
  setLive('connecting…');
  (async () => {
    while (!ctl.signal.aborted) {
      let status = 0, wait = 0;
      try {
        const headers = authHeaders({ Accept: 'text/event-stream' });
        if (lastId) headers['Last-Event-ID'] = lastId;
        const res = await fetch(url, { headers, signal: ctl.signal, cache: 'no-store' });
        status = res.status;
        if (res.ok) {
          failures = 0; refusals = 0; stopPolling(); setLive('live');
          // A stream opened without Last-Event-ID starts at the server's
          // present: what changed before it is read again by the view.
          onEvent('open', { resumed: Boolean(headers['Last-Event-ID']) });
          await readEventStream(res.body, dispatch);
        } else if (status === 401) {
          await failure(res); return;
        } else {
          wait = Number(res.headers.get('Retry-After')) * 1000 || 0;
          const why = await problemText(res);
          if (!ctl.signal.aborted && !pollTimer) setLive(`live updates interrupted: ${why}`);
          // An id this server no longer reads: start afresh, read everything again.
          if (status === 400 && lastId) { lastId = ''; onEvent('reset', ''); }
        }
      } catch (e) {
        // A network error or the stream cut short: reconnect below.
      }
      if (ctl.signal.aborted) return;
      if (status === 404 || status === 429 || status >= 500) refusals += 1;
      if (refusals >= 3) startPolling();
      failures += 1;
      if (!pollTimer) setLive(failures > 1 ? 'reconnecting…' : 'live (reconnecting)');
      const backoff = pollTimer ? 30000 : Math.min(10000, retryMs * 2 ** (failures - 1));
      await sleep(Math.max(backoff, wait), ctl.signal);
    }
  })();
  return { stop() { ctl.abort(); stopPolling(); } };
}

// ---------- sign in / out, routing ----------

function showSignedIn(yes) {
  $('#signin').hidden = yes;
  $('#app').hidden = !yes;
  $('#sign-out').hidden = !yes;
}

function signOut(message = '') {
  sessionStorage.removeItem(TOKEN_KEY);
  leaveView();
  showSignedIn(false);
  setLive('');
  showNotice('');
  showMessage(message);
  $('#token').focus();
}

function signIn(event) {
  event.preventDefault();
  const t = $('#token').value.trim();
  if (!t) return;
  sessionStorage.setItem(TOKEN_KEY, t);
  $('#token').value = '';
  showMessage('');
  route();
}

function leaveView() {
  if (!current) return;
  current.alive = false;
  current.live?.stop();
  if ($('#details').open) $('#details').close();
  current = null;
}

function route() {
  leaveView();
  if (!token()) { signOut(''); return; }
  showSignedIn(true);
  showNotice(carriedNotice);
  carriedNotice = '';
  const m = location.hash.match(/^#\/batch\/([0-9A-Za-z-]+)$/);
  if (m) showBatchView(m[1]);
  else showListView();
}

// ---------- batch list ----------

function countsText(b) {
  const c = b.counts;
  const finished = c.succeeded + c.failed + c.cancelled;
  const parts = STATES.filter((s) => c[s] > 0).map((s) => `${c[s]} ${s}`);
  return `${finished} / ${b.total} finished` + (parts.length ? ` · ${parts.join(' · ')}` : '');
}

function fillProgress(p, b) {
  const c = b.counts;
  p.max = Math.max(1, b.total);
  p.value = b.total === 0 ? 1 : c.succeeded + c.failed + c.cancelled;
}

function batchRow(b) {
  const progress = el('progress', { 'aria-label': 'progress' });
  fillProgress(progress, b);
  return el('li', { class: `batch state-${b.state}`, 'data-batch-id': b.id },
    el('a', { href: `#/batch/${encodeURIComponent(b.id)}`, class: 'name', text: b.name || b.id }),
    el('span', { class: 'engine', text: b.engine }),
    el('span', { class: `state state-${b.state}`, text: b.state }),
    progress,
    el('span', { class: 'counts', text: countsText(b) }),
    el('time', { class: 'created', datetime: b.created_at, text: when(b.created_at) }));
}

// Replaces the batch's row, or adds it (at the top, or the end for pages).
function upsertRow(v, b, atTop) {
  const row = batchRow(b);
  const old = v.rows.get(b.id);
  v.rows.set(b.id, row);
  v.newest = Math.max(v.newest, Date.parse(b.created_at) || 0);
  if (old) old.replaceWith(row);
  else if (atTop) $('#batches').prepend(row);
  else $('#batches').append(row);
  $('#batches-note').textContent = '';
}

async function loadBatches(v) {
  const q = new URLSearchParams({ limit: BATCH_PAGE });
  if (v.cursor) q.set('cursor', v.cursor);
  const btn = $('#more-batches');
  btn.disabled = true;
  try {
    const page = await api(`/v1/batches?${q}`);
    if (!v.alive) return;
    page.items.forEach((b) => upsertRow(v, b, false));
    v.cursor = page.next_cursor || null;
    btn.hidden = !v.cursor;
    if (!v.rows.size) $('#batches-note').textContent = 'No batches yet. Submit one with the kiln CLI or POST /v1/batches.';
  } catch (e) {
    report(e);
    if (v.alive && !v.rows.size) $('#batches-note').textContent = '';
  } finally { btn.disabled = false; }
}

// Polling fallback: the newest page again.
async function refreshList(v) {
  try {
    const page = await api(`/v1/batches?limit=${BATCH_PAGE}`, { background: true });
    if (v.alive) page.items.slice().reverse().forEach((b) => upsertRow(v, b, !v.rows.has(b.id)));
  } catch (e) { report(e); }
}

async function showListView() {
  const v = { kind: 'list', alive: true, rows: new Map(), cursor: null, newest: 0 };
  current = v;
  $('#batch').hidden = true;
  $('#list-view').hidden = false;
  $('#batches').replaceChildren();
  $('#batches-note').textContent = 'Loading…';
  document.title = 'Kiln: batches';
  await loadBatches(v);
  if (!v.alive) return;
  v.live = openLive('/v1/events', (type, data) => {
    if (type === 'open') { if (!data.resumed) refreshList(v); return; }
    // A batch not shown is added only when it is newer than every row (a
    // new batch); an older one appears when its page is read.
    const shown = type === 'batch' && (v.rows.has(data.id) || Date.parse(data.created_at) >= v.newest);
    if (shown) upsertRow(v, data, true);
    else if (type === 'reset') { v.cursor = null; loadBatches(v); }
  }, () => refreshList(v));
}

// ---------- one batch: header ----------

function showBatch(v, b) {
  if (!v.alive || b.id !== v.id) return;
  v.batch = b;
  const c = b.counts;
  $('#batch-title').textContent = b.name || b.id;
  document.title = `Kiln: ${b.name || b.id}`;
  $('#batch-engine').textContent = b.engine;
  $('#batch-priority').textContent = b.priority;
  $('#batch-created').textContent = when(b.created_at);
  $('#batch-finished').textContent = when(b.finished_at);
  const state = $('#batch-state');
  state.textContent = b.state;
  state.className = `state state-${b.state}`;
  fillProgress($('#progress'), b);
  const finished = c.succeeded + c.failed + c.cancelled;
  $('#progress-text').textContent = `${finished} / ${b.total}`;
  for (const s of STATES) $(`#counts [data-count="${s}"]`).textContent = String(c[s]);
  const active = c.queued + c.running > 0;
  $('#cancel-batch').disabled = !active;
  $('#retry-batch').disabled = active || c.failed + c.cancelled === 0;
  const parent = $('#batch-retry-of');
  parent.replaceChildren();
  if (b.retry_of) parent.append(el('a', { href: `#/batch/${encodeURIComponent(b.retry_of)}`, text: b.retry_of }));
  parent.hidden = !b.retry_of;
  $('#batch-retry-of-label').hidden = !b.retry_of;
}

// ---------- one batch: job cards ----------

function bestResult(job) {
  return [...(job.results || [])].sort((a, b) => a.rank - b.rank)[0] || null;
}

const fmtScore = (s) => (s === null || s === undefined ? '—' : Number(s).toFixed(3));

function jobProgress(job) {
  const p = el('progress', { class: 'job-progress', 'aria-label': 'job progress' });
  if (job.progress?.total > 0) { p.max = job.progress.total; p.value = job.progress.step; }
  return p;
}

function jobTitle(job) {
  const best = bestResult(job);
  return [
    job.prompt,
    `${job.state} · attempt ${job.attempt} / ${job.max_attempts}`,
    job.worker ? `worker ${job.worker}` : '',
    job.error ? `error: ${job.error}` : '',
    best ? `score ${fmtScore(best.score)} · rank ${best.rank} · seed ${best.seed} · ${best.width}×${best.height}` : '',
  ].filter(Boolean).join('\n');
}

function fillCard(card, job) {
  card.dataset.state = job.state;
  card.className = `job state-${job.state}`;
  card.title = jobTitle(job);
  const best = job.state === 'succeeded' ? bestResult(job) : null;
  const src = best && safeUrl(best.url);
  const face = src
    ? el('img', { class: 'thumb', src, alt: job.prompt, loading: 'lazy', decoding: 'async', referrerpolicy: 'no-referrer' })
    : el('span', { class: 'placeholder' }, el('span', { text: job.state }),
      job.state === 'running' ? jobProgress(job) : null);
  const open = el('button', { type: 'button', class: 'open', 'aria-label': `Details: ${job.prompt}` }, face);
  const parts = [open, el('p', { class: 'prompt', text: job.prompt })];
  if (best) {
    parts.push(el('p', { class: 'meta', text: `score ${fmtScore(best.score)} · rank ${best.rank} · seed ${best.seed}` }));
  } else if (job.state === 'failed' && job.error) {
    parts.push(el('p', { class: 'meta error', text: job.error }));
  }
  if (job.state === 'queued' || job.state === 'running') {
    parts.push(el('button', { type: 'button', class: 'cancel', 'data-job-id': job.id, text: 'Cancel' }));
  }
  card.replaceChildren(...parts);
}

function cardFor(v, job) {
  if (!v.cards.has(job.id)) v.cards.set(job.id, el('div', { class: 'job', 'data-job-id': job.id }));
  return v.cards.get(job.id);
}

// A job from an event or an answer: it is newer than what a page brings.
function updateJob(v, job) {
  if (!v.alive || job.batch_id !== v.id) return;
  v.touched.add(job.id);
  v.jobs.set(job.id, job);
  const card = cardFor(v, job);
  fillCard(card, job);
  if (!card.isConnected) $('#grid').append(card);
  if (v.detailsId === job.id) renderDetails(job);
}

function updateProgress(v, ev) {
  const job = v.jobs.get(ev.job_id);
  if (!job) return;
  job.progress = ev.progress;
  const p = v.cards.get(ev.job_id)?.querySelector('.job-progress');
  if (p && ev.progress.total > 0) { p.max = ev.progress.total; p.value = ev.progress.step; }
}

// Reads the batch's jobs page by page, appending cards as they come; a
// job an event already updated keeps that version and only moves into place.
async function loadJobs(v) {
  const gen = ++v.gen;
  v.touched.clear();
  const note = $('#jobs-note');
  let cursor = null, n = 0;
  note.textContent = 'Loading jobs…';
  do {
    const q = new URLSearchParams({ limit: JOB_PAGE });
    if (cursor) q.set('cursor', cursor);
    let page;
    try {
      page = await api(`/v1/batches/${encodeURIComponent(v.id)}/jobs?${q}`, { background: true });
    } catch (e) {
      if (v.alive && gen === v.gen) { report(e); note.textContent = 'The jobs could not all be read.'; }
      return;
    }
    if (!v.alive || gen !== v.gen) return;
    const frag = document.createDocumentFragment();
    for (const job of page.items) {
      const card = cardFor(v, job);
      if (!v.touched.has(job.id)) { v.jobs.set(job.id, job); fillCard(card, job); }
      frag.append(card);
    }
    $('#grid').append(frag);
    n += page.items.length;
    cursor = page.next_cursor;
    note.textContent = cursor ? `Loading jobs… ${n} read` : '';
    await nextFrame();
  } while (cursor && n < JOB_CAP);
  if (cursor) {
    note.textContent = `Showing the first ${n} of ${v.batch?.total ?? 'many'} jobs; ` +
      'jobs beyond them appear here as they change.';
  }
  v.loadedAt = Date.now();
}

// Polling fallback: the batch every 2 s, the jobs again (at most every 10 s)
// when its counts moved.
async function pollBatch(v) {
  try {
    const b = await api(`/v1/batches/${encodeURIComponent(v.id)}`, { background: true });
    const moved = JSON.stringify(b.counts) !== JSON.stringify(v.batch?.counts);
    showBatch(v, b);
    if (!v.loadedAt || (moved && Date.now() - v.loadedAt > 10000)) { v.loadedAt = Date.now(); loadJobs(v); }
  } catch (e) { report(e); }
}

function onBatchEvent(v, type, data) {
  if (type === 'open') { if (!data.resumed) loadJobs(v); return; }
  if (type === 'batch') showBatch(v, data);
  else if (type === 'job') updateJob(v, data.job);
  else if (type === 'progress') updateProgress(v, data);
  else if (type === 'reset') {
    api(`/v1/batches/${encodeURIComponent(v.id)}`, { background: true }).then((b) => showBatch(v, b), report);
    loadJobs(v);
  }
}

async function showBatchView(id) {
  const v = {
    kind: 'batch', id, alive: true, batch: null, gen: 0, detailsId: null,
    jobs: new Map(), cards: new Map(), touched: new Set(),
  };
  current = v;
  $('#list-view').hidden = true;
  const section = $('#batch');
  section.hidden = false;
  section.dataset.batchId = id;
  $('#grid').replaceChildren();
  $('#state-filter').value = '';
  $('#grid').dataset.filter = '';
  $('#batch-title').textContent = id;
  $('#jobs-note').textContent = '';
  $('#cancel-batch').disabled = true;
  $('#retry-batch').disabled = true;
  try {
    showBatch(v, await api(`/v1/batches/${encodeURIComponent(id)}`));
  } catch (e) { report(e); return; }
  if (!v.alive) return;
  // The jobs are read when the stream opens (see onBatchEvent), or by the
  // polling that replaces it.
  v.live = openLive(`/v1/batches/${encodeURIComponent(id)}/events`,
    (type, data) => onBatchEvent(v, type, data), () => pollBatch(v));
}

// ---------- one batch: actions ----------

async function cancelJob(button) {
  const v = current;
  button.disabled = true;
  try {
    const answer = await api(`/v1/jobs/${encodeURIComponent(button.dataset.jobId)}/cancel`, { method: 'POST' });
    updateJob(v, answer.job);
    showNotice(answer.message);
  } catch (e) { report(e); button.disabled = false; }
}

async function cancelBatch() {
  const v = current;
  if (!v?.batch || !confirm('Cancel every job of this batch that has not finished?')) return;
  $('#cancel-batch').disabled = true;
  try {
    const answer = await api(`/v1/batches/${encodeURIComponent(v.id)}/cancel`, { method: 'POST' });
    showBatch(v, answer.batch);
    showNotice(answer.message);
  } catch (e) { report(e); showBatch(v, v.batch); }
}

// The job again as a request states it: prompt and the engine's params.
function resubmission(engine, job) {
  const names = COMMON_PARAMS.concat(ENGINE_PARAMS[engine] || []);
  const params = {};
  for (const k of names) if (job.params?.[k] !== undefined && job.params[k] !== null) params[k] = job.params[k];
  return { prompt: job.prompt, params };
}

// The server copies nothing for retry_of: the failed and cancelled jobs are
// read and sent again, each with its prompt and resolved params (seed too).
async function retryBatch() {
  const v = current;
  const b = v?.batch;
  if (!b) return;
  const btn = $('#retry-batch');
  btn.disabled = true;
  showNotice('Reading the failed and cancelled jobs…');
  try {
    const path = `/v1/batches/${encodeURIComponent(b.id)}/jobs`;
    const jobs = [
      ...await readAll(path, { limit: 1000, state: 'failed' }),
      ...await readAll(path, { limit: 1000, state: 'cancelled' }),
    ];
    if (!jobs.length) { showNotice('Nothing to retry.'); return; }
    const created = await api('/v1/batches', {
      method: 'POST',
      headers: { 'Idempotency-Key': newKey() },
      body: {
        engine: b.engine,
        retry_of: b.id,
        name: `retry of ${b.name || b.id}`.slice(0, 200),
        priority: b.priority,
        jobs: jobs.map((j) => resubmission(b.engine, j)),
      },
    });
    carriedNotice = `Submitted batch ${created.id} retrying ${jobs.length} job${jobs.length === 1 ? '' : 's'} of ${b.id}.`;
    location.hash = `#/batch/${encodeURIComponent(created.id)}`;
  } catch (e) {
    showNotice('');
    report(e);
    if (v.alive) showBatch(v, b);
  }
}

// ---------- job details ----------

function detailRow(dl, term, value) {
  dl.append(el('dt', { text: term }), el('dd', { text: value === null || value === undefined || value === '' ? '—' : String(value) }));
}

function resultItem(r) {
  const url = safeUrl(r.url);
  const img = url ? el('img', { src: url, alt: `rank ${r.rank}`, loading: 'lazy', referrerpolicy: 'no-referrer' }) : null;
  const caption = `rank ${r.rank} · score ${fmtScore(r.score)} · seed ${r.seed} · ${r.width}×${r.height}`;
  return el('li', { class: 'result' },
    url ? el('a', { href: url, target: '_blank', rel: 'noopener noreferrer' }, img) : el('span', { text: r.key }),
    el('p', { text: caption }));
}

function renderDetails(job) {
  $('#details-title').textContent = `Job ${job.id}`;
  const dl = el('dl', { class: 'facts' });
  detailRow(dl, 'State', job.state);
  detailRow(dl, 'Attempt', `${job.attempt} / ${job.max_attempts}`);
  if (job.state === 'running' && job.progress) detailRow(dl, 'Progress', `${job.progress.step} / ${job.progress.total}`);
  detailRow(dl, 'Worker', job.worker);
  detailRow(dl, 'Error', job.error);
  detailRow(dl, 'Engine', job.engine);
  detailRow(dl, 'Created', when(job.created_at));
  detailRow(dl, 'Started', when(job.started_at));
  detailRow(dl, 'Finished', when(job.finished_at));
  const results = [...(job.results || [])].sort((a, b) => a.rank - b.rank);
  $('#details-body').replaceChildren(
    el('h3', { text: 'Prompt' }), el('p', { class: 'full-prompt', text: job.prompt }),
    dl,
    el('h3', { text: 'Parameters' }), el('pre', { text: JSON.stringify(job.params, null, 2) }),
    el('h3', { text: `Results (${results.length})` }),
    results.length ? el('ul', { class: 'results' }, ...results.map(resultItem)) : el('p', { text: 'None yet.' }));
}

// Shows what is known at once, then the job as read now (fresh image URLs).
async function openDetails(v, id) {
  const known = v.jobs.get(id);
  if (!known) return;
  v.detailsId = id;
  renderDetails(known);
  if (!$('#details').open) $('#details').showModal();
  try {
    const job = await api(`/v1/jobs/${encodeURIComponent(id)}`, { background: true });
    if (v.alive && v.detailsId === id) updateJob(v, job);
  } catch (e) { report(e); }
}

// ---------- wiring ----------

function init() {
  $('#signin-form').addEventListener('submit', signIn);
  $('#sign-out').addEventListener('click', () => signOut('Signed out.'));
  $('#more-batches').addEventListener('click', () => current?.kind === 'list' && loadBatches(current));
  $('#state-filter').addEventListener('change', (e) => { $('#grid').dataset.filter = e.target.value; });
  $('#cancel-batch').addEventListener('click', cancelBatch);
  $('#retry-batch').addEventListener('click', retryBatch);
  $('#close-details').addEventListener('click', () => $('#details').close());
  $('#details').addEventListener('close', () => { if (current) current.detailsId = null; });
  $('#grid').addEventListener('click', (e) => {
    const cancel = e.target.closest('button.cancel');
    if (cancel) { cancelJob(cancel); return; }
    const card = e.target.closest('.job');
    if (card && current?.kind === 'batch') openDetails(current, card.dataset.jobId);
  });
  window.addEventListener('hashchange', route);
  route();
}

init();
