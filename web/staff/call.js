// Staff call page: teller, expert or supervisor (observer, receive-only) in one session.
import { get, post } from '/static/common/api.js';
import { clearText, translate } from '/static/common/i18n.js';
import { initChrome, errorText, toast, formatTime, showErrorText } from '/static/common/ui.js';
import { getCameraAndMicrophone, stopStream } from '/static/common/media.js';
import { CallSession } from '/static/common/call-session.js';
import { bindMediaToggles } from '/static/common/callview.js';
import { RecordingPanel } from '/static/common/recording.js';
import { IdentityPanel } from '/static/common/identity.js';
import { TransactionPanel } from '/static/staff/transactions.js';

const $ = (id) => document.getElementById(id);
const sessionId = new URLSearchParams(location.search).get('session');
// Which controls each role gets; supervisors observe silently and publish nothing.
const CONTROLS = {
  teller: ['toggle-mic', 'toggle-camera', 'share-screen', 'invite-expert', 'end-call'],
  expert: ['toggle-mic', 'toggle-camera', 'share-screen', 'leave-call'],
  supervisor: ['leave-call'],
};
const PRESENCE_EVENTS = { joined: 'events.joined', rejoined: 'events.rejoined' };

let stream = null;

function showOutcome(state, titleKey, messageKey, args) {
  document.body.dataset.state = state;
  stopStream(stream);
  $('call').hidden = true;
  $('media-problem').hidden = true;
  $('connection-status').hidden = true;
  translate($('ended-title'), titleKey);
  translate($('ended-message'), messageKey, args);
  $('ended').hidden = false;
}

function addEvent(key, args) {
  const item = document.createElement('li');
  const time = document.createElement('time');
  time.textContent = formatTime(new Date().toISOString());
  const text = document.createElement('span');
  translate(text, key, args);
  item.append(time, text);
  $('event-log').prepend(item);
}

const who = (participant) => ({ name: participant.display_name ?? '', role: { t: `role.${participant.role}` } });

/** Returns a camera+microphone stream, or null after showing what is wrong. */
async function acquireMedia() {
  try {
    const acquired = await getCameraAndMicrophone();
    $('media-problem').hidden = true;
    $('local-video').srcObject = acquired;
    return acquired;
  } catch (err) {
    translate($('media-problem-text'), `media.${err.kind}`);
    $('media-problem').hidden = false;
    return null;
  }
}

function wireScreenShare(call) {
  const button = $('share-screen');
  call.client.on('negotiated', () => { button.disabled = !call.client.canShareScreen; });
  call.client.on('screenshare', (active) => {
    button.classList.toggle('is-active', active);
    translate(button, active ? 'staffCall.stopShare' : 'staffCall.shareScreen');
    addEvent(active ? 'events.youShare' : 'events.youStopShare');
  });
  button.addEventListener('click', async () => {
    try {
      if (call.client.sharingScreen) await call.client.stopScreenShare();
      else await call.client.startScreenShare();
    } catch (err) {
      // Cancelling the browser's picker is a choice, not an error.
      if (err.name !== 'NotAllowedError') toast(errorText(err), 'error');
    }
  });
}

function wireExpertDialog(call) {
  const dialog = $('expert-dialog');
  const select = $('expert-select');
  const errorBox = $('expert-dialog-error');
  call.on('joined', () => { $('invite-expert').disabled = false; });

  $('invite-expert').addEventListener('click', async () => {
    clearText(errorBox);
    select.replaceChildren();
    $('expert-invite-confirm').disabled = true;
    dialog.showModal();
    try {
      const { staff } = await get('/api/v1/staff?role=expert');
      for (const expert of staff) {
        const option = document.createElement('option');
        option.value = expert.username;
        option.textContent = `${expert.display_name} (${expert.username})`;
        select.append(option);
      }
      if (staff.length) $('expert-invite-confirm').disabled = false;
      else translate(errorBox, 'expertDialog.none');
    } catch (err) {
      showErrorText(errorBox, err);
    }
  });
  $('expert-invite-cancel').addEventListener('click', () => dialog.close());
  $('expert-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    const option = select.selectedOptions[0];
    if (!option) return;
    $('expert-invite-confirm').disabled = true;
    try {
      await post(`/api/v1/sessions/${encodeURIComponent(sessionId)}/experts`, { username: option.value });
      dialog.close();
      addEvent('events.expertInvited', { name: option.textContent });
    } catch (err) {
      showErrorText(errorBox, err);
    } finally {
      $('expert-invite-confirm').disabled = false;
    }
  });
}

