// Call client: answers the server's offers (the server is always the offerer, protocol §2.4).
//
// Events:
//   'peer'             (pc)       a fresh RTCPeerConnection was created (first join and every rejoin)
//   'remotes'          (Map)      participant_id -> {camera, microphone, screen} remote tracks
//   'negotiated'       ()         an answer was sent; canShareScreen may have changed
//   'connectionstate'  (state)    RTCPeerConnection.connectionState
//   'screenshare'      (active)   local screen sharing started or stopped
//   'failure'          (error)    an offer could not be applied
import { Emitter } from './emitter.js';

export class CallClient extends Emitter {
  #signaling;
  #localStream;
  #screenTrack = null;
  #pc = null;
  #iceServers = [];
  #iceTransportPolicy = 'all';
  #publish = [];
  #tracks = [];
  #answered = false;
  #pendingIce = [];
  #offers = Promise.resolve();

  constructor(signaling, localStream = null) {
    super();
    this.#signaling = signaling;
    this.#localStream = localStream;
    signaling.on('joined', (msg) => {
      this.#iceServers = msg.ice_servers ?? [];
      // 'relay' when the bank sends every call through its TURN server (docs/deployment.md).
      this.#iceTransportPolicy = msg.ice_transport_policy ?? 'all';
      this.#newPeer();
    });
    signaling.on('offer', (msg) => {
      // Offers are applied strictly in order; a failed one must not block the next.
      this.#offers = this.#offers
        .then(() => this.#applyOffer(msg))
        .catch((err) => this.emit('failure', err));
    });
  }

  get pc() {
    return this.#pc;
  }

  get sharingScreen() {
    return this.#screenTrack !== null;
  }

  get canShareScreen() {
    return this.#publish.some((entry) => entry.source === 'screen');
  }

  /** Swaps the camera/microphone being sent, e.g. after the user fixed a device. */
  async setLocalStream(stream) {
    this.#localStream = stream;
    await this.#attachPublishedTracks(this.#pc, ['microphone', 'camera']);
  }

  async startScreenShare() {
    if (!this.canShareScreen) throw new Error('no screen transceiver offered');
    const capture = await navigator.mediaDevices.getDisplayMedia({ video: true, audio: false });
    const [track] = capture.getVideoTracks();
    // The browser's own "stop sharing" bar ends the track without going through our button.
    track.addEventListener('ended', () => {
      if (this.#screenTrack === track) this.stopScreenShare();
    });
    this.#screenTrack = track;
    await this.#attachPublishedTracks(this.#pc, ['screen']);
    this.#signaling.send('screen_share', { active: true });
    this.emit('screenshare', true);
  }

  async stopScreenShare() {
    const track = this.#screenTrack;
    if (!track) return;
    this.#screenTrack = null;
    track.stop();
    await this.#attachPublishedTracks(this.#pc, ['screen']);
    this.#signaling.send('screen_share', { active: false });
    this.emit('screenshare', false);
  }

  close() {
    this.#screenTrack?.stop();
    this.#screenTrack = null;
    this.#pc?.close();
  }

  #newPeer() {
    this.#pc?.close();
    const pc = new RTCPeerConnection({
      iceServers: this.#iceServers,
      iceTransportPolicy: this.#iceTransportPolicy,
    });
    this.#pc = pc;
    this.#publish = [];
    this.#tracks = [];
    this.#answered = false;
    this.#pendingIce = [];

    pc.addEventListener('icecandidate', ({ candidate }) => {
      if (pc !== this.#pc) return;
      // Chromium reports an empty candidate string per generation; only null means "done".
      if (candidate && !candidate.candidate) return;
      const payload = candidate
        ? { candidate: candidate.candidate, sdpMid: candidate.sdpMid, sdpMLineIndex: candidate.sdpMLineIndex }
        : null;
      if (this.#answered) this.#signaling.send('ice', { candidate: payload });
      else this.#pendingIce.push(payload);
    });
    pc.addEventListener('connectionstatechange', () => {
      if (pc !== this.#pc) return;
      this.emit('connectionstate', pc.connectionState);
      // The server treats a failed peer connection as a disconnect; rejoining builds a new one.
      if (pc.connectionState === 'failed') this.#signaling.reconnect();
    });

    this.emit('peer', pc);
    this.emit('remotes', new Map());
  }

  async #applyOffer(msg) {
    const pc = this.#pc;
    if (!pc) return;
    await pc.setRemoteDescription({ type: 'offer', sdp: msg.sdp });
    if (pc !== this.#pc) return;
    const firstAnswer = !this.#answered;
    this.#publish = msg.publish ?? [];
    this.#tracks = msg.tracks ?? [];

    await this.#attachPublishedTracks(pc, ['microphone', 'camera', 'screen']);
    for (const { mid } of this.#publish) {
      const transceiver = transceiverByMid(pc, mid);
      if (transceiver) transceiver.direction = 'sendonly';
    }

    await pc.setLocalDescription(await pc.createAnswer());
    if (pc !== this.#pc) return;
    await this.#layerCamera(pc);
    this.#signaling.send('answer', { sdp: pc.localDescription.sdp });
    this.#answered = true;
    for (const candidate of this.#pendingIce.splice(0)) this.#signaling.send('ice', { candidate });
    // A rejoin starts with the server believing nobody shares; tell it again.
    if (firstAnswer && this.#screenTrack) this.#signaling.send('screen_share', { active: true });

    this.emit('remotes', this.#remoteTracks(pc));
    this.emit('negotiated');
  }

  // Built from transceiver mids after every offer rather than from 'track' events: a renegotiation
  // may move a mid to another participant or drop it without any 'track' event firing.
  #remoteTracks(pc) {
    const byParticipant = new Map();
    for (const { mid, participant_id: participantId, source } of this.#tracks) {
      const transceiver = transceiverByMid(pc, mid);
      if (!transceiver) continue;
      if (!byParticipant.has(participantId)) byParticipant.set(participantId, {});
      byParticipant.get(participantId)[source] = transceiver.receiver.track;
    }
    return byParticipant;
  }

  async #attachPublishedTracks(pc, sources) {
    if (!pc) return;
    const local = {
      microphone: this.#localStream?.getAudioTracks()[0] ?? null,
      camera: this.#localStream?.getVideoTracks()[0] ?? null,
      screen: this.#screenTrack,
    };
    for (const { mid, source } of this.#publish) {
      if (!sources.includes(source)) continue;
      const transceiver = transceiverByMid(pc, mid);
      if (transceiver && transceiver.sender.track !== local[source]) {
        await transceiver.sender.replaceTrack(local[source]);
      }
    }
  }

  // The camera in three temporal layers (what Chromium uses for its own simulcast): the server
  // then decodes only the frames other frames refer to, half of them, for its live face checks
  // (docs/architecture.md, "Media"). Only possible once the answer is applied; a browser
  // that cannot (older ones, some codecs) sends one layer, which the server decodes whole.
  async #layerCamera(pc) {
    const camera = this.#publish.find((p) => p.source === 'camera');
    const sender = camera ? transceiverByMid(pc, camera.mid)?.sender : null;
    if (!sender || typeof sender.getParameters !== 'function') return;
    const params = sender.getParameters();
    const [encoding] = params.encodings ?? [];
    if (!encoding || encoding.scalabilityMode === CAMERA_LAYERS) return;
    encoding.scalabilityMode = CAMERA_LAYERS;
    try {
      await sender.setParameters(params);
    } catch (err) {
      console.info('camera stays in one temporal layer:', err?.message ?? err);
    }
  }
}

const CAMERA_LAYERS = 'L1T3';

function transceiverByMid(pc, mid) {
  return pc.getTransceivers().find((t) => t.mid === mid) ?? null;
}
