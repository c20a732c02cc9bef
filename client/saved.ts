/**
 * The client's state in its storage adapter: the client id (shared by every
 * room), and per room the last position seen and the unacked items. Read
 * once, before the first write, so a saved outbox is merged rather than
 * overwritten; written at most once per turn of the event loop.
 *
 * @module
 */

import type { Inbox } from "./inbox.ts";
import type { Outbox } from "./outbox.ts";
import type { StorageAdapter } from "./storage.ts";
import { isObject } from "./wire.ts";

/** A client id: 8 to 64 characters from `A-Z a-z 0-9 _ -`. */
export const CLIENT_PATTERN = /^[A-Za-z0-9_-]{8,64}$/;
/** The storage key of the client id. */
export const CLIENT_KEY = "parley:client";
const ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";

/** A random id of `length` characters from `A-Z a-z 0-9 _ -`. */
export function randomId(length: number): string {
  const bytes = crypto.getRandomValues(new Uint8Array(length));
  return Array.from(bytes, (b) => ID_ALPHABET[b & 63]).join("");
}

/** Loads and saves one room's state (and the client id) through a storage adapter. */
export class SavedState {
  #storage: StorageAdapter;
  #key: string;
  #inbox: Inbox;
  #outbox: Outbox;
  #clientId: string | undefined;
  #loaded: Promise<void> | undefined;
  #saving: Promise<void> | undefined;
  #dirty = false;

  /**
   * @param storage Where it is kept.
   * @param key The room's key.
   * @param inbox Whose position is saved and restored.
   * @param outbox Whose items are saved and restored.
   * @param clientId A client id given by the caller (then not read from storage).
   */
  constructor(
    storage: StorageAdapter,
    key: string,
    inbox: Inbox,
    outbox: Outbox,
    clientId?: string,
  ) {
    this.#storage = storage;
    this.#key = key;
    this.#inbox = inbox;
    this.#outbox = outbox;
    this.#clientId = clientId;
  }

  /** The client id, once loaded (or given). */
  get clientId(): string | undefined {
    return this.#clientId;
  }

  /** Reads the client id, the position and the outbox, once; later calls wait for the same read. */
  load(): Promise<void> {
    this.#loaded ??= (async () => {
      try {
        if (this.#clientId === undefined) {
          const saved = await this.#storage.get(CLIENT_KEY);
          if (saved !== null && CLIENT_PATTERN.test(saved)) this.#clientId = saved;
          else {
            this.#clientId = randomId(22);
            await this.#storage.set(CLIENT_KEY, this.#clientId);
          }
        }
        const text = await this.#storage.get(this.#key);
        const saved: unknown = text === null ? null : JSON.parse(text);
        if (isObject(saved)) {
          const last = saved.last;
          if (isObject(last) && typeof last.epoch === "string" && typeof last.id === "number") {
            this.#inbox.last ??= { epoch: last.epoch, id: last.id };
          }
          this.#outbox.restore(saved.outbox);
        }
      } catch (error) {
        console.warn("Cannot read the client's saved state:", error);
        this.#clientId ??= randomId(22);
      }
    })();
    return this.#loaded;
  }

  /** Something changed: write the state soon, once however many changes come this turn. */
  persist(): void {
    this.#dirty = true;
    this.#saving ??= Promise.resolve().then(() => this.flush());
  }

  /** Writes what changed, and resolves once it is written. */
  async flush(): Promise<void> {
    // Never write over a saved state before it was read (and merged).
    await this.load();
    while (this.#dirty) {
      this.#dirty = false;
      const state = JSON.stringify({ last: this.#inbox.last, outbox: this.#outbox.toJSON() });
      try {
        await this.#storage.set(this.#key, state);
      } catch (error) {
        console.warn("Cannot save the client's state:", error);
      }
    }
    this.#saving = undefined;
  }
}
