// Auditor portal: search archives, open one (verified by the server), play it with the viewer's
// watermark over the players, jump to the key moments, export, set or clear a legal hold.
// Auditors also list the sessions that were never recorded (by default: identity check failed,
// ended in the last 30 days), open one (or look it up by its id), and hold its evidence
// (identity records, customer data) against the purge at the end of its retention.
// `/auditor/?archive=ID&moment=MOMENT` (the supervisor's review queue links here) opens that
// archive directly, and playback, once started, begins at the moment's start mark.
import { get, post } from '/static/common/api.js';
import { clearText, t, translate } from '/static/common/i18n.js';
import { errorText, initChrome, toast, showErrorText } from '/static/common/ui.js';

const $ = (id) => document.getElementById(id);
// `opened`: the archive shown (or being loaded), set before `archive` arrives; `exporting`: the
// archives whose packages the server is writing for this page.
const state = {
  user: null, query: {}, page: 1, pages: 1, opened: null, archive: null, players: [], target: null,
  exporting: new Set(), session: null,
};
// The two legal-hold forms: an archive's (archive view) and a session's never recorded.
const HOLD_FORMS = {
  archive: { state: 'hold-state', reason: 'hold-reason', error: 'hold-error', submit: 'hold-submit' },
  session: {
    state: 'session-status', reason: 'session-hold-reason', error: 'session-hold-error', submit: 'session-hold-submit',
  },
};

function show(view) {
  document.body.dataset.view = view;
  $('login-needed').hidden = view !== 'login';
  $('search-view').hidden = view !== 'search';
  $('archive-view').hidden = view !== 'archive';
}

function criteria() {
  const value = (id) => $(id).value.trim();
  const query = {
    date_from: value('date-from') || null,
    date_to: value('date-to') || null,
    teller: value('teller'),
    customer_name: value('customer-name'),
    id_number: value('id-number'),
    business: value('business'),
    product: value('product'),
    compliance: value('compliance'),
    hold: value('hold'),
  };
  return Object.fromEntries(Object.entries(query).filter(([, v]) => v));
}

/** Archives span years: the date matters as much as the time. */
function dateTime(iso) {
  const when = new Date(iso);
  return `${when.toLocaleDateString()} ${when.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })}`;
}

function cell(text) {
  const td = document.createElement('td');
  td.textContent = text;
  return td;
}

function renderResults(found) {
  const rows = $('result-rows');
  rows.replaceChildren();
  state.pages = Math.max(1, Math.ceil(found.total / found.page_size));
  if (found.total === 0) translate($('result-count'), 'auditor.noResults');
  else translate($('result-count'), 'auditor.results', { total: found.total, page: found.page, pages: state.pages });
  $('results').hidden = found.total === 0;
  for (const archive of found.archives) {
    const tr = document.createElement('tr');
    tr.dataset.archiveId = archive.archive_id;
    const customer = archive.card_name && archive.card_name !== archive.customer_name
      ? `${archive.customer_name} / ${archive.card_name}` : archive.customer_name || archive.card_name || '—';
    const business = t(`business.${archive.business}`);
    tr.append(
      cell(dateTime(archive.started_at)),
      cell(archive.teller.name || archive.teller.username),
      cell(customer),
      cell(archive.product ? `${business} / ${archive.product}` : business),
      cell(t(`auditor.compliance.${archive.compliance}`)),
      cell(t(archive.legal_hold ? 'auditor.hold.held' : 'auditor.hold.not_held')),
    );
    const open = document.createElement('button');
    open.type = 'button';
    open.className = 'btn btn-primary open-archive';
    translate(open, 'auditor.open');
    open.addEventListener('click', () => openArchive(archive.archive_id));
    const td = document.createElement('td');
    td.append(open);
    tr.append(td);
    rows.append(tr);
  }
  $('prev-page').hidden = state.page <= 1;
  $('next-page').hidden = state.page >= state.pages;
}

async function search(page = 1) {
  clearText($('search-error'));
  $('search-submit').disabled = true;
  try {
    state.page = page;
    renderResults(await post('/api/v1/auditor/search', { ...state.query, page }));
  } catch (err) {
    showErrorText($('search-error'), err);
  } finally {
    $('search-submit').disabled = false;
  }
}

