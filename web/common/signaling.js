// WebSocket client for signaling protocol v1 (docs/protocol.md §2).
//
// Every server message is emitted under its `type` (e.g. on('offer', msg => ...)), including
// `error`. Connection changes are emitted as on('state', (state, detail) => ...) with state
// 'connecting' | 'reconnecting' | 'open' | 'closed' | 'failed'.
import { Emitter } from './emitter.js';

const PROTOCOL_VERSION = 1;
// Close codes after which a new connection would be refused again (4400 cannot be recovered
// either). Anything else, e.g. 1006 when the network drops, is retried.
const FINAL_CLOSE_CODES = new Set([4400, 4401, 4403, 4404, 4409, 4410]);
// Matches the server's rejoin grace: past it the participant has left anyway.
const RECONNECT_WINDOW_MS = 30_000;
const WRONG_WORKER = 4421;
const MAX_BACKOFF_MS = 5_000;
// A socket can stay "open" on a dead network for minutes; an unanswered ping exposes it.
const PING_INTERVAL_MS = 10_000;

export class Signaling extends Emitter {
  #url;
  #ws = null;
  #state = 'idle';
  #stopped = false;
  #reconnectDeadline = 0;
  #attempt = 0;
  #retryTimer = null;
  #pingTimer = null;
  #awaitingPong = false;

  #locate;

  /**
   * `locate` returns the session's current signaling URL (its `ws_url`): a session lives on one
   * worker and moves when that worker dies, so it is asked again before every connection.
   */
  constructor(sessionId, locate) {
    super();
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    this.#url = `${scheme}//${location.host}/ws/v1/sessions/${encodeURIComponent(sessionId)}`;
    this.#locate = locate;
  }

  async #currentUrl() {
    try {
      const url = await this.#locate();
      if (url) return new URL(url, this.#url.replace(/^ws/, 'http')).href.replace(/^http/, 'ws');
    } catch (err) {
      console.warn('could not look up the session; reusing the last signaling URL', err);
    }
    return this.#url;
  }

  get state() {
    return this.#state;
  }

  connect() {
    this.#stopped = false;
    this.#open();
  }

  /** Returns false when the message could not be sent (socket not open). */
  send(type, fields = {}) {
    if (this.#ws?.readyState !== WebSocket.OPEN) return false;
    this.#ws.send(JSON.stringify({ v: PROTOCOL_VERSION, type, ...fields }));
    return true;
  }

  /** A binary frame (the photo announced by an `identity_upload` just before). */
  sendBinary(data) {
    if (this.#ws?.readyState !== WebSocket.OPEN) return false;
    this.#ws.send(data);
    return true;
  }

  /** Deliberate leave: the server releases the seat at once instead of waiting for a rejoin. */
  leave() {
    this.send('leave');
    this.close();
  }

  close() {
    this.#stopped = true;
    clearTimeout(this.#retryTimer);
    this.#stopPing();
    const ws = this.#ws;
    this.#ws = null;
    ws?.close(1000);
    this.#setState('closed', { code: 1000 });
  }

  /** Abandons the current socket and rejoins, e.g. after the peer connection failed. */
  reconnect() {
    if (this.#stopped) return;
    this.#abandonSocket();
    this.#scheduleReconnect();
  }

  #setState(state, detail = {}) {
    this.#state = state;
    this.emit('state', state, detail);
  }

  async #open() {
    this.#setState(this.#reconnectDeadline ? 'reconnecting' : 'connecting');
    this.#url = await this.#currentUrl();
    if (this.#stopped) return;
    const ws = new WebSocket(this.#url);
    this.#ws = ws;
    ws.onopen = () => {
      ws.send(JSON.stringify({ v: PROTOCOL_VERSION, type: 'join' }));
      this.#startPing();
    };
    ws.onmessage = (event) => this.#onMessage(event);
    ws.onclose = (event) => this.#onClose(ws, event);
  }

  #onMessage(event) {
    this.#awaitingPong = false;
    let msg;
    try {
      msg = JSON.parse(event.data);
    } catch {
      return;
    }
    if (!msg || typeof msg.type !== 'string') return;
    if (msg.type === 'joined') {
      this.#reconnectDeadline = 0;
      this.#attempt = 0;
      this.#setState('open', { rejoined: Boolean(msg.rejoined) });
    }
    if (msg.type === 'error') console.warn('signaling error', msg.code, msg.message, msg.ref);
    this.emit(msg.type, msg);
  }

  #onClose(ws, event) {
    if (ws !== this.#ws) return;
    this.#ws = null;
    this.#stopPing();
    if (this.#stopped) return;
    if (event.code === WRONG_WORKER) {
      // The session is hosted by another worker: look it up and go there at once.
      clearTimeout(this.#retryTimer);
      this.#open();
      return;
    }
    if (FINAL_CLOSE_CODES.has(event.code)) {
      this.#stopped = true;
      this.#setState('closed', { code: event.code, reason: event.reason });
      return;
    }
    this.#scheduleReconnect();
  }

  #scheduleReconnect() {
    const now = Date.now();
    if (!this.#reconnectDeadline) this.#reconnectDeadline = now + RECONNECT_WINDOW_MS;
    const remaining = this.#reconnectDeadline - now;
    if (remaining <= 0) {
      this.#stopped = true;
      this.#setState('failed');
      return;
    }
    const delay = Math.min(500 * 2 ** this.#attempt, MAX_BACKOFF_MS, remaining);
    this.#attempt += 1;
    this.#setState('reconnecting');
    clearTimeout(this.#retryTimer);
    this.#retryTimer = setTimeout(() => this.#open(), delay);
  }

  #abandonSocket() {
    const ws = this.#ws;
    this.#ws = null;
    this.#stopPing();
    if (ws) {
      ws.onclose = null;
      ws.onmessage = null;
      ws.close();
    }
  }

  #startPing() {
    this.#stopPing();
    this.#pingTimer = setInterval(() => {
      if (this.#awaitingPong) {
        this.reconnect();
        return;
      }
      this.#awaitingPong = this.send('ping');
    }, PING_INTERVAL_MS);
  }

  #stopPing() {
    clearInterval(this.#pingTimer);
    this.#pingTimer = null;
    this.#awaitingPong = false;
  }
}
