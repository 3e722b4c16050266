// DOM views shared by the customer and staff call pages: remote video tiles, chat, media toggles.
import { translate } from './i18n.js';
import { formatTime } from './ui.js';

// Observers publish nothing and the customer never learns of them, so they get no tile.
const TILELESS_ROLES = new Set(['supervisor']);
const TILE_STATES = new Set(['connected', 'disconnected']);

/**
 * One camera tile per remote participant (video + audio in the same <video>), plus a screen
 * tile in `stage` while that participant shares. Tiles carry data-participant-id, data-role and
 * data-source for tests and styling.
 */
export class TileGrid {
  #grid;
  #stage;
  #onAutoplayBlocked;
  #participants = new Map();
  #media = new Map();
  #sharing = new Map();
  #tiles = new Map();
  #watchedTracks = new WeakSet();

  constructor({ grid, stage, onAutoplayBlocked }) {
    this.#grid = grid;
    this.#stage = stage;
    this.#onAutoplayBlocked = onAutoplayBlocked;
  }

  setParticipant(participant) {
    if (TILELESS_ROLES.has(participant.role) || !TILE_STATES.has(participant.state)) {
      this.#participants.delete(participant.id);
      this.#sharing.delete(participant.id);
    } else {
      this.#participants.set(participant.id, participant);
    }
    this.#render();
  }

  clear() {
    this.#participants.clear();
    this.#sharing.clear();
    this.#render();
  }

  /** media: Map participant_id -> {camera, microphone, screen} (MediaStreamTracks). */
  setMedia(media) {
    this.#media = media;
    for (const [participantId, tracks] of media) {
      const screen = tracks.screen;
      if (screen && !this.#watchedTracks.has(screen)) {
        this.#watchedTracks.add(screen);
        // Someone joining mid-share never gets the screen_share message; frames arriving tell.
        screen.addEventListener('unmute', () => this.setSharing(participantId, true));
        if (!screen.muted) this.#sharing.set(participantId, true);
      }
    }
    this.#render();
  }

  setSharing(participantId, active) {
    this.#sharing.set(participantId, active);
    this.#render();
  }

  /** Retries playback after a user gesture when the browser blocked unmuted autoplay. */
  resumePlayback() {
    for (const { video } of this.#tiles.values()) video.play().catch(() => {});
  }

  #render() {
    const wanted = new Map();
    for (const [id, participant] of this.#participants) {
      const media = this.#media.get(id) ?? {};
      wanted.set(`${id}:camera`, { participant, source: 'camera', tracks: [media.camera, media.microphone] });
      if (this.#sharing.get(id) && media.screen) {
        wanted.set(`${id}:screen`, { participant, source: 'screen', tracks: [media.screen] });
      }
    }
    for (const [key, tile] of this.#tiles) {
      if (!wanted.has(key)) {
        tile.element.remove();
        this.#tiles.delete(key);
      }
    }
    for (const [key, spec] of wanted) {
      const tile = this.#tiles.get(key) ?? this.#createTile(key, spec);
      this.#updateTile(tile, spec);
    }
    this.#stage.hidden = ![...wanted.values()].some((spec) => spec.source === 'screen');
  }

  #createTile(key, { participant, source }) {
    const element = document.createElement('figure');
    element.className = `tile tile-${source}`;
    element.dataset.participantId = participant.id;
    element.dataset.source = source;
    const video = document.createElement('video');
    video.autoplay = true;
    video.playsInline = true;
    const caption = document.createElement('figcaption');
    caption.className = 'tile-label';
    const name = document.createElement('span');
    name.className = 'tile-name';
    const role = document.createElement('span');
    role.className = 'tile-role';
    caption.append(name, role);
    const status = document.createElement('p');
    status.className = 'tile-status';
    translate(status, 'call.participantReconnecting');
    element.append(video, caption, status);
    (source === 'screen' ? this.#stage : this.#grid).append(element);
    const tile = { element, video, name, role, status, trackIds: '' };
    this.#tiles.set(key, tile);
    return tile;
  }

  #updateTile(tile, { participant, source, tracks }) {
    tile.element.dataset.role = participant.role;
    tile.element.classList.toggle('is-reconnecting', participant.state === 'disconnected');
    tile.status.hidden = participant.state !== 'disconnected';
    tile.name.textContent = participant.display_name ?? '';
    translate(tile.role, source === 'screen' ? 'call.screenOf' : `role.${participant.role}`);

    const present = tracks.filter(Boolean);
    const trackIds = present.map((track) => track.id).join(',');
    if (trackIds === tile.trackIds) return;
    // A new MediaStream per change: Chromium does not reliably pick up tracks added later.
    tile.trackIds = trackIds;
    tile.video.srcObject = present.length ? new MediaStream(present) : null;
    if (present.length) {
      tile.video.play().catch((err) => {
        if (err.name === 'NotAllowedError') this.#onAutoplayBlocked?.();
      });
    }
  }
}

/** Chat panel over #chat-log / #chat-input / #chat-send; onSend(text) returns false if not sent. */
export class ChatPanel {
  #log;
  #form;
  #input;
  #send;
  #ids = new Set();
  selfId = null;

  constructor({ log, form, input, send, onSend, onSendFailed }) {
    this.#log = log;
    this.#form = form;
    this.#input = input;
    this.#send = send;
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      const text = input.value.trim();
      if (!text) return;
      if (onSend(text)) input.value = '';
      else onSendFailed?.();
      input.focus();
    });
  }

  setEnabled(enabled) {
    this.#input.disabled = !enabled;
    this.#send.disabled = !enabled;
  }

  /** Supervisors read the chat but do not write in it: the customer is never told they watch. */
  setReadOnly(readOnly) {
    this.#form.hidden = readOnly;
  }

  setHistory(messages) {
    this.#log.replaceChildren();
    this.#ids.clear();
    messages.forEach((message) => this.add(message));
  }

  add(message) {
    if (this.#ids.has(message.id)) return;
    this.#ids.add(message.id);
    const item = document.createElement('li');
    item.className = 'chat-msg';
    item.classList.toggle('mine', message.participant_id === this.selfId);
    item.dataset.role = message.role ?? '';
    const meta = document.createElement('div');
    meta.className = 'chat-meta';
    const sender = document.createElement('span');
    sender.className = 'chat-sender';
    sender.textContent = message.sender_name ?? '';
    const role = document.createElement('span');
    role.className = 'chat-role';
    translate(role, `role.${message.role}`);
    const time = document.createElement('time');
    time.dateTime = message.sent_at ?? '';
    time.textContent = formatTime(message.sent_at);
    meta.append(sender, role, time);
    const text = document.createElement('p');
    text.className = 'chat-text';
    text.textContent = message.text ?? '';
    item.append(meta, text);
    this.#log.append(item);
    this.#log.scrollTop = this.#log.scrollHeight;
  }
}

/** Mute and camera buttons; they disable tracks rather than renegotiate. */
export function bindMediaToggles(getStream, micButton, cameraButton) {
  const bind = (button, kind, onKey, offKey) => {
    translate(button, onKey);
    button.addEventListener('click', () => {
      const tracks = kind === 'audio' ? getStream()?.getAudioTracks() : getStream()?.getVideoTracks();
      if (!tracks?.length) return;
      const turnOff = tracks[0].enabled;
      tracks.forEach((track) => { track.enabled = !turnOff; });
      button.classList.toggle('is-active', turnOff);
      translate(button, turnOff ? offKey : onKey);
    });
  };
  bind(micButton, 'audio', 'call.mute', 'call.unmute');
  bind(cameraButton, 'video', 'call.cameraOff', 'call.cameraOn');
}