function stopPlayers() {
  for (const video of state.players) {
    video.pause();
    video.removeAttribute('src');
    video.load();
  }
  state.players = [];
  $('player-grid').replaceChildren();
  $('players').hidden = true;
}

/** `target`: the moment (script id) whose start playback begins at, from a deep link. */
async function openArchive(archiveId, target = null) {
  state.opened = archiveId;
  state.target = target;
  stopPlayers();
  show('archive');
  translate($('archive-title'), 'auditor.archiveTitle', { id: archiveId });
  const status = $('verify-status');
  status.className = 'verify-status';
  translate(status, 'auditor.verifying');
  for (const id of ['chain-status', 'archive-summary', 'identity-summary', 'report-summary', 'play-status', 'target-status', 'export-status']) clearText($(id));
  $('problems').hidden = true;
  $('timeline').replaceChildren();
  showExporting(archiveId);
  try {
    const opened = await get(`/api/v1/auditor/archives/${encodeURIComponent(archiveId)}`);
    state.archive = opened;
    renderArchive(opened);
  } catch (err) {
    status.classList.add('failed');
    showErrorText(status, err);
  }
}

function renderArchive({ archive, verification, manifest }) {
  const status = $('verify-status');
  status.classList.add(verification.ok ? 'ok' : 'failed');
  status.dataset.result = verification.ok ? 'verified' : 'failed';
  translate(status, verification.ok ? 'auditor.verified' : 'auditor.verifyFailed');
  translate($('chain-status'), `auditor.chain.${verification.chain}`);
  const problems = $('problems');
  problems.replaceChildren(...verification.problems.map((text) => {
    const li = document.createElement('li');
    li.textContent = text;
    return li;
  }));
  problems.hidden = verification.problems.length === 0;
  translate($('archive-summary'), 'auditor.summary', {
    business: { t: `business.${archive.business}` },
    status: { t: `auditor.status.${archive.status}` },
    teller: archive.teller.name || archive.teller.username,
    customer: archive.customer_name || archive.card_name || '—',
  });
  if (manifest?.identity) {
    translate($('identity-summary'), 'auditor.identity', { decision: { t: `auditor.identity.${manifest.identity}` } });
  }
  renderTimeline(manifest?.marks ?? []);
  renderTransactions(archive.archive_id, manifest?.transactions ?? []);
  showTarget();
  $('play').disabled = !verification.ok;
  const isAuditor = state.user.role === 'auditor';
  $('auditor-actions').hidden = !isAuditor;
  renderHold(archive.hold);
  loadReport(archive.archive_id);
}

/** Empty `list`; with no `items`, one entry saying so (`emptyKey`). True when there are none. */
function resetList(list, items, emptyKey) {
  list.replaceChildren();
  if (items.length > 0) return false;
  const li = document.createElement('li');
  translate(li, emptyKey);
  list.append(li);
  return true;
}

/** A moment's time on the recording (m:ss) and the button that takes the players there. */
function timeAndJump(mediaMs) {
  const at = document.createElement('span');
  const seconds = Math.floor(mediaMs / 1000);
  at.textContent = `${Math.floor(seconds / 60)}:${String(seconds % 60).padStart(2, '0')}`;
  const jump = document.createElement('button');
  jump.type = 'button';
  jump.className = 'btn btn-secondary jump';
  translate(jump, 'auditor.jump');
  jump.addEventListener('click', () => seek(mediaMs / 1000));
  return [at, jump];
}

function renderTimeline(marks) {
  const list = $('timeline');
  if (resetList(list, marks, 'auditor.noMarks')) return;
  for (const mark of marks) {
    const li = document.createElement('li');
    li.dataset.mark = mark.name;
    li.dataset.ms = String(mark.media_ms);
    const label = document.createElement('span');
    label.className = 'mark-label';
    label.textContent = mark.name;
    li.append(label, ...timeAndJump(mark.media_ms));
    list.append(li);
  }
}

/** What the customer signed while the recording ran; each image is read from the sealed archive
 * (checked against the signed manifest by the server) only when asked for, and that is logged. */
