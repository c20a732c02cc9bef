/**
 * Big rooms: the generator modes `join` and `fanout` of `bench/load.ts`, for
 * one room of thousands of rich members.
 *
 * - `join`: members join one room in waves (`--concurrency`, 50): each wave
 *   connects, says `hello` and waits for every welcome before the next
 *   starts. At each count of `--counts` the generator waits until no frame
 *   has come for a while (presence has settled) and reads the server's CPU
 *   time and memory.
 * - `fanout`: `--clients` members join the same way, then one of them sends
 *   at each rate of `--rates` for `--window` seconds. Each message carries
 *   its send time; a copy's latency is taken when it is read (sender and
 *   receivers share this process's clock), whether it came in a frame of its
 *   own or inside a `batch` frame.
 *
 * Reading all 3,000 sockets as a message reaches them takes the generator
 * tens of milliseconds, and a member read last in that turn of the event
 * loop would count them as latency: against Bun's relay, p99 at 20
 * messages/s was 0.5 to 3 s with every member in one thread, 0.1 to 0.2 s
 * this way. So latency is taken at every {@linkcode SAMPLE_EVERY}th member,
 * in this thread; the others live in a worker (`bench/_bulk_worker.ts`) and
 * only count copies. The scheduler runs the lightly loaded thread first when
 * both have frames.
 *
 * Rich members (`--rich`) say `hello` and wait for their welcome, with
 * `"batch": true` when `--batched`; raw ones (to calibrate against another
 * relay) just connect.
 *
 * @module
 */

import type { BulkRequest } from "./_bulk_worker.ts";
import {
  cpuOf,
  cpuSeconds,
  type FrameHandler,
  micros,
  openMember,
  type Peer,
  peerFailures,
  percentile,
  residentBytes,
  sentTimes,
  sleep,
  TEXT,
} from "./_client.ts";

/** What the big-room modes read of the generator's options. */
export interface BigRoomOptions {
  /** Server URL, `ws://host:port/path`: the room. */
  url: string;
  /** Fanout: members of the room. */
  clients: number;
  /** Join: member counts at which the server's CPU time and memory are read; the last is the total. */
  counts: number[];
  /** Fanout: messages a second from the one sender, one phase each. */
  rates: number[];
  /** Fanout: seconds each phase sends for. */
  window: number;
  /** Seconds after which the run stops and reports what it has. */
  timeout: number;
  /** Members that join at once; a wave waits for every welcome. */
  concurrency: number;
  /** Members speak `parley.v1` and say `hello`. */
  rich: boolean;
  /** Rich members say `"batch": true` in `hello`. */
  batched: boolean;
  /** Most seconds to wait for the room to go quiet after joining. */
  settle: number;
  /** Process id of the server, for its CPU time and memory. */
  pid?: number;
}

/** Silence that counts as settled: longer than a large room's 1 s presence tick. */
const QUIET_MS = 1200;
/** Fanout: most seconds to wait for a phase's last copies once its sending ended. */
const DRAIN_SECONDS = 3;
/** Fanout: latency is taken at every this many members (100 of 3,000). */
export const SAMPLE_EVERY = 30;

/** Frames the members received, for telling when the room has gone quiet. */
const received = { frames: 0 };

const countFrame: FrameHandler = () => {
  received.frames++;
};

/** The members of a room so far. */
interface Room {
  /** Those in this thread. */
  peers: Peer[];
  /** All of them, the bulk worker's too. */
  members: number;
  /** Member 0. */
  sender?: Peer;
}

/**
 * Joins members until there are `to`, a wave at a time, or until the
 * deadline; returns the largest `welcome.count` seen (null: the server does
 * not send one). With `bulk`, members other than every
 * {@linkcode SAMPLE_EVERY}th join in the worker.
 */
