// Public entry page: choose the business -> wait (position, estimate, live) -> into the call.
// Or leave a callback number, or leave the queue. One screen at a time, big buttons.
import { get, post } from '/static/common/api.js';
import { clearText, translate } from '/static/common/i18n.js';
import { confirmDialog, initChrome, showErrorText } from '/static/common/ui.js';

const $ = (id) => document.getElementById(id);
const SCREENS = ['loading', 'choose', 'waiting', 'callback', 'callback-done', 'taken', 'left'];
// The ticket is gone for good: the customer can only queue again.
const GONE = new Set(['ticket_expired', 'ticket_closed']);
// Taken by a teller (or a callback asked for elsewhere) just as the customer pressed a button.
const NOT_WAITING = 'ticket_not_waiting';

let pollTimer = null;
let pollMs = 3000;
let screen = 'loading';

function show(name) {
  screen = name;
  document.body.dataset.state = name;
  for (const id of SCREENS) $(id).hidden = id !== name;
  const heading = $(name).querySelector('h1');
  heading?.setAttribute('tabindex', '-1');
  heading?.focus({ preventScroll: true });
}

function schedulePoll(delayMs = pollMs) {
  clearTimeout(pollTimer);
  pollTimer = setTimeout(poll, delayMs);
}

function stopPolling() {
  clearTimeout(pollTimer);
  pollTimer = null;
}

function renderWaiting(ticket) {
  translate($('waiting-topic'), ticket.elderly ? 'queue.topicElderly' : 'queue.topicLine', {
    topic: { t: `queue.topic.${ticket.topic}` },
  });
  if (ticket.position <= 1) translate($('position'), 'queue.next');
  else translate($('position'), 'queue.ahead', { count: ticket.position - 1 });
  const seconds = ticket.estimate?.seconds;
  if (seconds === null || seconds === undefined) translate($('estimate'), 'queue.noTeller');
  else translate($('estimate'), 'queue.estimate', { minutes: Math.max(1, Math.ceil(seconds / 60)) });
}

function render(data) {
  pollMs = Math.max(1, data.poll_seconds) * 1000;
  const { ticket } = data;
  if (ticket.state === 'taken') {
    show('taken');
    if (ticket.join_url) {
      stopPolling();
      // The customer page takes over: device check, lobby, call (the invitation flow).
      location.assign(ticket.join_url);
    } else {
      schedulePoll(); // the session is being created: its link comes with the next answer
    }
    return;
  }
  if (ticket.state === 'callback') {
    stopPolling();
    translate($('callback-done-message'), 'queue.callbackDone', { phone: ticket.callback_phone });
    show('callback-done');
    return;
  }
  renderWaiting(ticket);
  // While the customer types a number the ticket keeps its place, so keep asking.
  if (screen !== 'waiting' && screen !== 'callback') show('waiting');
  schedulePoll();
}

function showGone(err) {
  stopPolling();
  translate($('left-message'), err.code === 'ticket_expired' ? 'queue.expired' : 'queue.leftBody');
  show('left');
}

async function poll() {
  try {
    render(await get('/api/v1/queue/ticket'));
    clearText($('waiting-error'));
  } catch (err) {
    if (GONE.has(err.code) || err.code === 'ticket_unknown') return showGone(err);
    // A network blip: say so, and keep trying; the place is kept while we ask again in time.
    // A server that asks us to wait (Retry-After) is asked again no sooner.
    showErrorText($('waiting-error'), err);
    schedulePoll(Math.max(pollMs, (err.retryAfter ?? 0) * 1000));
  }
}

async function resume() {
  try {
    render(await get('/api/v1/queue/ticket'));
  } catch (err) {
    if (err.code === 'ticket_unknown' || GONE.has(err.code)) show('choose');
    else {
      showErrorText($('choose-error'), err);
      show('choose');
    }
  }
}

async function join(topic) {
  const buttons = document.querySelectorAll('.queue-topic');
  buttons.forEach((b) => { b.disabled = true; });
  clearText($('choose-error'));
  try {
    render(await post('/api/v1/queue/tickets', { topic, elderly: $('elderly').checked }));
  } catch (err) {
    showErrorText($('choose-error'), err);
  } finally {
    buttons.forEach((b) => { b.disabled = false; });
  }
}

/** The answer to a button pressed as the ticket stopped waiting: say what is happening, and
 * let the next answer take the page on (into the call, or to the callback). */
function movedOn(errorLine) {
  translate(errorLine, 'queue.notWaiting');
  schedulePoll(0);
}

async function leave() {
  $('leave').disabled = true;
  // One tap must not give up a place waited for: ask first, with staying as the safe answer.
  const confirmed = await confirmDialog({
    title: 'queue.leaveConfirmTitle', body: 'queue.leaveConfirmBody', confirm: 'queue.leave', cancel: 'queue.stay', danger: true,
  });
  if (!confirmed || screen !== 'waiting') {
    $('leave').disabled = false;
    return;
  }
  try {
    await post('/api/v1/queue/ticket/cancel');
    stopPolling();
    translate($('left-message'), 'queue.leftBody');
    show('left');
  } catch (err) {
    if (GONE.has(err.code) || err.code === 'ticket_unknown') showGone(err);
    else if (err.code === NOT_WAITING) movedOn($('waiting-error'));
    else showErrorText($('waiting-error'), err);
  } finally {
    $('leave').disabled = false;
  }
}

async function requestCallback(event) {
  event.preventDefault();
  const phone = $('phone').value.trim();
  if (!phone) {
    translate($('callback-error'), 'queue.phoneMissing');
    $('phone').focus();
    return;
  }
  $('callback-submit').disabled = true;
  clearText($('callback-error'));
  try {
    render(await post('/api/v1/queue/ticket/callback', { phone }));
  } catch (err) {
    if (GONE.has(err.code) || err.code === 'ticket_unknown') return showGone(err);
    if (err.code === NOT_WAITING) return movedOn($('callback-error'));
    showErrorText($('callback-error'), err);
    $('phone').focus();
  } finally {
    $('callback-submit').disabled = false;
  }
}

initChrome({ customer: true });
document.querySelectorAll('.queue-topic').forEach((button) => {
  button.addEventListener('click', () => join(button.dataset.topic));
});
$('leave').addEventListener('click', leave);
$('show-callback').addEventListener('click', () => show('callback'));
$('callback-back').addEventListener('click', () => show('waiting'));
$('callback-form').addEventListener('submit', requestCallback);
$('again').addEventListener('click', () => show('choose'));
$('again-after-callback').addEventListener('click', () => show('choose'));
resume();
