// The supervisor's queue dashboard: waiting customers (reassign), callbacks, tellers (status,
// skills, current call). Admins get the tellers' skills only: they never see who is waiting.
import { get, post } from '/static/common/api.js';
import { t, translate } from '/static/common/i18n.js';
import { actionButton, errorText, toast } from '/static/common/ui.js';
import { poller } from '/static/staff/poller.js';

const $ = (id) => document.getElementById(id);
const REFRESH_MS = 5000;
const BUSINESSES = ['wealth', 'insurance', 'general'];

let role = null;
const tellerRows = new Map();
const polling = poller({ load, errorId: 'queue-dashboard-error', everyMs: REFRESH_MS });
const refresh = polling.refresh;

export function show(user) {
  hide();
  if (user.role !== 'supervisor' && user.role !== 'admin') return;
  role = user.role;
  $('queue-dashboard').hidden = false;
  $('queue-overview').hidden = role !== 'supervisor';
  polling.start();
}

export function hide() {
  polling.stop();
  role = null;
  tellerRows.forEach((row) => row.remove());
  tellerRows.clear();
  $('queue-dashboard').hidden = true;
}

async function load() {
  if (role === 'supervisor') {
    const data = await get('/api/v1/queue/dashboard');
    renderOverview(data);
    renderTellers(data.tellers);
  } else {
    renderTellers((await get('/api/v1/queue/tellers')).tellers);
  }
}

const minutes = (seconds) => Math.floor(seconds / 60);

function renderOverview(data) {
  translate($('queue-handling'), 'queue.handling', {
    minutes: Math.max(1, Math.round(data.handling.seconds / 60)),
  });
  translate($('queue-live'), 'queue.liveSessions', { count: data.sessions.length });
  const body = $('queue-tickets');
  // A supervisor choosing a teller in a row keeps their choice: no refresh under their hands.
  if (!body.contains(document.activeElement)) {
    body.replaceChildren(...data.queue.map((ticket) => ticketRow(ticket, data.tellers)));
  }
  $('queue-tickets-empty').hidden = data.queue.length > 0;
  $('queue-callback-rows').replaceChildren(...data.callbacks.map(callbackRow));
}

function cell(text) {
  const td = document.createElement('td');
  td.textContent = text;
  return td;
}

function ticketRow(ticket, tellers) {
  const row = document.createElement('tr');
  row.dataset.ticketId = ticket.id;
  row.append(
    cell(t(`queue.topic.${ticket.topic}`)),
    cell(t(ticket.elderly ? 'queue.elderlyLane' : 'queue.laneNormal')),
    cell(t('queue.waited', { minutes: minutes(ticket.waited_seconds) })),
    cell(ticket.assigned_name ?? t('queue.anyTeller')),
  );
  const action = document.createElement('td');
  const select = document.createElement('select');
  select.className = 'queue-assign-select';
  select.setAttribute('aria-label', t('queue.col.assigned'));
  for (const teller of tellers.filter((x) => x.skills.includes(ticket.business))) {
    const option = document.createElement('option');
    option.value = teller.user.id;
    option.textContent = `${teller.user.display_name} (${t(`queue.status.${teller.status}`)})`;
    option.selected = teller.user.id === ticket.assigned_to;
    select.append(option);
  }
  if (select.options.length === 0) {
    translate(action, 'queue.noEligible');
    row.append(action);
    return row;
  }
  const assign = actionButton('queue.assign', 'btn btn-secondary btn-small', async () => {
    try {
      await post(`/api/v1/queue/tickets/${encodeURIComponent(ticket.id)}/assign`, {
        teller_id: select.value,
      });
      toast(t('queue.assigned'), 'success');
      document.activeElement?.blur();
      refresh();
    } catch (err) {
      toast(errorText(err), 'error');
    }
  });
  action.append(select, assign);
  row.append(action);
  return row;
}

function callbackRow(callback) {
  const row = document.createElement('tr');
  row.append(
    cell(t(`business.${callback.business}`)),
    cell(callback.phone),
    cell(t(`queue.callbackState.${callback.state}`)),
    cell(t('queue.waited', { minutes: minutes(callback.waited_seconds) })),
    cell(callback.claimed_name ?? ''),
  );
  return row;
}

// Rows are kept and updated in place so that unsaved skill changes survive the refresh.
function renderTellers(tellers) {
  const body = $('queue-tellers');
  const seen = new Set();
  tellers.forEach((teller, index) => {
    const row = tellerRows.get(teller.user.id) ?? tellerRow(teller);
    updateTellerRow(row, teller);
    if (body.children[index] !== row) body.insertBefore(row, body.children[index] ?? null);
    seen.add(teller.user.id);
  });
  for (const [id, row] of tellerRows) {
    if (!seen.has(id)) {
      row.remove();
      tellerRows.delete(id);
    }
  }
}

function tellerRow(teller) {
  const row = document.createElement('tr');
  row.dataset.tellerId = teller.user.id;
  const name = cell(teller.user.display_name);
  const status = document.createElement('td');
  const skills = document.createElement('td');
  const boxes = document.createElement('div');
  boxes.className = 'skill-boxes';
  for (const business of BUSINESSES) {
    const label = document.createElement('label');
    const box = document.createElement('input');
    box.type = 'checkbox';
    box.value = business;
    box.addEventListener('change', () => { row.dataset.dirty = '1'; });
    const text = document.createElement('span');
    translate(text, `business.${business}`);
    label.append(box, text);
    boxes.append(label);
  }
  const save = document.createElement('button');
  save.type = 'button';
  save.className = 'btn btn-secondary btn-small';
  translate(save, 'queue.saveSkills');
  save.addEventListener('click', () => saveSkills(row, teller.user.id));
  skills.append(boxes, save);
  const session = document.createElement('td');
  row.append(name, status, skills, session);
  tellerRows.set(teller.user.id, row);
  return row;
}

function updateTellerRow(row, teller) {
  const [, status, skills, session] = row.children;
  const badge = document.createElement('span');
  badge.className = `badge queue-status-${teller.status}`;
  translate(badge, `queue.status.${teller.status}`);
  status.replaceChildren(badge);
  if (!row.dataset.dirty) {
    for (const box of skills.querySelectorAll('input')) box.checked = teller.skills.includes(box.value);
  }
  session.replaceChildren();
  if (teller.current_session_id && role === 'supervisor') {
    const link = document.createElement('a');
    link.href = `/staff/call.html?session=${encodeURIComponent(teller.current_session_id)}`;
    translate(link, 'sessions.observe');
    session.append(link);
  }
}

async function saveSkills(row, userId) {
  const skills = [...row.querySelectorAll('.skill-boxes input:checked')].map((box) => box.value);
  try {
    await post(`/api/v1/queue/tellers/${encodeURIComponent(userId)}/skills`, { skills });
    delete row.dataset.dirty;
    toast(t('queue.skillsSaved'), 'success');
    refresh();
  } catch (err) {
    toast(errorText(err), 'error');
  }
}