async function join(
  room: Room,
  to: number,
  options: BigRoomOptions,
  deadline: number,
  onFrame: FrameHandler,
  bulk?: BulkMembers,
): Promise<number | null> {
  const url = new URL(options.url);
  let count: number | null = null;
  while (room.members < to && performance.now() < deadline) {
    const from = room.members;
    const wave = Math.min(options.concurrency, to - from);
    const here: number[] = [];
    const there: string[] = [];
    for (let i = from; i < from + wave; i++) {
      if (!bulk || i % SAMPLE_EVERY === 0) here.push(i);
      else there.push(`m${i}`);
    }
    const timeoutMs = Math.max(1000, deadline - performance.now());
    const [counts, theirs] = await Promise.all([
      Promise.all(here.map(async (i) => {
        const member = await openMember(url, `m${i}`, options, timeoutMs, onFrame);
        room.peers.push(member.peer);
        if (i === 0) room.sender = member.peer;
        return member.count;
      })),
      bulk && there.length ? bulk.join(there, options, timeoutMs) : null,
    ]);
    room.members += wave;
    for (const c of [...counts, theirs]) if (c !== null) count = Math.max(count ?? 0, c);
  }
  return count;
}

/**
 * Waits until no frame has come for {@linkcode QUIET_MS}, at most `maxMs`;
 * returns seconds waited.
 */
async function settle(maxMs: number, frames: () => Promise<number>): Promise<number> {
  const start = performance.now();
  let last = await frames();
  let since = start;
  while (performance.now() - start < maxMs) {
    await sleep(50);
    const now = await frames();
    if (now !== last) {
      last = now;
      since = performance.now();
    } else if (performance.now() - since >= QUIET_MS) break;
  }
  return (performance.now() - start) / 1000;
}

/** The bulk members' worker, one request at a time. */
class BulkMembers {
  #worker = new Worker(new URL("./_bulk_worker.ts", import.meta.url), { type: "module" });
  #pending: Promise<unknown> = Promise.resolve();

  #call<T>(request: BulkRequest): Promise<T> {
    const answer = this.#pending.then(() =>
      new Promise<T>((resolve, reject) => {
        this.#worker.onmessage = (event) =>
          event.data.type === "error" ? reject(new Error(event.data.error)) : resolve(event.data);
        this.#worker.onerror = (event) => {
          event.preventDefault();
          reject(new Error(`The bulk members' worker failed: ${event.message}`));
        };
        this.#worker.postMessage(request);
      })
    );
    this.#pending = answer.catch(() => {});
    return answer;
  }

  async join(
    nicks: string[],
    options: BigRoomOptions,
    timeoutMs: number,
  ): Promise<number | null> {
    const { rich, batched, url } = options;
    const answer = await this.#call<{ count: number | null }>({
      type: "join",
      url,
      nicks,
      rich,
      batched,
      timeoutMs,
    });
    return answer.count;
  }

  phase(start: number): Promise<unknown> {
    return this.#call({ type: "phase", start });
  }

  counts(): Promise<{ copies: number[]; frames: number }> {
    return this.#call({ type: "counts" });
  }

  /** Closes the members and ends the worker; returns their failures. */
  async close(): Promise<ReturnType<typeof peerFailures>> {
    try {
      return await this.#call({ type: "close" });
    } finally {
      this.#worker.terminate();
    }
  }
}

/** Result of a join run. */
export interface JoinResult {
  mode: "join";
  batched: boolean;
  /** The server's resident memory before the first member: the empty process. */
  rssBefore: number | null;
  /** At each count: seconds of joining so far (settling left out), server CPU since the first member, memory. */
  points: {
    members: number;
    seconds: number;
    settleSeconds: number;
    serverCpuSeconds: number | null;
    rss: number | null;
    peakRss: number | null;
    /** `welcome.count` of the last wave: the server's own count of the room. */
    welcomeCount: number | null;
  }[];
  /** Frames the members received in all (presence, mostly). */
  frames: number;
  complete: boolean;
  generatorCpuSeconds: number;
  closed: number;
  closeCodes: number[];
  errors: string[];
}

