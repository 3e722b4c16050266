// Page chrome shared by every page: language and large-text toggles, toasts, confirm dialogs.
import { LANG_SWITCHES, applyI18n, clearText, has, t, toggleLang, translate } from './i18n.js';
import { loadPref, savePref } from './prefs.js';

// Staff can act on the server's own (English) detail of an error the catalog has no message
// for; a customer cannot, and is told in their language what happened (customerError.*) or
// that it did not work.
let customerPage = false;

// The large-text switches: the top bar's and those of full-screen questions.
const LARGE_TEXT_SWITCHES = '#large-text-toggle, [data-chrome="large-text"]';

/** `customer`: the page is read by customers, who never see the server's own error texts. */
export function initChrome({ customer = false } = {}) {
  customerPage = customer;
  // A full-screen question (the customer's consents, the signature) covers the page and makes it
  // inert, top bar included: it gets switches of its own, or its text could not be read in the
  // other language or made larger while it asks.
  for (const dialog of document.querySelectorAll('dialog.consent')) dialog.prepend(dialogSwitches());
  applyI18n();
  for (const toggle of document.querySelectorAll(LANG_SWITCHES)) toggle.addEventListener('click', toggleLang);

  const largeToggles = document.querySelectorAll(LARGE_TEXT_SWITCHES);
  const applyLarge = (on) => {
    document.documentElement.classList.toggle('large-text', on);
    for (const toggle of largeToggles) toggle.setAttribute('aria-pressed', String(on));
  };
  applyLarge(loadPref('largeText') === '1');
  for (const toggle of largeToggles) {
    toggle.addEventListener('click', () => {
      const on = !document.documentElement.classList.contains('large-text');
      applyLarge(on);
      savePref('largeText', on ? '1' : '0');
    });
  }
}

/** The large-text and language switches of a full-screen question. */
function dialogSwitches() {
  const bar = document.createElement('div');
  bar.className = 'dialog-chrome';
  const large = button('', 'btn btn-secondary');
  large.dataset.chrome = 'large-text';
  translate(large, 'ui.largeText');
  const lang = button('', 'btn btn-secondary');
  lang.dataset.chrome = 'lang';
  lang.dataset.i18nAriaLabel = 'ui.switchLangLabel';
  translate(lang, 'ui.switchLang');
  bar.append(large, lang);
  return bar;
}

/** The message key for an ApiError, a signaling error message or any Error; null when only the
 * server's own text says what went wrong (staff pages). */
function errorKey(err) {
  const code = err?.code;
  if (customerPage && has(`customerError.${code}`)) return `customerError.${code}`;
  // A signaling error names the request it refuses (`ref`): `out_of_order` means something
  // different, and needs a different fix, for each.
  if (typeof err?.ref === 'string' && has(`error.${code}.${err.ref}`)) return `error.${code}.${err.ref}`;
  if (has(`error.${code}`)) return `error.${code}`;
  // A proxy's own error page (no JSON): its status line is neither translated nor helpful.
  if (typeof code === 'string' && code.startsWith('http_')) {
    return Number(code.slice(5)) >= 500 ? 'error.internal' : 'error.generic';
  }
  const message = err?.message;
  return !customerPage && message && message !== code ? null : 'error.generic';
}

/** `field`, then the fields holding it: `transaction.details.description`,
 * `transaction.details`, `transaction` (`skills.0`: the list `skills`). */
function* fieldAndParents(field) {
  for (const parts = field.split('.'); parts.length; parts.pop()) yield parts.join('.');
}

/** A refused field (`invalid_request` with `field` and `rule`, docs/protocol.md) in the page's
 * words: the field's name as the form shows it (`field.<field>` in i18n.js) and what is wrong,
 * in words of that field's own (`invalid.<field>.<rule>`) or the rule's (`invalid.<rule>`).
 * [key, args]; a field or rule the page has no words for gets a general sentence, never the
 * server's English. */
function invalidMessage({ field, rule }) {
  const named = field && [...fieldAndParents(field)].find((name) => has(`field.${name}`));
  if (!named || !has(`invalid.${rule}`)) return ['invalid.generic'];
  const own = `invalid.${named}.${rule}`;
  return [has(own) ? own : `invalid.${rule}`, { field: { t: `field.${named}` } }];
}

/** [key, args] of the text for an ApiError, a signaling error message or any Error; null when
 * only the server's own text says what went wrong. */
function errorMessage(err) {
  if (err?.code === 'invalid_request') return invalidMessage(err);
  const key = errorKey(err);
  return key && [key];
}

/** Human-readable text for an ApiError, a signaling error message or any Error. */
export function errorText(err) {
  const message = errorMessage(err);
  return message ? t(...message) : err.message;
}

/** The input a refused field was typed in (`data-field` names the API's field), within `scope`. */
function fieldInput(scope, field) {
  for (const name of fieldAndParents(field)) {
    const input = scope.querySelector(`[data-field="${CSS.escape(name)}"]`);
    if (input) return input;
  }
  return null;
}

/** Mark the input of the field `err` refuses, if `element`'s form has it: red (aria-invalid),
 * described by the error and focused, so that the reader sees where; until it is changed. */
function markInput(element, err) {
  const scope = element.closest('form') ?? element.parentElement ?? document;
  for (const marked of scope.querySelectorAll('[data-field][aria-invalid="true"]')) unmark(marked);
  const input = err?.code === 'invalid_request' && err.field ? fieldInput(scope, err.field) : null;
  if (!input || input.closest('[hidden]')) return;
  input.setAttribute('aria-invalid', 'true');
  if (element.id) input.setAttribute('aria-errormessage', element.id);
  const changed = () => unmark(input);
  input.addEventListener('input', changed, { once: true });
  input.addEventListener('change', changed, { once: true });
  input.focus();
}

