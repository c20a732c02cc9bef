/**
 * The members of a fanout room whose latency is not taken, in a worker of
 * their own (`bench/big_room.ts`). They only count copies, by phase.
 *
 * A thread of their own keeps them out of the way of the measured members:
 * when a message reaches 3,000 sockets, reading them all takes the
 * generator tens of milliseconds, and in one event loop a measured member
 * would wait behind that. The scheduler runs the lightly loaded main thread
 * first.
 *
 * Requests come one at a time; each gets one answer:
 *
 * - `{type: "join", url, nicks, rich, batched, timeoutMs}` → `{type: "joined", count}`
 * - `{type: "phase", start}` (the phase's first send time, µs) → `{type: "ok"}`
 * - `{type: "counts"}` → `{type: "counts", copies, frames}`
 * - `{type: "close"}` → `{type: "closed", closed, errors, closeCodes}`
 *
 * and `{type: "error", error}` when a request failed.
 *
 * @module
 */

import {
  type FrameHandler,
  openMember,
  type Peer,
  peerFailures,
  sentTimes,
  TEXT,
} from "./_client.ts";

/** A request from the main thread. */
export type BulkRequest =
  | {
    type: "join";
    url: string;
    nicks: string[];
    rich: boolean;
    batched: boolean;
    timeoutMs: number;
  }
  | { type: "phase"; start: number }
  | { type: "counts" }
  | { type: "close" };

const scope = self as unknown as {
  onmessage: ((event: MessageEvent<BulkRequest>) => void) | null;
  postMessage(message: unknown): void;
  close(): void;
};

const peers: Peer[] = [];
/** Send time (µs, the main thread's clock) of each phase's first message, and its copies. */
const starts: number[] = [];
const copies: number[] = [];
let frames = 0;
let rich = true;

function count(sentAt: number): void {
  let phase = starts.length - 1;
  while (phase > 0 && sentAt < starts[phase]) phase--;
  if (phase >= 0) copies[phase]++;
}

const counted: FrameHandler = (_peer, opcode, b, start, end) => {
  frames++;
  if (opcode === TEXT) sentTimes(b, start, end, rich, count);
};

async function handle(request: BulkRequest): Promise<unknown> {
  switch (request.type) {
    case "join": {
      rich = request.rich;
      const url = new URL(request.url);
      let most: number | null = null;
      await Promise.all(request.nicks.map(async (nick) => {
        const { peer, count } = await openMember(url, nick, request, request.timeoutMs, counted);
        peers.push(peer);
        if (count !== null) most = Math.max(most ?? 0, count);
      }));
      return { type: "joined", count: most };
    }
    case "phase":
      starts.push(request.start);
      copies.push(0);
      return { type: "ok" };
    case "counts":
      return { type: "counts", copies, frames };
    case "close": {
      const failures = peerFailures(peers);
      for (const peer of peers) peer.close();
      return { type: "closed", ...failures };
    }
  }
}

scope.onmessage = (event) => {
  handle(event.data).then(
    (answer) => scope.postMessage(answer),
    (error) => scope.postMessage({ type: "error", error: String(error) }),
  );
};
