// Staff console: login, then per role the invitation form and/or the session list.
import { get, post, clearCsrfToken } from '/static/common/api.js';
import { clearText, t, translate } from '/static/common/i18n.js';
import { initChrome, toast, formatTime, showErrorText } from '/static/common/ui.js';
import * as tellerQueue from '/static/staff/queue.js';
import * as queueDashboard from '/static/staff/dashboard.js';
import * as webhookPanel from '/static/staff/webhooks.js';
import * as approvals from '/static/staff/approvals.js';
import * as reviews from '/static/staff/reviews.js';
import * as accounts from '/static/staff/accounts.js';

const $ = (id) => document.getElementById(id);
const REFRESH_MS = 3000;
// Which session list each role gets, and what its link does there.
const SESSION_VIEWS = {
  teller: { title: 'sessions.titleTeller', empty: 'sessions.emptyTeller', action: 'sessions.open' },
  expert: { title: 'sessions.titleExpert', empty: 'sessions.emptyExpert', action: 'sessions.join' },
  supervisor: { title: 'sessions.titleSupervisor', empty: 'sessions.emptySupervisor', action: 'sessions.observe' },
};
const CUSTOMER_PRESENCE = {
  connected: 'sessions.online',
  disconnected: 'sessions.reconnecting',
  left: 'sessions.customerLeft',
};

let refreshTimer = null;
let refreshing = false;
const rows = new Map();

/** `err`: why the user is asked to log in (none when the session simply ended). */
function showLogin(err = null) {
  stopRefresh();
  tellerQueue.hide();
  queueDashboard.hide();
  webhookPanel.hide();
  approvals.hide();
  reviews.hide();
  accounts.hide();
  document.body.dataset.view = 'login';
  $('login-view').hidden = false;
  $('dashboard').hidden = true;
  $('user-info').hidden = true;
  $('logout').hidden = true;
  $('auditor-link').hidden = true;
  if (err) showErrorText($('login-error'), err);
  else clearText($('login-error'));
  $('username').focus();
}

function showDashboard(user) {
  document.body.dataset.view = 'dashboard';
  $('login-view').hidden = true;
  $('dashboard').hidden = false;
  $('user-info').hidden = false;
  $('logout').hidden = false;
  $('user-name').textContent = user.display_name || user.username;
  translate($('user-role'), `role.${user.role}`);
  $('auditor-link').hidden = user.role !== 'auditor' && user.role !== 'supervisor';

  const view = SESSION_VIEWS[user.role];
  $('invitation-panel').hidden = user.role !== 'teller';
  tellerQueue.show(user);
  queueDashboard.show(user);
  webhookPanel.show(user);
  approvals.show(user);
  reviews.show(user);
  accounts.show(user);
  $('sessions-panel').hidden = !view;
  $('info-panel').hidden = Boolean(view);
  if (view) {
    translate($('sessions-title'), view.title);
    translate($('sessions-empty'), view.empty);
    startRefresh(view);
  } else {
    translate($('role-info'), `staff.info.${user.role}`);
  }
}

async function resume() {
  try {
    const { user } = await get('/api/v1/auth/me');
    showDashboard(user);
  } catch (err) {
    showLogin(err.code === 'not_authenticated' ? null : err);
  }
}

async function login(event) {
  event.preventDefault();
  const username = $('username').value.trim();
  const password = $('password').value;
  const errorBox = $('login-error');
  if (!username || !password) {
    translate(errorBox, 'login.missing');
    return;
  }
  $('login-submit').disabled = true;
  clearText(errorBox);
  try {
    const { user } = await post('/api/v1/auth/login', { username, password });
    $('password').value = '';
    showDashboard(user);
  } catch (err) {
    if (err.code === 'rate_limited') {
      translate(errorBox, 'login.rateLimited', { minutes: Math.max(1, Math.ceil((err.retryAfter ?? 900) / 60)) });
    } else if (err.code === 'invalid_credentials') {
      translate(errorBox, 'login.invalid');
      $('password').select();
    } else {
      showErrorText(errorBox, err);
    }
  } finally {
    $('login-submit').disabled = false;
  }
}

async function logout() {
  try {
    await post('/api/v1/auth/logout');
  } catch (err) {
    // The session may already be gone server-side; the user still wants the login screen.
    console.warn('logout failed', err);
  }
  clearCsrfToken();
  $('invitation-result').hidden = true;
  showLogin();
}

