/**
 * The load generator of the benchmark suite: many WebSocket clients in one
 * process, driven by `bench/run.ts` and pinned to a core of its own.
 *
 * On a 2-core machine the generator shares the hardware with the server it
 * measures, so it must cost as little per message as possible. Its clients
 * therefore speak WebSocket over `Deno.connect` themselves instead of through
 * `WebSocket`: one read returns hundreds of frames, and counting one is a
 * header parse, with no event object, no string and no JSON per frame.
 *
 * Modes, each printing one JSON line on standard output:
 *
 * - `burst`: every client sends a batch of messages as fast as it can, then
 *   all wait until every copy has arrived; rounds repeat until the window has
 *   passed. Reports delivered copies per second.
 * - `paced`: a fixed total rate spread over the clients; every copy's
 *   fan-out latency is measured on arrival from the time written in it.
 * - `idle`: opens connections and reads the server's resident memory after
 *   each step (`--pid`).
 *
 * In rich mode (`--rich`) clients offer `parley.v1`; when the server takes it
 * they send `hello` and wait for `welcome` and its replay before measuring,
 * and count only `message` envelopes. A server that does not take it (the
 * baseline) relays the same envelopes verbatim, which count the same way.
 *
 * @example
 * ```sh
 * deno run -A bench/load.ts --url ws://127.0.0.1:8000/ --mode burst --clients 32 --batch 1600 --raw
 * ```
 *
 * @module
 */

/** What the generator does and how hard. */
export interface LoadOptions {
  /** Server URL, `ws://host:port/path`. */
  url: string;
  /** @default "burst" */
  mode: "burst" | "paced" | "idle";
  /** Clients (burst and paced). @default 32 */
  clients: number;
  /** Messages each client sends per burst round. @default 1600 */
  batch: number;
  /** Speak `parley.v1` (rich mode) instead of raw frames. @default false */
  rich: boolean;
  /** Burst: send binary frames of this many bytes instead of text (raw mode). @default 0 */
  binary: number;
  /** Paced: messages per second, all clients together. @default 1000 */
  rate: number;
  /** Seconds to measure: burst rounds repeat until it passes; paced sends for it. @default 8 */
  window: number;
  /** Seconds after which a run stops and reports what it has. @default 60 */
  timeout: number;
  /** Idle: connection counts at which memory is read. @default [1000, 5000] */
  counts: number[];
  /** Idle: seconds to wait before reading memory. @default 2 */
  settle: number;
  /** Process id of the server: idle reads its memory, burst and paced its CPU time. */
  pid?: number;
  /** Idle: connections per room, each room its own path (0: all on `url`). @default 0 */
  roomSize: number;
  /** Connections opened at once. @default 50 */
  concurrency: number;
}

/** The defaults of {@linkcode LoadOptions}. */
export const DEFAULTS: Readonly<Omit<LoadOptions, "url">> = {
  mode: "burst",
  clients: 32,
  batch: 1600,
  rich: false,
  binary: 0,
  rate: 1000,
  window: 8,
  timeout: 60,
  counts: [1000, 5000],
  settle: 2,
  roomSize: 0,
  concurrency: 50,
};

const SUBPROTOCOL = "parley.v1";
const WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const TEXT = 1;
const BINARY = 2;
const CLOSE = 8;
const PING = 9;
const PONG = 10;
const encoder = new TextEncoder();
const decoder = new TextDecoder();
/** Every `message` envelope starts so (the server and the baseline's relayed copy alike). */
const MESSAGE_PREFIX = encoder.encode('{"type":"message"');
const AT = 0x40;

/** Called for every complete data frame; `now` is when the read returned. */
type FrameHandler = (
  peer: Peer,
  opcode: number,
  bytes: Uint8Array,
  start: number,
  end: number,
  now: number,
) => void;

function ignore(): void {}

function base64(bytes: Uint8Array): string {
  return btoa(String.fromCharCode(...bytes));
}

async function writeAll(conn: Deno.Conn, data: Uint8Array): Promise<void> {
  for (let off = 0; off < data.length;) off += await conn.write(data.subarray(off));
}

