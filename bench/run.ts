/**
 * The benchmark suite: `deno task bench`. Measures Parley and other relays
 * (`bench/baseline.ts` on Deno; with `bash bench/install_peers.sh`, Node with
 * `ws` and Bun) alternately with the same load generator (`bench/load.ts`),
 * prints medians and ratios Parley ÷ each relay with the targets of each
 * figure, and writes every run to `bench/results/<date>.json`.
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

import { cpuSeconds, residentBytes, USER_HZ } from "./load.ts";
import {
  type EnginesResult,
  type GeneratorResult,
  IDLE_COUNTS,
  type RunRecord,
  type Settings,
} from "./_figures.ts";
import { disturbanceNote, generatorNote, progressLine, summarize, table } from "./_report.ts";
import { type Scenario, SCENARIOS } from "./_scenarios.ts";
import {
  GENERATOR_CORE,
  launchOf,
  PARLEY_ENV,
  pinned,
  type Redis,
  redisMissing,
  ROOT,
  type Server,
  SERVER_CORE,
  type ServerKind,
  startRedis,
  startServer,
  stopRedis,
  stopServer,
  versionOf,
} from "./_servers.ts";

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

// Runs -----------------------------------------------------------------------

/** A generator that has not answered by then is stuck: kill it. */
const GENERATOR_KILL_SECONDS = 120;

/** Aborted when the driver is interrupted: the generator and the server must not outlive it. */
const interrupted = new AbortController();
let currentServer: Server | undefined;
let currentRedis: Redis | undefined;

function stopOnSignal(): void {
  const stop = () => {
    interrupted.abort();
    Promise.allSettled([
      currentServer && stopServer(currentServer),
      currentRedis && stopRedis(currentRedis),
    ]).finally(() => Deno.exit(130));
  };
  Deno.addSignalListener("SIGINT", stop);
  Deno.addSignalListener("SIGTERM", stop);
}

async function runGenerator(args: string[], killAfter: number): Promise<GeneratorResult> {
  const signal = AbortSignal.any([AbortSignal.timeout(killAfter * 1000), interrupted.signal]);
  const output = await pinned(
    GENERATOR_CORE,
    Deno.execPath(),
    ["run", "-A", "bench/load.ts", ...args],
    {},
    signal,
  ).output();
  const text = new TextDecoder().decode(output.stdout).trim().split("\n").pop() ?? "";
  let result: GeneratorResult | { error: string };
  try {
    result = JSON.parse(text);
  } catch {
    const stderr = new TextDecoder().decode(output.stderr).slice(-2000);
    throw new Error(
      `Generator printed no result (code ${output.code}, killed after ` +
        `${killAfter} s if still running): ${stderr}`,
    );
  }
  if ("error" in result) throw new Error(`Generator failed: ${result.error}`);
  return result;
}

/** Reads the table `bench/engines.ts` prints: `<engine>  <appends>  <appends/s>  ok`. */
function parseEngines(output: string): EnginesResult["engines"] {
  const row = /^(.*\S)\s+(\d+)\s+([\d,]+)\s+(ok|HEAD DIFFERS FROM APPENDS)\s*$/;
  return output.split("\n").flatMap((line) => {
    const m = row.exec(line);
    return m
      ? [{
        name: m[1],
        appends: Number(m[2]),
        perSecond: Number(m[3].replaceAll(",", "")),
        consistent: m[4] === "ok",
      }]
      : [];
  });
}

/**
 * Runs a script of its own (`bench/engines.ts`), not pinned: it measures
 * engines in one process against each other, with its own `redis-server`.
 */
