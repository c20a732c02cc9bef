/**
 * The WebSocket client of the benchmark generators (`bench/load.ts`,
 * `bench/big_room.ts`): many connections in one process, each speaking
 * WebSocket over `Deno.connect` itself. One read returns hundreds of frames,
 * and counting one is a header parse, with no event object, no string and no
 * JSON per frame. Also the `/proc` readers both generators and the driver use.
 *
 * @module
 */

/** The subprotocol of rich clients. */
export const SUBPROTOCOL = "parley.v1";
const WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/** Opcode of a text frame. */
export const TEXT = 1;
/** Opcode of a binary frame. */
export const BINARY = 2;
const CLOSE = 8;
const PING = 9;
const PONG = 10;
const encoder = new TextEncoder();
const decoder = new TextDecoder();
/** Every `message` envelope starts so (the server and the baseline's relayed copy alike). */
const MESSAGE_PREFIX = encoder.encode('{"type":"message"');
const AT = 0x40;
const BATCH_PREFIX = encoder.encode('{"type":"batch"');
const WELCOME_PREFIX = encoder.encode('{"type":"welcome"');
const ERROR_PREFIX = encoder.encode('{"type":"error"');
const BRACE = 0x7b;

/** Called for every complete data frame; `now` is when the read returned. */
export type FrameHandler = (
  peer: Peer,
  opcode: number,
  bytes: Uint8Array,
  start: number,
  end: number,
  now: number,
) => void;

/** A handler that does nothing. */
export function ignore(): void {}

function base64(bytes: Uint8Array): string {
  return btoa(String.fromCharCode(...bytes));
}

async function writeAll(conn: Deno.Conn, data: Uint8Array): Promise<void> {
  for (let off = 0; off < data.length;) off += await conn.write(data.subarray(off));
}

/** Builds masked client frames back to back in one buffer. */
export class FrameWriter {
  #buf = new Uint8Array(4096);
  #len = 0;
  constructor(readonly mask: Uint8Array) {}