function renderTransactions(archiveId, transactions) {
  const list = $('transactions');
  if (resetList(list, transactions, 'auditor.noTransactions')) return;
  for (const tx of transactions) {
    const li = document.createElement('li');
    li.dataset.transaction = tx.id;
    const label = document.createElement('span');
    translate(label, 'auditor.transaction', { id: tx.id });
    li.append(label, ...timeAndJump(tx.media_ms));
    if (tx.image_in_archive) {
      const show = document.createElement('button');
      show.type = 'button';
      show.className = 'btn btn-secondary show-signature';
      translate(show, 'auditor.showSignature');
      show.addEventListener('click', () => {
        const img = document.createElement('img');
        img.className = 'signature-image';
        img.alt = t('auditor.signatureAlt', { id: tx.id });
        img.addEventListener('error', () => {
          const failed = document.createElement('p');
          failed.className = 'form-error';
          failed.setAttribute('role', 'alert');
          translate(failed, 'auditor.signatureFailed');
          img.replaceWith(failed);
        });
        img.src = `/api/v1/auditor/archives/${encodeURIComponent(archiveId)}/signatures/${encodeURIComponent(tx.id)}.png`;
        show.replaceWith(img);
      });
      li.append(show);
    } else {
      const note = document.createElement('span');
      note.className = 'hint';
      translate(note, 'auditor.signatureHashOnly');
      li.append(note);
    }
    list.append(li);
  }
}

async function loadReport(archiveId) {
  const summary = $('report-summary');
  const link = $('report-link');
  link.hidden = true;
  try {
    const { report } = await get(`/api/v1/archives/${encodeURIComponent(archiveId)}/report`);
    translate(summary, 'auditor.reportDecision', { decision: { t: `auditor.compliance.${report.decision}` } });
    link.href = `/api/v1/archives/${encodeURIComponent(archiveId)}/report.html`;
    link.hidden = false;
    nameMoments(report.moments ?? []);
  } catch {
    translate(summary, 'auditor.reportNone');
  }
}

/** Marks are named "<moment id>.<phase>": show the script's title and the analysis' result. */
function nameMoments(moments) {
  const byId = new Map(moments.map((moment) => [moment.id, moment]));
  for (const li of $('timeline').querySelectorAll('li[data-mark]')) {
    const [id, phase] = li.dataset.mark.split('.');
    const moment = byId.get(id);
    if (!moment) continue;
    const phaseText = phase === 'end' ? t('auditor.markEnd') : t('auditor.markStart');
    li.querySelector('.mark-label').textContent =
      `${moment.title} ${phaseText} · ${t(`auditor.compliance.${moment.decision}`)}`;
  }
  if (byId.has(state.target)) showTarget(byId.get(state.target).title);
}

function targetMark() {
  if (!state.target) return null;
  return $('timeline').querySelector(`li[data-mark="${CSS.escape(`${state.target}.start`)}"]`);
}

function showTarget(title = state.target) {
  if (!state.target) return;
  const status = $('target-status');
  const mark = targetMark();
  if (mark) {
    mark.classList.add('mark-target');
    translate(status, 'auditor.targetMoment', { moment: title });
  } else {
    translate(status, 'auditor.targetUnmarked', { moment: title });
  }
}

/** The hold's state in `form` (HOLD_FORMS) and its button, which sets or clears it. */
function renderHold(hold, form = HOLD_FORMS.archive, words = ['auditor.holdOn', 'auditor.holdOff']) {
  const held = Boolean(hold?.held);
  if (held) translate($(form.state), words[0], { reason: hold.reason });
  else translate($(form.state), words[1]);
  translate($(form.submit), held ? 'auditor.holdClear' : 'auditor.holdSet');
  $(form.submit).dataset.held = String(held);
}

