/**
 * The benchmark suite: `deno task bench`. Measures Parley and the baseline
 * relay (`bench/baseline.ts`) alternately with the same load generator
 * (`bench/load.ts`), prints medians and ratios Parley ÷ baseline with the
 * targets of each figure, and writes every run to `bench/results/<date>.json`.
 *
 * Each server runs alone on core 0 (`taskset -c 0`), fresh for every run so
 * that its peak resident memory belongs to that run; the generator runs on
 * core 1. The server's CPU time and memory come from `/proc/<pid>`.
 *
 * Flags: `--quick` (one repetition, short windows: a smoke run), `--only a,b`
 * (scenarios by id or id prefix), `--all` (also the extra scenarios),
 * `--reps N`, `--window S` (seconds of measurement), `--limit S` (seconds
 * after which a burst run is cut).
 *
 * @module
 */

import {
  type BurstResult,
  cpuSeconds,
  type IdleResult,
  type PacedResult,
  residentBytes,
  USER_HZ,
} from "./load.ts";

type ServerKind = "parley" | "baseline";
type GeneratorResult = (BurstResult | PacedResult | IdleResult) & { processCpuSeconds?: number };

/** Settings of one suite run. */
interface Settings {
  reps: number;
  /** Seconds of measurement per run (burst: at least; paced: exactly). */
  window: number;
  /** A burst run is cut after this many seconds and reports what arrived. */
  burstLimit: number;
  /** `--limit` was given (or `--quick`): it overrides the scenarios' own limits. */
  limitForced: boolean;
  /** Idle: connection counts and seconds to settle. */
  idleCounts: number[];
  settle: number;
  quick: boolean;
}

/** One measurement: a fresh server, one generator run. */
interface RunRecord {
  scenario: string;
  server: ServerKind;
  rep: number;
  startedAt: string;
  wallSeconds: number;
  /** `/proc/loadavg` before the run: other work on the machine shows here. */
  loadBefore: string;
  generator: GeneratorResult | null;
  error?: string;
  /**
   * CPU seconds other processes took on the server's and the generator's
   * cores while the generator ran: how much this run was disturbed.
   */
  othersCpuSeconds: { serverCore: number; generatorCore: number } | null;
  /** Seconds from the generator's start to its end. */
  generatorWallSeconds: number;
  /** The end of the server's standard error (warnings), when it wrote any. */
  serverLog?: string;
  /** Server figures: peak resident memory (`VmHWM`), the highest sample, CPU. */
  serverStats: {
    rssAtStartBytes: number;
    peakRssBytes: number;
    sampledPeakRssBytes: number;
    cpuSeconds: number;
  } | null;
}

/** One figure of a scenario: how to read it from a run. */
interface Figure {
  key: string;
  label: string;
  value(run: RunRecord): number | null;
  format(value: number): string;
}

interface Scenario {
  id: string;
  description: string;
  /** Generator flags, apart from `--url` and `--pid`. */
  args(s: Settings, kind: ServerKind): string[];
  figures: Figure[];
  /** Repetitions when not the suite's (idle is steady and slow to set up). */
  reps?(s: Settings): number;
  /** Only with `--all` or `--only`. */
  extra?: boolean;
}

/** A median, and whether a run behind it was cut short or failed. */
interface Measured {
  value: number;
  partial: boolean;
}

/** Medians of every scenario's figures by `scenario/figure`, for the targets. */
type Medians = Map<string, Record<ServerKind, Measured | null>>;

/** What a target found: the value checked, shown as text, and whether it meets the target. */
interface Verdict {
  shown: string;
  met: boolean;
  /** It rests on a cut or failed run. */
  partial: boolean;
}

interface Target {
  scenario: string;
  figure: string;
  text: string;
  /** Null when a figure it needs was not measured. */
  check(m: Medians): Verdict | null;
}

const ROOT = new URL("../", import.meta.url);
const SERVER_CORE = "0";
const GENERATOR_CORE = "1";
/** Raises the descriptor limit as far as allowed, then runs the command. */
const ULIMIT_EXEC = 'ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec "$@"';
/** Parley's limits are for people, not for a benchmark: raise them. */
const PARLEY_ENV: Record<string, string> = {
  PORT: "0",
  HOSTNAME: "127.0.0.1",
  RATE_LIMIT: "1000000",
  RATE_BURST: "1000000",
  MAX_CONNECTIONS: "100000",
  MAX_CONNECTIONS_PER_IP: "100000",
  LOG_LEVEL: "warn",
};
const BASELINE_ENV: Record<string, string> = { PORT: "0", HOSTNAME: "127.0.0.1" };
const LISTENING = /listening on http:\/\/127\.0\.0\.1:(\d+)\//;
/** Rich clients join rooms of this many, as people do; one room of 5,000 is a presence storm. */
const RICH_IDLE_ROOM_SIZE = 100;

