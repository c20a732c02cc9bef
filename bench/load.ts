/**
 * The load generator of the benchmark suite: many WebSocket clients in one
 * process, driven by `bench/run.ts` and pinned to a core of its own.
 *
 * On a 2-core machine the generator shares the hardware with the server it
 * measures, so it must cost as little per message as possible. Its clients
 * (`bench/_client.ts`) therefore speak WebSocket over `Deno.connect`
 * themselves instead of through `WebSocket`: one read returns hundreds of
 * frames, and counting one is a header parse, with no event object, no string
 * and no JSON per frame.
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
 * - `join` and `fanout`: one room of thousands of rich members
 *   (`bench/big_room.ts`).
 *
 * In rich mode (`--rich`) clients offer `parley.v1`; when the server takes it
 * they send `hello` and wait for `welcome` and its replay before measuring,
 * and count only `message` envelopes. A server that does not take it (the
 * baseline) relays the same envelopes verbatim, which count the same way.
 * With `--batched` rich clients say `"batch": true` in `hello`; each message
 * inside a `batch` frame counts as one copy.
 *
 * @example
 * ```sh
 * deno run -A bench/load.ts --url ws://127.0.0.1:8000/ --mode burst --clients 32 --batch 1600 --raw
 * ```
 *
 * @module
 */

import { fanout, type FanoutResult, type JoinResult, joinRoom } from "./big_room.ts";
import {
  BINARY,
  connect,
  cpuOf,
  cpuSeconds,
  type FrameHandler,
  greet,
  ignore,
  messageCount,
  micros,
  type Peer,
  peerFailures,
  percentile,
  residentBytes,
  sentTimes,
  sleep,
  SUBPROTOCOL,
  TEXT,
  until,
} from "./_client.ts";

// The driver reads the server's CPU and memory as the generator does.
export { cpuSeconds, residentBytes, USER_HZ } from "./_client.ts";
export type { FanoutPhase, FanoutResult, JoinResult } from "./big_room.ts";

/** What the generator does and how hard. */
export interface LoadOptions {
  /** Server URL, `ws://host:port/path`. */
  url: string;
  /** @default "burst" */
  mode: "burst" | "paced" | "idle" | "join" | "fanout";
  /** Clients (burst, paced; fanout: members of the room). @default 32 */
  clients: number;
  /** Messages each client sends per burst round. @default 1600 */
  batch: number;
  /** Speak `parley.v1` (rich mode) instead of raw frames. @default false */
  rich: boolean;
  /** Rich clients say `"batch": true` in `hello`. @default false */
  batched: boolean;
  /** Burst: send binary frames of this many bytes instead of text (raw mode). @default 0 */
  binary: number;
  /** Paced: messages per second, all clients together. @default 1000 */
  rate: number;
  /** Fanout: messages a second from the one sender, one phase each. @default [20, 200] */
  rates: number[];
  /**
   * Seconds to measure: burst rounds repeat until it passes; paced sends for
   * it; fanout sends for it at each rate. @default 8
   */
  window: number;
  /** Seconds after which a run stops and reports what it has. @default 60 */
  timeout: number;
  /** Idle and join: connection counts at which memory is read. @default [1000, 5000] */
  counts: number[];
  /**
   * Idle: seconds to wait before reading memory. Join and fanout: most
   * seconds to wait for the room to go quiet. @default 2
   */
  settle: number;
  /** Process id of the server: idle and join read its memory, the other modes its CPU time. */
  pid?: number;
  /** Idle: connections per room, each room its own path (0: all on `url`). @default 0 */
  roomSize: number;
  /** Connections opened at once (join and fanout: members per wave). @default 50 */
  concurrency: number;
}

/** The defaults of {@linkcode LoadOptions}. */
export const DEFAULTS: Readonly<Omit<LoadOptions, "url">> = {
  mode: "burst",
  clients: 32,
  batch: 1600,
  rich: false,
  batched: false,
  binary: 0,
  rate: 1000,
  rates: [20, 200],
  window: 8,
  timeout: 60,
  counts: [1000, 5000],
  settle: 2,
  roomSize: 0,
  concurrency: 50,
};

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
      if (peer.protocol === SUBPROTOCOL) {
        await greet(peer, { nick: `bench${i}`, batch: options.batched }, options.timeout * 1000);
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(options.concurrency, to - from) }, open));
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
      if (opcode !== TEXT) return;
      const n = messageCount(b, start, end);
      if (n === 0) return;
      lastAt = now;
      const before = peer.count;
      peer.count += n;
      if (before < peer.target && peer.count >= peer.target) reached();
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
  let frameNow = 0;
  const take = (sentAt: number) => {
    if (n === samples.length) {
      const grown = new Float64Array(n * 2);
      grown.set(samples);
      samples = grown;
    }
    samples[n++] = frameNow - sentAt / 1000;
  };
  const record: FrameHandler = (peer, opcode, b, start, end, now) => {
    if (opcode !== TEXT) return;
    frameNow = now;
    peer.count += sentTimes(b, start, end, rich, take);
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

const MODES = ["burst", "paced", "idle", "join", "fanout"] as const;

/** Reads `--name value` flags; `--raw` and `--rich` choose the mode, `--batched` the `hello`. */
export function parseArgs(args: string[]): LoadOptions {
  const options: LoadOptions = {
    ...DEFAULTS,
    counts: [...DEFAULTS.counts],
    rates: [...DEFAULTS.rates],
    url: "",
  };
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
    else if (flag === "--batched") options.batched = true;
    else if (flag === "--url") options.url = args[++i] ?? "";
    else if (flag === "--mode") {
      const mode = args[++i] as typeof MODES[number];
      if (!MODES.includes(mode)) {
        throw new RangeError(`Cannot use --mode ${mode}: expected ${MODES.join(", ")}`);
      }
      options.mode = mode;
    } else if (flag === "--counts" || flag === "--rates") {
      const value = args[++i];
      options[name as "counts" | "rates"] = (value ?? "").split(",").map((v) => number(name, v, 1));
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
  let result: (BurstResult | PacedResult | IdleResult | JoinResult | FanoutResult) & {
    processCpuSeconds?: number;
  };
  try {
    const options = parseArgs(Deno.args);
    const modes = { burst, paced, idle, join: joinRoom, fanout };
    result = await modes[options.mode](options);
  } catch (error) {
    console.log(JSON.stringify({ error: String(error) }));
    Deno.exit(1);
  }
  // All this process's CPU, start-up included: the driver tells others' use of the core from it.
  result.processCpuSeconds = cpuSeconds("self");
  console.log(JSON.stringify(result));
  Deno.exit(0);
}
