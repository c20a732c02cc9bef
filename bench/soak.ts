/**
 * Soak run: Parley as a child process under mixed traffic for a while, with
 * its memory and file descriptors sampled, to show that neither grows without
 * bound and that everything is given back when the traffic stops.
 *
 * The traffic, all in one room on 127.0.0.1:
 *
 * - churn: 20 new clients a second (raw and rich by turns), each sends three
 *   2 KiB messages and leaves after 0.5 to 2 s;
 * - slow peers: 3 raw TCP clients that handshake and never read, each replaced
 *   after 40 s (Parley evicts them with 4001 once they fall behind);
 * - a flooder: sends 16 KiB messages as fast as it can; Parley closes it with
 *   1008, and it comes back every 3 s;
 * - 10 members (rich clients) each sending a timestamped message every 200 ms
 *   and timing the others' messages on arrival.
 *
 * Every 10 s it reads the server's VmRSS and counts its open descriptors from
 * `/proc/<pid>`. At the end it stops all traffic, waits 5 s, counts the
 * descriptors again and prints a table and a JSON summary. It exits 1 when a
 * check fails: memory still growing in the last third of the run (judged from
 * 5 minutes on; memory ramps up during the first minute while history fills),
 * descriptors not back to the baseline, a member message lost, or the server
 * dying.
 *
 * Slow peers are evicted after `SLOW_CONSUMER_BYTES` of lag; the soak sets it
 * to 2 MiB (the default is 8 MiB) so that evictions happen within a short run.
 *
 * @example
 * ```sh
 * deno run -A bench/soak.ts --minutes 10
 * deno run -A bench/soak.ts --minutes 1 --port 8123
 * ```
 *
 * @module
 */

/** Options of a soak run. */
export interface SoakOptions {
  /** How long the traffic runs. @default 10 */
  minutes: number;
  /** Port for the server; 0 picks a free one. @default 0 */
  port: number;
}

/** Parses `--minutes N` and `--port P`. */
export function parseSoakArgs(args: readonly string[]): SoakOptions {
  const options: SoakOptions = { minutes: 10, port: 0 };
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    const [flag, inline] = arg.split("=", 2);
    if (flag !== "--minutes" && flag !== "--port") {
      throw new TypeError(`${arg}: unknown option; use --minutes N and --port P`);
    }
    const value = inline ?? args[++i];
    const number = Number(value);
    if (flag === "--minutes") {
      if (!(number > 0 && number <= 24 * 60)) {
        throw new RangeError(`--minutes ${value}: expected a number over 0, at most 1440`);
      }
      options.minutes = number;
    } else {
      if (!Number.isInteger(number) || number < 0 || number > 65535) {
        throw new RangeError(`--port ${value}: expected an integer port from 0 to 65535`);
      }
      options.port = number;
    }
  }
  return options;
}

/** The value at quantile `q` (nearest rank) of numbers sorted ascending. */
export function quantile(sorted: readonly number[], q: number): number | null {
  if (sorted.length === 0) return null;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))];
}

/**
 * Whether memory stopped growing: the largest sample of the last third of
 * the run is at most 1.1 times the largest of the middle third.
 */
export function plateau(samples: readonly number[]): {
  middleMax: number;
  lastMax: number;
  ok: boolean;
} {
  const third = Math.floor(samples.length / 3);
  if (third === 0) return { middleMax: NaN, lastMax: NaN, ok: false };
  const middleMax = Math.max(...samples.slice(third, samples.length - third));
  const lastMax = Math.max(...samples.slice(samples.length - third));
  return { middleMax, lastMax, ok: lastMax <= 1.1 * middleMax };
}

const ROOM = "soak";
const CHURN_PER_SECOND = 20;
const SLOW_PEERS = 3;
const SLOW_PEER_LIFE_MS = 40_000;
const FLOODER_EVERY_MS = 3000;
const MEMBERS = 10;
const MEMBER_EVERY_MS = 200;
const SAMPLE_EVERY_MS = 10_000;
const SETTLE_MS = 5000;
const SLOW_CONSUMER_BYTES = "2MiB";
/** Shorter runs report the plateau numbers but do not judge them. */
const PLATEAU_MIN_MINUTES = 5;