/** A session never recorded: what it holds, and its hold (or why none can be set). */
function renderSession(session) {
  state.session = session;
  translate($('session-summary'), 'auditor.sessionSummary', {
    id: session.id,
    business: { t: `business.${session.business}` },
    ended: session.ended_at ? dateTime(session.ended_at) : '—',
  });
  const list = $('session-attempts');
  if (!resetList(list, session.identity, 'auditor.sessionNoAttempts')) {
    list.append(...session.identity.map((attempt) => translate(document.createElement('li'), 'auditor.sessionAttempt', {
      step: { t: `identity.step.${attempt.step}` },
      outcome: { t: `auditor.identity.${attempt.outcome}` },
      reason: attempt.reason,
      at: dateTime(attempt.at),
    })));
  }
  // Nothing to hold here: a recorded session is held through its archive, an erased one is gone.
  const holdable = session.hold.held || (session.sealed_archives.length === 0 && !session.erased);
  $('session-hold-form').hidden = !holdable;
  if (holdable) renderHold(session.hold, HOLD_FORMS.session, ['auditor.sessionHoldOn', 'auditor.sessionHoldOff']);
  else if (session.erased) translate($('session-status'), 'auditor.sessionErased');
  else translate($('session-status'), 'auditor.sessionRecorded', { archives: session.sealed_archives.join(', ') });
  $('session-found').hidden = false;
}

async function lookUpSession(sessionId) {
  clearText($('session-error'));
  clearText($('session-hold-error'));
  $('session-found').hidden = true;
  if (!sessionId) return false;
  try {
    const { session } = await get(`/api/v1/auditor/sessions/${encodeURIComponent(sessionId)}`);
    renderSession(session);
    return true;
  } catch (err) {
    showErrorText($('session-error'), err);
    return false;
  }
}

/** `YYYY-MM-DD` of the day `days` before today (the date inputs' value). */
function daysAgo(days) {
  const when = new Date(Date.now() - days * 86400000);
  return `${when.getFullYear()}-${String(when.getMonth() + 1).padStart(2, '0')}-${String(when.getDate()).padStart(2, '0')}`;
}

/** The identity outcome of a listed session: failed names the steps whose last attempt failed. */
function identityCell(session) {
  const td = document.createElement('td');
  if (session.identity !== 'failed') return translate(td, `auditor.identityOutcome.${session.identity}`);
  const steps = session.steps.filter((step) => step.outcome === 'fail').map((step) => t(`identity.step.${step.step}`));
  return translate(td, 'auditor.identityFailedSteps', { steps: steps.join(t('auditor.listSeparator')) });
}

/** When the purge erases a listed session: never while held; due at its next run once past. */
function purgeCell(session) {
  const td = document.createElement('td');
  td.className = 'purge';
  if (session.held) return translate(td, 'auditor.purgeHeld');
  const date = new Date(session.purge_after).toLocaleDateString();
  return translate(td, new Date(session.purge_after) <= new Date() ? 'auditor.purgeDue' : 'auditor.purgeOn', { date });
}

function heldCell(td, held) {
  td.className = 'held';
  return translate(td, held ? 'auditor.hold.held' : 'auditor.hold.not_held');
}

/** A listed session's hold changed (on the form below the list). */
function markHeld(sessionId, held) {
  const row = $('unrecorded-rows').querySelector(`tr[data-session-id="${CSS.escape(sessionId)}"]`);
  if (!row) return;
  heldCell(row.querySelector('td.held'), held);
  row.querySelector('td.purge').replaceWith(purgeCell({ held, purge_after: row.dataset.purgeAfter }));
}

function renderUnrecorded({ sessions, more, limit }) {
  const rows = $('unrecorded-rows');
  rows.replaceChildren();
  if (sessions.length === 0) translate($('unrecorded-count'), 'auditor.unrecordedNone');
  else if (more) translate($('unrecorded-count'), 'auditor.unrecordedMore', { count: limit });
  else translate($('unrecorded-count'), 'auditor.unrecordedCount', { count: sessions.length });
  $('unrecorded').hidden = sessions.length === 0;
  for (const session of sessions) {
    const tr = document.createElement('tr');
    tr.dataset.sessionId = session.id;
    const ended = session.ended_at
      ? cell(dateTime(session.ended_at))
      : translate(document.createElement('td'), 'auditor.notEnded', { created: dateTime(session.created_at) });
    const open = document.createElement('button');
    open.type = 'button';
    open.className = 'btn btn-secondary open-session';
    translate(open, 'auditor.sessionOpen');
    open.addEventListener('click', async () => {
      $('session-id').value = session.id;
      if (await lookUpSession(session.id)) $('session-summary').focus();
    });
    const action = document.createElement('td');
    action.append(open);
    tr.dataset.purgeAfter = session.purge_after;
    tr.append(
      ended,
      cell(session.teller.name || session.teller.username),
      translate(document.createElement('td'), `business.${session.business}`),
      identityCell(session),
      heldCell(document.createElement('td'), session.held),
      purgeCell(session),
      action,
    );
    rows.append(tr);
  }
}