/**
 * Busy seconds of the two cores so far: user, nice, system, interrupts and
 * steal. A process's own CPU time includes the interrupt work done on its
 * behalf, so busy minus the process is what others took (roughly: loopback
 * work for the other core can land here too).
 */
function coreBusySeconds(): number[] {
  const stat = Deno.readTextFileSync("/proc/stat");
  return [SERVER_CORE, GENERATOR_CORE].map((core) => {
    const line = new RegExp(`^cpu${core} (.*)$`, "m").exec(stat);
    if (!line) throw new SyntaxError(`Cannot read core ${core} from /proc/stat`);
    const f = line[1].trim().split(/\s+/).map(Number);
    return (f[0] + f[1] + f[2] + f[5] + f[6] + (f[7] ?? 0)) / USER_HZ;
  });
}

function median(values: number[]): number | null {
  if (values.length === 0) return null;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

function si(value: number): string {
  if (value >= 1e6) return `${(value / 1e6).toFixed(2)}M`;
  if (value >= 1e3) return `${(value / 1e3).toFixed(1)}k`;
  return value.toFixed(0);
}

const MB = 1024 * 1024;
/** Idle: open connections at which the server's memory is read. */
const IDLE_COUNTS = [1000, 5000];

// Figures ------------------------------------------------------------------

const peakRss: Figure = {
  key: "peakRssMB",
  label: "peak RSS (MB)",
  value: (r) => r.serverStats ? r.serverStats.peakRssBytes / MB : null,
  format: (v) => v.toFixed(1),
};
const cpu: Figure = {
  key: "cpuSeconds",
  label: "server CPU (s)",
  value: (r) => r.serverStats?.cpuSeconds ?? null,
  format: (v) => v.toFixed(2),
};
const deliveries: Figure = {
  key: "deliveriesPerSecond",
  label: "deliveries/s",
  value: (r) =>
    r.generator?.mode === "burst" && r.generator.delivered > 0
      ? r.generator.deliveriesPerSecond
      : null,
  format: si,
};
const cpuPerCopy: Figure = {
  key: "cpuMicrosPerCopy",
  label: "CPU µs/copy",
  value: (r) =>
    r.generator?.mode === "burst" && r.generator.serverCpuSeconds !== null &&
      r.generator.delivered > 0
      ? r.generator.serverCpuSeconds / r.generator.delivered * 1e6
      : null,
  format: (v) => v.toFixed(2),
};

function latency(key: "p50" | "p99" | "max"): Figure {
  return {
    key: `${key}Ms`,
    label: `${key} (ms)`,
    value: (r) =>
      r.generator?.mode === "paced" && r.generator.delivered > 0 ? r.generator[key] : null,
    format: (v) => v.toFixed(2),
  };
}

function perConnection(connections: number): Figure {
  return {
    key: `kibPerConnection${connections}`,
    label: `KiB/conn @${connections}`,
    value: (r) => {
      if (r.generator?.mode !== "idle") return null;
      const point = r.generator.points.find((p) => p.connections === connections);
      return point?.bytesPerConnection == null ? null : point.bytesPerConnection / 1024;
    },
    format: (v) => v.toFixed(1),
  };
}

/** Memory each connection adds between the first and the last count: fixed costs left out. */
const marginal: Figure = {
  key: "kibPerConnectionMarginal",
  label: `KiB/conn ${IDLE_COUNTS.join("→")}`,
  value: (r) => {
    if (r.generator?.mode !== "idle") return null;
    const [first, last] = [r.generator.points[0], r.generator.points.at(-1)];
    if (!first || !last || first === last || first.rss === null || last.rss === null) return null;
    return (last.rss - first.rss) / (last.connections - first.connections) / 1024;
  },
  format: (v) => v.toFixed(1),
};

// Scenarios ----------------------------------------------------------------

/**
 * A burst scenario. `limits` cut runs short where a complete round would take
 * longer than the suite can afford (seconds, per server; the suite's `--limit`
 * otherwise).
 */
function burstScenario(
  id: string,
  description: string,
  flags: string[],
  limits: Partial<Record<ServerKind, number>> = {},
  extra = false,
): Scenario {
  return {
    id,
    description,
    args: (s, kind) => [
      "--mode",
      "burst",
      ...flags,
      "--window",
      String(s.window),
      "--timeout",
      String(s.limitForced ? s.burstLimit : limits[kind] ?? s.burstLimit),
    ],
    figures: [deliveries, peakRss, cpuPerCopy, cpu],
    extra,
  };
}

function pacedScenario(id: string, rate: number, rich: boolean, extra = false): Scenario {
  return {
    id,
    description: `${rate} msgs/s in all from 32 ${rich ? "rich" : "raw"} clients`,
    args: (s) => [
      "--mode",
      "paced",
      rich ? "--rich" : "--raw",
      "--clients",
      "32",
      "--rate",
      String(rate),
      "--window",
      String(s.window),
      "--timeout",
      String(s.window + 10),
    ],
    figures: [latency("p50"), latency("p99"), latency("max"), peakRss, cpu],
    extra,
  };
}

/** Idle memory is steady from run to run (±2%): fewer repetitions leave time for the rest. */
function idleScenario(id: string, rich: boolean, reps: number): Scenario {
  return {
    id,
    description: `${rich ? `rich, rooms of ${RICH_IDLE_ROOM_SIZE}` : "raw, one room"}: ` +
      "resident memory per open connection",
    args: (s) => [
      "--mode",
      "idle",
      rich ? "--rich" : "--raw",
      "--counts",
      s.idleCounts.join(","),
      "--settle",
      String(s.settle),
      "--room-size",
      rich ? String(RICH_IDLE_ROOM_SIZE) : "0",
      "--timeout",
      "60",
    ],
    figures: [...IDLE_COUNTS.map(perConnection), marginal, peakRss, cpu],
    reps: (s) => Math.min(s.reps, reps),
  };
}

const SCENARIOS: Scenario[] = [
  burstScenario("burst-raw-16", "16 raw clients, batch 1,600", [
    "--raw",
    "--clients",
    "16",
    "--batch",
    "1600",
  ]),
  burstScenario("burst-raw-32", "32 raw clients, batch 1,600", [
    "--raw",
    "--clients",
    "32",
    "--batch",
    "1600",
  ]),
  // A whole 64-client round takes Parley about 40 s, most of the budget: the
  // baseline falls over there, and as no target needs its figure, a short run
  // records that.
  burstScenario("burst-raw-64", "64 raw clients, batch 1,600", [
    "--raw",
    "--clients",
    "64",
    "--batch",
    "1600",
  ], { parley: 45, baseline: 6 }),
  // Rich against raw at 16 clients: whole rounds fit the window.
  burstScenario("burst-rich-16", "16 rich clients, batch 1,600", [
    "--rich",
    "--clients",
    "16",
    "--batch",
    "1600",
  ]),
  burstScenario(
    "burst-rich-32",
    "32 rich clients, batch 1,600",
    [
      "--rich",
      "--clients",
      "32",
      "--batch",
      "1600",
    ],
    {},
    true,
  ),
  burstScenario("binary-32", "32 raw clients, batch 100 of 1 KiB binary frames", [
    "--raw",
    "--clients",
    "32",
    "--batch",
    "100",
    "--binary",
    "1024",
  ]),
  pacedScenario("paced-raw-100", 100, false),
  pacedScenario("paced-raw-1000", 1000, false),
  pacedScenario("paced-rich-100", 100, true, true),
  // Rich paced runs only with --all: the default suite must fit in 10 minutes.
  pacedScenario("paced-rich-1000", 1000, true, true),
  idleScenario("idle-raw", false, 1),
  idleScenario("idle-rich", true, 1),
];

// Targets --------------------------------------------------------------------

/** `a ÷ b` against a limit; null when either is missing. */
function ratioVerdict(
  a: Measured | null | undefined,
  b: Measured | null | undefined,
  op: "≥" | "≤",
  limit: number,
): Verdict | null {
  if (!a || !b || b.value === 0) return null;
  const ratio = a.value / b.value;
  return {
    shown: `${ratio.toFixed(2)}×`,
    met: op === "≥" ? ratio >= limit : ratio <= limit,
    partial: a.partial || b.partial,
  };
}

function ratioTarget(scenario: string, figure: string, op: "≥" | "≤", limit: number): Target {
  return {
    scenario,
    figure,
    text: `${op} ${limit.toFixed(2)}× base`,
    check(m) {
      const v = m.get(`${scenario}/${figure}`);
      return ratioVerdict(v?.parley, v?.baseline, op, limit);
    },
  };
}

const TARGETS: Target[] = [
  ...["burst-raw-16", "burst-raw-32"].flatMap((id) => [
    ratioTarget(id, "deliveriesPerSecond", "≥", 1),
    ratioTarget(id, "peakRssMB", "≤", 0.1),
    ratioTarget(id, "cpuMicrosPerCopy", "≤", 1.15),
  ]),
  {
    scenario: "burst-raw-64",
    figure: "deliveriesPerSecond",
    text: "≥ 1.00× base@32",
    check(m) {
      const p = m.get("burst-raw-64/deliveriesPerSecond")?.parley;
      const b = m.get("burst-raw-32/deliveriesPerSecond")?.baseline;
      return ratioVerdict(p, b, "≥", 1);
    },
  },
  {
    scenario: "burst-raw-64",
    figure: "peakRssMB",
    text: "< 256 MB",
    check(m) {
      const p = m.get("burst-raw-64/peakRssMB")?.parley;
      return p
        ? { shown: `${p.value.toFixed(0)} MB`, met: p.value < 256, partial: p.partial }
        : null;
    },
  },
  ratioTarget("binary-32", "deliveriesPerSecond", "≥", 1),
  ...[16, 32].map((clients): Target => ({
    scenario: `burst-rich-${clients}`,
    figure: "deliveriesPerSecond",
    text: `≥ 0.70× raw-${clients}`,
    check(m) {
      const rich = m.get(`burst-rich-${clients}/deliveriesPerSecond`)?.parley;
      const raw = m.get(`burst-raw-${clients}/deliveriesPerSecond`)?.parley;
      return ratioVerdict(rich, raw, "≥", 0.7);
    },
  })),
  ratioTarget("paced-raw-100", "p99Ms", "≤", 1.5),
  ratioTarget("paced-raw-1000", "p99Ms", "≤", 1.5),
  ...IDLE_COUNTS.map((n) => ratioTarget("idle-raw", `kibPerConnection${n}`, "≤", 1.1)),
];

// Processes ------------------------------------------------------------------

interface Server {
  child: Deno.ChildProcess;
  pid: number;
  port: number;
  /** The end of its standard error, for failures. */
  stderr(): string;
}

/** Collects a stream's text, keeping only the end, and hands over each line. */
function drain(stream: ReadableStream<Uint8Array>, onLine?: (line: string) => void) {
  let tail = "";
  let pending = "";
  const decoder = new TextDecoder();
  const done = (async () => {
    for await (const bytes of stream) {
      const chunk = decoder.decode(bytes, { stream: true });
      tail = (tail + chunk).slice(-4000);
      if (!onLine) continue;
      pending += chunk;
      const lines = pending.split("\n");
      pending = lines.pop()!;
      for (const line of lines) onLine(line);
    }
  })().catch(() => {});
  return { tail: () => tail, done };
}

function pinned(
  core: string,
  args: string[],
  env: Record<string, string>,
  signal?: AbortSignal,
): Deno.Command {
  return new Deno.Command("taskset", {
    signal,
    args: ["-c", core, "bash", "-c", ULIMIT_EXEC, "bash", Deno.execPath(), ...args],
    cwd: ROOT,
    env,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  });
}

async function startServer(kind: ServerKind): Promise<Server> {
  const script = kind === "parley" ? "main.ts" : "bench/baseline.ts";
  const env = kind === "parley" ? PARLEY_ENV : BASELINE_ENV;
  const child = pinned(SERVER_CORE, ["run", "-A", script], env).spawn();
  const err = drain(child.stderr);
  let resolvePort: (port: number) => void;
  const port = new Promise<number>((resolve) => resolvePort = resolve);
  const out = drain(child.stdout, (line) => {
    const match = LISTENING.exec(line);
    if (match) resolvePort(Number(match[1]));
  });
  let timer: ReturnType<typeof setTimeout> | undefined;
  const failed = Promise.race([
    child.status.then((s) => `exited with code ${s.code}`),
    new Promise<string>((resolve) => {
      timer = setTimeout(() => resolve("did not listen within 30 s"), 30_000);
    }),
  ]);
  const outcome = await Promise.race([port, failed]);
  clearTimeout(timer);
  if (typeof outcome === "string") {
    try {
      child.kill("SIGKILL");
    } catch {
      // already gone
    }
    await Promise.all([child.status, out.done, err.done]);
    throw new Error(`Cannot start ${kind}: it ${outcome}: ${err.tail() || out.tail()}`);
  }
  // taskset and bash exec into Deno, so the child's pid is the server's.
  const exe = Deno.readLinkSync(`/proc/${child.pid}/exe`);
  if (exe !== Deno.realPathSync(Deno.execPath())) {
    child.kill("SIGKILL");
    throw new Error(`Cannot measure ${kind}: process ${child.pid} is ${exe}, not Deno`);
  }
  return { child, pid: child.pid, port: outcome, stderr: err.tail };
}

async function stopServer(server: Server): Promise<void> {
  try {
    server.child.kill("SIGKILL");
  } catch {
    // already gone
  }
  await server.child.status;
}

/** A generator that has not answered by then is stuck: kill it. */
const GENERATOR_KILL_SECONDS = 120;

/** Aborted when the driver is interrupted: the generator and the server must not outlive it. */
const interrupted = new AbortController();
let currentServer: Server | undefined;

function stopOnSignal(): void {
  const stop = () => {
    interrupted.abort();
    if (currentServer) stopServer(currentServer).finally(() => Deno.exit(130));
    else Deno.exit(130);
  };
  Deno.addSignalListener("SIGINT", stop);
  Deno.addSignalListener("SIGTERM", stop);
}

async function runGenerator(args: string[]): Promise<GeneratorResult> {
  const signal = AbortSignal.any([
    AbortSignal.timeout(GENERATOR_KILL_SECONDS * 1000),
    interrupted.signal,
  ]);
  const output = await pinned(GENERATOR_CORE, ["run", "-A", "bench/load.ts", ...args], {}, signal)
    .output();
  const text = new TextDecoder().decode(output.stdout).trim().split("\n").pop() ?? "";
  let result: GeneratorResult | { error: string };
  try {
    result = JSON.parse(text);
  } catch {
    const stderr = new TextDecoder().decode(output.stderr).slice(-2000);
    throw new Error(
      `Generator printed no result (code ${output.code}, killed after ` +
        `${GENERATOR_KILL_SECONDS} s if still running): ${stderr}`,
    );
  }
  if ("error" in result) throw new Error(`Generator failed: ${result.error}`);
  return result;
}

async function measure(
  scenario: Scenario,
  kind: ServerKind,
  rep: number,
  settings: Settings,
): Promise<RunRecord> {
  const started = performance.now();
  const record: RunRecord = {
    scenario: scenario.id,
    server: kind,
    rep,
    startedAt: new Date().toISOString(),
    wallSeconds: 0,
    loadBefore: Deno.readTextFileSync("/proc/loadavg").trim(),
    generator: null,
    othersCpuSeconds: null,
    generatorWallSeconds: 0,
    serverStats: null,
  };
  let server: Server | undefined;
  let sampler: ReturnType<typeof setInterval> | undefined;
  try {
    server = currentServer = await startServer(kind);
    const pid = server.pid;
    const rssAtStart = residentBytes(pid, "VmRSS");
    let sampled = rssAtStart;
    sampler = setInterval(() => {
      try {
        sampled = Math.max(sampled, residentBytes(pid, "VmRSS"));
      } catch {
        // the server is gone; the run reports it
      }
    }, 250);
    const cpu0 = cpuSeconds(pid);
    const busy0 = coreBusySeconds();
    const generatorStart = performance.now();
    const args = [`--url`, `ws://127.0.0.1:${server.port}/`, ...scenario.args(settings, kind)];
    args.push("--pid", String(pid));
    try {
      record.generator = await runGenerator(args);
    } catch (error) {
      record.error = String(error instanceof Error ? error.message : error);
    }
    record.generatorWallSeconds = (performance.now() - generatorStart) / 1000;
    try {
      const busy1 = coreBusySeconds();
      record.serverStats = {
        rssAtStartBytes: rssAtStart,
        peakRssBytes: residentBytes(pid, "VmHWM"),
        sampledPeakRssBytes: Math.max(sampled, residentBytes(pid, "VmRSS")),
        cpuSeconds: cpuSeconds(pid) - cpu0,
      };
      const generatorCpu = record.generator?.processCpuSeconds;
      if (generatorCpu !== undefined) {
        record.othersCpuSeconds = {
          serverCore: Math.max(0, busy1[0] - busy0[0] - record.serverStats.cpuSeconds),
          generatorCore: Math.max(0, busy1[1] - busy0[1] - generatorCpu),
        };
      }
    } catch {
      record.error ??= `The server exited during the run: ${server.stderr().slice(-1000)}`;
    }
  } catch (error) {
    record.error = String(error instanceof Error ? error.message : error);
  } finally {
    clearInterval(sampler);
    if (server) {
      await stopServer(server);
      currentServer = undefined;
      const log = server.stderr().trim();
      if (log) record.serverLog = log.slice(-2000);
    }
  }
  record.wallSeconds = (performance.now() - started) / 1000;
  return record;
}

// Report ---------------------------------------------------------------------

/** Other processes' share of the two cores during a run, in percent. */
function othersShare(run: RunRecord): [number, number] | null {
  const o = run.othersCpuSeconds;
  if (!o || run.generatorWallSeconds <= 0) return null;
  return [o.serverCore, o.generatorCore].map((s) => 100 * s / run.generatorWallSeconds) as [
    number,
    number,
  ];
}

function others(run: RunRecord): string {
  const share = othersShare(run);
  return share ? `${share[0].toFixed(0)}%/${share[1].toFixed(0)}%` : "?";
}

function progressLine(run: RunRecord, index: number, total: number): string {
  const g = run.generator;
  const head = `[${String(index).padStart(2)}/${total}] ${run.scenario} ${
    run.server.padEnd(8)
  } #${run.rep}`;
  const tail = `(${run.wallSeconds.toFixed(1)} s)`;
  if (run.error && !g) return `${head}: FAILED ${run.error} ${tail}`;
  const rss = run.serverStats ? `peak ${(run.serverStats.peakRssBytes / MB).toFixed(0)} MB` : "";
  const cpuText = run.serverStats ? `CPU ${run.serverStats.cpuSeconds.toFixed(2)} s` : "";
  let what = "";
  if (g?.mode === "burst") {
    what = `${si(g.deliveriesPerSecond)} deliveries/s over ${g.seconds.toFixed(1)} s, ` +
      `${g.rounds} round(s)${g.complete ? "" : ", PARTIAL"}` +
      (g.closed ? `, ${g.closed} closed ${g.closeCodes.join(" ")}` : "") +
      `, generator ${generatorShare(run)!.toFixed(0)}% busy`;
  } else if (g?.mode === "paced") {
    what = `p50 ${g.p50.toFixed(2)} p99 ${g.p99.toFixed(2)} max ${g.max.toFixed(2)} ms, ` +
      `${g.delivered}/${g.expected} copies`;
  } else if (g?.mode === "idle") {
    what = g.points.map((p) =>
      `${p.connections}: ${((p.bytesPerConnection ?? NaN) / 1024).toFixed(1)} KiB/conn`
    ).join(", ") + (g.complete ? "" : `, INCOMPLETE ${g.errors.join("; ")}`);
  }
  return `${head}: ${what}; ${rss}, ${cpuText}; others ${others(run)} ${tail}`;
}

interface Row {
  scenario: string;
  figure: string;
  label: string;
  parley: number | null;
  baseline: number | null;
  ratio: number | null;
  format: (v: number) => string;
  partial: { parley: boolean; baseline: boolean };
  target?: string;
  result?: Verdict | null;
}

function summarize(scenarios: Scenario[], runs: RunRecord[]): { rows: Row[]; medians: Medians } {
  const medians: Medians = new Map();
  const rows: Row[] = [];
  for (const scenario of scenarios) {
    for (const figure of scenario.figures) {
      const of = (kind: ServerKind) =>
        runs.filter((r) => r.scenario === scenario.id && r.server === kind);
      const values = (kind: ServerKind) =>
        of(kind).map(figure.value).filter((v): v is number => v !== null && Number.isFinite(v));
      const partial = (kind: ServerKind) =>
        of(kind).some((r) => r.error !== undefined || (r.generator && !r.generator.complete));
      const parley = median(values("parley"));
      const baseline = median(values("baseline"));
      const measured = (value: number | null, kind: ServerKind) =>
        value === null ? null : { value, partial: partial(kind) };
      medians.set(`${scenario.id}/${figure.key}`, {
        parley: measured(parley, "parley"),
        baseline: measured(baseline, "baseline"),
      });
      rows.push({
        scenario: scenario.id,
        figure: figure.key,
        label: figure.label,
        parley,
        baseline,
        ratio: parley !== null && baseline ? parley / baseline : null,
        format: figure.format,
        partial: { parley: partial("parley"), baseline: partial("baseline") },
      });
    }
  }
  for (const target of TARGETS) {
    const row = rows.find((r) => r.scenario === target.scenario && r.figure === target.figure);
    if (!row) continue;
    row.target = target.text;
    row.result = target.check(medians);
  }
  return { rows, medians };
}

function verdictText(verdict: Verdict | null | undefined): string {
  if (!verdict) return "n/a";
  return `${verdict.met ? "met" : "MISSED"}${verdict.partial ? "*" : ""} (${verdict.shown})`;
}

function table(rows: Row[]): string {
  const header = ["scenario", "figure", "Parley", "baseline", "P ÷ B", "target", "result"];
  const cells = rows.map((r) => [
    r.scenario,
    r.label,
    (r.parley === null ? "–" : r.format(r.parley)) + (r.partial.parley ? "*" : ""),
    (r.baseline === null ? "–" : r.format(r.baseline)) + (r.partial.baseline ? "*" : ""),
    r.ratio === null ? "–" : `${r.ratio.toFixed(2)}×`,
    r.target ?? "",
    r.target ? verdictText(r.result) : "",
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i].length)));
  const right = [false, false, true, true, true, false, false];
  const line = (c: string[]) =>
    c.map((v, i) => right[i] ? v.padStart(widths[i]) : v.padEnd(widths[i])).join("  ").trimEnd();
  const out = [line(header), widths.map((w) => "-".repeat(w)).join("  ")];
  let last = "";
  for (const [i, c] of cells.entries()) {
    if (last && rows[i].scenario !== last) out.push("");
    last = rows[i].scenario;
    out.push(line(c));
  }
  return out.join("\n");
}