const encoder = new TextEncoder();
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** A line reader over a byte stream; calls `onLine` for every complete line. */
async function readLines(
  stream: ReadableStream<Uint8Array<ArrayBuffer>>,
  onLine: (line: string) => void,
) {
  let rest = "";
  for await (const text of stream.pipeThrough(new TextDecoderStream())) {
    const lines = (rest + text).split("\n");
    rest = lines.pop() ?? "";
    for (const line of lines) onLine(line);
  }
  if (rest) onLine(rest);
}

/** The running server. */
interface Parley {
  child: Deno.ChildProcess;
  pid: number;
  httpUrl: string;
  port: number;
  /** Server log lines by level, and the last few warnings and errors. */
  logLevels: Map<string, number>;
  logTail: string[];
  exited: boolean;
  drained: Promise<unknown>;
}

async function startParley(port: number): Promise<Parley> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "main.ts"],
    cwd: new URL("../", import.meta.url),
    env: {
      PORT: String(port),
      HOSTNAME: "127.0.0.1",
      LOG_LEVEL: "warn",
      SLOW_CONSUMER_BYTES,
    },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const logLevels = new Map<string, number>();
  const logTail: string[] = [];
  const onLog = (line: string) => {
    if (!line.trim()) return;
    let level = "other";
    try {
      level = String(JSON.parse(line).level ?? "other");
    } catch {
      // Not JSON: counted as other.
    }
    logLevels.set(level, (logLevels.get(level) ?? 0) + 1);
    logTail.push(line.slice(0, 300));
    if (logTail.length > 10) logTail.shift();
  };
  let listening: (url: string) => void = () => {};
  const ready = new Promise<string>((resolve) => listening = resolve);
  const parley: Parley = {
    child,
    pid: child.pid,
    httpUrl: "",
    port: 0,
    logLevels,
    logTail,
    exited: false,
    drained: Promise.resolve(),
  };
  parley.drained = Promise.all([
    readLines(child.stdout, (line) => {
      const match = /^Parley listening on (http:\/\/127\.0\.0\.1:(\d+))\/$/.exec(line.trim());
      if (match) listening(match[1]);
      else onLog(line);
    }),
    readLines(child.stderr, onLog),
  ]).catch(() => {});
  child.status.then(() => parley.exited = true);
  let timer: ReturnType<typeof setTimeout> | undefined;
  const url = await Promise.race([
    ready,
    child.status.then((s) => {
      throw new Error(`Parley exited with code ${s.code} before listening: ${logTail.join("\n")}`);
    }),
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error("Parley did not listen within 30 s")), 30_000);
    }),
  ]).finally(() => clearTimeout(timer));
  parley.httpUrl = url;
  parley.port = Number(new URL(url).port);
  return parley;
}

/** One sample of the server process. */
interface Sample {
  /** Seconds since the traffic started. */
  t: number;
  rssMiB: number;
  fds: number;
  /** Open WebSockets, from `/metrics`. */
  connections: number;
  churned: number;
  messages: number;
  /** Member latency p99 over the samples since the previous row, in ms. */
  p99: number | null;
}

async function readProcess(pid: number): Promise<{ rssMiB: number; fds: number }> {
  const status = await Deno.readTextFile(`/proc/${pid}/status`);
  const rssKiB = Number(/^VmRSS:\s+(\d+) kB/m.exec(status)?.[1] ?? NaN);
  let fds = 0;
  for await (const _ of Deno.readDir(`/proc/${pid}/fd`)) fds++;
  return { rssMiB: Math.round((rssKiB / 1024) * 10) / 10, fds };
}

/** Sums the samples of a metric whose labels contain every `labels` pair. */
async function readMetric(
  httpUrl: string,
  name: string,
  labels: Record<string, string> = {},
): Promise<number> {
  const res = await fetch(`${httpUrl}/metrics`);
  const text = await res.text();
  let sum = 0;
  for (const line of text.split("\n")) {
    const match = /^([a-z_]+)(\{[^}]*\})? ([0-9.e+-]+)$/.exec(line);
    if (!match || match[1] !== name) continue;
    const have = match[2] ?? "";
    if (Object.entries(labels).every(([k, v]) => have.includes(`${k}="${v}"`))) {
      sum += Number(match[3]);
    }
  }
  return sum;
}