/** Builds masked client frames back to back in one buffer. */
class FrameWriter {
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
class Peer {
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
async function connect(url: URL, protocol: string | undefined, bufferSize: number): Promise<Peer> {
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

function isMessageEnvelope(b: Uint8Array, start: number, end: number): boolean {
  if (end - start < MESSAGE_PREFIX.length) return false;
  for (let i = 0; i < MESSAGE_PREFIX.length; i++) {
    if (b[start + i] !== MESSAGE_PREFIX[i]) return false;
  }
  return true;
}

/** Rich mode: sends `hello`, resolves after `welcome` and its replay. */
function greet(peer: Peer, nick: string, timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    let replay = -1;
    const timer = setTimeout(
      () => reject(new Error(`Cannot join as ${nick}: no welcome within ${timeoutMs} ms`)),
      timeoutMs,
    );
    const done = (error?: Error) => {
      clearTimeout(timer);
      peer.onFrame = ignore;
      peer.onEnd = ignore;
      if (error) reject(error);
      else resolve();
    };
    peer.onFrame = (_peer, opcode, b, start, end) => {
      if (opcode !== TEXT) return;
      if (replay < 0) {
        let envelope;
        try {
          envelope = JSON.parse(decoder.decode(b.subarray(start, end)));
        } catch {
          done(new SyntaxError(`Cannot join as ${nick}: the server sent a frame that is not JSON`));
          return;
        }
        if (envelope.type === "error") {
          done(new Error(`Cannot join as ${nick}: ${envelope.code}: ${envelope.message}`));
          return;
        }
        if (envelope.type !== "welcome") return;
        replay = envelope.replay;
      } else if (isMessageEnvelope(b, start, end)) {
        replay--;
      }
      if (replay === 0) done();
    };
    peer.onEnd = () =>
      done(new Error(`Cannot join as ${nick}: ${peer.error ?? "the server closed"}`));
    peer.text(JSON.stringify({ type: "hello", nick }));
  });
}

/** Opens clients `from` to `to - 1` into `peers`, a few at a time. */
async function openPeers(
  peers: Peer[],
  from: number,
  to: number,
  options: LoadOptions,
  bufferSize: number,
): Promise<void> {
  const base = new URL(options.url);
  let next = from;
  const open = async () => {
    while (next < to) {
      const i = next++;
      const url = new URL(base);
      if (options.roomSize > 0) url.pathname = `/bench-${Math.floor(i / options.roomSize)}`;
      const peer = await connect(url, options.rich ? SUBPROTOCOL : undefined, bufferSize);
      peers[i] = peer;
      peer.run();
      if (peer.protocol === SUBPROTOCOL) await greet(peer, `bench${i}`, options.timeout * 1000);
    }
  };
  await Promise.all(Array.from({ length: Math.min(options.concurrency, to - from) }, open));
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Waits until `done()` holds, checking every few milliseconds; false on timeout. */
async function until(done: () => boolean, timeoutMs: number): Promise<boolean> {
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
function cpuOf(pid: number | undefined): number | null {
  return pid === undefined ? null : cpuSeconds(pid);
}

/** Microseconds on this process's clock, written into each message. */
function micros(): number {
  return Math.round(performance.now() * 1000);
}

/** Clients the server closed or that failed, before the generator closes them all. */
function peerFailures(peers: Peer[]): { closed: number; errors: string[]; closeCodes: number[] } {
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

/** Result of a burst run. */
export interface BurstResult {
  mode: "burst";
  rich: boolean;
  binary: number;
  clients: number;
  batch: number;
  rounds: number;
  sent: number;
  delivered: number;
  expected: number;
  seconds: number;
  deliveriesPerSecond: number;
  complete: boolean;
  /** Server CPU in the window (`--pid`). */
  serverCpuSeconds: number | null;
  generatorCpuSeconds: number;
  /** Copies delivered so far, every quarter of a second from the first send. */
  timeline: number[];
  /** Seconds from the first send to the end of each complete round. */
  roundEnds: number[];
  closed: number;
  closeCodes: number[];
  errors: string[];
}

/**
 * Burst: each round, every client sends its batch at once and the round ends
 * when every client has every copy; rounds repeat until the window has passed.
 */
export async function burst(options: LoadOptions): Promise<BurstResult> {
  const { clients, batch, rich, binary } = options;
  const peers: Peer[] = [];
  await openPeers(peers, 0, clients, options, 256 * 1024);
  let waiting = 0;
  /** When the last counted copy arrived. */
  let lastAt = 0;
  let wake = ignore;
  const reached = () => {
    if (--waiting === 0) wake();
  };
  const count: FrameHandler = rich
    ? (peer, opcode, b, start, end, now) => {
      if (opcode !== TEXT || !isMessageEnvelope(b, start, end)) return;
      lastAt = now;
      if (++peer.count === peer.target) reached();
    }
    : (peer, opcode, _b, _start, _end, now) => {
      if (opcode !== TEXT && opcode !== BINARY) return;
      lastAt = now;
      if (++peer.count === peer.target) reached();
    };
  for (const peer of peers) {
    peer.onFrame = count;
    peer.onEnd = () => wake();
  }
  // Binary batches are the same every round: build them once.
  const binaryBatches = binary > 0
    ? peers.map((peer) => {
      const payload = crypto.getRandomValues(new Uint8Array(binary));
      for (let i = 0; i < batch; i++) peer.writer.bytes(BINARY, payload);
      return peer.writer.take();
    })
    : [];
  const batchOf = (c: number, round: number): Uint8Array => {
    if (binary > 0) return binaryBatches[c];
    const writer = peers[c].writer;
    const at = micros();
    for (let i = 0; i < batch; i++) {
      const text = `${c}:${round}.${i}@${at}`;
      writer.ascii(
        TEXT,
        rich ? `{"type":"message","cid":"${round}.${i}","text":"${text}"}` : text,
      );
    }
    return writer.take();
  };
  const delivered = () => peers.reduce((sum, p) => sum + p.count, 0);
  const perRound = clients * batch;
  const timeline: number[] = [];
  const sampler = setInterval(() => timeline.push(delivered()), 250);
  const ownCpu0 = cpuSeconds("self");
  const serverCpu0 = cpuOf(options.pid);
  const t0 = performance.now();
  const deadline = t0 + options.timeout * 1000;
  let rounds = 0;
  let complete = true;
  const roundEnds: number[] = [];
  while (true) {
    rounds++;
    waiting = clients;
    for (const peer of peers) peer.target += perRound;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const roundDone = new Promise<boolean>((resolve) => {
      wake = () => {
        if (waiting === 0) resolve(true);
        else if (peers.some((p) => p.ended)) resolve(false);
      };
      timer = setTimeout(() => resolve(false), Math.max(0, deadline - performance.now()));
    });
    for (let c = 0; c < clients; c++) peers[c].write(batchOf(c, rounds));
    const done = await roundDone;
    clearTimeout(timer);
    if (!done) {
      complete = false;
      break;
    }
    roundEnds.push((lastAt - t0) / 1000);
    if (lastAt - t0 >= options.window * 1000) break;
  }
  const stopAt = performance.now();
  const serverCpu1 = cpuOf(options.pid);
  const generatorCpuSeconds = cpuSeconds("self") - ownCpu0;
  clearInterval(sampler);
  const copies = delivered();
  // A complete run ends at its last arrival; a cut one at the cut, because a
  // server that queues whole batches delivers in steps, and a step may be all.
  const end = complete ? lastAt : stopAt;
  const seconds = (end - t0) / 1000;
  const failures = peerFailures(peers);
  for (const peer of peers) peer.close();
  return {
    mode: "burst",
    rich,
    binary,
    clients,
    batch,
    rounds,
    sent: rounds * perRound,
    delivered: copies,
    expected: rounds * perRound * clients,
    seconds,
    deliveriesPerSecond: copies / seconds,
    complete,
    serverCpuSeconds: serverCpu0 === null || serverCpu1 === null
      ? null
      : (serverCpu1 - serverCpu0) * (end - t0) / (stopAt - t0),
    generatorCpuSeconds,
    timeline,
    roundEnds,
    ...failures,
  };
}

/** Result of a paced run; latencies in milliseconds. */
export interface PacedResult {
  mode: "paced";
  rich: boolean;
  clients: number;
  rate: number;
  sent: number;
  delivered: number;
  expected: number;
  seconds: number;
  p50: number;
  p99: number;
  max: number;
  complete: boolean;
  /** Server CPU from the first send to the last arrival (`--pid`). */
  serverCpuSeconds: number | null;
  generatorCpuSeconds: number;
  closed: number;
  closeCodes: number[];
  errors: string[];
}

function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil(p * sorted.length) - 1)];
}

/**
 * Paced: sends `rate` messages a second in turn from each client, each
 * carrying its send time; every copy's latency is taken when it is read.
 * Sender and receivers share this process's clock.
 */
export async function paced(options: LoadOptions): Promise<PacedResult> {
  const { clients, rate, rich } = options;
  const peers: Peer[] = [];
  await openPeers(peers, 0, clients, options, 64 * 1024);
  let samples = new Float64Array(Math.ceil(rate * options.window * clients * 1.1) + 1024);
  let n = 0;
  const record: FrameHandler = (peer, opcode, b, start, end, now) => {
    if (opcode !== TEXT || (rich && !isMessageEnvelope(b, start, end))) return;
    let at = end - 1;
    while (at >= start && b[at] !== AT) at--;
    if (at < start) return;
    let sentAt = 0;
    for (let i = at + 1; i < end; i++) {
      const d = b[i] - 48;
      if (d < 0 || d > 9) break;
      sentAt = sentAt * 10 + d;
    }
    peer.count++;
    if (n === samples.length) {
      const grown = new Float64Array(n * 2);
      grown.set(samples);
      samples = grown;
    }
    samples[n++] = now - sentAt / 1000;
  };
  for (const peer of peers) peer.onFrame = record;
  const interval = 1000 / rate;
  const ownCpu0 = cpuSeconds("self");
  const serverCpu0 = cpuOf(options.pid);
  const t0 = performance.now();
  const stop = t0 + options.window * 1000;
  let sent = 0;
  while (performance.now() < stop && !peers.some((p) => p.ended)) {
    const due = Math.floor((performance.now() - t0) / interval) + 1;
    for (; sent < due; sent++) {
      const c = sent % clients;
      const text = `${c}:${sent}@${micros()}`;
      peers[c].text(rich ? `{"type":"message","cid":"p${sent}","text":"${text}"}` : text);
    }
    await sleep(Math.max(0, t0 + sent * interval - performance.now()));
  }
  const expected = sent * clients;
  const delivered = () => peers.reduce((sum, p) => sum + p.count, 0);
  const complete = await until(
    () => delivered() >= expected || peers.some((p) => p.ended),
    Math.max(1000, options.timeout * 1000 - (performance.now() - t0)),
  ) && delivered() >= expected;
  const seconds = (performance.now() - t0) / 1000;
  const serverCpu1 = cpuOf(options.pid);
  const generatorCpuSeconds = cpuSeconds("self") - ownCpu0;
  const failures = peerFailures(peers);
  for (const peer of peers) peer.close();
  const sorted = samples.slice(0, n).sort();
  return {
    mode: "paced",
    rich,
    clients,
    rate,
    sent,
    delivered: delivered(),
    expected,
    seconds,
    p50: percentile(sorted, 0.5),
    p99: percentile(sorted, 0.99),
    max: sorted.length ? sorted[sorted.length - 1] : NaN,
    complete,
    serverCpuSeconds: serverCpu0 === null || serverCpu1 === null ? null : serverCpu1 - serverCpu0,
    generatorCpuSeconds,
    ...failures,
  };
}

/** Result of an idle run: the server's memory at each connection count. */
export interface IdleResult {
  mode: "idle";
  rich: boolean;
  rssBefore: number | null;
  points: { connections: number; rss: number | null; bytesPerConnection: number | null }[];
  complete: boolean;
  closed: number;
  closeCodes: number[];
  errors: string[];
}

/** Resident memory of a process in bytes: now (`VmRSS`) or at its peak (`VmHWM`). */
export function residentBytes(pid: number, field: "VmRSS" | "VmHWM" = "VmRSS"): number {
  const status = Deno.readTextFileSync(`/proc/${pid}/status`);
  const match = new RegExp(`^${field}:\\s+(\\d+) kB$`, "m").exec(status);
  if (!match) throw new SyntaxError(`Cannot read ${field} of process ${pid}`);
  return Number(match[1]) * 1024;
}

/** Idle: opens connections up to each count, waits, and reads the server's memory. */
export async function idle(options: LoadOptions): Promise<IdleResult> {
  const rss = () => options.pid === undefined ? null : residentBytes(options.pid);
  const rssBefore = rss();
  const peers: Peer[] = [];
  const points: IdleResult["points"] = [];
  let error: string | undefined;
  try {
    for (const count of options.counts) {
      await openPeers(peers, peers.length, count, options, 4096);
      await sleep(options.settle * 1000);
      const now = rss();
      points.push({
        connections: count,
        rss: now,
        bytesPerConnection: now === null || rssBefore === null ? null : (now - rssBefore) / count,
      });
    }
  } catch (thrown) {
    error = String(thrown);
  }
  const opened = peers.filter((p) => p !== undefined);
  const failures = peerFailures(opened);
  if (error) failures.errors.unshift(error);
  for (const peer of opened) peer.close();
  return {
    mode: "idle",
    rich: options.rich,
    rssBefore,
    points,
    complete: error === undefined && failures.closed === 0,
    ...failures,
  };
}

const NUMBER_FLAGS = [
  "clients",
  "batch",
  "binary",
  "rate",
  "window",
  "timeout",
  "settle",
  "concurrency",
] as const;

/** Reads `--name value` flags; `--raw` and `--rich` choose the mode. */
export function parseArgs(args: string[]): LoadOptions {
  const options: LoadOptions = { ...DEFAULTS, counts: [...DEFAULTS.counts], url: "" };
  const number = (name: string, value: string | undefined, min: number): number => {
    const n = Number(value);
    if (value === undefined || !Number.isFinite(n) || n < min) {
      throw new RangeError(`Cannot use --${name} ${value}: expected a number of at least ${min}`);
    }
    return n;
  };
  for (let i = 0; i < args.length; i++) {
    const flag = args[i];
    const name = flag.replace(/^--/, "");
    if (flag === "--raw") options.rich = false;
    else if (flag === "--rich") options.rich = true;
    else if (flag === "--url") options.url = args[++i] ?? "";
    else if (flag === "--mode") {
      const mode = args[++i];
      if (mode !== "burst" && mode !== "paced" && mode !== "idle") {
        throw new RangeError(`Cannot use --mode ${mode}: expected burst, paced or idle`);
      }
      options.mode = mode;
    } else if (flag === "--counts") {
      const value = args[++i];
      options.counts = (value ?? "").split(",").map((v) => number(name, v, 1));
    } else if (flag === "--pid") options.pid = number(name, args[++i], 1);
    else if (flag === "--room-size") options.roomSize = number(name, args[++i], 0);
    else if ((NUMBER_FLAGS as readonly string[]).includes(name)) {
      const key = name as typeof NUMBER_FLAGS[number];
      options[key] = number(name, args[++i], key === "binary" || key === "settle" ? 0 : 1);
    } else throw new TypeError(`Cannot use argument "${flag}": unknown flag`);
  }
  if (!/^ws:\/\//.test(options.url)) {
    throw new TypeError(`Cannot use --url "${options.url}": expected ws://host:port/`);
  }
  return options;
}

if (import.meta.main) {
  let result: (BurstResult | PacedResult | IdleResult) & { processCpuSeconds?: number };
  try {
    const options = parseArgs(Deno.args);
    result = options.mode === "burst"
      ? await burst(options)
      : options.mode === "paced"
      ? await paced(options)
      : await idle(options);
  } catch (error) {
    console.log(JSON.stringify({ error: String(error) }));
    Deno.exit(1);
  }
  // All this process's CPU, start-up included: the driver tells others' use of the core from it.
  result.processCpuSeconds = cpuSeconds("self");
  console.log(JSON.stringify(result));
  Deno.exit(0);
}
