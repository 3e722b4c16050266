// One participant's seat in a call: signaling, the peer connection, presence, tiles and chat
// wired together. Pages add only what differs by role.
//
// Events:
//   'joined'    (msg)                          first join and every rejoin
//   'presence'  ({kind, participant, reason})  kind: 'joined' | 'rejoined' | 'left'
//   'screen_share' ({participant, active})
//   'ended'     ({reason, by})                 the session is over (or we left it)
//   'fatal'     (code)                         cannot continue: 'replaced' | 'not_authenticated' |
//                                              'forbidden' | 'unknown_session' | 'protocol' | 'connection_lost'
//   'error'     (msg)                          a signaling `error` message (already shown as a toast)
//   'connection' (state)                       signaling state: 'connecting' | 'reconnecting' | 'open' | 'closed' | 'failed'
//   'recording' (recording)                    the dual recording changed (normalized `recording`, see recording.js)
//   'consent_request' ()                       customer: the teller asks to start recording
//   'marked'    ({moment, phase, media_ms})    staff: a key moment was marked
//   'analysis'  ({archive_id, stage, progress, decision?})  staff: the after-call compliance analysis
//   'live_warning' (msg)                       staff: the live warnings while recording (see recording.js)
//   'identity'  (identity)                     identity verification changed (normalized, see identity.js)
//   'identity_consent_request' ()              customer: consent to face recognition is asked for
//   'identity_hint' ({message_zh, message_en}) customer: what to change while the card is captured
import { Emitter } from './emitter.js';
import { Signaling } from './signaling.js';
import { CallClient } from './webrtc.js';
import { TileGrid, ChatPanel } from './callview.js';
import { post } from './api.js';
import { t, translate } from './i18n.js';
import { confirmDialog, errorText, toast } from './ui.js';
import { normalizeRecording } from './recording.js';
import { normalizeIdentity } from './identity.js';

const FATAL_BY_CLOSE_CODE = {
  4400: 'protocol',
  4401: 'not_authenticated',
  4403: 'forbidden',
  4404: 'unknown_session',
  4409: 'replaced',
};

export class CallSession extends Emitter {
  /** Remote participants by id (never ourselves), kept current from presence messages. */
  participants = new Map();
  selfId = null;
  /** The last `recording` state reported by the server (normalized). */
  recording = normalizeRecording({});
  #sessionId;
  #signaling;
  #client;
  #tiles;
  #chat;
  #statusLine;
  #peerState = 'new';
  #over = false;
  // Aborted when the call is over: withdraws a question about it still on screen.
  #ended = new AbortController();