/** How much other processes took of the pinned cores: noise to keep in mind. */
/** Percent of its core the generator used while measuring a burst: near 100, it is the limit. */
function generatorShare(run: RunRecord): number | null {
  const g = run.generator;
  if (g?.mode !== "burst" || g.seconds <= 0) return null;
  return 100 * g.generatorCpuSeconds / g.seconds;
}

/** Burst runs in which the generator, not the server, may have set the pace. */
function generatorNote(runs: RunRecord[]): string {
  const busy = runs.filter((r) => (generatorShare(r) ?? 0) >= GENERATOR_BUSY_PERCENT);
  return busy.length
    ? `The generator used over ${GENERATOR_BUSY_PERCENT}% of its core in ${busy.length} burst ` +
      `run(s), so they may measure it rather than the server: ` +
      busy.map((r) => `${r.scenario} ${r.server} #${r.rep}`).join(", ")
    : `The generator stayed under ${GENERATOR_BUSY_PERCENT}% of its core in every burst run`;
}

/** Above this share of its core the generator may be what limits a burst run. */
const GENERATOR_BUSY_PERCENT = 90;

function disturbanceNote(runs: RunRecord[]): string {
  const shares = runs.map(othersShare).filter((s): s is [number, number] => s !== null);
  if (shares.length === 0) return "Other processes' use of the cores: unknown";
  const serverCore = median(shares.map((s) => s[0]))!;
  const generatorCore = median(shares.map((s) => s[1]))!;
  const disturbed = runs.filter((r) => (othersShare(r) ?? [0, 0]).some((s) => s > 15));
  return `Other processes took a median ${serverCore.toFixed(1)}% of the server's core and ` +
    `${generatorCore.toFixed(1)}% of the generator's during the runs; ` +
    (disturbed.length
      ? `${disturbed.length} run(s) lost over 15%: ` +
        disturbed.map((r) => `${r.scenario} ${r.server} #${r.rep}`).join(", ")
      : "no run lost over 15%");
}

