// Transactions (交易), docs/workflow.md: what staff and customer pages share — amounts in
// integer minor units (never floats), the words for states and for each approval check.
import { has, t, translate } from './i18n.js';

export const STATES = ['awaiting_signature', 'signed', 'awaiting_override', 'awaiting_second_approval', 'approved', 'rejected'];
export const SIGNABLE = new Set(['awaiting_signature', 'signed', 'awaiting_override']);
// The server refuses a shorter rejection reason (RejectBody, server/api/bodies.py) in English.
export const REJECT_REASON_MIN = 4;

/** {minor: 1234567, currency: 'CNY'} -> the amount as the reader says it, for t()'s args:
 * "人民币 12,345.67 元", "12,345.67 CNY" (a currency without words: its code), by integer
 * arithmetic only. A customer signs for this line: no currency code among Chinese words. */
function amountInWords(amount) {
  if (!amount || !Number.isSafeInteger(amount.minor)) return '';
  const whole = Math.floor(amount.minor / 100).toLocaleString('en-US');
  const number = `${whole}.${String(amount.minor % 100).padStart(2, '0')}`;
  const key = `tx.amount.${amount.currency}`;
  return has(key) ? { t: key, args: { number } } : `${number} ${amount.currency}`;
}

/**
 * "12345.67" -> 1234567 (minor units), parsed as text so no binary fraction ever rounds it;
 * null when it is not a positive amount with at most two decimals.
 */
export function parseAmount(text) {
  const match = /^\s*(\d{1,13})(?:\.(\d{1,2}))?\s*$/.exec(String(text).replace(/[,，\s]/g, ''));
  if (!match) return null;
  const minor = Number(match[1]) * 100 + Number((match[2] ?? '').padEnd(2, '0'));
  return minor > 0 && Number.isSafeInteger(minor) ? minor : null;
}

/** One line the customer and the teller both read: what is bought or changed, and for how much
 * (set with translate(), so a language switch re-translates it). */
export function showDescription(element, transaction) {
  if (transaction.kind === 'purchase') {
    return translate(element, 'tx.describePurchase', {
      type: { t: `tx.productType.${transaction.product_type}` },
      name: transaction.product_name || transaction.product_code,
      amount: amountInWords(transaction.amount),
    });
  }
  return translate(element, `tx.service.${transaction.service}`);
}

export function showState(element, state) {
  element.dataset.state = state;
  translate(element, `tx.state.${state}`);
}

/** A check's explanation in the page's language (the server's English text as a fallback). A
 * failing recording_signature check's reason is the code approval would be refused with, so its
 * text is that error's. */
export function checkText(check) {
  const key = [`tx.reason.${check.reason}`, `error.${check.reason}`].find((candidate) => has(candidate));
  return key ? t(key) : check.message;
}

/** <ul> of the checks, failing ones first, each marked passed or failed. */
export function renderChecks(list, checks) {
  list.replaceChildren();
  const ordered = [...checks].sort((a, b) => Number(a.passed) - Number(b.passed));
  for (const check of ordered) {
    const item = document.createElement('li');
    item.className = check.passed ? 'check check-passed' : 'check check-failed';
    const name = document.createElement('strong');
    translate(name, `tx.check.${check.check}`);
    const text = document.createElement('span');
    text.textContent = checkText(check);
    item.append(name, ' ', text);
    list.append(item);
  }
  list.hidden = checks.length === 0;
}

/** The webhook delivery's state for the teller ("delivered", "retrying", …) or ''. */
export function deliveryText(delivery) {
  if (!delivery) return '';
  const key = `tx.delivery.${delivery.state}`;
  return t('tx.deliveryLine', { state: has(key) ? { t: key } : delivery.state, attempts: delivery.attempts ?? 0 });
}
