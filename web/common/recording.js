// Dual recording (双录), protocol §2.2/§2.3: the teller starts it (`recording_start`), the customer
// consents (`consent_request` -> `consent`), the teller marks the key moments of the sales script
// (`mark` -> `marked`) and stops it (`recording_stop`); everyone follows `recording`.
//
// While recording, the server's live checks send `live_warning` (who is out of the picture, a
// moment cut short): the panel lists them in #live-warnings until they are resolved.
//
// RecordingPanel is the staff view (teller: controls; expert, supervisor: read only);
// wireCustomerRecording gives the customer the consent step and the "recording" indicator.
// All text goes through i18n.js and textContent.
import { clearText, has, t, translate } from './i18n.js';
import { confirmDialog, consentQuestion, toast } from './ui.js';

/** The standard sales script, in order; labels are the i18n keys `moment.<name>`. */
export const MOMENTS = [
  'consent',
  'teller_identity',
  'customer_identity',
  'product_introduction',
  'risk_disclosure',
  'risk_tolerance',
  'voluntary_confirmation',
  'signature',
  'closing',
];

const STATES = new Set(['idle', 'awaiting_consent', 'recording', 'declined', 'sealing', 'sealed', 'interrupted']);
// A new recording may be asked for once none is running (interrupted included: it ended abnormally).
const STARTABLE = new Set(['idle', 'declined', 'sealed', 'interrupted']);
const REQUESTS = new Set(['recording_start', 'recording_stop', 'mark']);
const MOMENT_NAME = /^[a-z0-9_]{1,64}$/;
const $id = (id) => document.getElementById(id);
// A request the server neither confirmed nor refused re-enables its button after this long.
const REQUEST_TIMEOUT_MS = 8000;

/** The `recording` message with safe defaults: {state, archiveId, startedAt (ms or null), store}. */
export function normalizeRecording(msg) {
  const started = msg?.started_at ? Date.parse(msg.started_at) : NaN;
  const pending = Number(msg?.store?.pending_segments);
  const lastError = msg?.store?.last_error;
  return {
    state: STATES.has(msg?.state) ? msg.state : 'idle',
    archiveId: msg?.archive_id ? String(msg.archive_id) : null,
    startedAt: Number.isNaN(started) ? null : started,
    store: {
      pendingSegments: Number.isFinite(pending) && pending > 0 ? Math.floor(pending) : 0,
      lastError: lastError ? String(lastError) : null,
    },
  };
}

const LIVE_CODES = new Set(['no_video', 'customer_not_in_frame', 'several_people', 'teller_not_in_frame', 'moment_too_short', 'disclosure_not_heard']);

/** The `live_warning` message's warnings, known codes only: [{code, participantId, sinceMs, moment, durationMs, minMs, missing}]. */
export function normalizeLiveWarnings(msg) {
  const list = Array.isArray(msg?.warnings) ? msg.warnings : [];
  const ms = (value) => (Number.isFinite(Number(value)) ? Math.max(0, Number(value)) : null);
  return list
    .filter((w) => LIVE_CODES.has(w?.code))
    .map((w) => ({
      code: w.code,
      participantId: typeof w.participant_id === 'string' ? w.participant_id : null,
      sinceMs: ms(w.since_ms) ?? 0,
      moment: typeof w.moment === 'string' && MOMENT_NAME.test(w.moment) ? w.moment : null,
      durationMs: ms(w.duration_ms),
      minMs: ms(w.min_ms),
      missing: Array.isArray(w.missing) ? w.missing.filter((p) => typeof p === 'string') : [],
    }));
}

/** Milliseconds as mm:ss (h:mm:ss from one hour). */
export function formatMediaTime(ms) {
  const total = Math.max(0, Math.floor((Number(ms) || 0) / 1000));
  const pad = (n) => String(n).padStart(2, '0');
  const hours = Math.floor(total / 3600);
  const rest = `${pad(Math.floor((total % 3600) / 60))}:${pad(total % 60)}`;
  return hours ? `${hours}:${rest}` : rest;
}

/** Archive ids are long; the first characters are enough to tell them apart on screen. */
export function shortArchiveId(id) {
  const text = String(id ?? '');
  return text.length > 12 ? `${text.slice(0, 8)}…` : text;
}

