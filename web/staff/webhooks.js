// The supervisor's view of approved transactions on their way to the core bank: each delivery's
// state, and "send again" for a failed one (docs/webhooks.md).
import { get, post } from '/static/common/api.js';
import { t, translate } from '/static/common/i18n.js';
import { confirmDialog, errorText, formatTime, toast } from '/static/common/ui.js';
import { supervisorPanel } from '/static/staff/poller.js';

const $ = (id) => document.getElementById(id);
const REFRESH_MS = 10000;
// The badge colours of the session states, by meaning: done, waiting, needs someone, inactive.
const BADGES = {
  delivered: 'state-active',
  pending: 'state-waiting',
  failed: 'state-interrupted',
  disabled: 'state-ended',
};

const panel = supervisorPanel({
  panelId: 'webhook-panel',
  rowsId: 'webhook-rows',
  load,
  errorId: 'webhook-error',
  everyMs: REFRESH_MS,
});
const { refresh } = panel;
export const { show, hide } = panel;

async function load() {
  const { enabled, deliveries } = await get('/api/v1/webhooks/deliveries?limit=50');
  $('webhook-disabled').hidden = enabled;
  // A supervisor about to press "send again" keeps the button under their hands.
  if (!$('webhook-rows').contains(document.activeElement)) {
    $('webhook-rows').replaceChildren(...deliveries.map(deliveryRow));
  }
  $('webhook-empty').hidden = deliveries.length > 0;
}

function cell(text) {
  const td = document.createElement('td');
  td.textContent = text;
  return td;
}

function deliveryRow(delivery) {
  const row = document.createElement('tr');
  row.dataset.transactionId = delivery.transaction_id;
  row.dataset.state = delivery.state;
  const badge = document.createElement('span');
  badge.className = `badge ${BADGES[delivery.state] ?? 'state-ended'}`;
  translate(badge, `webhook.state.${delivery.state}`);
  const state = document.createElement('td');
  state.append(badge);
  const when = delivery.delivered_at ?? delivery.next_attempt_at ?? delivery.updated_at;
  const action = document.createElement('td');
  if (delivery.state === 'failed') {
    const button = document.createElement('button');
    button.type = 'button';
    button.className = 'btn btn-primary btn-small';
    translate(button, 'webhook.retry');
    button.addEventListener('click', () => retry(delivery, button));
    action.append(button);
  }
  row.append(
    cell(delivery.transaction_id),
    state,
    cell(String(delivery.attempts)),
    cell(formatTime(when)),
    cell(delivery.last_error ?? ''),
    action,
  );
  return row;
}

async function retry(delivery, button) {
  const confirmed = await confirmDialog({
    title: 'webhook.retryTitle',
    body: 'webhook.retryBody',
    confirm: 'webhook.retry',
  });
  if (!confirmed) return;
  button.disabled = true;
  try {
    await post(`/api/v1/webhooks/deliveries/${encodeURIComponent(delivery.delivery_id)}/retry`);
    toast(t('webhook.retried'), 'success');
  } catch (err) {
    toast(errorText(err), 'error');
  } finally {
    button.blur();
    refresh();
  }
}