  #header(opcode: number, size: number): number {
    const need = this.#len + size + 14;
    if (need > this.#buf.length) {
      const grown = new Uint8Array(Math.max(need, this.#buf.length * 2));
      grown.set(this.#buf.subarray(0, this.#len));
      this.#buf = grown;
    }
    const b = this.#buf;
    let p = this.#len;
    b[p++] = 0x80 | opcode;
    if (size < 126) {
      b[p++] = 0x80 | size;
    } else if (size < 65536) {
      b[p++] = 0x80 | 126;
      b[p++] = size >>> 8;
      b[p++] = size & 255;
    } else {
      b[p++] = 0x80 | 127;
      b.fill(0, p, p + 4);
      new DataView(b.buffer).setUint32(p + 4, size);
      p += 8;
    }
    b.set(this.mask, p);
    return p + 4;
  }

  /** Appends a frame whose payload is an ASCII string (every message the generator makes). */
  ascii(opcode: number, text: string): void {
    const p = this.#header(opcode, text.length);
    const b = this.#buf;
    const m = this.mask;
    for (let i = 0; i < text.length; i++) b[p + i] = text.charCodeAt(i) ^ m[i & 3];
    this.#len = p + text.length;
  }

  bytes(opcode: number, payload: Uint8Array): void {
    const p = this.#header(opcode, payload.length);
    const b = this.#buf;
    const m = this.mask;
    for (let i = 0; i < payload.length; i++) b[p + i] = payload[i] ^ m[i & 3];
    this.#len = p + payload.length;
  }

  /** The frames built so far; the writer starts empty again. */
  take(): Uint8Array {
    const out = this.#buf.slice(0, this.#len);
    this.#len = 0;
    return out;
  }
}

/** One client connection: a handshake, a read loop that parses frames, queued writes. */
export class Peer {
  onFrame: FrameHandler = ignore;
  /** Frames counted by the current handler. */
  count = 0;
  /** Burst: the count at which this peer has everything of the current round. */
  target = 0;
  /** Close code the server sent, if it closed. */
  closeCode?: number;
  error?: string;
  ended = false;
  /** Called once when the read loop ends. */
  onEnd: () => void = ignore;
  readonly writer = new FrameWriter(crypto.getRandomValues(new Uint8Array(4)));
  #buf: Uint8Array;
  #len: number;
  #writing: Promise<void> = Promise.resolve();
  #closing = false;

  constructor(
    readonly conn: Deno.TcpConn,
    readonly protocol: string,
    buf: Uint8Array,
    len: number,
  ) {
    this.#buf = buf;
    this.#len = len;
  }

  /** Queues bytes for the socket; writes never interleave. */
  write(data: Uint8Array): Promise<void> {
    this.#writing = this.#writing.then(() => this.#closing ? undefined : writeAll(this.conn, data))
      .catch((error) => {
        this.error ??= `write: ${error}`;
      });
    return this.#writing;
  }

  /** Sends one text frame. */
  text(text: string): Promise<void> {
    this.writer.ascii(TEXT, text);
    return this.write(this.writer.take());
  }

  async run(): Promise<void> {
    try {
      this.#parse(performance.now());
      while (!this.#closing) {
        if (this.#len === this.#buf.length) this.#grow(this.#len * 2);
        const n = await this.conn.read(this.#buf.subarray(this.#len));
        if (n === null) break;
        this.#len += n;
        this.#parse(performance.now());
      }
    } catch (error) {
      if (!this.#closing) this.error ??= `read: ${error}`;
    } finally {
      this.ended = true;
      this.onEnd();
    }
  }

  close(): void {
    if (this.#closing) return;
    this.#closing = true;
    try {
      this.conn.close();
    } catch {
      // already closed
    }
  }

  #grow(size: number): void {
    const grown = new Uint8Array(size);
    grown.set(this.#buf.subarray(0, this.#len));
    this.#buf = grown;
  }

  /** Handles every complete frame in the buffer and keeps the partial one. */
  #parse(now: number): void {
    const b = this.#buf;
    const len = this.#len;
    let p = 0;
    let need = 0;
    while (len - p >= 2) {
      const b0 = b[p];
      const b1 = b[p + 1];
      let size = b1 & 127;
      let head = 2;
      if (size === 126) {
        if (len - p < 4) break;
        size = (b[p + 2] << 8) | b[p + 3];
        head = 4;
      } else if (size === 127) {
        if (len - p < 10) break;
        size = b[p + 6] * 2 ** 24 + ((b[p + 7] << 16) | (b[p + 8] << 8) | b[p + 9]);
        head = 10;
      }
      if (b1 & 0x80) throw new SyntaxError("Cannot read frame: the server masked it");
      if (len - p < head + size) {
        need = head + size;
        break;
      }
      const start = p + head;
      const end = start + size;
      const opcode = b0 & 15;
      if (opcode >= CLOSE) {
        this.#control(opcode, b.slice(start, end));
      } else {
        if (!(b0 & 0x80) || opcode === 0) {
          throw new SyntaxError("Cannot read frame: fragmented messages are not supported");
        }
        this.onFrame(this, opcode, b, start, end, now);
      }
      p = end;
    }
    if (p > 0) {
      b.copyWithin(0, p, len);
      this.#len = len - p;
    }
    if (need > this.#buf.length) this.#grow(2 ** Math.ceil(Math.log2(need)));
  }

  #control(opcode: number, payload: Uint8Array): void {
    if (opcode === PING) {
      this.writer.bytes(PONG, payload);
      this.write(this.writer.take());
    } else if (opcode === CLOSE) {
      this.closeCode = payload.length >= 2 ? (payload[0] << 8) | payload[1] : 1005;
      this.writer.bytes(CLOSE, payload.subarray(0, 2));
      this.write(this.writer.take());
    }
  }
}

async function acceptKey(key: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-1", encoder.encode(key + WS_GUID));
  return base64(new Uint8Array(digest));
}

function indexOfHeadEnd(b: Uint8Array, len: number): number {
  for (let i = 3; i < len; i++) {
    if (b[i] === 10 && b[i - 1] === 13 && b[i - 2] === 10 && b[i - 3] === 13) return i + 1;
  }
  return -1;
}

/** Opens one WebSocket: the HTTP upgrade, checked, then the read loop. */
export async function connect(
  url: URL,
  protocol: string | undefined,
  bufferSize: number,
): Promise<Peer> {
  const conn = await Deno.connect({ hostname: url.hostname, port: Number(url.port) });
  try {
    conn.setNoDelay(true);
    const key = base64(crypto.getRandomValues(new Uint8Array(16)));
    await writeAll(
      conn,
      encoder.encode(
        `GET ${url.pathname}${url.search} HTTP/1.1\r\nHost: ${url.host}\r\n` +
          `Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\n` +
          `Sec-WebSocket-Version: 13\r\n` +
          (protocol ? `Sec-WebSocket-Protocol: ${protocol}\r\n` : "") + "\r\n",
      ),
    );
    let buf = new Uint8Array(Math.max(bufferSize, 4096));
    let len = 0;
    let headEnd = -1;
    while (headEnd < 0) {
      if (len === buf.length) {
        const grown = new Uint8Array(len * 2);
        grown.set(buf);
        buf = grown;
      }
      const n = await conn.read(buf.subarray(len));
      if (n === null) throw new Error(`Cannot open ${url}: the server closed during the handshake`);
      len += n;
      headEnd = indexOfHeadEnd(buf, len);
    }
    const lines = decoder.decode(buf.subarray(0, headEnd)).split("\r\n");
    if (!/^HTTP\/1\.1 101\b/.test(lines[0])) {
      throw new Error(`Cannot open ${url}: the server answered "${lines[0]}"`);
    }
    const headers = new Map<string, string>();
    for (const line of lines.slice(1)) {
      const colon = line.indexOf(":");
      if (colon > 0) {
        headers.set(line.slice(0, colon).trim().toLowerCase(), line.slice(colon + 1).trim());
      }
    }
    const accept = headers.get("sec-websocket-accept");
    if (accept !== await acceptKey(key)) {
      throw new Error(`Cannot open ${url}: Sec-WebSocket-Accept is "${accept}"`);
    }
    buf.copyWithin(0, headEnd, len);
    return new Peer(conn, headers.get("sec-websocket-protocol") ?? "", buf, len - headEnd);
  } catch (error) {
    conn.close();
    throw error;
  }
}

function startsWith(b: Uint8Array, start: number, end: number, prefix: Uint8Array): boolean {
  if (end - start < prefix.length) return false;
  for (let i = 0; i < prefix.length; i++) {
    if (b[start + i] !== prefix[i]) return false;
  }
  return true;
}

/** Whether a text frame is one `message` envelope. */
export function isMessageEnvelope(b: Uint8Array, start: number, end: number): boolean {
  return startsWith(b, start, end, MESSAGE_PREFIX);
}

/**
 * Message envelopes in a text frame: 1 for a `message`, as many as a `batch`
 * frame holds, else 0. A `{"type":"message"` can only start an object, never
 * sit inside a JSON string (its quotes would be escaped), so counting where
 * it occurs is exact.
 */
export function messageCount(b: Uint8Array, start: number, end: number): number {
  if (startsWith(b, start, end, MESSAGE_PREFIX)) return 1;
  if (!startsWith(b, start, end, BATCH_PREFIX)) return 0;
  const frame = b.subarray(start, end);
  let n = 0;
  for (let i = frame.indexOf(BRACE, BATCH_PREFIX.length); i >= 0; i = frame.indexOf(BRACE, i + 1)) {
    if (startsWith(frame, i, frame.length, MESSAGE_PREFIX)) n++;
  }
  return n;
}

/** The digits after `b[at]`, as a number. */
function digitsAfter(b: Uint8Array, at: number, end: number): number {
  let value = 0;
  for (let i = at + 1; i < end; i++) {
    const d = b[i] - 48;
    if (d < 0 || d > 9) break;
    value = value * 10 + d;
  }
  return value;
}

/**
 * Calls `each` with the send time (µs) of every message in a text frame,
 * raw (`<client>:<n>@<time>`), a `message` envelope or a `batch` of them:
 * the digits after the `@` of each message's text (nothing else the server
 * sends here holds an `@`). Returns how many it found.
 */
export function sentTimes(
  b: Uint8Array,
  start: number,
  end: number,
  rich: boolean,
  each: (micros: number) => void,
): number {
  if (!rich || startsWith(b, start, end, MESSAGE_PREFIX)) {
    let at = end - 1;
    while (at >= start && b[at] !== AT) at--;
    if (at < start) return 0;
    each(digitsAfter(b, at, end));
    return 1;
  }
  if (!startsWith(b, start, end, BATCH_PREFIX)) return 0;
  const frame = b.subarray(start, end);
  const nextMessage = (from: number) => {
    for (let i = frame.indexOf(BRACE, from); i >= 0; i = frame.indexOf(BRACE, i + 1)) {
      if (startsWith(frame, i, frame.length, MESSAGE_PREFIX)) return i;
    }
    return frame.length;
  };
  let n = 0;
  for (let m = nextMessage(BATCH_PREFIX.length); m < frame.length;) {
    const next = nextMessage(m + 1);
    const at = frame.indexOf(AT, m);
    if (at >= 0 && at < next) {
      each(digitsAfter(frame, at, next));
      n++;
    }
    m = next;
  }
  return n;
}

/** What a member learns from its `welcome`. */
export interface Welcomed {
  /** Members in the room (`welcome.count`), or null from a server that does not say. */
  count: number | null;
}

/**
 * Rich mode: sends `hello`, resolves after `welcome` and its replay, whether
 * they come as frames of their own or inside `batch` frames (`batch: true`).
 * Frames before the welcome that are neither it nor an error are skipped.
 */
export function greet(
  peer: Peer,
  hello: { nick: string; batch?: boolean },
  timeoutMs: number,
): Promise<Welcomed> {
  const { nick } = hello;
  return new Promise((resolve, reject) => {
    /** Replayed messages still to come, once the welcome said how many. */
    let replay: number | null = null;
    let count: number | null = null;
    const timer = setTimeout(
      () => done(new Error(`Cannot join as ${nick}: no welcome within ${timeoutMs} ms`)),
      timeoutMs,
    );
    const done = (error?: Error) => {
      clearTimeout(timer);
      peer.onFrame = ignore;
      peer.onEnd = ignore;
      if (error) reject(error);
      else resolve({ count });
    };
    const refused = (envelope: { code?: string; message?: string }) =>
      done(new Error(`Cannot join as ${nick}: ${envelope.code}: ${envelope.message}`));
    peer.onFrame = (_peer, opcode, b, start, end) => {
      if (opcode !== TEXT) return;
      if (replay !== null) {
        replay -= messageCount(b, start, end);
      } else if (startsWith(b, start, end, WELCOME_PREFIX)) {
        // A welcome may list many members: read two numbers, parse no JSON.
        const text = decoder.decode(b.subarray(start, end));
        replay = Number(/"replay":(\d+)/.exec(text)?.[1] ?? 0);
        const counted = /"count":(\d+)/.exec(text);
        if (counted) count = Number(counted[1]);
      } else if (
        startsWith(b, start, end, ERROR_PREFIX) || startsWith(b, start, end, BATCH_PREFIX)
      ) {
        let envelope;
        try {
          envelope = JSON.parse(decoder.decode(b.subarray(start, end)));
        } catch {
          done(new SyntaxError(`Cannot join as ${nick}: the server sent a frame that is not JSON`));
          return;
        }
        if (envelope.type === "error") return refused(envelope);
        for (const event of envelope.events ?? []) {
          if (event.type === "error") return refused(event);
          if (event.type === "welcome") {
            replay = event.replay ?? 0;
            count = event.count ?? null;
          } else if (replay !== null && event.type === "message") replay--;
        }
      }
      // Live messages may come with the replay's last ones: at or below 0 it is over.
      if (replay !== null && replay <= 0) done();
    };
    peer.onEnd = () =>
      done(new Error(`Cannot join as ${nick}: ${peer.error ?? "the server closed"}`));
    peer.text(
      JSON.stringify(hello.batch ? { type: "hello", nick, batch: true } : { type: "hello", nick }),
    );
  });
}

/** How a member joins: rich (`hello`, optionally `batch: true`) or raw. */
export interface MemberOptions {
  rich: boolean;
  batched: boolean;
}

/**
 * Opens one member of a room: connects and, rich, says `hello` and waits for
 * the welcome; then hands its frames to `onFrame`. Closes it on failure.
 */
export async function openMember(
  url: URL,
  nick: string,
  options: MemberOptions,
  timeoutMs: number,
  onFrame: FrameHandler,
): Promise<{ peer: Peer; count: number | null }> {
  const peer = await connect(url, options.rich ? SUBPROTOCOL : undefined, 4096);
  peer.run();
  try {
    let count: number | null = null;
    if (options.rich) {
      if (peer.protocol !== SUBPROTOCOL) {
        throw new Error(`Cannot join ${url}: the server did not take ${SUBPROTOCOL}`);
      }
      count = (await greet(peer, { nick, batch: options.batched }, timeoutMs)).count;
    }
    peer.onFrame = onFrame;
    return { peer, count };
  } catch (error) {
    peer.close();
    throw error;
  }
}

/** Resolves after `ms` milliseconds. */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Waits until `done()` holds, checking every few milliseconds; false on timeout. */
export async function until(done: () => boolean, timeoutMs: number): Promise<boolean> {
  const deadline = performance.now() + timeoutMs;
  while (!done()) {
    if (performance.now() >= deadline) return false;
    await sleep(2);
  }
  return true;
}

/**
 * Clock ticks per second of `/proc` CPU times: Linux's USER_HZ, what
 * `getconf CLK_TCK` prints, is 100 on every architecture Deno runs on.
 */
export const USER_HZ = 100;

/** CPU seconds (user + system, all threads) a process has used so far, from `/proc`. */
export function cpuSeconds(pid: number | "self"): number {
  const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / USER_HZ;
}

/** Reads a process's CPU seconds, or null without a process. */
export function cpuOf(pid: number | undefined): number | null {
  return pid === undefined ? null : cpuSeconds(pid);
}

/** Microseconds on this process's clock, written into each message. */
export function micros(): number {
  return Math.round(performance.now() * 1000);
}

/** Clients the server closed or that failed, before the generator closes them all. */
export function peerFailures(
  peers: Peer[],
): { closed: number; errors: string[]; closeCodes: number[] } {
  const failed = peers.filter((p) => p.ended || p.error !== undefined);
  const errors = failed.map((p) =>
    p.error ?? `the server closed the connection${p.closeCode ? ` with ${p.closeCode}` : ""}`
  );
  return {
    closed: failed.length,
    errors: [...new Set(errors)].slice(0, 5),
    closeCodes: [...new Set(failed.flatMap((p) => p.closeCode ? [p.closeCode] : []))],
  };
}

/** The value at fraction `p` of sorted values (NaN when empty). */
export function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil(p * sorted.length) - 1)];
}

/** Resident memory of a process in bytes: now (`VmRSS`) or at its peak (`VmHWM`). */
export function residentBytes(pid: number, field: "VmRSS" | "VmHWM" = "VmRSS"): number {
  const status = Deno.readTextFileSync(`/proc/${pid}/status`);
  const match = new RegExp(`^${field}:\\s+(\\d+) kB$`, "m").exec(status);
  if (!match) throw new SyntaxError(`Cannot read ${field} of process ${pid}`);
  return Number(match[1]) * 1024;
}