function unmark(input) {
  input.removeAttribute('aria-invalid');
  input.removeAttribute('aria-errormessage');
}

/** Show an error in `element`: translated (and following a language switch) when there is a
 * message for it, otherwise the server's own text, and never an earlier message's key. The same
 * error again (a poll failing every few seconds) leaves the alert as it is, not read out anew.
 * A refused field's input in `element`'s form is marked and focused. */
export function showErrorText(element, err) {
  const message = errorMessage(err);
  if (message) translate(element, ...message);
  else if (element.dataset.i18n || element.textContent !== err.message) clearText(element).textContent = err.message;
  markInput(element, err);
}

function toastRegion() {
  let region = document.getElementById('toasts');
  if (!region) {
    region = document.createElement('div');
    region.id = 'toasts';
    region.className = 'toasts';
    region.setAttribute('role', 'status');
    region.setAttribute('aria-live', 'polite');
    document.body.append(region);
  }
  return region;
}

// Errors stay up longer: many customers are elderly and read slowly, and an error needs acting on.
const ERROR_TOAST_MS = 10000;

/** kind: 'info' | 'success' | 'error'. Text is set with textContent, so any string is safe. */
export function toast(text, kind = 'info', timeoutMs = kind === 'error' ? ERROR_TOAST_MS : 5000) {
  const item = document.createElement('div');
  item.className = `toast toast-${kind}`;
  item.textContent = text;
  toastRegion().append(item);
  setTimeout(() => item.remove(), timeoutMs);
}

/** Modal yes/no question; resolves true when confirmed. Arguments are i18n keys; `signal` (an
 * AbortSignal) withdraws the question, answered "no", once it no longer applies. */
export function confirmDialog({ title, body, confirm, cancel = 'ui.cancel', danger = false, signal = null }) {
  if (signal?.aborted) return Promise.resolve(false);
  const dialog = document.createElement('dialog');
  dialog.className = 'dialog';
  dialog.setAttribute('aria-labelledby', 'confirm-title');
  const heading = document.createElement('h2');
  heading.id = 'confirm-title';
  heading.textContent = t(title);
  const text = document.createElement('p');
  text.textContent = t(body);
  const actions = document.createElement('div');
  actions.className = 'dialog-actions';
  const no = button(t(cancel), 'btn btn-secondary btn-large');
  const yes = button(t(confirm), `btn btn-large ${danger ? 'btn-danger' : 'btn-primary'}`);
  yes.id = 'confirm-yes';
  no.id = 'confirm-no';
  actions.append(no, yes);
  dialog.append(heading, text, actions);
  document.body.append(dialog);

  return new Promise((resolve) => {
    const withdraw = () => finish(false);
    const finish = (result) => {
      signal?.removeEventListener('abort', withdraw);
      dialog.close();
      dialog.remove();
      resolve(result);
    };
    signal?.addEventListener('abort', withdraw);
    no.addEventListener('click', () => finish(false));
    yes.addEventListener('click', () => finish(true));
    dialog.addEventListener('cancel', (event) => {
      event.preventDefault();
      finish(false);
    });
    dialog.showModal();
    // Safer default for a destructive question: the first key press does not end a call.
    no.focus();
  });
}

function button(label, className) {
  const el = document.createElement('button');
  el.type = 'button';
  el.className = className;
  el.textContent = label;
  return el;
}

/** A translated button that stays disabled while its (async) action runs: no double submits. */
export function actionButton(key, className, onClick) {
  const el = document.createElement('button');
  el.type = 'button';
  el.className = className;
  translate(el, key);
  el.addEventListener('click', async () => {
    el.disabled = true;
    try {
      await onClick();
    } finally {
      el.disabled = false;
    }
  });
  return el;
}

export function formatTime(iso) {
  if (!iso) return '';
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? '' : date.toLocaleTimeString(document.documentElement.lang,
    { hour: '2-digit', minute: '2-digit' });
}

/**
 * A full-screen question that needs a yes or no (the customer's consents): <dialog id=PREFIX>
 * with #PREFIX-title, #PREFIX-yes, #PREFIX-no, #PREFIX-error. Neither answer is pre-selected (a
 * legal choice); Esc cannot dismiss it, and if the browser closes it anyway it is asked again.
 * `send(granted)` returns false when the answer could not be sent; the question then stays.
 * `state.answered` stays true until `close()`: the page is waiting for the server to move on.
 */
export function consentQuestion(prefix, send) {
  const $ = (suffix) => document.getElementById(suffix ? `${prefix}-${suffix}` : prefix);
  const dialog = $('');
  const heading = $('title');
  const yes = $('yes');
  const no = $('no');
  const error = $('error');
  const state = { asking: false, answered: false };
  const open = () => {
    state.asking = true;
    state.answered = false;
    clearText(error);
    yes.disabled = false;
    no.disabled = false;
    if (!dialog.open) dialog.showModal();
    heading.focus();
  };
  const close = () => {
    state.asking = false;
    if (dialog.open) dialog.close();
  };
  const answer = (granted) => {
    if (!state.asking) return;
    if (!send(granted)) {
      translate(error, 'consent.notSent');
      return;
    }
    close();
    state.answered = true;
  };
  yes.addEventListener('click', () => answer(true));
  no.addEventListener('click', () => answer(false));
  dialog.addEventListener('cancel', (event) => event.preventDefault());
  dialog.addEventListener('close', () => {
    if (state.asking) open();
  });
  return { open, close, state };
}