/** Join: fills one room in waves, reading the server at each count. */
export async function joinRoom(options: BigRoomOptions): Promise<JoinResult> {
  const pid = options.pid;
  const rssBefore = pid === undefined ? null : residentBytes(pid);
  const cpu0 = cpuOf(pid);
  const ownCpu0 = cpuSeconds("self");
  const t0 = performance.now();
  const deadline = t0 + options.timeout * 1000;
  const room: Room = { peers: [], members: 0 };
  const frames = () => Promise.resolve(received.frames);
  const points: JoinResult["points"] = [];
  let settled = 0;
  let error: string | undefined;
  try {
    for (const target of [...options.counts].sort((a, b) => a - b)) {
      const welcomeCount = await join(room, target, options, deadline, countFrame);
      const seconds = (performance.now() - t0) / 1000 - settled;
      const waited = await settle(
        Math.min(options.settle * 1000, deadline - performance.now()),
        frames,
      );
      settled += waited;
      const cpu = cpuOf(pid);
      points.push({
        members: room.members,
        seconds,
        settleSeconds: waited,
        serverCpuSeconds: cpu === null || cpu0 === null ? null : cpu - cpu0,
        rss: pid === undefined ? null : residentBytes(pid),
        peakRss: pid === undefined ? null : residentBytes(pid, "VmHWM"),
        welcomeCount,
      });
      if (room.members < target) {
        error = `Cannot fill the room: ${room.members} of ${target} members joined within ` +
          `${options.timeout} s`;
        break;
      }
    }
  } catch (thrown) {
    error = String(thrown);
  }
  const failures = peerFailures(room.peers);
  if (error) failures.errors.unshift(error);
  for (const peer of room.peers) peer.close();
  return {
    mode: "join",
    batched: options.batched,
    rssBefore,
    points,
    frames: received.frames,
    complete: error === undefined && failures.closed === 0,
    generatorCpuSeconds: cpuSeconds("self") - ownCpu0,
    ...failures,
  };
}

/** One rate of a fanout run; latencies in milliseconds, at the sampled members. */
export interface FanoutPhase {
  rate: number;
  sent: number;
  /** Copies counted at every member. */
  delivered: number;
  expected: number;
  /** From the first send to the last arrival at a sampled member (or the cut). */
  seconds: number;
  deliveriesPerSecond: number;
  /** Copies whose latency was taken. */
  sampled: number;
  p50: number;
  p99: number;
  max: number;
  /** Every copy arrived. */
  complete: boolean;
  serverCpuSeconds: number | null;
  generatorCpuSeconds: number;
}

/** Result of a fanout run. */
export interface FanoutResult {
  mode: "fanout";
  rich: boolean;
  batched: boolean;
  /** Members that joined, and how long joining took (settling left out). */
  members: number;
  /** Members at which latency was taken. */
  sampledMembers: number;
  joinSeconds: number;
  settleSeconds: number;
  phases: FanoutPhase[];
  complete: boolean;
  generatorCpuSeconds: number;
  closed: number;
  closeCodes: number[];
  errors: string[];
}

/** One phase's latencies at the sampled members, growing as copies arrive. */
class Phase {
  values: Float64Array;
  length = 0;
  /** When the last copy arrived at a sampled member. */
  lastAt = 0;
  constructor(size: number) {
    this.values = new Float64Array(size);
  }
  push(value: number): void {
    if (this.length === this.values.length) {
      const grown = new Float64Array(this.length * 2);
      grown.set(this.values);
      this.values = grown;
    }
    this.values[this.length++] = value;
  }
}

/**
 * Fanout: one sender in a room of `clients` members, at each rate in turn.
 * A copy belongs to the phase during which it was sent, told by its send time.
 */