async function runScript(args: string[], killAfter: number): Promise<EnginesResult> {
  const script = new URL(args[0], ROOT);
  try {
    Deno.statSync(script);
  } catch {
    throw new Error(`${args[0]} is not there yet: nothing measured`);
  }
  const signal = AbortSignal.any([AbortSignal.timeout(killAfter * 1000), interrupted.signal]);
  const output = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", ...args],
    cwd: ROOT,
    stdin: "null",
    signal,
  }).output();
  const text = new TextDecoder().decode(output.stdout).trimEnd();
  const engines = parseEngines(text);
  if (!output.success && engines.length === 0) {
    const stderr = new TextDecoder().decode(output.stderr).slice(-2000);
    throw new Error(`${args.join(" ")} failed (code ${output.code}): ${stderr || text}`);
  }
  return {
    mode: "engines",
    engines,
    output: text,
    complete: output.success && engines.every((e) => e.consistent),
  };
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
  const killAfter = scenario.killAfter?.(settings) ?? GENERATOR_KILL_SECONDS;
  if (scenario.script) {
    try {
      record.generator = await runScript(scenario.script(settings), killAfter);
    } catch (error) {
      record.error = String(error instanceof Error ? error.message : error);
    }
    record.wallSeconds = record.generatorWallSeconds = (performance.now() - started) / 1000;
    return record;
  }
  let server: Server | undefined;
  let redis: Redis | undefined;
  let sampler: ReturnType<typeof setInterval> | undefined;
  try {
    const env = { ...scenario.env };
    if (scenario.redis) {
      redis = currentRedis = await startRedis();
      env.REDIS_URL = redis.url;
    }
    server = currentServer = await startServer(kind, env);
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
    const redisCpu0 = redis && cpuSeconds(redis.pid);
    const busy0 = coreBusySeconds();
    const generatorStart = performance.now();
    const args = [`--url`, `ws://127.0.0.1:${server.port}/`, ...scenario.args(settings, kind)];
    args.push("--pid", String(pid));
    try {
      record.generator = await runGenerator(args, killAfter);
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
      let redisCpu = 0;
      if (redis && redisCpu0 !== undefined) {
        redisCpu = record.serverStats.redisCpuSeconds = cpuSeconds(redis.pid) - redisCpu0;
      }
      const generatorCpu = record.generator?.processCpuSeconds;
      if (generatorCpu !== undefined) {
        record.othersCpuSeconds = {
          serverCore: Math.max(0, busy1[0] - busy0[0] - record.serverStats.cpuSeconds),
          generatorCore: Math.max(0, busy1[1] - busy0[1] - generatorCpu - redisCpu),
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
    if (redis) {
      await stopRedis(redis);
      currentRedis = undefined;
    }
  }
  record.wallSeconds = (performance.now() - started) / 1000;
  return record;
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
      fanoutWindow: 2,
      engineSeconds: 1,
      quick,
    }
    : {
      reps: 3,
      window: 5,
      burstLimit: 30,
      limitForced: false,
      idleCounts: IDLE_COUNTS,
      settle: 2,
      fanoutWindow: 8,
      engineSeconds: 5,
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
    else if (flag === "--window") settings.window = settings.fanoutWindow = number();
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

/** The servers that can run here; prints why the others are skipped. */
function availableServers(scenarios: Scenario[]): Set<ServerKind> {
  const wanted = new Set(scenarios.filter((s) => !s.script).flatMap((s) => s.servers));
  const available = new Set<ServerKind>();
  for (const kind of wanted) {
    const launch = launchOf(kind);
    if (typeof launch === "string") console.log(launch);
    else available.add(kind);
  }
  const missing = scenarios.some((s) => s.redis) ? redisMissing() : undefined;
  if (missing) console.log(`Redis scenarios: ${missing}; they will fail`);
  return available;
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
  const available = availableServers(scenarios);
  for (const s of scenarios) {
    if (!s.script) s.servers = s.servers.filter((k) => available.has(k));
  }
  const plan = scenarios.flatMap((s) => {
    const reps = s.reps?.(settings) ?? settings.reps;
    return Array.from(
      { length: reps },
      (_, i) => s.servers.map((kind) => ({ scenario: s, kind, rep: i + 1 })),
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
    try {
      console.log(progressLine(run, i + 1, plan.length));
    } catch (error) {
      // A line that cannot be written must not lose the suite: the JSON has the run.
      console.log(`[${i + 1}/${plan.length}] ${run.scenario} ${run.server}: ${error}`);
    }
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
  const kinds = (["parley", "baseline", "node", "bun"] as const).filter((k) =>
    runs.some((r) => r.server === k && !scenarios.find((s) => s.id === r.scenario)?.script)
  );
  console.log(table(rows, kinds.length ? kinds : ["parley"]));
  const engines = runs.find((r) => r.generator?.mode === "engines");
  if (engines?.generator?.mode === "engines") {
    console.log(
      `\nbench/engines.ts --seconds ${settings.engineSeconds}:\n${engines.generator.output}`,
    );
  } else if (engines?.error || runs.some((r) => r.scenario === "engines")) {
    console.log(`\nbench/engines.ts: ${runs.find((r) => r.scenario === "engines")?.error}`);
  }
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
    servers: Object.fromEntries(kinds.map((k) => [k, versionOf(k)])),
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
  const verdicts = rows.flatMap((r) => r.targets.map((t) => t.result));
  const met = verdicts.filter((v) => v?.met).length;
  const missed = verdicts.filter((v) => v && !v.met).length;
  console.log(
    `\n${met} target(s) met, ${missed} missed, in ${(seconds / 60).toFixed(1)} min. ` +
      `Results: ${file.pathname}`,
  );
}
