/**
 * A small typed event emitter: `on("message", (m) => ...)` with the event's
 * payload type checked at compile time. A listener that throws is reported
 * and does not stop the others, nor the client that emits.
 *
 * @module
 */

/** A listener of one event type. */
export type Listener<T> = (payload: T) => void;

/** Emits events whose payload types are named by `Events` (event name to payload type). */
export class Emitter<Events extends object> {
  #listeners = new Map<keyof Events, Set<Listener<never>>>();

  /**
   * Calls `listener` for every event of `type`.
   *
   * @returns A function that removes the listener.
   */
  on<K extends keyof Events>(type: K, listener: Listener<Events[K]>): () => void {
    let set = this.#listeners.get(type);
    if (!set) this.#listeners.set(type, set = new Set());
    set.add(listener as Listener<never>);
    return () => this.off(type, listener);
  }

  /** Calls `listener` for the next event of `type` only. */
  once<K extends keyof Events>(type: K, listener: Listener<Events[K]>): () => void {
    const off = this.on(type, (payload) => {
      off();
      listener(payload);
    });
    return off;
  }

  /** Removes a listener added with {@linkcode Emitter.on}. */
  off<K extends keyof Events>(type: K, listener: Listener<Events[K]>): void {
    this.#listeners.get(type)?.delete(listener as Listener<never>);
  }

  /** Calls every listener of `type` with `payload`, in the order they were added. */
  protected emit<K extends keyof Events>(type: K, payload: Events[K]): void {
    const set = this.#listeners.get(type);
    if (!set) return;
    for (const listener of [...set]) {
      try {
        (listener as Listener<Events[K]>)(payload);
      } catch (error) {
        // A listener's bug must not stop the connection that called it.
        console.error(`A listener of "${String(type)}" threw:`, error);
      }
    }
  }
}
