/**
 * Draining an instance for a rolling deploy: its sockets are closed with
 * 1012 (service restart) a slice at a time over a spread of seconds, so their
 * clients come back to the other instances as a trickle, not a herd.
 *
 * @module
 */

import { CloseCode } from "./protocol.ts";

/** What a drain closes. */
export interface Closable {
  close(code: number, reason: string): void;
}

/** Options of {@linkcode drainSpread}. */
export interface DrainOptions {
  /** Milliseconds over which the closes are spread; 0 closes all at once. */
  spreadMs: number;
  /** The close code; 1012 (service restart) by default. */
  code?: number;
  reason?: string;
  /** Milliseconds between slices (default 50). */
  tickMs?: number;
  /** Called after each slice with how many are closed so far. */
  onSlice?: (closed: number, total: number) => void;
}

/**
 * Closes `items` in equal slices over `spreadMs`: by the time `t` has
 * passed, about `t / spreadMs` of them are closed, in the order given. Items
 * that close on their own meanwhile are closed again harmlessly.
 *
 * @returns Resolves once the last slice is closed.
 */
export function drainSpread(items: readonly Closable[], options: DrainOptions): Promise<void> {
  const { spreadMs, code = CloseCode.serviceRestart, reason = "server restarting: reconnect" } =
    options;
  const tickMs = Math.max(1, options.tickMs ?? 50);
  const total = items.length;
  let closed = 0;
  const closeUpTo = (count: number) => {
    for (; closed < Math.min(count, total); closed++) {
      try {
        items[closed].close(code, reason);
      } catch {
        // A socket that cannot be closed is gone already.
      }
    }
    options.onSlice?.(closed, total);
  };
  if (total === 0 || spreadMs <= 0) {
    closeUpTo(total);
    return Promise.resolve();
  }
  const start = performance.now();
  return new Promise((resolve) => {
    const tick = () => {
      const share = Math.min(1, (performance.now() - start) / spreadMs);
      // At least one a tick, so a spread shorter than the ticks still ends.
      closeUpTo(Math.max(closed + 1, Math.ceil(share * total)));
      if (closed >= total) resolve();
      else setTimeout(tick, tickMs);
    };
    tick();
  });
}