/** Counters of the client side. */
class Counts {
  churned = 0;
  churnErrors = 0;
  messagesSent = 0;
  memberSent = 0;
  memberReceived = 0;
  memberErrors = 0;
  memberReconnects = 0;
  flooderRuns = 0;
  flooderSent = 0;
  /** Close codes the flooder saw, as the client reports them. */
  flooderCloseCodes: Record<string, number> = {};
  slowPeersOpened = 0;
  slowPeerFailures = 0;
}

/** The load: every client the soak opened, so that all can be closed. */
class Load {
  readonly counts = new Counts();
  readonly latencies: number[] = [];
  /** Index into `latencies` of the previous sample row. */
  sampled = 0;
  readonly #sockets = new Set<WebSocket>();
  readonly #slow = new Set<Deno.TcpConn>();
  readonly #timers = new Set<ReturnType<typeof setInterval>>();
  #stopped = false;
  #memberTimers = new Map<number, ReturnType<typeof setInterval>>();
  #flooder?: WebSocket;

  constructor(readonly wsUrl: string, readonly port: number) {}

  #track(socket: WebSocket): WebSocket {
    this.#sockets.add(socket);
    socket.addEventListener("close", () => this.#sockets.delete(socket));
    return socket;
  }

  #every(ms: number, fn: () => void) {
    this.#timers.add(setInterval(fn, ms));
  }

  start(): void {
    for (let i = 0; i < MEMBERS; i++) this.#member(i);
    let turn = 0;
    this.#every(1000 / CHURN_PER_SECOND, () => this.#churn(turn++ % 2 === 1));
    this.#flood();
    this.#every(FLOODER_EVERY_MS, () => {
      if (!this.#flooder || this.#flooder.readyState === WebSocket.CLOSED) this.#flood();
    });
    for (let i = 0; i < SLOW_PEERS; i++) {
      // Staggered, so that the peers are not all replaced at once.
      setTimeout(() => this.#slowPeer(), (i * SLOW_PEER_LIFE_MS) / SLOW_PEERS);
    }
  }

  /** A member: joins, sends a timestamped message every 200 ms, times the others'. */
  #member(index: number) {
    if (this.#stopped) return;
    const socket = this.#track(new WebSocket(`${this.wsUrl}/${ROOM}`, "parley.v1"));
    let head = Infinity;
    let sent = 0;
    socket.onopen = () => socket.send(JSON.stringify({ type: "hello", nick: `member-${index}` }));
    socket.onmessage = (event) => {
      const envelope = JSON.parse(String(event.data));
      if (envelope.type === "welcome") {
        head = envelope.head;
        const timer = setInterval(() => {
          if (socket.readyState !== WebSocket.OPEN) return;
          const text = `soak|${index}|${sent}|${Date.now()}`;
          socket.send(JSON.stringify({ type: "message", cid: `m${index}-${sent++}`, text }));
          this.counts.memberSent++;
          this.counts.messagesSent++;
        }, MEMBER_EVERY_MS);
        this.#memberTimers.set(index, timer);
      } else if (envelope.type === "message" && envelope.id > head) {
        const match = /^soak\|(\d+)\|\d+\|(\d+)$/.exec(envelope.text ?? "");
        if (match && Number(match[1]) !== index) {
          this.latencies.push(Date.now() - Number(match[2]));
          this.counts.memberReceived++;
        }
      } else if (envelope.type === "error") {
        this.counts.memberErrors++;
      }
    };
    socket.onclose = () => {
      clearInterval(this.#memberTimers.get(index));
      this.#memberTimers.delete(index);
      if (!this.#stopped) {
        this.counts.memberReconnects++;
        setTimeout(() => this.#member(index), 1000);
      }
    };
  }

  /** A short-lived client: three 2 KiB messages, then gone after 0.5 to 2 s. */
  #churn(rich: boolean) {
    const socket = this.#track(
      new WebSocket(`${this.wsUrl}/${ROOM}`, rich ? "parley.v1" : undefined),
    );
    const n = ++this.counts.churned;
    const body = "c".repeat(2048);
    socket.onopen = () => {
      if (rich) socket.send(JSON.stringify({ type: "hello", nick: `churn-${n}` }));
      for (let i = 0; i < 3; i++) {
        socket.send(
          rich ? JSON.stringify({ type: "message", cid: `c${n}-${i}`, text: body }) : body,
        );
        this.counts.messagesSent++;
      }
      setTimeout(() => socket.close(1000), 500 + Math.random() * 1500);
    };
    socket.onerror = () => this.counts.churnErrors++;
  }

  /** Sends 16 KiB messages as fast as the socket takes them, until closed. */
  #flood() {
    if (this.#stopped) return;
    const socket = this.#track(new WebSocket(`${this.wsUrl}/${ROOM}`));
    this.#flooder = socket;
    this.counts.flooderRuns++;
    const body = "f".repeat(16 * 1024);
    const pump = () => {
      while (socket.readyState === WebSocket.OPEN && socket.bufferedAmount < 1024 * 1024) {
        socket.send(body);
        this.counts.flooderSent++;
        this.counts.messagesSent++;
      }
      if (socket.readyState === WebSocket.OPEN) setTimeout(pump, 1);
    };
    socket.onopen = pump;
    socket.onerror = () => {};
    socket.onclose = (event) => {
      const key = String(event.code);
      this.counts.flooderCloseCodes[key] = (this.counts.flooderCloseCodes[key] ?? 0) + 1;
    };
  }

  /** A raw TCP client that handshakes and never reads; replaced after its life. */
  async #slowPeer() {
    if (this.#stopped) return;
    let conn: Deno.TcpConn | undefined;
    try {
      conn = await Deno.connect({ hostname: "127.0.0.1", port: this.port });
      this.#slow.add(conn);
      const key = btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(16))));
      await conn.write(encoder.encode(
        `GET /${ROOM} HTTP/1.1\r\nHost: 127.0.0.1:${this.port}\r\nUpgrade: websocket\r\n` +
          `Connection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
      ));
      // Only the status line is read; everything after it stays unread.
      const head = new Uint8Array(12);
      let got = 0;
      while (got < head.length) {
        const n = await conn.read(head.subarray(got));
        if (n === null) break;
        got += n;
      }
      if (new TextDecoder().decode(head) !== "HTTP/1.1 101") throw new Error("no 101");
      this.counts.slowPeersOpened++;
    } catch {
      this.counts.slowPeerFailures++;
    }
    await sleep(SLOW_PEER_LIFE_MS);
    if (conn && this.#slow.delete(conn)) {
      try {
        conn.close();
      } catch {
        // Already closed.
      }
    }
    this.#slowPeer();
  }

  /**
   * Stops all traffic, gives the members' last messages a second to arrive,
   * then closes every socket.
   */
  async stop(): Promise<void> {
    this.#stopped = true;
    for (const timer of this.#timers) clearInterval(timer);
    for (const timer of this.#memberTimers.values()) clearInterval(timer);
    this.#flooder?.close(1000);
    await sleep(1000);
    for (const conn of this.#slow) {
      try {
        conn.close();
      } catch {
        // Already closed.
      }
    }
    this.#slow.clear();
    const closing = [...this.#sockets].map((socket) =>
      new Promise<void>((resolve) => {
        if (socket.readyState === WebSocket.CLOSED) return resolve();
        socket.addEventListener("close", () => resolve());
        if (socket.readyState === WebSocket.OPEN) socket.close(1000);
      })
    );
    await Promise.race([Promise.all(closing), sleep(5000)]);
  }
}

function pad(value: unknown, width: number): string {
  return String(value ?? "-").padStart(width);
}

/** The server, so that it is stopped whatever happens. */
let running: Parley | undefined;

/** Runs the soak and returns the process exit code. */
async function main(options: SoakOptions): Promise<number> {
  const parley = running = await startParley(options.port);
  const wsUrl = parley.httpUrl.replace(/^http/, "ws");
  console.log(
    `soak: Parley pid ${parley.pid} on ${parley.httpUrl}, ${options.minutes} min, ` +
      `SLOW_CONSUMER_BYTES=${SLOW_CONSUMER_BYTES}`,
  );
  // The baseline includes the keep-alive connection of the /metrics reads.
  await readMetric(parley.httpUrl, "parley_connections");
  const baseline = await readProcess(parley.pid);
  const load = new Load(wsUrl, parley.port);
  const samples: Sample[] = [];
  const started = Date.now();
  const end = started + options.minutes * 60_000;
  let interrupted = false;
  const onSignal = () => interrupted = true;
  Deno.addSignalListener("SIGINT", onSignal);

  console.log(
    `${pad("t(s)", 6)} ${pad("rss(MiB)", 9)} ${pad("fds", 5)} ${pad("conns", 6)} ` +
      `${pad("churned", 8)} ${pad("messages", 9)} ${pad("p99(ms)", 8)}`,
  );
  const sample = async () => {
    const proc = await readProcess(parley.pid);
    const recent = load.latencies.slice(load.sampled).sort((a, b) => a - b);
    load.sampled = load.latencies.length;
    const row: Sample = {
      t: Math.round((Date.now() - started) / 1000),
      ...proc,
      connections: await readMetric(parley.httpUrl, "parley_connections"),
      churned: load.counts.churned,
      messages: load.counts.messagesSent,
      p99: quantile(recent, 0.99),
    };
    samples.push(row);
    console.log(
      `${pad(row.t, 6)} ${pad(row.rssMiB, 9)} ${pad(row.fds, 5)} ${pad(row.connections, 6)} ` +
        `${pad(row.churned, 8)} ${pad(row.messages, 9)} ${pad(row.p99, 8)}`,
    );
  };

  load.start();
  while (Date.now() < end && !interrupted && !parley.exited) {
    await sleep(Math.min(SAMPLE_EVERY_MS, end - Date.now()));
    if (!parley.exited) await sample();
  }
  Deno.removeSignalListener("SIGINT", onSignal);

  await load.stop();
  await sleep(SETTLE_MS);
  const died = parley.exited;
  const after = died ? null : await readProcess(parley.pid);
  const metric = (name: string, labels?: Record<string, string>) =>
    died ? null : readMetric(parley.httpUrl, name, labels);
  const server = {
    openConnections: await metric("parley_connections"),
    closes1008: await metric("parley_closes_total", { code: "1008" }),
    closes4001: await metric("parley_closes_total", { code: "4001" }),
    slowConsumerEvictions: await metric("parley_slow_consumer_evictions_total"),
    rejected: await metric("parley_rejected_total"),
  };

  parley.child.kill("SIGTERM");
  const status = await Promise.race([parley.child.status, sleep(15_000).then(() => null)]);
  if (status === null) parley.child.kill("SIGKILL");
  await parley.child.status;
  await parley.drained;

  const rss = samples.map((s) => s.rssMiB);
  const flat = plateau(rss);
  const sorted = load.latencies.sort((a, b) => a - b);
  const { counts } = load;
  const expectedDeliveries = counts.memberSent * (MEMBERS - 1);
  const summary = {
    minutes: options.minutes,
    samples: samples.length,
    rssMiB: {
      first: rss[0] ?? null,
      max: rss.length ? Math.max(...rss) : null,
      last: rss.at(-1) ?? null,
      plateau: flat,
      all: rss,
    },
    fds: {
      baseline: baseline.fds,
      max: samples.length ? Math.max(...samples.map((s) => s.fds)) : null,
      end: after?.fds ?? null,
    },
    latencyMs: {
      count: sorted.length,
      p50: quantile(sorted, 0.5),
      p99: quantile(sorted, 0.99),
      max: sorted.at(-1) ?? null,
    },
    counts: {
      connectionsChurned: counts.churned,
      churnErrors: counts.churnErrors,
      messagesSent: counts.messagesSent,
      memberMessagesSent: counts.memberSent,
      memberMessagesReceived: counts.memberReceived,
      memberDelivery: expectedDeliveries ? counts.memberReceived / expectedDeliveries : null,
      memberErrors: counts.memberErrors,
      memberReconnects: counts.memberReconnects,
      flooderRuns: counts.flooderRuns,
      flooderMessagesSent: counts.flooderSent,
      flooderClosedWith1008: server.closes1008,
      flooderCloseCodesSeenByClient: counts.flooderCloseCodes,
      slowPeersOpened: counts.slowPeersOpened,
      slowPeerFailures: counts.slowPeerFailures,
      slowPeersEvicted: server.slowConsumerEvictions,
    },
    server: {
      ...server,
      diedDuringRun: died,
      exitCode: status?.code ?? null,
      logLines: Object.fromEntries(parley.logLevels),
      logTail: parley.logTail,
    },
    checks: {
      // The first minute is warm-up (history and heap fill), too short to judge.
      rssPlateau: options.minutes >= PLATEAU_MIN_MINUTES ? flat.ok : null,
      fdsBackToBaseline: after !== null && after.fds <= baseline.fds,
      noOpenConnections: server.openConnections === 0,
      everyMemberMessageArrived: expectedDeliveries > 0 &&
        counts.memberReceived === expectedDeliveries,
      serverAlive: !died,
    },
  };

  console.log();
  console.log(`${"metric".padEnd(34)} value`);
  const rows: [string, unknown][] = [
    [
      "RSS first / max / last (MiB)",
      `${summary.rssMiB.first} / ${summary.rssMiB.max} / ${summary.rssMiB.last}`,
    ],
    ["RSS max, middle third / last third", `${flat.middleMax} / ${flat.lastMax}`],
    ["fds baseline / max / end", `${baseline.fds} / ${summary.fds.max} / ${after?.fds ?? "-"}`],
    [
      "latency p50 / p99 / max (ms)",
      `${summary.latencyMs.p50} / ${summary.latencyMs.p99} / ${summary.latencyMs.max}`,
    ],
    ["latency samples", sorted.length],
    ["connections churned", counts.churned],
    ["messages sent", counts.messagesSent],
    ["member messages delivered", `${counts.memberReceived} / ${expectedDeliveries}`],
    ["flooder runs / closed with 1008", `${counts.flooderRuns} / ${server.closes1008}`],
    ["flooder close codes seen by client", JSON.stringify(counts.flooderCloseCodes)],
    ["slow peers opened / evicted", `${counts.slowPeersOpened} / ${server.slowConsumerEvictions}`],
    ["server log lines", JSON.stringify(summary.server.logLines)],
    ...Object.entries(summary.checks).map((
      [k, v],
    ): [string, unknown] => [
      `check: ${k}`,
      v === null ? `n/a (runs under ${PLATEAU_MIN_MINUTES} min)` : v ? "ok" : "FAILED",
    ]),
  ];
  for (const [name, value] of rows) console.log(`${name.padEnd(34)} ${value}`);
  console.log();
  console.log(JSON.stringify(summary, null, 2));
  return Object.values(summary.checks).every((ok) => ok !== false) ? 0 : 1;
}

if (import.meta.main) {
  let options: SoakOptions;
  try {
    options = parseSoakArgs(Deno.args);
  } catch (error) {
    console.error(`soak: ${(error as Error).message}`);
    Deno.exit(2);
  }
  // Bounded whatever happens: the run, plus time to stop and report.
  const stopServer = () => {
    if (running && !running.exited) running.child.kill("SIGKILL");
  };
  const guard = setTimeout(() => {
    console.error("soak: did not finish in time");
    stopServer();
    Deno.exit(3);
  }, options.minutes * 60_000 + 120_000);
  let code = 1;
  try {
    code = await main(options);
  } catch (error) {
    console.error(`soak: ${error instanceof Error ? error.stack : error}`);
  } finally {
    stopServer();
    clearTimeout(guard);
  }
  Deno.exit(code);
}
