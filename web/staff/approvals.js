// The supervisor's queue of transactions (docs/workflow.md): those waiting for a second approval
// (four eyes) and those whose checks failed and wait for an override with a written reason, or a
// rejection. The server decides; the page shows its checks and answers.
import { get, post } from '/static/common/api.js';
import { clearText, t, translate } from '/static/common/i18n.js';
import { actionButton as button, formatTime, toast, showErrorText } from '/static/common/ui.js';
import { REJECT_REASON_MIN, renderChecks, showDescription, showState } from '/static/common/transactions.js';
import { supervisorPanel } from '/static/staff/poller.js';

const $ = (id) => document.getElementById(id);
const REFRESH_MS = 10000;
// Transactions with a decision on its way: their item keeps every button disabled (approve and
// reject are separate requests; one each is what the supervisor meant) and no refresh draws it
// anew with its buttons enabled meanwhile.
const deciding = new Set();

const panel = supervisorPanel({
  panelId: 'approvals-panel',
  rowsId: 'approvals-list',
  load: async () => {
    const { transactions } = await get('/api/v1/transactions');
    render(transactions);
  },
  errorId: 'approvals-error',
  everyMs: REFRESH_MS,
  // A supervisor typing a reason keeps what they typed: no refresh while a reason has text.
  skip: () => deciding.size > 0
    || [...document.querySelectorAll('.approval-reason')].some((el) => el.value.trim()),
});
const { refresh } = panel;
export const { show, hide } = panel;

function render(transactions) {
  const list = $('approvals-list');
  list.replaceChildren(...transactions.map(item));
  $('approvals-empty').hidden = transactions.length > 0;
}

function item(view) {
  const li = document.createElement('li');
  li.className = 'approval-item';
  li.dataset.id = view.id;
  const state = document.createElement('p');
  state.className = 'tx-state';
  showState(state, view.state);
  const summary = document.createElement('p');
  summary.className = 'tx-summary';
  showDescription(summary, view.transaction);
  const meta = document.createElement('p');
  meta.className = 'tx-meta';
  // The account's last digits (the server sends no more) tell it is the customer's.
  const account = t('txSign.account', { account: view.transaction.account });
  meta.textContent = `${t('tx.session', { id: view.session_id })} · ${account} · ${view.id} · ${formatTime(view.created_at)}`;
  const checks = document.createElement('ul');
  checks.className = 'tx-checks';
  renderChecks(checks, view.checks);
  const image = document.createElement('img');
  image.className = 'tx-signature';
  image.alt = t('tx.signaturePreview');
  image.src = `/api/v1/transactions/${encodeURIComponent(view.id)}/signature.png`;
  const label = document.createElement('label');
  label.htmlFor = `reason-${view.id}`;
  translate(label, view.state === 'awaiting_override' ? 'tx.overrideReason' : 'tx.reason');
  const reason = document.createElement('textarea');
  reason.id = `reason-${view.id}`;
  reason.className = 'approval-reason';
  reason.dataset.field = 'reason';
  reason.rows = 2;
  reason.maxLength = 2000;
  const error = document.createElement('p');
  error.className = 'form-error';
  error.setAttribute('role', 'alert');
  const actions = document.createElement('div');
  actions.className = 'recording-actions';
  const failing = view.checks.some((c) => !c.passed);
  if (!failing) {
    actions.append(button('tx.approve', 'btn btn-primary', () => decide(li, 'approve', {}, error)));
  } else {
    actions.append(button('tx.override', 'btn btn-primary', () => decide(li, 'override', { reason: reason.value.trim() }, error)));
  }
  actions.append(button('tx.reject', 'btn btn-secondary', () => decide(li, 'reject', { reason: reason.value.trim() }, error)));
  li.append(state, summary, meta, checks, image, label, reason, error, actions);
  return li;
}

async function decide(row, action, body, error) {
  if (action === 'reject' && body.reason.length < REJECT_REASON_MIN) {
    translate(error, 'error.reason_too_short');
    return;
  }
  clearText(error);
  const id = row.dataset.id;
  const buttons = [...row.querySelectorAll('button')];
  deciding.add(id);
  for (const el of buttons) el.disabled = true;
  try {
    await post(`/api/v1/transactions/${encodeURIComponent(id)}/${action}`, body);
    deciding.delete(id);
    toast(t('tx.done'), 'success');
    // Decided, so out of the queue now: a reason typed in another item holds the refresh off,
    // and stays as it was.
    row.remove();
    $('approvals-empty').hidden = $('approvals-list').children.length > 0;
    await refresh();
  } catch (err) {
    deciding.delete(id);
    for (const el of buttons) el.disabled = false;
    showErrorText(error, err);
  }
}