async function createInvitation(event) {
  event.preventDefault();
  const body = { business: $('business').value, ttl_minutes: Number($('ttl').value) };
  const customerName = $('customer-name').value.trim();
  if (customerName) body.customer_name = customerName;
  const button = $('create-invitation');
  button.disabled = true;
  clearText($('invitation-error'));
  try {
    const result = await post('/api/v1/invitations', body);
    $('invitation-url').textContent = result.invitation_url;
    translate($('invitation-expiry'), 'invite.expires', { time: formatTime(result.expires_at) });
    $('invitation-result').hidden = false;
    $('customer-name').value = '';
    $('copy-invitation').focus();
    refreshSessions();
  } catch (err) {
    if (err.code === 'not_authenticated') return showLogin();
    showErrorText($('invitation-error'), err);
  } finally {
    button.disabled = false;
  }
}

async function copyInvitation() {
  const url = $('invitation-url').textContent;
  try {
    await navigator.clipboard.writeText(url);
    toast(t('invite.copied'), 'success');
  } catch {
    // Clipboard API needs a secure context; select the text so Ctrl+C works instead.
    const range = document.createRange();
    range.selectNodeContents($('invitation-url'));
    getSelection().removeAllRanges();
    getSelection().addRange(range);
    toast(t('invite.copyManual'), 'info');
  }
}

let currentView = null;

function startRefresh(view) {
  stopRefresh();
  currentView = view;
  refreshSessions();
  refreshTimer = setInterval(refreshSessions, REFRESH_MS);
}

function stopRefresh() {
  clearInterval(refreshTimer);
  refreshTimer = null;
  currentView = null;
  rows.forEach((row) => row.remove());
  rows.clear();
}

async function refreshSessions() {
  if (refreshing || document.hidden || !currentView) return;
  refreshing = true;
  try {
    const { sessions } = await get('/api/v1/sessions');
    renderSessions(sessions);
    clearText($('sessions-error'));
  } catch (err) {
    if (err.code === 'not_authenticated') showLogin();
    else showErrorText($('sessions-error'), err);
  } finally {
    refreshing = false;
  }
}

// Rows are updated in place so that a focused link survives the 3-second refresh.
function renderSessions(sessions) {
  const list = $('session-list');
  const seen = new Set();
  sessions.forEach((session, index) => {
    const row = rows.get(session.id) ?? createRow(session.id);
    updateRow(row, session);
    if (list.children[index] !== row) list.insertBefore(row, list.children[index] ?? null);
    seen.add(session.id);
  });
  for (const [id, row] of rows) {
    if (!seen.has(id)) {
      row.remove();
      rows.delete(id);
    }
  }
  $('sessions-empty').hidden = sessions.length > 0;
}

function createRow(id) {
  const row = document.createElement('tr');
  row.className = 'session-row';
  row.dataset.sessionId = id;
  for (let i = 0; i < 7; i += 1) row.append(document.createElement('td'));
  rows.set(id, row);
  return row;
}

function updateRow(row, session) {
  const [customer, business, teller, state, presence, created, action] = row.children;
  if (session.customer_name) clearText(customer).textContent = session.customer_name;
  else translate(customer, 'sessions.unnamed');
  translate(business, `business.${session.business}`);
  teller.textContent = session.teller?.display_name ?? '';

  const badge = document.createElement('span');
  badge.className = `badge state-${session.state}`;
  translate(badge, `state.${session.state}`);
  state.replaceChildren(badge);
  row.dataset.state = session.state;

  const customerParticipant = (session.participants ?? []).find((p) => p.role === 'customer');
  const presenceKey = CUSTOMER_PRESENCE[customerParticipant?.state] ?? 'sessions.notJoined';
  translate(presence, presenceKey);
  presence.dataset.customerState = customerParticipant?.state ?? 'none';
  created.textContent = formatTime(session.created_at);

  const href = `/staff/call.html?session=${encodeURIComponent(session.id)}`;
  const link = action.querySelector('a');
  if (session.state === 'ended') {
    if (link) action.replaceChildren();
  } else if (!link || link.getAttribute('href') !== href) {
    const anchor = document.createElement('a');
    anchor.className = 'btn btn-primary btn-small';
    anchor.href = href;
    translate(anchor, currentView.action);
    action.replaceChildren(anchor);
  }
}

initChrome();
$('login-form').addEventListener('submit', login);
$('logout').addEventListener('click', logout);
$('invitation-form').addEventListener('submit', createInvitation);
$('copy-invitation').addEventListener('click', copyInvitation);
resume();
