// The teller's queue panel: status, what is waiting for their skills, "take next", callbacks.
import { get, post } from '/static/common/api.js';
import { clearText, t, translate } from '/static/common/i18n.js';
import { actionButton, errorText, toast, showErrorText } from '/static/common/ui.js';
import { poller } from '/static/staff/poller.js';

const $ = (id) => document.getElementById(id);
const REFRESH_MS = 3000;

let wired = false;
// Numbers shown after a claim stay on screen across refreshes (never refetched silently).
const revealed = new Map();
// Callbacks with a claim or "done" on its way: a refresh meanwhile draws their button disabled.
const sending = new Set();
// "Take next" on its way (and, once answered, the page leaving for the call): a refresh meanwhile
// draws it disabled, or a second click asked for another customer.
let taking = false;

// Refreshes report in their own line: #queue-error keeps what the teller's last action said.
const polling = poller({
  load: async () => render(await get('/api/v1/queue/me')),
  errorId: 'queue-refresh-error',
  everyMs: REFRESH_MS,
});
const refresh = polling.refresh;

export function show(user) {
  hide();
  if (user.role !== 'teller') return;
  wire();
  $('queue-panel').hidden = false;
  polling.start();
}

export function hide() {
  polling.stop();
  revealed.clear();
  $('queue-panel').hidden = true;
}

function wire() {
  if (wired) return;
  wired = true;
  $('queue-available').addEventListener('click', () => setStatus('available'));
  $('queue-away').addEventListener('click', () => setStatus('away'));
  $('queue-take').addEventListener('click', takeNext);
}


function render(data) {
  const { teller } = data;
  const badge = $('queue-status');
  badge.className = `badge queue-status-${teller.status}`;
  translate(badge, `queue.status.${teller.status}`);
  $('queue-available').disabled = teller.status !== 'away';
  $('queue-away').disabled = teller.status !== 'available';

  if (teller.skills.length) {
    const skills = teller.skills.map((b) => t(`business.${b}`)).join('、');
    translate($('queue-skills'), 'queue.mySkills', { skills });
  } else translate($('queue-skills'), 'queue.noSkills');

  const counts = Object.entries(data.waiting).map(([business, count]) =>
    t('queue.countItem', { business: t(`business.${business}`), count }));
  if (counts.length) {
    const extras = [];
    if (data.elderly_waiting) extras.push(t('queue.elderlyCount', { count: data.elderly_waiting }));
    if (data.assigned_to_me) extras.push(t('queue.assignedCount', { count: data.assigned_to_me }));
    const text = [counts.join('，'), ...extras].join('；');
    translate($('queue-counts'), 'queue.waitingCounts', { counts: text });
  } else translate($('queue-counts'), 'queue.waitingNone');

  $('queue-take').disabled = taking || teller.status !== 'available' || counts.length === 0;
  const current = $('queue-current');
  current.hidden = !teller.current_session_id;
  if (teller.current_session_id) {
    current.href = `/staff/call.html?session=${encodeURIComponent(teller.current_session_id)}`;
  }
  renderCallbacks(data.callbacks);
}

function renderCallbacks(callbacks) {
  const list = $('queue-callbacks');
  list.replaceChildren(...callbacks.map(callbackItem));
  $('queue-callbacks-empty').hidden = callbacks.length > 0;
}

function callbackItem(callback) {
  const item = document.createElement('li');
  item.dataset.callbackId = callback.id;
  const what = document.createElement('span');
  const lane = callback.elderly ? ` · ${t('queue.elderlyLane')}` : '';
  what.textContent = `${t(`business.${callback.business}`)}${lane} · ${
    t('queue.waited', { minutes: Math.floor(callback.waited_seconds / 60) })}`;
  const phone = document.createElement('strong');
  const number = revealed.get(callback.id);
  phone.textContent = number ? t('queue.claimedPhone', { phone: number }) : callback.phone;
  item.append(what, phone);
  item.append(number
    ? callbackButton('queue.done', callback.id, finishCallback)
    : callbackButton('queue.claim', callback.id, claimCallback));
  return item;
}

function callbackButton(key, id, action) {
  const el = actionButton(key, 'btn btn-secondary btn-small', async () => {
    sending.add(id);
    try {
      await action(id);
    } finally {
      sending.delete(id);
    }
  });
  el.disabled = sending.has(id);
  return el;
}

async function setStatus(status) {
  clearText($('queue-error'));
  // Nothing else of the panel until the server has the new status: "take next" sent meanwhile
  // would be judged on the old one ("you are away"). The next render enables what applies.
  for (const id of ['queue-available', 'queue-away', 'queue-take']) $(id).disabled = true;
  try {
    await post('/api/v1/queue/me/status', { status });
  } catch (err) {
    showErrorText($('queue-error'), err);
  }
  refresh();
}

async function takeNext() {
  if (taking) return;
  taking = true;
  $('queue-take').disabled = true;
  clearText($('queue-error'));
  try {
    const { session } = await post('/api/v1/queue/take');
    location.assign(`/staff/call.html?session=${encodeURIComponent(session.id)}`);
  } catch (err) {
    showErrorText($('queue-error'), err);
    taking = false;
    $('queue-take').disabled = false;
    refresh();
  }
}

async function claimCallback(id) {
  try {
    const { callback } = await post(`/api/v1/queue/callbacks/${encodeURIComponent(id)}/claim`);
    revealed.set(id, callback.phone);
    refresh();
  } catch (err) {
    toast(errorText(err), 'error');
  }
}

async function finishCallback(id) {
  try {
    await post(`/api/v1/queue/callbacks/${encodeURIComponent(id)}/done`);
    revealed.delete(id);
    refresh();
  } catch (err) {
    toast(errorText(err), 'error');
  }
}