// Main -----------------------------------------------------------------------

function parseFlags(args: string[]): { settings: Settings; only: string[]; all: boolean } {
  const quick = args.includes("--quick");
  const settings: Settings = quick
    ? {
      reps: 1,
      window: 2,
      burstLimit: 4,
      limitForced: true,
      idleCounts: IDLE_COUNTS,
      settle: 1,
      quick,
    }
    : {
      reps: 3,
      window: 8,
      burstLimit: 30,
      limitForced: false,
      idleCounts: IDLE_COUNTS,
      settle: 2,
      quick,
    };
  let only: string[] = [];
  let all = false;
  for (let i = 0; i < args.length; i++) {
    const flag = args[i];
    const number = () => {
      const n = Number(args[++i]);
      if (!Number.isFinite(n) || n <= 0) {
        throw new RangeError(`Cannot use ${flag} ${args[i]}: expected a positive number`);
      }
      return n;
    };
    if (flag === "--quick") continue;
    else if (flag === "--all") all = true;
    else if (flag === "--only") only = (args[++i] ?? "").split(",").filter(Boolean);
    else if (flag === "--reps") settings.reps = Math.round(number());
    else if (flag === "--window") settings.window = number();
    else if (flag === "--limit") {
      settings.burstLimit = number();
      settings.limitForced = true;
    } else {
      throw new TypeError(
        `Cannot use argument "${flag}": expected --quick, --only a,b, --all, --reps N, ` +
          "--window S or --limit S",
      );
    }
  }
  return { settings, only, all };
}

