// Identity verification (身份核验), protocol §2.4: the teller starts it (`identity_start`), the
// customer consents to face recognition (`identity_consent_request` -> `identity_consent`), the
// teller runs each step (`identity_step`: card_front, card_back, face, liveness) or decides
// manually (`identity_manual`); the customer may upload a photo of the card instead
// (`identity_upload` + one binary frame). Everyone follows `identity` (the customer's copy has no
// card fields and no attempt counts).
//
// IdentityPanel is the staff view (teller: controls; supervisor: read only);
// wireCustomerIdentity gives the customer the consent question, the prompts and the upload.
import { clearText, t, translate } from './i18n.js';
import { consentQuestion, toast } from './ui.js';

export const STEPS = ['card_front', 'card_back', 'face', 'liveness'];
const STATES = new Set(['idle', 'awaiting_consent', 'in_progress', 'manual_required', 'manual_review', 'passed', 'verified_manually']);
const FIELDS = ['name', 'sex', 'ethnicity', 'birth_date', 'address', 'id_number', 'issuing_authority', 'valid_from', 'valid_until'];
const REQUESTS = new Set(['identity_start', 'identity_step', 'identity_manual', 'identity_upload']);
// A request the server has not answered yet keeps the teller's buttons disabled (a double click
// on "start" sent it twice, and the second was refused in the server's English); an answer that
// never comes (a dropped connection) gives them back after this long.
const REQUEST_TIMEOUT_MS = 8000;
// Photos are re-encoded in the browser to at most this size before upload (the server caps
// bytes and pixels too); a phone's 12-megapixel photo is far more than OCR needs.
const UPLOAD_MAX_SIDE = 1600;
const UPLOAD_MAX_BYTES = 4 * 1024 * 1024 - 1024;

/** The `identity` message with safe defaults. */
export function normalizeIdentity(msg) {
  const steps = {};
  for (const step of STEPS) {
    const s = msg?.steps?.[step] ?? {};
    steps[step] = {
      status: ['pending', 'working', 'passed', 'failed'].includes(s.status) ? s.status : 'pending',
      messages: Array.isArray(s.messages) ? s.messages : [],
      attempts: Number.isFinite(s.attempts) ? s.attempts : null,
    };
  }
  return {
    state: STATES.has(msg?.state) ? msg.state : 'idle',
    steps,
    challenge: msg?.challenge && typeof msg.challenge.challenge === 'string' ? msg.challenge : null,
    fields: msg?.fields ?? {},
    manual: msg?.manual ?? null,
    maxAttempts: Number.isFinite(msg?.max_attempts) ? msg.max_attempts : null,
  };
}

/** A server message with both languages: shown in the page's language, re-translated on switch. */
function showMessage(element, message) {
  if (!message) {
    clearText(element);
    return;
  }
  translate(element, 'identity.serverMessage', { zh: message.message_zh ?? '', en: message.message_en ?? '' });
}

/** Staff panel over #identity-panel. */
export class IdentityPanel {
  #call;
  #canControl;
  #el;
  #identity = normalizeIdentity({});
  #rows = new Map();
  #over = false;
  #pending = null; // timer of the request sent and not answered yet

