/**
 * Where the client keeps what must survive a reload: its client id, the last
 * position it saw and its unacked messages. One small interface, three
 * implementations: in memory, `localStorage` (any Web Storage) and IndexedDB.
 *
 * @module
 */

/** A string key-value store. Every method may be sync or async underneath; all return promises. */
export interface StorageAdapter {
  /** The value of `key`, or null when there is none. */
  get(key: string): Promise<string | null>;
  /** Stores `value` under `key`. */
  set(key: string, value: string): Promise<void>;
  /** Forgets `key`. */
  delete(key: string): Promise<void>;
}

/** Keeps values in a `Map`: they last as long as the object (the default storage). */
export class MemoryStorage implements StorageAdapter {
  #values = new Map<string, string>();

  /** Reads a value. */
  get(key: string): Promise<string | null> {
    return Promise.resolve(this.#values.get(key) ?? null);
  }

  /** Writes a value. */
  set(key: string, value: string): Promise<void> {
    this.#values.set(key, value);
    return Promise.resolve();
  }

  /** Removes a value. */
  delete(key: string): Promise<void> {
    this.#values.delete(key);
    return Promise.resolve();
  }
}

/** The part of the Web Storage API (`localStorage`) that {@linkcode WebStorage} uses. */
export interface WebStorageLike {
  /** Reads an item. */
  getItem(key: string): string | null;
  /** Writes an item; may throw when the quota is exceeded. */
  setItem(key: string, value: string): void;
  /** Removes an item. */
  removeItem(key: string): void;
}

/**
 * Keeps values in `localStorage` (or any object with its three methods). A
 * full or refused store loses the write, not the connection: the client keeps
 * working from memory.
 */
export class WebStorage implements StorageAdapter {
  #storage: WebStorageLike;
  #prefix: string;

  /**
   * Wraps a Web Storage object.
   *
   * @param storage Defaults to `globalThis.localStorage`.
   * @param prefix Put before every key.
   */
  constructor(storage?: WebStorageLike, prefix = "") {
    const found = storage ?? (globalThis as { localStorage?: WebStorageLike }).localStorage;
    if (!found) throw new TypeError("Cannot use WebStorage: no localStorage here");
    this.#storage = found;
    this.#prefix = prefix;
  }

  /** Reads a value. */
  get(key: string): Promise<string | null> {
    try {
      return Promise.resolve(this.#storage.getItem(this.#prefix + key));
    } catch {
      return Promise.resolve(null);
    }
  }

  /** Writes a value; a full store keeps the old one. */
  set(key: string, value: string): Promise<void> {
    try {
      this.#storage.setItem(this.#prefix + key, value);
    } catch (error) {
      console.warn(`Cannot keep ${key} in localStorage:`, error);
    }
    return Promise.resolve();
  }

  /** Removes a value. */
  delete(key: string): Promise<void> {
    try {
      this.#storage.removeItem(this.#prefix + key);
    } catch {
      // Nothing to forget then.
    }
    return Promise.resolve();
  }
}

/**
 * Keeps values in an IndexedDB object store: more room than `localStorage`
 * and no blocking of the page. Browsers only (Deno has no IndexedDB); tested
 * in headless Chromium.
 */
export class IndexedDBStorage implements StorageAdapter {
  #db: Promise<IDBDatabase> | undefined;
  #name: string;
  #store: string;

  /**
   * Names the database and store; nothing opens until the first read or write.
   *
   * @param name Database name.
   * @param store Object store name.
   */
  constructor(name = "parley", store = "kv") {
    this.#name = name;
    this.#store = store;
  }

  #open(): Promise<IDBDatabase> {
    this.#db ??= new Promise((resolve, reject) => {
      const factory = (globalThis as { indexedDB?: IDBFactory }).indexedDB;
      if (!factory) {
        reject(new TypeError("Cannot use IndexedDBStorage: no indexedDB here"));
        return;
      }
      const request = factory.open(this.#name, 1);
      request.onupgradeneeded = () => request.result.createObjectStore(this.#store);
      request.onsuccess = () => resolve(request.result);
      request.onerror = () => reject(request.error);
    });
    return this.#db;
  }

  async #run<T>(
    mode: IDBTransactionMode,
    action: (store: IDBObjectStore) => IDBRequest<T>,
  ): Promise<T> {
    const db = await this.#open();
    return await new Promise<T>((resolve, reject) => {
      const transaction = db.transaction(this.#store, mode);
      const request = action(transaction.objectStore(this.#store));
      transaction.oncomplete = () => resolve(request.result);
      transaction.onerror = () => reject(transaction.error);
      transaction.onabort = () => reject(transaction.error);
    });
  }

  /** Reads a value. */
  async get(key: string): Promise<string | null> {
    const value = await this.#run("readonly", (store) => store.get(key));
    return typeof value === "string" ? value : null;
  }

  /** Writes a value. */
  async set(key: string, value: string): Promise<void> {
    await this.#run("readwrite", (store) => store.put(value, key));
  }

  /** Removes a value. */
  async delete(key: string): Promise<void> {
    await this.#run("readwrite", (store) => store.delete(key));
  }

  /** Closes the database connection, if one was opened. */
  async close(): Promise<void> {
    const db = this.#db;
    this.#db = undefined;
    if (db) (await db.catch(() => null))?.close();
  }
}