function wireEndAndLeave(call) {
  $('end-call').addEventListener('click', () => call.endWithConfirmation());
  $('leave-call').addEventListener('click', () => call.leave());
}

function wirePresence(call) {
  const updateObserverBadge = () => {
    $('observer-badge').hidden = ![...call.participants.values()]
      .some((p) => p.role === 'supervisor' && p.state === 'connected');
  };
  call.on('joined', (msg) => {
    document.body.dataset.state = 'call';
    const session = msg.session ?? {};
    translate($('call-heading'), 'staffCall.heading', {
      customer: session.customer_name || { t: 'sessions.unnamed' },
      business: { t: `business.${session.business}` },
    });
    addEvent(msg.rejoined ? 'events.youRejoined' : 'events.youJoined');
    updateObserverBadge();
  });
  call.on('presence', ({ kind, participant, reason }) => {
    if (kind === 'left') addEvent(reason === 'disconnected' ? 'events.disconnected' : 'events.left', who(participant));
    else addEvent(PRESENCE_EVENTS[kind], who(participant));
    updateObserverBadge();
  });
  call.on('screen_share', ({ participant, active }) => {
    addEvent(active ? 'events.screenStarted' : 'events.screenStopped', who(participant));
  });
  call.on('ended', ({ reason, by }) => {
    if (reason === 'left') return showOutcome('ended', 'staffCall.leftTitle', 'staffCall.leftBody');
    if (reason === 'server_shutdown') return showOutcome('ended', 'staffCall.endedTitle', 'staffCall.endedShutdown');
    const ender = call.participants.get(by);
    if (by && by === call.selfId) return showOutcome('ended', 'staffCall.endedTitle', 'staffCall.endedByYou');
    if (ender) return showOutcome('ended', 'staffCall.endedTitle', 'staffCall.endedBy', who(ender));
    return showOutcome('ended', 'staffCall.endedTitle', 'staffCall.endedBody');
  });
  call.on('fatal', (code) => showOutcome('error', 'staffCall.errorTitle', `staffCall.fatal.${code}`));
}

/** The sales script to read from; without it the panel falls back to the standard moments. */
async function loadScript() {
  try {
    return (await get(`/api/v1/sessions/${encodeURIComponent(sessionId)}/script`)).script;
  } catch (err) {
    toast(errorText(err), 'error');
    return null;
  }
}

async function main() {
  initChrome();
  if (!sessionId) return showOutcome('error', 'staffCall.errorTitle', 'staffCall.fatal.unknown_session');
  let user;
  try {
    ({ user } = await get('/api/v1/auth/me'));
  } catch (err) {
    if (err.code === 'not_authenticated') return location.assign('/staff/');
    return showOutcome('error', 'staffCall.errorTitle', 'staffCall.fatal.load', { detail: errorText(err) });
  }
  const controls = CONTROLS[user.role];
  if (!controls) return showOutcome('error', 'staffCall.errorTitle', 'staffCall.fatal.forbidden');
  for (const id of controls) $(id).hidden = false;

  const publishes = user.role !== 'supervisor';
  $('self-view').hidden = !publishes;
  if (publishes) stream = await acquireMedia();

  const call = new CallSession({
    sessionId,
    localStream: stream,
    locate: async () => (await get(`/api/v1/sessions/${encodeURIComponent(sessionId)}`)).session.ws_url,
  });
  $('media-retry').addEventListener('click', async () => {
    const acquired = await acquireMedia();
    if (!acquired) return;
    stopStream(stream);
    stream = acquired;
    await call.setLocalStream(stream);
  });

  if (publishes) bindMediaToggles(() => stream, $('toggle-mic'), $('toggle-camera'));
  if (controls.includes('share-screen')) wireScreenShare(call);
  if (controls.includes('invite-expert')) wireExpertDialog(call);
  wireEndAndLeave(call);
  wirePresence(call);
  // Only the teller runs the recording; experts and supervisors follow it read-only.
  new RecordingPanel({ call, canControl: user.role === 'teller', script: await loadScript() });
  // The card's fields are the customer's personal data: the teller and a supervisor see them,
  // an expert brought in for advice does not (the server does not send them either).
  $('identity-panel').hidden = user.role === 'expert';
  if (user.role !== 'expert') new IdentityPanel({ call, canControl: user.role === 'teller' });
  new TransactionPanel({ call, sessionId, canControl: user.role === 'teller' });
  call.start();
}

main();
