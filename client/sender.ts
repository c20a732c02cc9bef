/**
 * Sending what the outbox holds: in order, no faster than the `rate` and
 * `burst` of `welcome.limits`, never more in flight than the server would
 * queue, after the replay of a resume (which may ack some already), and again
 * with the same cid after a transient error or a lost connection.
 *
 * @module
 */

import { type Delivery, Outbox, type OutboxItem, type Pending, type SendError } from "./outbox.ts";
import { TokenBucket } from "./pacer.ts";
import type { SocketLike } from "./types.ts";
import type { Welcome } from "./wire.ts";

/** Longest wait for the replay a welcome announced before the outbox goes anyway. */
const REPLAY_WAIT_MS = 3_000;

/** What the sender needs from the client. */
export interface SenderHost {
  /** The socket, when the connection is joined and open; else null. */
  socket(): SocketLike | null;
  /** An item was acked. */
  sent(item: OutboxItem, delivery: Delivery): void;
  /** An item failed for good. */
  failed(item: OutboxItem, error: SendError): void;
  /** The outbox changed: save it. */
  changed(): void;
}

/** Sends the outbox over the current connection. */
export class Sender {
  /** The unacked items. */
  readonly outbox: Outbox = new Outbox();
  #host: SenderHost;
  #retryMs: number;
  #welcome: Welcome | null = null;
  #bucket = new TokenBucket(null, null);
  #holdUntil = 0;
  #replayLeft = 0;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #replayTimer: ReturnType<typeof setTimeout> | undefined;

  /**
   * @param host The client.
   * @param retryMs Wait before a resend after a transient error (plus up to as much jitter).
   */
  constructor(host: SenderHost, retryMs: number) {
    this.#host = host;
    this.#retryMs = retryMs;
  }

  /**
   * A connection was welcomed: pace with its limits, fail edits and deletes
   * of another epoch, and send once its replay is in.
   */
  start(welcome: Welcome): void {
    this.#welcome = welcome;
    this.#bucket = new TokenBucket(welcome.limits.rate, welcome.limits.burst);
    this.#holdUntil = 0;
    this.#replayLeft = welcome.replay;
    clearTimeout(this.#replayTimer);
    // Should the replay come short of what welcome said, the outbox still goes.
    if (welcome.replay > 0) {
      this.#replayTimer = setTimeout(() => {
        this.#replayTimer = undefined;
        this.#replayLeft = 0;
        this.pump();
      }, REPLAY_WAIT_MS);
    }
    for (const item of [...this.outbox.items]) {
      if (item.target && item.target.epoch !== welcome.epoch) {
        this.fail(item.cid, "epoch_changed", "the message it changes is gone (new epoch)");
      }
    }
    this.pump();
  }

  /** A stored entry of the replay came; after the last one the outbox goes. */
  replayed(): void {
    if (this.#replayLeft === 0) return;
    this.#replayLeft--;
    if (this.#replayLeft > 0) return;
    clearTimeout(this.#replayTimer);
    this.#replayTimer = undefined;
    this.pump();
  }

  /** Adds an item and sends it when it may. */
  queue(item: OutboxItem): Pending {
    const pending = this.outbox.add(item);
    this.#host.changed();
    this.pump();
    return pending;
  }

  /** The server stored an item (an ack, or the broadcast of our own message). */
  settle(delivery: Delivery): void {
    const item = this.outbox.settle(delivery);
    if (!item) return;
    this.#host.changed();
    this.#host.sent(item, delivery);
    this.pump();
  }

  /** An item failed for good. */
  fail(cid: string, code: string, message: string): void {
    const failed = this.outbox.fail(cid, code, message);
    if (!failed) return;
    this.#host.changed();
    this.#host.failed(failed[0], failed[1]);
  }

  /** A transient error: resend the item, with the same cid, a little later. */
  retryLater(item: OutboxItem): void {
    item.state = "queued";
    this.#holdUntil = Date.now() + this.#retryMs + Math.random() * this.#retryMs;
    this.pump();
  }

  /** The connection ended: items in flight wait for the next one, or fail once worn out. */
  lost(maxAttempts: number): void {
    this.stop();
    clearTimeout(this.#replayTimer);
    this.#replayTimer = undefined;
    this.#welcome = null;
    for (const item of this.outbox.requeue(maxAttempts)) {
      this.fail(item.cid, "connection_lost", "the connection kept dropping while it was sent");
    }
    this.#host.changed();
  }

  /** Stops the pacing timer. */
  stop(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  #later(ms: number): void {
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.pump();
    }, ms);
  }

  /** Sends what it may now, and comes back when it may send more. */
  pump(): void {
    this.stop();
    const ws = this.#host.socket();
    const welcome = this.#welcome;
    if (!ws || !welcome || this.#replayLeft > 0) return;
    const wait = this.#holdUntil - Date.now();
    if (wait > 0) return this.#later(wait);
    const { burst, queue } = welcome.limits;
    const window = burst !== null && queue !== null ? burst + queue : Infinity;
    for (let item = this.outbox.next(); item; item = this.outbox.next()) {
      // Never more in flight than the server would queue: acks pump again.
      if (this.outbox.inFlight() >= window) return;
      if (!this.#bucket.take()) return this.#later(this.#bucket.wait());
      if (!this.#transmit(ws, item, welcome.epoch)) return;
    }
  }

  #transmit(ws: SocketLike, item: OutboxItem, epoch: string): boolean {
    if (item.target && item.target.epoch !== epoch) {
      this.fail(item.cid, "epoch_changed", "the message it changes is gone (new epoch)");
      return true;
    }
    // A reply chosen in an earlier epoch would name an unrelated message now.
    const replyTo = item.replyTo?.epoch === epoch ? item.replyTo.id : undefined;
    const { cid, kind, text } = item;
    try {
      if (kind === "file" && item.file) {
        const { name, mime, size, data } = item.file;
        ws.send(JSON.stringify({ type: "file", cid, name, mime, size, reply_to: replyTo }));
        ws.send(data);
      } else if (kind === "message") {
        ws.send(JSON.stringify({ type: "message", cid, text, reply_to: replyTo }));
      } else {
        ws.send(JSON.stringify({ type: kind, cid, id: item.target?.id, text }));
      }
    } catch {
      return false; // closing: the close handler requeues
    }
    item.state = "sent";
    return true;
  }
}
