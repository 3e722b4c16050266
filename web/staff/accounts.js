// The supervisor's staff accounts (docs/deployment.md, "Staff accounts"): the tellers' and
// experts' accounts, unlocking one locked out after wrong passwords, disabling a leaver's (with a
// reason for the audit log, after a confirmation) and enabling one again. A password reset is
// not here: an operator does it (`vteller admin reset-password`), so no supervisor learns one.
import { get, post } from '/static/common/api.js';
import { clearText, t, translate } from '/static/common/i18n.js';
import { actionButton, confirmDialog, errorText, formatTime, showErrorText, toast } from '/static/common/ui.js';
import { supervisorPanel } from '/static/staff/poller.js';

const $ = (id) => document.getElementById(id);
const REFRESH_MS = 15000;
const MIN_REASON = 4; // as the API's DisableAccountBody and `vteller admin disable-user`
const BASE = '/api/v1/staff/accounts';
const cell = (text) => Object.assign(document.createElement('td'), { textContent: text });

let disabling = null; // the account the disable form is open for

const panel = supervisorPanel({
  panelId: 'accounts-panel',
  rowsId: 'account-rows',
  onHide: () => closeForm(),
  load,
  errorId: 'accounts-error',
  everyMs: REFRESH_MS,
  // The form being filled in, or a row's button under the supervisor's hands, stays put.
  skip: () => disabling !== null || $('account-rows').contains(document.activeElement),
});
export const { show, hide } = panel;

async function load() {
  const { accounts } = await get(BASE);
  $('account-rows').replaceChildren(...accounts.map(accountRow));
  $('accounts-empty').hidden = accounts.length > 0;
}

/** A date and time: a disable may be weeks old, a lock-out ends within the hour (formatTime). */
function dayAndTime(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? '' : date.toLocaleString(document.documentElement.lang,
    { dateStyle: 'short', timeStyle: 'short' });
}

function stateCell(account) {
  const td = document.createElement('td');
  const badges = [];
  if (account.disabled) {
    badges.push(['state-ended', 'account.state.disabled', {
      time: dayAndTime(account.disabled_at),
      reason: account.disabled_reason ?? '',
    }]);
  }
  if (account.locked_out_until) {
    badges.push(['state-interrupted', 'account.state.locked', { time: formatTime(account.locked_out_until) }]);
  }
  if (!badges.length) badges.push(['state-active', 'account.state.active']);
  td.append(...badges.map(([colour, key, args]) => {
    const badge = document.createElement('span');
    badge.className = `badge ${colour}`;
    return translate(badge, key, args);
  }));
  return td;
}

function accountRow(account) {
  const row = document.createElement('tr');
  row.dataset.username = account.username;
  row.dataset.state = account.disabled ? 'disabled' : account.locked_out_until ? 'locked' : 'active';
  const role = document.createElement('td');
  translate(role, `role.${account.role}`);
  const actions = document.createElement('td');
  actions.className = 'account-actions';
  const name = account.display_name || account.username;
  if (account.locked_out_until) {
    actions.append(actionButton('account.unlock', 'btn btn-primary btn-small account-unlock',
      rowAction(() => act(account, 'unlock', 'account.unlocked', name))));
  }
  if (account.disabled) {
    actions.append(actionButton('account.enable', 'btn btn-secondary btn-small account-enable',
      rowAction(() => act(account, 'enable', 'account.enabled', name))));
  } else {
    actions.append(actionButton('account.disable', 'btn btn-danger btn-small account-disable',
      async () => openForm(account, name)));
  }
  row.append(cell(name), cell(account.username), role, stateCell(account), actions);
  return row;
}

async function act(account, action, done, name, body = {}) {
  const reply = await post(`${BASE}/${encodeURIComponent(account.id)}/${action}`, body);
  toast(t(done, { name }), 'success');
  // A disable stands even when the audit log could not take it: whoever keeps the log is told.
  if (reply.logged === false) toast(t('account.notLogged'), 'error');
}

/** Unlock or enable from a row: its button stays disabled while the request runs (actionButton),
 * and an error shows where the supervisor looks. */
function rowAction(run) {
  return async () => {
    try {
      await run();
    } catch (err) {
      toast(errorText(err), 'error');
    } finally {
      // The refresh holds back while a row's button has the focus (skip above).
      document.activeElement?.blur();
      await panel.refresh();
    }
  };
}

function openForm(account, name) {
  disabling = account;
  const form = $('account-disable-form');
  translate($('account-disable-title'), 'account.disableTitle', { name });
  $('account-reason').value = '';
  clearText($('account-disable-error'));
  form.hidden = false;
  $('account-reason').focus();
}

function closeForm() {
  disabling = null;
  $('account-disable-form').hidden = true;
  $('account-reason').value = '';
  clearText($('account-disable-error'));
}

async function submitDisable(event) {
  event.preventDefault();
  const account = disabling;
  const submit = $('account-disable-submit');
  if (!account || submit.disabled) return;
  const error = $('account-disable-error');
  clearText(error);
  const reason = $('account-reason').value.trim();
  if (reason.length < MIN_REASON) {
    translate(error, 'account.reasonTooShort');
    $('account-reason').focus();
    return;
  }
  submit.disabled = true;
  try {
    const confirmed = await confirmDialog({
      title: 'account.confirmTitle',
      body: 'account.confirmBody',
      confirm: 'account.disableConfirm',
      danger: true,
    });
    if (!confirmed) return;
    await act(account, 'disable', 'account.disabled', account.display_name || account.username, { reason });
    closeForm();
    await panel.refresh();
  } catch (err) {
    showErrorText(error, err);
  } finally {
    submit.disabled = false;
  }
}

$('account-disable-form').addEventListener('submit', submitDisable);
$('account-disable-cancel').addEventListener('click', () => {
  closeForm();
  panel.refresh();
});