export async function fanout(options: BigRoomOptions): Promise<FanoutResult> {
  const { clients, rates, window, pid, rich } = options;
  const ownCpu0 = cpuSeconds("self");
  const t0 = performance.now();
  const deadline = t0 + options.timeout * 1000;
  const room: Room = { peers: [], members: 0 };
  const bulk = new BulkMembers();
  const frames = async () => received.frames + (await bulk.counts()).frames;
  const phases: FanoutPhase[] = [];
  /** Send time (µs) of each phase's first message. */
  const starts: number[] = [];
  const sampledMembers = Math.ceil(clients / SAMPLE_EVERY);
  const state = rates.map((rate) => new Phase(Math.ceil(rate * window * sampledMembers * 1.05)));
  let frameNow = 0;
  const take = (sentAt: number) => {
    let k = starts.length - 1;
    while (k > 0 && sentAt < starts[k]) k--;
    if (k < 0) return;
    const phase = state[k];
    phase.push(frameNow - sentAt / 1000);
    phase.lastAt = frameNow;
  };
  const sampled: FrameHandler = (_peer, opcode, b, start, end, now) => {
    received.frames++;
    if (opcode !== TEXT) return;
    frameNow = now;
    sentTimes(b, start, end, rich, take);
  };
  let error: string | undefined;
  let joinSeconds = 0;
  let settleSeconds = 0;
  try {
    await join(room, clients, options, deadline, countFrame, bulk);
    joinSeconds = (performance.now() - t0) / 1000;
    if (room.members < clients || !room.sender) {
      throw new Error(
        `Cannot fill the room: ${room.members} of ${clients} members joined within ` +
          `${options.timeout} s`,
      );
    }
    settleSeconds = await settle(
      Math.min(options.settle * 1000, deadline - performance.now()),
      frames,
    );
    for (const peer of room.peers) peer.onFrame = sampled;
    const sender = room.sender;
    const ended = () => room.peers.some((p) => p.ended);
    for (const [k, rate] of rates.entries()) {
      if (performance.now() >= deadline || ended()) break;
      const interval = 1000 / rate;
      const start = micros();
      await bulk.phase(start);
      const cpu0 = cpuOf(pid);
      const own0 = cpuSeconds("self");
      const p0 = performance.now();
      starts.push(start);
      const stop = Math.min(p0 + window * 1000, deadline);
      let sent = 0;
      while (performance.now() < stop && !sender.ended) {
        const due = Math.floor((performance.now() - p0) / interval) + 1;
        for (; sent < due; sent++) {
          const text = `${k}:${sent}@${micros()}`;
          sender.text(rich ? `{"type":"message","cid":"f${k}.${sent}","text":"${text}"}` : text);
        }
        await sleep(Math.max(0, p0 + sent * interval - performance.now()));
      }
      const expected = sent * clients;
      const phase = state[k];
      const delivered = async () => phase.length + ((await bulk.counts()).copies[k] ?? 0);
      const drainEnd = Math.min(performance.now() + DRAIN_SECONDS * 1000, deadline);
      let copies = await delivered();
      while (copies < expected && performance.now() < drainEnd && !ended()) {
        await sleep(20);
        copies = await delivered();
      }
      const end = performance.now();
      const complete = sent > 0 && copies >= expected;
      const cpu1 = cpuOf(pid);
      const seconds = ((complete ? phase.lastAt : end) - p0) / 1000;
      const sorted = phase.values.slice(0, phase.length).sort();
      phases.push({
        rate,
        sent,
        delivered: copies,
        expected,
        seconds,
        deliveriesPerSecond: copies / seconds,
        sampled: phase.length,
        p50: percentile(sorted, 0.5),
        p99: percentile(sorted, 0.99),
        max: sorted.length ? sorted[sorted.length - 1] : NaN,
        complete,
        serverCpuSeconds: cpu0 === null || cpu1 === null ? null : cpu1 - cpu0,
        generatorCpuSeconds: cpuSeconds("self") - own0,
      });
    }
  } catch (thrown) {
    error = String(thrown);
  }
  const failures = peerFailures(room.peers);
  for (const peer of room.peers) peer.close();
  try {
    const theirs = await bulk.close();
    failures.closed += theirs.closed;
    failures.errors = [...new Set([...failures.errors, ...theirs.errors])].slice(0, 5);
    failures.closeCodes = [...new Set([...failures.closeCodes, ...theirs.closeCodes])];
  } catch (thrown) {
    failures.errors.push(String(thrown));
  }
  if (error) failures.errors.unshift(error);
  return {
    mode: "fanout",
    rich,
    batched: options.batched,
    members: room.members,
    sampledMembers,
    joinSeconds,
    settleSeconds,
    phases,
    complete: error === undefined && failures.closed === 0 &&
      phases.length === rates.length && phases.every((p) => p.complete),
    generatorCpuSeconds: cpuSeconds("self") - ownCpu0,
    ...failures,
  };
}