/** Pending-upload / store-error line, or null when everything has reached the archive store. */
function storeStatus({ pendingSegments, lastError }) {
  if (pendingSegments > 0 && lastError) return ['recording.store.pendingError', { count: pendingSegments, error: lastError }];
  if (pendingSegments > 0) return ['recording.store.pending', { count: pendingSegments }];
  if (lastError) return ['recording.store.error', { error: lastError }];
  return null;
}

/**
 * Staff panel over #recording-panel: state (#recording-state[data-state]), elapsed clock, hint,
 * archive-store status (#store-status), #recording-start / #recording-stop (teller only) and the
 * key-moment list (#moments > .moment[data-moment], with .moment-toggle buttons for the teller),
 * and the live warnings while recording (#live-warnings > .live-warning[data-code]).
 */
export class RecordingPanel {
  #call;
  #canControl;
  #el;
  #recording = normalizeRecording({});
  #recordingKey = null;
  #rows = new Map();
  #ranges = new Map(); // moment -> [{start, end}] in media ms (null where not marked)
  #seenMarks = new Set();
  #openOrder = []; // moments with an open range, the most recently started last
  #pending = null; // {type, moment, timer}
  #script = null; // {id, version, title, placeholders: [{name, label, value}], moments: [...]}
  #titles = new Map(); // moment id -> the script's title for it
  #clockTimer = null;
  #over = false;
  #warnings = []; // normalized live warnings, as the server last sent them
  #warningItems = new Map(); // warning key -> its <li> in #live-warnings