  /** Uses the page's standard call elements (ids shared by the customer and staff pages). */
  /** `locate` resolves to the session's current `ws_url` (see Signaling). */
  constructor({ sessionId, localStream, locate }) {
    super();
    const $ = (id) => document.getElementById(id);
    this.#sessionId = sessionId;
    this.#signaling = new Signaling(sessionId, locate);
    this.#client = new CallClient(this.#signaling, localStream);

    const enableSound = $('enable-sound');
    this.#tiles = new TileGrid({
      grid: $('tiles'),
      stage: $('screen-stage'),
      onAutoplayBlocked: () => { enableSound.hidden = false; },
    });
    enableSound.addEventListener('click', () => {
      this.#tiles.resumePlayback();
      enableSound.hidden = true;
    });

    this.#chat = new ChatPanel({
      log: $('chat-log'),
      form: $('chat-form'),
      input: $('chat-input'),
      send: $('chat-send'),
      onSend: (text) => this.#signaling.send('chat', { text }),
      onSendFailed: () => toast(t('error.not_connected'), 'error'),
    });
    this.#chat.setEnabled(false);
    this.#statusLine = $('connection-status');

    const participants = this.participants;
    const client = this.#client;
    window.vteller = { get pc() { return client.pc; }, participants };

    this.#wireSignaling();
    this.#wireClient();
  }

  get client() {
    return this.#client;
  }

  start() {
    this.#signaling.connect();
  }

  /** True while the signaling socket is joined and messages can be sent. */
  get connected() {
    return !this.#over && this.#signaling.state === 'open';
  }

  /** Sends one signaling message (e.g. `mark`); false when it could not be sent right now. */
  send(type, fields = {}) {
    return !this.#over && this.#signaling.send(type, fields);
  }

  /** Sends a photo of the ID card (`side`: front | back) as `identity_upload` + binary frame. */
  sendCardPhoto(side, data) {
    if (this.#over || !this.#signaling.send('identity_upload', { side, bytes: data.byteLength })) return false;
    return this.#signaling.sendBinary(data);
  }

  /** Ends the session for everyone (teller or customer). */
  async end() {
    if (this.#signaling.send('end')) return;
    // No socket right now (e.g. mid-reconnect): the HTTP route does the same.
    await post(`/api/v1/sessions/${encodeURIComponent(this.#sessionId)}/end`);
    this.#finish({ reason: 'ended_by_participant', by: this.selfId });
  }

  /** The end button: asks first, since ending is final for everyone. */
  async endWithConfirmation() {
    const confirmed = await confirmDialog({
      title: 'call.endConfirmTitle', body: 'call.endConfirmBody', confirm: 'call.end', danger: true,
      signal: this.#ended.signal,
    });
    if (!confirmed) return;
    try {
      await this.end();
    } catch (err) {
      toast(errorText(err), 'error');
    }
  }

  leave() {
    this.#signaling.leave();
    this.#finish({ reason: 'left', by: this.selfId });
  }

  /** Replaces the camera/microphone being sent (after a device problem was fixed). */
  setLocalStream(stream) {
    return this.#client.setLocalStream(stream);
  }

  #wireSignaling() {
    const signaling = this.#signaling;
    signaling.on('joined', (msg) => {
      this.selfId = msg.participant_id;
      this.#chat.selfId = msg.participant_id;
      this.participants.clear();
      this.#tiles.clear();
      for (const participant of msg.participants ?? []) this.#upsert(participant);
      this.#chat.setHistory(msg.chat ?? []);
      this.#chat.setReadOnly(msg.role === 'supervisor');
      this.#chat.setEnabled(true);
      this.emit('joined', msg);
    });
    signaling.on('participant_joined', ({ participant, rejoined }) => {
      this.#upsert(participant);
      this.emit('presence', { kind: rejoined ? 'rejoined' : 'joined', participant });
    });
    signaling.on('participant_left', ({ participant_id: id, reason }) => {
      const known = this.participants.get(id);
      if (!known) return;
      const participant = { ...known, state: reason === 'disconnected' ? 'disconnected' : 'left' };
      this.#upsert(participant);
      this.emit('presence', { kind: 'left', participant, reason });
    });
    signaling.on('chat', ({ message }) => this.#chat.add(message));
    signaling.on('screen_share', ({ participant_id: id, active }) => {
      this.#tiles.setSharing(id, Boolean(active));
      const participant = this.participants.get(id);
      if (participant) this.emit('screen_share', { participant, active: Boolean(active) });
    });
    signaling.on('recording', (msg) => {
      this.recording = normalizeRecording(msg);
      this.emit('recording', this.recording);
    });
    signaling.on('consent_request', () => this.emit('consent_request'));
    signaling.on('analysis', (msg) => this.emit('analysis', msg));
    signaling.on('live_warning', (msg) => this.emit('live_warning', msg));
    signaling.on('identity', (msg) => this.emit('identity', normalizeIdentity(msg)));
    signaling.on('identity_consent_request', () => this.emit('identity_consent_request'));
    signaling.on('identity_hint', ({ message }) => this.emit('identity_hint', message));
    signaling.on('transaction', (msg) => { if (msg.transaction) this.emit('transaction', msg.transaction); });
    signaling.on('marked', ({ moment, phase, media_ms: mediaMs }) => {
      if (typeof moment !== 'string' || !['start', 'end'].includes(phase)) return;
      this.emit('marked', { moment, phase, media_ms: Number(mediaMs) || 0 });
    });
    signaling.on('session_ended', ({ reason, by }) => this.#finish({ reason, by }));
    signaling.on('error', (msg) => {
      // Not a failure anyone can act on: signaling.js reconnects to the session's worker at once.
      if (msg.code === 'wrong_worker') return;
      toast(errorText(msg), 'error');
      this.emit('error', msg);
    });
    signaling.on('state', (state, detail) => {
      if (state !== 'open') this.#chat.setEnabled(false);
      if (state === 'closed' && detail.code === 4410) this.#finish({ reason: 'ended_by_participant', by: null });
      else if (state === 'closed' && FATAL_BY_CLOSE_CODE[detail.code]) this.#fail(FATAL_BY_CLOSE_CODE[detail.code]);
      else if (state === 'failed') this.#fail('connection_lost');
      this.#renderStatus();
      this.emit('connection', state);
    });
  }

  #wireClient() {
    this.#client.on('remotes', (media) => this.#tiles.setMedia(media));
    this.#client.on('connectionstate', (state) => {
      this.#peerState = state;
      this.#renderStatus();
    });
    this.#client.on('peer', () => {
      this.#peerState = 'new';
      this.#renderStatus();
    });
    this.#client.on('failure', (err) => console.error('could not apply offer', err));
  }

  #upsert(participant) {
    if (participant.id === this.selfId) return;
    if (participant.state === 'left') this.participants.delete(participant.id);
    else this.participants.set(participant.id, participant);
    this.#tiles.setParticipant(participant);
  }

  #renderStatus() {
    if (this.#over) return;
    const signalingState = this.#signaling.state;
    let key = 'status.connecting';
    if (signalingState === 'reconnecting') key = 'status.reconnecting';
    else if (signalingState === 'failed' || signalingState === 'closed') key = 'status.disconnected';
    else if (signalingState === 'open' && this.#peerState === 'connected') key = 'status.connected';
    else if (signalingState === 'open' && ['disconnected', 'failed'].includes(this.#peerState)) key = 'status.reconnecting';
    this.#statusLine.dataset.status = key.split('.')[1];
    translate(this.#statusLine, key);
  }

  #finish(detail) {
    if (this.#over) return;
    this.#over = true;
    this.#signaling.close();
    this.#client.close();
    this.#ended.abort();
    this.emit('ended', detail);
  }

  #fail(code) {
    if (this.#over) return;
    this.#over = true;
    this.#client.close();
    this.#ended.abort();
    this.emit('fatal', code);
  }
}