function git(...args: string[]): string | null {
  try {
    const out = new Deno.Command("git", { args, cwd: ROOT, stderr: "null" }).outputSync();
    return out.success ? new TextDecoder().decode(out.stdout).trim() : null;
  } catch {
    return null;
  }
}

function machine() {
  const cpuModel = /^model name\s*:\s*(.*)$/m.exec(Deno.readTextFileSync("/proc/cpuinfo"))?.[1];
  return {
    cpus: navigator.hardwareConcurrency,
    cpuModel: cpuModel ?? null,
    memoryBytes: Deno.systemMemoryInfo().total,
    os: `${Deno.build.os} ${Deno.osRelease()}`,
    deno: Deno.version.deno,
    v8: Deno.version.v8,
  };
}

if (import.meta.main) {
  const { settings, only, all } = parseFlags(Deno.args);
  stopOnSignal();
  const scenarios = SCENARIOS.filter((s) =>
    only.length ? only.some((o) => s.id === o || s.id.startsWith(o)) : all || !s.extra
  );
  if (scenarios.length === 0) {
    console.error(`No scenario matches --only ${only.join(",")}: ${SCENARIOS.map((s) => s.id)}`);
    Deno.exit(2);
  }
  if (navigator.hardwareConcurrency < 2) {
    console.error("The suite needs two cores: the server on one, the generator on the other");
    Deno.exit(2);
  }
  const plan = scenarios.flatMap((s) => {
    const reps = s.reps?.(settings) ?? settings.reps;
    return Array.from(
      { length: reps },
      (_, i) =>
        (["parley", "baseline"] as const).map((kind) => ({ scenario: s, kind, rep: i + 1 })),
    ).flat();
  });
  const started = new Date();
  const t0 = performance.now();
  console.log(
    `Parley benchmark: ${plan.length} runs, ${settings.window} s windows, server on core ` +
      `${SERVER_CORE}, generator on core ${GENERATOR_CORE}${settings.quick ? " (quick)" : ""}; ` +
      `"others" is the share of those cores other processes took during the run`,
  );
  const runs: RunRecord[] = [];
  for (const [i, step] of plan.entries()) {
    const run = await measure(step.scenario, step.kind, step.rep, settings);
    runs.push(run);
    console.log(progressLine(run, i + 1, plan.length));
  }
  const seconds = (performance.now() - t0) / 1000;
  const { rows } = summarize(scenarios, runs);
  const fewer = scenarios.filter((s) => s.reps && s.reps(settings) !== settings.reps)
    .map((s) => `${s.id} ${s.reps!(settings)}`);
  console.log(
    `\nMedians of ${settings.reps} run(s) per server${
      fewer.length ? ` (${fewer.join(", ")})` : ""
    }` +
      "; * = a run was cut short or failed (see the JSON)\n",
  );
  console.log(table(rows));
  const disturbance = disturbanceNote(runs);
  const generator = generatorNote(runs);
  console.log(`\n${disturbance}\n${generator}`);
  const results = new URL("bench/results/", ROOT);
  Deno.mkdirSync(results, { recursive: true });
  const file = new URL(`${started.toISOString().replace(/[:.]/g, "-")}.json`, results);
  const report = {
    suite: "parley-bench",
    startedAt: started.toISOString(),
    seconds,
    machine: machine(),
    git: {
      commit: git("rev-parse", "HEAD"),
      status: git("status", "--porcelain", "--", "lib", "main.ts"),
    },
    settings: {
      ...settings,
      serverCore: SERVER_CORE,
      generatorCore: GENERATOR_CORE,
      parleyEnv: PARLEY_ENV,
    },
    summary: rows.map(({ format: _format, ...row }) => row),
    disturbance,
    generator,
    runs,
  };
  Deno.writeTextFileSync(file, JSON.stringify(report, null, 2) + "\n");
  const met = rows.filter((r) => r.result?.met).length;
  const missed = rows.filter((r) => r.result && !r.result.met).length;
  console.log(
    `\n${met} target(s) met, ${missed} missed, in ${(seconds / 60).toFixed(1)} min. ` +
      `Results: ${file.pathname}`,
  );
}