/** The sessions never recorded whose evidence the purge has not erased yet, newest first. */
async function listUnrecorded() {
  clearText($('unrecorded-error'));
  $('unrecorded-submit').disabled = true;
  const query = new URLSearchParams({ identity: $('unrecorded-identity').value });
  for (const [name, id] of [['date_from', 'unrecorded-from'], ['date_to', 'unrecorded-to']]) {
    if ($(id).value) query.set(name, $(id).value);
  }
  try {
    renderUnrecorded(await get(`/api/v1/auditor/sessions?${query}`));
  } catch (err) {
    showErrorText($('unrecorded-error'), err);
  } finally {
    $('unrecorded-submit').disabled = false;
  }
}

function updateWatermark() {
  const mark = $('watermark');
  if ($('players').hidden || !state.user) return;
  const now = new Date();
  mark.textContent = `${t('auditor.watermark', { role: t(`role.${state.user.role}`), user: state.user.username, id: state.user.id, time: now.toISOString().replace('T', ' ').slice(0, 19) })} UTC`;
}

function viewLabel(name) {
  if (name === 'customer' || name === 'teller') return t(`auditor.view.${name}`);
  return t('auditor.view.other', { name });
}

async function play() {
  const archiveId = state.archive.archive.archive_id;
  $('play').disabled = true;
  translate($('play-status'), 'auditor.preparing');
  try {
    const { views } = await post(`/api/v1/auditor/archives/${encodeURIComponent(archiveId)}/playback`);
    stopPlayers();
    for (const view of views) {
      const figure = document.createElement('figure');
      const video = document.createElement('video');
      video.src = view.url;
      video.preload = 'auto';
      video.dataset.view = view.name;
      video.controls = state.players.length === 0; // one set of controls drives every view
      const caption = document.createElement('figcaption');
      caption.textContent = viewLabel(view.name);
      figure.append(video, caption);
      $('player-grid').append(figure);
      state.players.push(video);
    }
    const [main, ...others] = state.players;
    const follow = () => {
      for (const other of others) {
        if (Math.abs(other.currentTime - main.currentTime) > 0.3) other.currentTime = main.currentTime;
        if (main.paused) other.pause();
        else other.play().catch(() => {});
      }
    };
    for (const event of ['play', 'pause', 'seeked']) main.addEventListener(event, follow);
    $('players').hidden = false;
    clearText($('play-status'));
    updateWatermark();
    await main.play().catch(() => {});
    const mark = targetMark();
    if (mark) {
      seek(Number(mark.dataset.ms) / 1000);
      translate($('target-status'), 'auditor.atMoment', { moment: mark.querySelector('.mark-label').textContent });
    }
  } catch (err) {
    showErrorText($('play-status'), err);
  } finally {
    $('play').disabled = false;
  }
}

function seek(seconds) {
  if (state.players.length === 0) {
    toast(t('error.playback_not_started'));
    return;
  }
  for (const video of state.players) video.currentTime = seconds;
}

/** The export button and status of `archiveId`, now open: busy while its package is written. */
function showExporting(archiveId) {
  const busy = state.exporting.has(archiveId);
  $('export').disabled = busy;
  if (busy) translate($('export-status'), 'auditor.exporting');
}

/** Report how `archiveId`'s export `ended` (an Error, or the `key` and `params` of the status)
 * next to the button, or, if the auditor has gone on to another archive (or the search)
 * meanwhile, in a toast that names it. */
function exportEnded(archiveId, ended) {
  const failed = ended instanceof Error;
  if (state.opened === archiveId) {
    if (failed) showErrorText($('export-status'), ended);
    else translate($('export-status'), ended.key, ended.params);
    return;
  }
  const text = failed ? errorText(ended) : t(ended.key, ended.params);
  toast(`${t('auditor.archiveTitle', { id: archiveId })}: ${text}`, failed ? 'error' : 'success');
}

