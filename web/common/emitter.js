// Minimal event emitter: plain callbacks keep the call code free of CustomEvent/detail plumbing.
export class Emitter {
  #handlers = new Map();

  on(type, fn) {
    if (!this.#handlers.has(type)) this.#handlers.set(type, new Set());
    this.#handlers.get(type).add(fn);
    return () => this.#handlers.get(type).delete(fn);
  }

  emit(type, ...args) {
    for (const fn of [...(this.#handlers.get(type) ?? [])]) {
      try {
        fn(...args);
      } catch (err) {
        // One faulty listener must not stop signaling or media handling.
        console.error(`listener for "${type}" failed`, err);
      }
    }
  }
}