  constructor({ call, canControl }) {
    const $ = (id) => document.getElementById(id);
    this.#call = call;
    this.#canControl = canControl;
    this.#el = {
      panel: $('identity-panel'),
      state: $('identity-state'),
      hint: $('identity-hint'),
      start: $('identity-start'),
      manual: $('identity-manual'),
      steps: $('identity-steps'),
      challenge: $('identity-challenge'),
      fields: $('identity-fields'),
      dialog: $('identity-manual-dialog'),
      form: $('identity-manual-form'),
      reason: $('identity-manual-reason'),
      error: $('identity-manual-error'),
    };
    this.#el.panel.classList.toggle('is-read-only', !canControl);
    for (const step of STEPS) this.#row(step);
    if (canControl) {
      this.#el.start.addEventListener('click', () => this.#send('identity_start', {}));
      this.#el.steps.addEventListener('click', (event) => {
        const button = event.target.closest('.identity-run');
        if (button) this.#send('identity_step', { step: button.dataset.step });
      });
      this.#el.manual.addEventListener('click', () => this.#openManual());
      this.#el.form.addEventListener('submit', (event) => this.#submitManual(event));
      $('identity-manual-cancel').addEventListener('click', () => this.#el.dialog.close());
    }
    call.on('identity', (identity) => {
      this.#identity = identity;
      this.#clearPending();
      this.#render();
    });
    call.on('error', (msg) => {
      if (!REQUESTS.has(msg.ref)) return;
      this.#clearPending();
      this.#render();
    });
    call.on('connection', () => {
      this.#clearPending();
      this.#render();
    });
    call.on('presence', () => this.#render());
    call.on('ended', () => { this.#over = true; this.#render(); });
    call.on('fatal', () => { this.#over = true; this.#render(); });
    this.#render();
  }

  #row(step) {
    const item = document.createElement('li');
    item.className = 'identity-step';
    item.dataset.step = step;
    const label = translate(document.createElement('span'), `identity.step.${step}`);
    label.className = 'identity-step-label';
    const status = document.createElement('span');
    status.className = 'identity-step-status';
    const message = document.createElement('span');
    message.className = 'identity-step-message';
    item.append(label, status, message);
    let button = null;
    if (this.#canControl) {
      button = document.createElement('button');
      button.type = 'button';
      button.className = 'btn btn-secondary btn-small identity-run';
      button.dataset.step = step;
      translate(button, `identity.run.${step}`);
      item.append(button);
    }
    this.#el.steps.append(item);
    this.#rows.set(step, { item, status, message, button });
  }

  #render() {
    const { state, steps, challenge, fields, manual, maxAttempts } = this.#identity;
    const el = this.#el;
    const connected = !this.#over && this.#call.connected;
    const waiting = this.#pending !== null;
    el.state.dataset.state = state;
    if (state === 'verified_manually') translate(el.state, `identity.state.manual_${manual?.decision === 'pass' ? 'pass' : 'fail'}`);
    else translate(el.state, `identity.state.${state}`);
    translate(el.hint, `identity.hint.${state}`);
    el.hint.hidden = !this.#canControl;

    const customerHere = [...this.#call.participants.values()].some((p) => p.role === 'customer' && p.state === 'connected');
    const working = STEPS.some((step) => steps[step].status === 'working');
    el.start.hidden = !this.#canControl || !['idle', 'manual_required'].includes(state);
    el.start.disabled = !connected || !customerHere || waiting;
    el.manual.hidden = !this.#canControl || ['idle', 'awaiting_consent', 'verified_manually'].includes(state);
    el.manual.disabled = !connected || working || waiting;

    for (const step of STEPS) {
      const row = this.#rows.get(step);
      const s = steps[step];
      row.item.dataset.status = s.status;
      const attempts = s.attempts !== null && maxAttempts !== null ? { used: s.attempts, max: maxAttempts } : null;
      translate(row.status, attempts ? `identity.status.${s.status}Attempts` : `identity.status.${s.status}`, attempts ?? undefined);
      showMessage(row.message, s.messages[0]);
      if (row.button) {
        // Both compare the live face with the card's portrait: the server refuses them before it.
        const needsFront = (step === 'face' || step === 'liveness') && steps.card_front.status !== 'passed';
        row.button.hidden = state !== 'in_progress' || s.status === 'passed';
        row.button.disabled = !connected || working || needsFront || waiting;
      }
    }

    el.challenge.hidden = !challenge;
    if (challenge) {
      translate(el.challenge, 'identity.challengeStaff', {
        n: challenge.index + 1, count: challenge.count, what: { t: `identity.challenge.${challenge.challenge}` },
      });
    }

    el.fields.replaceChildren();
    const merged = { ...(fields.front ?? {}), ...(fields.back ?? {}) };
    for (const name of FIELDS) {
      if (merged[name] === undefined) continue;
      const term = translate(document.createElement('dt'), `identity.field.${name}`);
      const value = document.createElement('dd');
      value.textContent = String(merged[name]);
      value.dataset.field = name;
      el.fields.append(term, value);
    }
    if (fields.back?.valid_long_term) {
      el.fields.append(translate(document.createElement('dt'), 'identity.field.valid_until'), translate(document.createElement('dd'), 'identity.longTerm'));
    }
    el.fields.hidden = el.fields.childElementCount === 0;
  }

  #send(type, fields) {
    // A second click before the first was answered (the button is disabled once rendered) sends
    // nothing.
    if (this.#pending !== null) return;
    if (!this.#call.send(type, fields)) {
      toast(t('error.not_connected_action'), 'error');
      return;
    }
    this.#pending = setTimeout(() => {
      this.#pending = null;
      this.#render();
    }, REQUEST_TIMEOUT_MS);
    this.#render();
  }

  #clearPending() {
    clearTimeout(this.#pending);
    this.#pending = null;
  }

  #openManual() {
    clearText(this.#el.error);
    this.#el.form.reset();
    this.#el.dialog.showModal();
    this.#el.reason.focus();
  }

  #submitManual(event) {
    event.preventDefault();
    const decision = new FormData(this.#el.form).get('decision');
    const reason = this.#el.reason.value.trim();
    if (!['pass', 'fail'].includes(decision) || reason.length < 4) {
      translate(this.#el.error, 'identity.manualInvalid');
      return;
    }
    this.#send('identity_manual', { decision, reason });
    this.#el.dialog.close();
  }
}

/** Re-encodes a photo as a JPEG no larger than UPLOAD_MAX_SIDE (and strips its metadata). */
async function preparePhoto(file) {
  const bitmap = await createImageBitmap(file, { imageOrientation: 'from-image' });
  const scale = Math.min(1, UPLOAD_MAX_SIDE / Math.max(bitmap.width, bitmap.height));
  const canvas = document.createElement('canvas');
  canvas.width = Math.round(bitmap.width * scale);
  canvas.height = Math.round(bitmap.height * scale);
  canvas.getContext('2d').drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  bitmap.close();
  const blob = await new Promise((resolve) => canvas.toBlob(resolve, 'image/jpeg', 0.9));
  if (!blob) throw new Error('encode');
  return blob.arrayBuffer();
}

/**
 * Customer: the face-recognition consent question (<dialog id="identity-consent">), the prompt
 * (#identity-prompt: what to do now, in large text) and the card photo upload (#identity-upload).
 */
export function wireCustomerIdentity(call) {
  const $ = (id) => document.getElementById(id);
  const prompt = $('identity-prompt');
  const promptText = $('identity-prompt-text');
  const promptHint = $('identity-prompt-hint');
  const uploadBox = $('identity-upload-box');
  const upload = $('identity-upload');
  let identity = normalizeIdentity({});
  let side = null;
  const question = consentQuestion('identity-consent', (granted) => call.send('identity_consent', { granted }));

  upload.addEventListener('change', async () => {
    const file = upload.files?.[0];
    upload.value = '';
    if (!file || !side) return;
    translate(promptHint, 'identity.uploading');
    try {
      const data = await preparePhoto(file);
      if (data.byteLength > UPLOAD_MAX_BYTES) throw new Error('too large');
      if (!call.sendCardPhoto(side, data)) translate(promptHint, 'consent.notSent');
    } catch {
      translate(promptHint, 'identity.badPhoto');
    }
  });

  const render = () => {
    const { state, steps, challenge } = identity;
    const working = STEPS.find((step) => steps[step].status === 'working') ?? null;
    side = working === 'card_front' ? 'front' : working === 'card_back' ? 'back' : null;
    uploadBox.hidden = side === null;
    let key = null;
    let args;
    if (working === 'liveness' && challenge) {
      key = 'identity.challengeCustomer';
      args = { n: challenge.index + 1, count: challenge.count, what: { t: `identity.challenge.${challenge.challenge}` } };
    } else if (working) key = `identity.prompt.${working}`;
    else if (state === 'passed') key = 'identity.prompt.passed';
    else if (state === 'verified_manually') key = 'identity.prompt.verified';
    prompt.hidden = key === null;
    prompt.dataset.step = working ?? state;
    if (key) translate(promptText, key, args);
    if (!working) showMessage(promptHint, null);
    // What went wrong with the last attempt, until the next one starts.
    const failed = STEPS.find((step) => steps[step].status === 'failed' && steps[step].messages.length);
    if (!working && failed && state === 'in_progress') {
      prompt.hidden = false;
      translate(promptText, `identity.retry.${failed}`);
      showMessage(promptHint, steps[failed].messages[0]);
    }
  };

  call.on('identity_consent_request', question.open);
  call.on('identity_hint', (message) => showMessage(promptHint, message));
  call.on('identity', (next) => {
    identity = next;
    if (next.state !== 'awaiting_consent') {
      question.close();
      question.state.answered = false;
    } else if (!question.state.asking && !question.state.answered) {
      question.open(); // reconnected while the question was open
    }
    render();
  });
  call.on('error', (msg) => {
    if (REQUESTS.has(msg.ref)) showMessage(promptHint, null);
  });
  const finish = () => {
    question.close();
    prompt.hidden = true;
  };
  call.on('ended', finish);
  call.on('fatal', finish);
}
