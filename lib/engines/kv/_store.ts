/**
 * Plumbing shared by the parts of the KV engine: keys, commits that retry,
 * per-room queues, and the limits of Deno KV they respect.
 *
 * @module
 */

import type { Logger } from "../../log.ts";
import type { EngineMetrics } from "../_metrics.ts";

/** Checks per atomic write allowed everywhere (Deno Deploy; local files allow 100). */
export const MAX_CHECKS = 10;
/** Keys per `getMany`. */
export const MAX_GET_MANY = 10;
/** Tries of one write against concurrent writers before giving up. */
export const MAX_ATTEMPTS = 64;
/** Mutations per atomic write. */
export const MAX_MUTATIONS = 1000;
/** Bytes of the keys and values of one atomic write's mutations. */
export const MAX_MUTATION_BYTES = 800 * 1024;
/** Bytes of the keys of one atomic write. */
export const MAX_KEY_BYTES = 80 * 1024;

/** What the parts of one engine share. */
export interface KvContext {
  kv: Deno.Kv;
  now: () => number;
  log: Logger;
  /** Where batch sizes and sweep times go. */
  metrics?: EngineMetrics;
}

/** A key of a room: everything of a room is under `["parley", room]`. */
export function key(room: string, ...parts: Deno.KvKeyPart[]): Deno.KvKey {
  return ["parley", room, ...parts];
}

/** Waits `ms`, or less when `signal` aborts. */
export function delay(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener("abort", done, { once: true });
  });
}

/** A short random pause that grows with the attempt, so colliding writers spread out. */
export function backoff(attempt: number): Promise<void> {
  return delay(Math.random() * Math.min(50, 2 ** attempt));
}

/**
 * Commits `op`. SQLite's "database is locked" (another handle on the same
 * file was writing) counts as a failed check: the caller reads again and
 * retries.
 */
export async function commit(op: Deno.AtomicOperation): Promise<boolean> {
  try {
    return (await op.commit()).ok;
  } catch (error) {
    if (error instanceof Error && /database is locked|database is busy/i.test(error.message)) {
      return false;
    }
    throw error;
  }
}

/** Commits a write without checks, retrying while the database is locked. */
export async function write(make: () => Deno.AtomicOperation): Promise<void> {
  for (let attempt = 1;; attempt++) {
    if (await commit(make())) return;
    if (attempt >= MAX_ATTEMPTS) {
      throw new Error(`Cannot write to the KV database: locked ${attempt} times in a row`);
    }
    await backoff(attempt);
  }
}

/** The error of a write that lost to concurrent writers every time. */
export function busy(what: string, room: string): Error {
  return new Error(
    `Cannot ${what} in room ${JSON.stringify(room)}: concurrent writes won ${MAX_ATTEMPTS} times`,
  );
}

/**
 * Entries of `keys`, read ten at a time (the limit of one `getMany`): the
 * first ten, then the others at once. Each ten are one consistent read, and
 * no read of the others starts before the first ten are read.
 */
export async function getAll<T>(
  kv: Deno.Kv,
  keys: Deno.KvKey[],
): Promise<Deno.KvEntryMaybe<T>[]> {
  const first = await kv.getMany<T[]>(keys.slice(0, MAX_GET_MANY));
  const rest: Promise<Deno.KvEntryMaybe<T>[]>[] = [];
  for (let i = MAX_GET_MANY; i < keys.length; i += MAX_GET_MANY) {
    rest.push(kv.getMany<T[]>(keys.slice(i, i + MAX_GET_MANY)));
  }
  return first.concat(...await Promise.all(rest));
}

/** Named queues: work queued under one name runs one at a time, in call order. */
export class Queues {
  #tails = new Map<string, Promise<unknown>>();

  /** Runs `work` after every earlier call queued under `name` has settled. */
  run<T>(name: string, work: () => Promise<T>): Promise<T> {
    const result = (this.#tails.get(name) ?? Promise.resolve()).then(work);
    const settled = result.then(() => {}, () => {});
    this.#tails.set(name, settled);
    settled.then(() => {
      if (this.#tails.get(name) === settled) this.#tails.delete(name);
    });
    return result;
  }
}
