// Customer page: link check -> device check -> lobby -> call -> ended, one screen at a time.
import { get, post } from '/static/common/api.js';
import { translate } from '/static/common/i18n.js';
import { initChrome } from '/static/common/ui.js';
import { getCameraAndMicrophone, stopStream, LevelMeter } from '/static/common/media.js';
import { CallSession } from '/static/common/call-session.js';
import { bindMediaToggles } from '/static/common/callview.js';
import { wireCustomerRecording } from '/static/common/recording.js';
import { wireCustomerIdentity } from '/static/common/identity.js';
import { wireCustomerTransactions } from '/static/customer/transactions.js';

const $ = (id) => document.getElementById(id);
const SCREENS = { loading: 'loading', error: 'error-page', 'device-check': 'device-check', lobby: 'lobby', call: 'call', ended: 'ended' };
// Errors that mean the link itself is no good: retrying cannot help, a new link can.
const LINK_ERRORS = new Set(['invitation_unknown', 'invitation_expired', 'invitation_used', 'session_ended', 'session_cancelled']);

let stream = null;
let meter = null;

function setState(state) {
  document.body.dataset.state = state;
  for (const [name, id] of Object.entries(SCREENS)) $(id).hidden = name !== state;
  $('connection-status').hidden = state !== 'lobby' && state !== 'call';
  const heading = $(SCREENS[state]).querySelector('h1');
  // Screen readers and keyboard users land on the new step instead of the top of the page.
  heading?.setAttribute('tabindex', '-1');
  heading?.focus({ preventScroll: true });
}

// Error page text by code; the link codes come from the join call, the rest from the call itself.
const ERROR_MESSAGES = {
  invitation_unknown: 'join.invitation_unknown',
  invitation_expired: 'join.invitation_expired',
  invitation_used: 'join.invitation_used',
  session_ended: 'join.session_ended',
  session_cancelled: 'join.session_cancelled',
  not_authenticated: 'join.invitation_expired',
  forbidden: 'join.invitation_unknown',
  unknown_session: 'join.invitation_unknown',
  replaced: 'join.replaced',
  connection_lost: 'join.connection_lost',
  network: 'join.network',
};

function showError(code, { retry = null } = {}) {
  const page = $('error-page');
  page.dataset.code = code;
  const known = ERROR_MESSAGES[code];
  translate($('error-message'), known ?? 'join.other');
  // The fallback message asks the customer to press "Try again" (e.g. a page cached before an
  // upgrade that the server no longer speaks to): there must be a button, and reloading helps.
  const onRetry = retry ?? (known ? null : () => location.reload());
  const retryButton = $('error-retry');
  retryButton.hidden = !onRetry;
  retryButton.onclick = onRetry;
  meter?.stop();
  meter = null;
  stopStream(stream);
  setState('error');
}

function tokenFromPath() {
  const parts = location.pathname.split('/').filter(Boolean);
  return parts[0] === 'join' && parts[1] ? decodeURIComponent(parts[1]) : '';
}

async function redeemLink() {
  setState('loading');
  const token = tokenFromPath();
  if (!token) return showError('invitation_unknown');
  try {
    // POST directly: on a reload the server hands this browser its session again, whereas the
    // read-only GET would already report the link as used.
    const { session } = await post(`/api/v1/join/${encodeURIComponent(token)}`);
    if (session.state === 'ended') return showError('session_ended');
    showDeviceCheck(session);
  } catch (err) {
    if (LINK_ERRORS.has(err.code)) showError(err.code);
    else showError(err.code ?? 'other', { retry: redeemLink });
  }
}

function showDeviceCheck(session) {
  translate($('welcome'), 'customer.welcome', {
    teller: session.teller?.display_name ?? '',
    business: { t: `business.${session.business}` },
  });
  setState('device-check');
  $('device-retry').onclick = checkDevices;
  $('enter-btn').onclick = () => enterLobby(session);
  checkDevices();
}

async function checkDevices() {
  const status = $('device-status');
  $('enter-btn').disabled = true;
  $('device-retry').hidden = true;
  status.dataset.kind = 'info';
  translate(status, 'customer.deviceStarting');
  meter?.stop();
  stopStream(stream);
  try {
    stream = await getCameraAndMicrophone();
  } catch (err) {
    stream = null;
    status.dataset.kind = 'error';
    translate(status, `media.${err.kind}`);
    $('device-retry').hidden = false;
    $('device-retry').focus();
    return;
  }
  $('preview-video').srcObject = stream;
  status.dataset.kind = 'success';
  translate(status, 'customer.deviceReady');
  meter = new LevelMeter(stream, $('mic-meter'), () => translate(status, 'customer.deviceHeard'));
  $('enter-btn').disabled = false;
}

function enterLobby(session) {
  $('enter-btn').disabled = true;
  meter?.stop();
  meter = null;
  $('preview-video').srcObject = null;
  setState('lobby');

  const call = new CallSession({
    sessionId: session.id,
    localStream: stream,
    locate: async () => (await get('/api/v1/customer/me')).session.ws_url,
  });
  $('local-video').srcObject = stream;
  bindMediaToggles(() => stream, $('toggle-mic'), $('toggle-camera'));

  // The call screen is shown only while a teller is there (or briefly reconnecting).
  const followTeller = () => {
    const tellerHere = [...call.participants.values()].some((p) => p.role === 'teller');
    const next = tellerHere ? 'call' : 'lobby';
    if (document.body.dataset.state !== next) setState(next);
  };
  call.on('joined', followTeller);
  call.on('presence', followTeller);
  call.on('ended', ({ reason }) => {
    stopStream(stream);
    // Waiting in the lobby for a teller whose account was disabled: the appointment is off, and
    // the customer needs to know to make another, not that a call they never had has ended.
    if (reason === 'teller_disabled') showError('session_cancelled');
    else setState('ended');
  });
  call.on('fatal', (code) => showError(code, code === 'connection_lost' ? { retry: () => location.reload() } : {}));

  // The consent question is an overlay over the call (body[data-state] stays "call").
  wireCustomerRecording(call);
  wireCustomerIdentity(call);
  wireCustomerTransactions(call, session.id);
  $('end-call').onclick = () => call.endWithConfirmation();
  call.start();
}

initChrome({ customer: true });
redeemLink();
