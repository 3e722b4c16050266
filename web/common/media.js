// Camera/microphone access with errors sorted into what the user can do about them.

const ERROR_KINDS = {
  NotFoundError: 'not_found',
  OverconstrainedError: 'not_found',
  NotAllowedError: 'denied',
  SecurityError: 'denied',
  NotReadableError: 'in_use',
  AbortError: 'in_use',
};

class MediaAccessError extends Error {
  /** kind: 'not_found' | 'denied' | 'in_use' | 'insecure' | 'other'; i18n key `media.<kind>`. */
  constructor(kind, cause) {
    super(cause?.message ?? kind);
    this.name = 'MediaAccessError';
    this.kind = kind;
    this.cause = cause;
  }
}

export async function getCameraAndMicrophone() {
  // mediaDevices is undefined outside a secure context (plain http on a non-localhost address).
  if (!navigator.mediaDevices?.getUserMedia) throw new MediaAccessError('insecure');
  try {
    return await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
      video: { width: { ideal: 640 }, height: { ideal: 480 }, frameRate: { ideal: 20 } },
    });
  } catch (err) {
    throw new MediaAccessError(ERROR_KINDS[err.name] ?? 'other', err);
  }
}

export function stopStream(stream) {
  stream?.getTracks().forEach((track) => track.stop());
}

/**
 * Drives a level bar from a microphone: sets the CSS variable --level (0..1) on `element`,
 * its aria-valuenow, and calls onHeard once when clear speech-level sound was detected.
 */
export class LevelMeter {
  #context;
  #frame = 0;
  #lastAria = 0;

  constructor(stream, element, onHeard) {
    this.#context = new AudioContext();
    const analyser = this.#context.createAnalyser();
    analyser.fftSize = 1024;
    this.#context.createMediaStreamSource(stream).connect(analyser);
    // Without a user gesture the context starts suspended; the first tap or key press resumes it.
    // (The meter may be stopped, and its context closed, before that happens.)
    const resume = () => {
      if (this.#context.state !== 'closed') this.#context.resume().catch(() => {});
    };
    document.addEventListener('pointerdown', resume, { once: true });
    document.addEventListener('keydown', resume, { once: true });

    const samples = new Float32Array(analyser.fftSize);
    let heard = false;
    const tick = (now) => {
      analyser.getFloatTimeDomainData(samples);
      const rms = Math.sqrt(samples.reduce((sum, s) => sum + s * s, 0) / samples.length);
      // Map -60..0 dBFS to 0..1: a linear scale would show normal speech as a sliver.
      const level = Math.min(1, Math.max(0, (20 * Math.log10(rms || 1e-8) + 60) / 60));
      element.style.setProperty('--level', level.toFixed(3));
      if (now - this.#lastAria > 500) {
        element.setAttribute('aria-valuenow', String(Math.round(level * 100)));
        this.#lastAria = now;
      }
      if (!heard && level > 0.45) {
        heard = true;
        onHeard?.();
      }
      this.#frame = requestAnimationFrame(tick);
    };
    this.#frame = requestAnimationFrame(tick);
  }

  stop() {
    cancelAnimationFrame(this.#frame);
    this.#context.close();
  }
}