  constructor({ call, canControl, script = null }) {
    const $ = (id) => document.getElementById(id);
    this.#call = call;
    this.#canControl = canControl;
    this.#el = {
      panel: $('recording-panel'),
      title: $('recording-title'),
      state: $('recording-state'),
      stateText: $('recording-state-text'),
      clock: $('recording-clock'),
      hint: $('recording-hint'),
      store: $('store-status'),
      start: $('recording-start'),
      stop: $('recording-stop'),
      moments: $('moments'),
      warnings: $('live-warnings'),
    };
    this.#el.panel.classList.toggle('is-read-only', !canControl);
    Object.assign(this.#el, {
      values: $('script-values'),
      fields: $('script-fields'),
      current: $('script-current'),
      currentTitle: $('script-current-title'),
      currentSay: $('script-current-say'),
      currentAnswer: $('script-current-answer'),
    });
    this.#script = script;
    for (const moment of script?.moments ?? []) this.#titles.set(moment.id, moment.title);
    for (const moment of script ? script.moments.map((m) => m.id) : MOMENTS) this.#row(moment);
    if (canControl && script) this.#buildValueFields();

    if (canControl) {
      this.#el.start.addEventListener('click', () => this.#startRecording());
      this.#el.stop.addEventListener('click', () => this.#stopRecording());
      this.#el.moments.addEventListener('click', (event) => {
        const button = event.target.closest('.moment-toggle');
        if (button) this.#toggleMoment(button.dataset.moment);
      });
    }

    call.on('recording', (recording) => this.#setRecording(recording));
    call.on('analysis', (analysis) => this.#setAnalysis(analysis));
    call.on('marked', (mark) => this.#addMark(mark));
    call.on('live_warning', (msg) => {
      this.#warnings = normalizeLiveWarnings(msg);
      this.#renderWarnings();
    });
    call.on('joined', () => this.#render());
    call.on('presence', () => this.#render());
    call.on('connection', () => this.#render());
    call.on('error', (msg) => {
      if (REQUESTS.has(msg.ref)) this.#clearPending();
    });
    call.on('ended', () => this.#stop());
    call.on('fatal', () => this.#stop());
    this.#render();
  }

  #stop() {
    this.#over = true;
    this.#clearPending();
    this.#render();
  }

  #setRecording(recording) {
    const previous = this.#recording.state;
    // A new consent request, or a recording we have not seen (by its start time), starts a new list.
    const fresh = (recording.state === 'awaiting_consent' && previous !== 'awaiting_consent')
      || (recording.startedAt !== null && this.#recordingKey !== null && recording.startedAt !== this.#recordingKey);
    if (fresh) this.#resetMarks();
    if (recording.state !== 'recording') this.#warnings = [];
    if (recording.startedAt !== null) this.#recordingKey = recording.startedAt;
    // The server marks the consent moment itself when the recording starts (protocol §2.2) and
    // does not necessarily report it: show it begun at 00:00 until a `marked` says otherwise.
    if (previous === 'awaiting_consent' && recording.state === 'recording' && !this.#ranges.has('consent')) {
      this.#ranges.set('consent', [{ start: 0, end: null, assumed: true }]);
      this.#openOrder.push('consent');
    }
    this.#recording = recording;
    if (this.#pending && this.#pending.type !== 'mark' && recording.state !== previous) this.#clearPending();
    this.#render();
  }

  #resetMarks() {
    this.#ranges.clear();
    this.#seenMarks.clear();
    this.#openOrder = [];
    this.#recordingKey = null;
  }

  #addMark({ moment, phase, media_ms: mediaMs }) {
    if (!MOMENT_NAME.test(moment)) return;
    // After a rejoin the server may report marks again.
    const key = `${moment}:${phase}:${mediaMs}`;
    if (this.#seenMarks.has(key)) return;
    this.#seenMarks.add(key);
    this.#row(moment);
    const ranges = this.#ranges.get(moment) ?? [];
    this.#ranges.set(moment, ranges);
    if (phase === 'start' && ranges[0]?.assumed) {
      // The server's own consent mark: it replaces the assumed one.
      ranges[0].start = mediaMs;
      delete ranges[0].assumed;
      if (this.#pending?.type === 'mark' && this.#pending.moment === moment) this.#clearPending();
      this.#render();
      return;
    }
    const open = ranges.at(-1);
    this.#openOrder = this.#openOrder.filter((name) => name !== moment);
    if (phase === 'start') {
      if (open && open.end === null && open.start !== null) open.end = mediaMs; // started again: close the last
      ranges.push({ start: mediaMs, end: null });
      this.#openOrder.push(moment);
    } else if (open && open.end === null && open.start !== null) {
      open.end = mediaMs;
    } else {
      ranges.push({ start: null, end: mediaMs });
    }
    if (this.#pending?.type === 'mark' && this.#pending.moment === moment) this.#clearPending();
    this.#render();
  }

  #isOpen(moment) {
    return this.#openOrder.includes(moment);
  }

  /** One list row per moment: the standard ones in script order, any other the server marks appended. */
  #row(moment) {
    if (this.#rows.has(moment)) return this.#rows.get(moment);
    const item = document.createElement('li');
    item.className = 'moment';
    item.dataset.moment = moment;
    const label = document.createElement('span');
    label.className = 'moment-label';
    if (this.#titles.has(moment)) label.textContent = this.#titles.get(moment);
    else if (MOMENTS.includes(moment)) translate(label, `moment.${moment}`);
    else label.textContent = moment;
    const times = document.createElement('span');
    times.className = 'moment-times';
    item.append(label, times);
    let button = null;
    let phaseLabel = null;
    if (this.#canControl) {
      button = document.createElement('button');
      button.type = 'button';
      button.className = 'btn btn-secondary btn-small moment-toggle';
      button.dataset.moment = moment;
      phaseLabel = document.createElement('span');
      // The moment's name in the button's accessible name: "开始 风险揭示".
      const context = label.cloneNode(true);
      context.className = 'visually-hidden';
      button.append(phaseLabel, ' ', context);
      item.append(button);
    }
    this.#el.moments.append(item);
    const row = { item, times, button, phaseLabel };
    this.#rows.set(moment, row);
    return row;
  }

  #render() {
    const { state, archiveId, startedAt, store } = this.#recording;
    const el = this.#el;
    const connected = !this.#over && this.#call.connected;
    const focused = el.panel.contains(document.activeElement) ? document.activeElement : null;
    const recording = state === 'recording';

    el.state.dataset.state = state;
    if (state === 'sealed' && archiveId) translate(el.stateText, 'recording.state.sealed', { id: shortArchiveId(archiveId) });
    else if (state === 'sealed') translate(el.stateText, 'recording.state.sealedNoId');
    else translate(el.stateText, `recording.state.${state}`);
    // The whole archive id stays readable on hover and for copying from the tooltip.
    el.stateText.title = state === 'sealed' && archiveId ? archiveId : '';

    el.clock.hidden = !recording || startedAt === null;
    this.#tickClock();
    clearInterval(this.#clockTimer);
    this.#clockTimer = recording && startedAt !== null && !this.#over ? setInterval(() => this.#tickClock(), 1000) : null;

    const customerHere = [...this.#call.participants.values()]
      .some((p) => p.role === 'customer' && p.state === 'connected');
    const hint = this.#canControl && !this.#over ? this.#hintKey(state, customerHere) : null;
    el.hint.hidden = !hint;
    if (hint) translate(el.hint, hint);

    const line = storeStatus(store);
    el.store.hidden = !line;
    el.store.dataset.kind = store.lastError ? 'error' : 'info';
    if (line) translate(el.store, ...line);
    else clearText(el.store);

    // A request in flight marks its button aria-disabled rather than disabled, so focus stays put.
    const busy = this.#busy();
    el.start.hidden = !this.#canControl || !STARTABLE.has(state);
    el.start.disabled = !connected || !customerHere;
    el.start.setAttribute('aria-disabled', String(busy));
    el.stop.hidden = !this.#canControl || !recording;
    el.stop.disabled = !connected;
    el.stop.setAttribute('aria-disabled', String(busy));

    // Outside a recording nothing is "in progress", whatever was left open when it stopped.
    const current = recording ? this.#openOrder.at(-1) ?? null : null;
    for (const [moment, row] of this.#rows) {
      const open = recording && this.#isOpen(moment);
      row.item.classList.toggle('is-open', open);
      row.item.classList.toggle('is-current', moment === current);
      if (moment === current) row.item.setAttribute('aria-current', 'step');
      else row.item.removeAttribute('aria-current');
      row.item.classList.toggle('is-done', !open && (this.#ranges.get(moment)?.length ?? 0) > 0);
      row.times.textContent = (this.#ranges.get(moment) ?? [])
        .map(({ start, end }) => `${start === null ? '?' : formatMediaTime(start)}–${end === null ? '' : formatMediaTime(end)}`)
        .join(', ');
      if (row.button) {
        translate(row.phaseLabel, open ? 'moment.end' : 'moment.start');
        row.button.classList.toggle('is-active', open);
        row.button.setAttribute('aria-pressed', String(open));
        row.button.disabled = !recording || !connected;
        row.button.setAttribute('aria-disabled', String(this.#markPending(moment)));
      }
    }

    el.values.hidden = !this.#canControl || !this.#script || !STARTABLE.has(state) || this.#over;
    this.#renderCurrent(current);
    this.#renderWarnings();

    // The control that had the focus went away (e.g. "start" once the customer is asked): keep
    // keyboard and screen-reader users in the panel instead of dropping them at the page top.
    if (focused && (focused.hidden || focused.disabled)) {
      el.title.tabIndex = -1;
      el.title.focus({ preventScroll: true });
    }
  }

  /** The live warnings (only while recording): one .live-warning per warning, in plain words. */
  #renderWarnings() {
    const shown = this.#recording.state === 'recording' && !this.#over ? this.#warnings : [];
    // Items of warnings that hold stay as they are: the list is a live region, and only a new
    // warning is announced (and flashes).
    // The phrases still missing are part of it: one heard since is shown at once.
    const keyOf = (w) => JSON.stringify([w.code, w.participantId, w.moment, w.sinceMs, w.missing]);
    const wanted = new Map(shown.map((warning) => [keyOf(warning), warning]));
    for (const [key, item] of this.#warningItems) {
      if (!wanted.has(key)) {
        item.remove();
        this.#warningItems.delete(key);
      }
    }
    for (const [key, warning] of wanted) {
      if (this.#warningItems.has(key)) continue;
      const item = document.createElement('li');
      item.className = 'live-warning';
      item.dataset.code = warning.code;
      if (warning.participantId) item.dataset.participantId = warning.participantId;
      if (warning.moment) item.dataset.moment = warning.moment;
      const text = document.createElement('span');
      text.className = 'live-warning-text';
      translate(text, ...this.#warningText(warning));
      const since = document.createElement('span');
      since.className = 'live-warning-since';
      translate(since, 'live.since', { time: formatMediaTime(warning.sinceMs) });
      item.append(text, since);
      this.#el.warnings.append(item);
      this.#warningItems.set(key, item);
    }
    this.#el.warnings.hidden = this.#warningItems.size === 0;
  }

  /** [i18n key, args] saying what a warning means, for whoever reads it (the teller or others). */
  #warningText({ code, participantId, moment, durationMs, minMs, missing }) {
    const self = participantId !== null && participantId === this.#call.selfId;
    const role = participantId === null ? null : this.#call.participants.get(participantId)?.role;
    switch (code) {
      case 'customer_not_in_frame':
        return [participantId === null ? 'live.customer_not_in_frame.nobody' : 'live.customer_not_in_frame'];
      case 'teller_not_in_frame':
        if (participantId === null) return ['live.teller_not_in_frame.nobody'];
        return [self ? 'live.teller_not_in_frame.self' : 'live.teller_not_in_frame.other'];
      case 'no_video':
        if (self) return ['live.no_video.self'];
        return [role === 'customer' ? 'live.no_video.customer' : 'live.no_video.other'];
      case 'moment_too_short': {
        const seconds = (ms) => String(Math.round((ms ?? 0) / 100) / 10);
        return ['live.moment_too_short', {
          moment: this.#momentTitle(moment),
          seconds: seconds(durationMs),
          min: seconds(minMs),
        }];
      }
      case 'disclosure_not_heard':
        return ['live.disclosure_not_heard', {
          moment: this.#momentTitle(moment),
          phrases: missing.map((phrase) => `“${phrase}”`).join(' '),
        }];
      default:
        return ['live.several_people'];
    }
  }

  /** A moment's name for a message: the script's title, else the standard label, else its id. */
  #momentTitle(moment) {
    if (moment && this.#titles.has(moment)) return this.#titles.get(moment);
    if (moment && MOMENTS.includes(moment)) return { t: `moment.${moment}` };
    return moment ?? '';
  }

  /** The after-call compliance analysis of the last sealed recording: progress, then result. */
  #setAnalysis({ archive_id: archiveId, stage, progress, decision }) {
    const status = $id('analysis-status');
    const text = $id('analysis-text');
    const link = $id('analysis-report');
    status.hidden = false;
    if (stage === 'done') {
      const verdict = ['pass', 'fail', 'needs_review'].includes(decision) ? decision : 'needs_review';
      status.dataset.kind = verdict === 'pass' ? 'success' : 'error';
      translate(text, `analysis.done.${verdict}`);
      link.href = `/api/v1/archives/${encodeURIComponent(archiveId)}/report.html`;
      link.hidden = false;
    } else if (stage === 'failed') {
      status.dataset.kind = 'error';
      translate(text, 'analysis.failed');
      link.hidden = true;
    } else {
      status.dataset.kind = 'info';
      const percent = Math.max(0, Math.min(100, Math.round((Number(progress) || 0) / 10)));
      // Stage ids as the analysis names them (e.g. "transcribing customer"); a newer one is
      // still "working", never an untranslated id.
      const key = `analysis.stage.${String(stage ?? '').replace(/\s+/g, '_')}`;
      translate(text, 'analysis.running', { stage: { t: has(key) ? key : 'analysis.stage.other' }, percent });
      link.hidden = true;
    }
  }

  /** One input per placeholder of the script, prefilled with what the server knows. */
  #buildValueFields() {
    for (const { name, label, value } of this.#script.placeholders) {
      const field = document.createElement('div');
      field.className = 'field';
      const id = `script-value-${name}`;
      const caption = document.createElement('label');
      caption.htmlFor = id;
      caption.textContent = label;
      const input = document.createElement('input');
      input.id = id;
      input.name = name;
      input.maxLength = 200;
      input.value = value ?? '';
      input.addEventListener('input', () => this.#render());
      field.append(caption, input);
      this.#el.fields.append(field);
    }
  }

  #values() {
    const values = {};
    for (const input of this.#el.fields.querySelectorAll('input')) {
      if (input.value.trim()) values[input.name] = input.value.trim();
    }
    return values;
  }

  /** Fills a script template: known values in place, missing ones as 【label】 to read out. */
  #fill(template) {
    const values = this.#values();
    const labels = new Map((this.#script?.placeholders ?? []).map((p) => [p.name, p.label]));
    return template.replace(/\{(\w+)\}/g, (_, name) => values[name] ?? `【${labels.get(name) ?? name}】`);
  }

  /** What to read in the moment under way (teller only), from the script. */
  #renderCurrent(current) {
    const moment = this.#script?.moments.find((m) => m.id === current);
    const el = this.#el;
    el.current.hidden = !this.#canControl || !moment;
    if (!moment) return;
    el.currentTitle.textContent = moment.title;
    const teller = moment.lines.find((line) => line.speaker === 'teller');
    const customer = moment.lines.find((line) => line.speaker === 'customer');
    if (teller) translate(el.currentSay, 'script.read', { text: this.#fill(teller.say[0]) });
    else clearText(el.currentSay);
    if (customer) translate(el.currentAnswer, 'script.answer', { answers: customer.say.join(' / ') });
    else clearText(el.currentAnswer);
  }

  /** A start or stop request is waiting for the server's answer. */
  #busy() {
    return this.#pending !== null && this.#pending.type !== 'mark';
  }

  #markPending(moment) {
    return this.#pending?.type === 'mark' && this.#pending.moment === moment;
  }

  #hintKey(state, customerHere) {
    if (STARTABLE.has(state) && !customerHere) return 'recording.hint.needCustomer';
    return `recording.hint.${state}`;
  }

  #tickClock() {
    const { state, startedAt } = this.#recording;
    if (state !== 'recording' || startedAt === null) return;
    const elapsed = Math.max(0, Date.now() - startedAt);
    const text = formatMediaTime(elapsed);
    if (this.#el.clock.textContent !== text) this.#el.clock.textContent = text;
    this.#el.clock.dateTime = `PT${Math.floor(elapsed / 1000)}S`;
  }

  #setPending(type, moment = null) {
    this.#clearPending();
    const timer = setTimeout(() => {
      this.#pending = null;
      this.#render();
    }, REQUEST_TIMEOUT_MS);
    this.#pending = { type, moment, timer };
  }

  #clearPending() {
    if (this.#pending) clearTimeout(this.#pending.timer);
    this.#pending = null;
  }

  #send(type, fields, moment) {
    if (!this.#call.send(type, fields)) {
      toast(t('error.not_connected_action'), 'error');
      return;
    }
    this.#setPending(type, moment);
    this.#render();
  }

  #startRecording() {
    if (this.#busy() || !STARTABLE.has(this.#recording.state)) return;
    this.#send('recording_start', this.#script ? { script: this.#script.id, values: this.#values() } : {});
  }

  async #stopRecording() {
    const confirmed = await confirmDialog({
      title: 'recording.stopConfirmTitle', body: 'recording.stopConfirmBody', confirm: 'recording.stop', danger: true,
    });
    if (!confirmed || this.#busy() || this.#recording.state !== 'recording') return;
    this.#send('recording_stop', {});
  }

  #toggleMoment(moment) {
    if (this.#recording.state !== 'recording' || !MOMENT_NAME.test(moment ?? '') || this.#markPending(moment)) return;
    this.#send('mark', { moment, phase: this.#isOpen(moment) ? 'end' : 'start' }, moment);
  }
}

/**
 * Customer: the consent step (<dialog id="consent">, full screen, shown on `consent_request`) and
 * the indicator (#recording-indicator) shown while recording.
 */
export function wireCustomerRecording(call) {
  const indicator = document.getElementById('recording-indicator');
  const question = consentQuestion('consent', (granted) => {
    if (!call.send('consent', { granted })) return false;
    if (!granted) toast(t('consent.declinedToast'), 'info', 8000);
    return true;
  });
  let afterJoin = false;

  call.on('consent_request', question.open);
  call.on('joined', () => { afterJoin = true; });
  call.on('recording', ({ state }) => {
    indicator.hidden = state !== 'recording';
    if (state !== 'awaiting_consent') {
      question.close();
      question.state.answered = false;
    } else if (afterJoin && !question.state.answered && !question.state.asking) {
      // Reconnected while the question was open: ask again rather than leave the teller waiting.
      question.open();
    }
    afterJoin = false;
  });
  const finish = () => {
    indicator.hidden = true;
    question.close();
  };
  call.on('ended', finish);
  call.on('fatal', finish);
}