/** The server writes the package, then hands out a single-use link (for this login, valid a
 * minute) that the browser downloads to disk itself, with its own progress: the page never holds
 * the package, which can be gigabytes. The export is a POST with the page's CSRF token, never a
 * plain link: another site could make the browser follow one, and an export hands out evidence. */
async function exportPackage() {
  const archiveId = state.opened;
  state.exporting.add(archiveId);
  showExporting(archiveId);
  try {
    const { download } = await post(`/api/v1/auditor/archives/${encodeURIComponent(archiveId)}/export`);
    const link = document.createElement('a');
    link.href = download.url;
    link.download = download.filename;
    document.body.append(link);
    link.click();
    link.remove();
    exportEnded(archiveId, {
      key: 'auditor.exportDone',
      params: { filename: download.filename, size: (download.bytes / 1024 / 1024).toFixed(1), sha256: download.sha256 },
    });
  } catch (err) {
    exportEnded(archiveId, err);
  } finally {
    state.exporting.delete(archiveId);
    if (state.opened === archiveId) $('export').disabled = false;
  }
}

/** Set or clear the hold of `form` (HOLD_FORMS) at `url`; `done(hold)` shows the new state. */
async function changeHold(form, url, done) {
  const reason = $(form.reason).value.trim();
  const errorBox = $(form.error);
  clearText(errorBox);
  if (reason.length < 4) {
    translate(errorBox, 'auditor.holdReasonMissing');
    return;
  }
  const held = $(form.submit).dataset.held !== 'true';
  $(form.submit).disabled = true;
  try {
    const { hold } = await post(url, { held, reason });
    done(hold);
    $(form.reason).value = '';
    toast(t('auditor.holdDone'), 'success');
  } catch (err) {
    showErrorText(errorBox, err);
  } finally {
    $(form.submit).disabled = false;
  }
}

async function start() {
  initChrome();
  try {
    const { user } = await get('/api/v1/auth/me');
    if (user.role !== 'auditor' && user.role !== 'supervisor') {
      show('login');
      return;
    }
    state.user = user;
    $('user-info').hidden = false;
    $('user-name').textContent = user.display_name || user.username;
    translate($('user-role'), `role.${user.role}`);
    show('search');
    $('session-hold').hidden = user.role !== 'auditor';
    if (user.role === 'auditor') {
      $('unrecorded-from').value = daysAgo(30);
      listUnrecorded();
    }
    const link = new URLSearchParams(window.location.search);
    if (link.get('archive')) await openArchive(link.get('archive'), link.get('moment'));
    else await search(1);
  } catch {
    show('login');
  }
}

$('search-form').addEventListener('submit', (event) => {
  event.preventDefault();
  state.query = criteria();
  search(1);
});
$('search-reset').addEventListener('click', () => {
  state.query = {};
  setTimeout(() => search(1));
});
$('prev-page').addEventListener('click', () => search(state.page - 1));
$('next-page').addEventListener('click', () => search(state.page + 1));
$('back').addEventListener('click', () => {
  // Back to searching: a reload shows the search, not the linked archive again.
  if (window.location.search) window.history.replaceState(null, '', window.location.pathname);
  state.target = null;
  state.opened = null;
  stopPlayers();
  show('search');
  search(state.page);
});
$('play').addEventListener('click', play);
$('export').addEventListener('click', exportPackage);
$('hold-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const archiveId = state.archive.archive.archive_id;
  changeHold(HOLD_FORMS.archive, `/api/v1/auditor/archives/${encodeURIComponent(archiveId)}/hold`, (hold) => renderHold(hold));
});
$('session-lookup').addEventListener('submit', (event) => {
  event.preventDefault();
  lookUpSession($('session-id').value.trim());
});
$('unrecorded-form').addEventListener('submit', (event) => {
  event.preventDefault();
  listUnrecorded();
});
$('session-hold-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const { session } = state;
  changeHold(HOLD_FORMS.session, `/api/v1/auditor/sessions/${encodeURIComponent(session.id)}/hold`, (hold) => {
    renderSession({ ...session, hold });
    markHeld(session.id, hold.held);
  });
});
setInterval(updateWatermark, 1000);
start();
