/**
 * Fakes for unit tests: a socket and a hub on the in-memory engine.
 *
 * @module
 */

import { MemoryEngine } from "../lib/engines/memory.ts";
import { Hub, type HubOptions, type Socket } from "../lib/hub.ts";

/**
 * A socket that records what is sent and closed. It is an `EventTarget`, so
 * tests can dispatch the events the handler listens to.
 */
export class FakeSocket extends EventTarget implements Socket {
  readyState = 1;
  bufferedAmount = 0;
  sent: (string | Uint8Array)[] = [];
  closes: { code?: number; reason?: string }[] = [];
  failSend = false;
  /** A stalled socket queues what is sent, as a peer that stopped reading. */
  stalled = false;

  send(data: string | Uint8Array): void {
    if (this.failSend) throw new Error("send failed");
    this.sent.push(data);
    if (this.stalled) {
      this.bufferedAmount += typeof data === "string" ? data.length : data.byteLength;
    }
  }

  /** The peer reads again: the queue empties. */
  drain(): void {
    this.stalled = false;
    this.bufferedAmount = 0;
  }

  close(code?: number, reason?: string): void {
    this.closes.push({ code, reason });
    this.readyState = 2;
  }

  /** Sent text frames parsed as JSON. */
  envelopes(): Record<string, unknown>[] {
    return this.sent.filter((f) => typeof f === "string").map((f) => JSON.parse(f as string));
  }
}

/** A hub on a fresh in-memory engine with small defaults. */
export function makeHub(options: Partial<HubOptions> = {}): Hub {
  return new Hub({
    engine: new MemoryEngine({
      historySize: 100,
      historyBytes: 1 << 20,
      historyFileBytes: 1 << 16,
    }),
    joinHistory: 10,
    historySize: 100,
    maxMessageBytes: 1 << 20,
    maxTextLength: 100,
    maxBufferedBytes: 1 << 20,
    ...options,
  });
}

/** Lets pending promise callbacks run. */
export function settle(): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, 0));
}

/** Waits until `check` holds (polling), or throws after two seconds. */
export async function until(check: () => boolean, what = "condition"): Promise<void> {
  const end = Date.now() + 2000;
  while (!check()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
}

/** Waits until a rich fake socket got its `welcome`. */
export function welcomed(socket: FakeSocket): Promise<void> {
  return until(() => socket.envelopes().some((e) => e.type === "welcome"), "welcome");
}
