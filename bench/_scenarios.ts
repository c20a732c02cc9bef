/**
 * The scenarios of the benchmark suite and their targets.
 *
 * @module
 */

import {
  cpu,
  cpuPerCopy,
  deliveries,
  engineFigures,
  FANOUT_MEMBERS,
  FANOUT_RATES,
  fanoutFigures,
  type Figure,
  IDLE_COUNTS,
  JOIN_COUNTS,
  joinFigures,
  latency,
  marginal,
  peakRss,
  perConnection,
  type Settings,
  thousands,
} from "./_figures.ts";
import { SERVER_LABELS, type ServerKind } from "./_servers.ts";

/** One scenario: which servers, what load, which figures. */
export interface Scenario {
  id: string;
  description: string;
  /** The servers it measures, in the order they take turns. */
  servers: ServerKind[];
  /** Generator flags, apart from `--url` and `--pid`. */
  args(s: Settings, kind: ServerKind): string[];
  figures: Figure[];
  /** Repetitions when not the suite's (idle is steady and slow to set up). */
  reps?(s: Settings): number;
  /** Only with `--all` or `--only`. */
  extra?: boolean;
  /** Parley's environment on top of the suite's. */
  env?: Record<string, string>;
  /** Starts a `redis-server` for the run; its URL goes in `REDIS_URL`. */
  redis?: boolean;
  /** Seconds after which the generator is killed (default 120). */
  killAfter?(s: Settings): number;
  /** Runs this Deno script once instead of a server and the generator. */
  script?(s: Settings): string[];
}

/** A median, and whether a run behind it was cut short or failed. */
export interface Measured {
  value: number;
  partial: boolean;
}

/** Medians of every scenario's figures by `scenario/figure`, for the targets. */
export type Medians = Map<string, Partial<Record<ServerKind, Measured | null>>>;

/** What a target found: the value checked, shown as text, and whether it meets the target. */
export interface Verdict {
  shown: string;
  met: boolean;
  /** It rests on a cut or failed run. */
  partial: boolean;
}

/** A target on one figure of a scenario. */
export interface Target {
  scenario: string;
  figure: string;
  text: string;
  /** Null when a figure it needs was not measured. */
  check(m: Medians): Verdict | null;
}

// Scenarios ----------------------------------------------------------------

/** Parley and the Deno baseline. */
const PAIR: ServerKind[] = ["parley", "baseline"];
/** Parley, the Deno baseline, Node with `ws`, Bun. */
const ALL_SERVERS: ServerKind[] = ["parley", "baseline", "node", "bun"];

interface BurstOptions {
  servers?: ServerKind[];
  /** At most this many repetitions (the suite's `--reps` otherwise). */
  reps?: number;
  /**
   * Seconds after which a run is cut, per server, where a complete round
   * would take longer than the suite can afford (the suite's `--limit`
   * otherwise).
   */
  limits?: Partial<Record<ServerKind, number>>;
  extra?: boolean;
  env?: Record<string, string>;
  redis?: boolean;
}

function burstScenario(
  id: string,
  description: string,
  flags: string[],
  options: BurstOptions = {},
): Scenario {
  const { limits = {} } = options;
  return {
    id,
    description,
    servers: options.servers ?? PAIR,
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
    reps: options.reps === undefined ? undefined : (s) => Math.min(s.reps, options.reps!),
    extra: options.extra,
    env: options.env,
    redis: options.redis,
  };
}

function pacedScenario(
  id: string,
  rate: number,
  rich: boolean,
  options: { extra?: boolean; reps?: number } = {},
): Scenario {
  return {
    id,
    description: `${rate} msgs/s in all from 32 ${rich ? "rich" : "raw"} clients`,
    servers: PAIR,
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
    reps: options.reps === undefined ? undefined : (s) => Math.min(s.reps, options.reps!),
    extra: options.extra,
  };
}

/** Idle memory is steady from run to run (±2%): fewer repetitions leave time for the rest. */
function idleScenario(id: string, rich: boolean, reps: number, extra = false): Scenario {
  return {
    id,
    description: `${rich ? `rich, rooms of ${RICH_IDLE_ROOM_SIZE}` : "raw, one room"}: ` +
      "resident memory per open connection",
    servers: PAIR,
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
    extra,
  };
}

/** Rich clients join rooms of this many, as people do; one room of 5,000 is a presence storm. */
const RICH_IDLE_ROOM_SIZE = 100;
/** Big-room runs stop here and report what they have. */
const JOIN_TIMEOUT = 45;
const FANOUT_TIMEOUT = 60;

/**
 * A fanout scenario. Bun's relay, with raw members (it speaks no
 * `parley.v1`), shows what the same fan-out costs where the relay itself
 * costs next to nothing: this machine's floor.
 */
function fanoutScenario(id: string, batched: boolean, servers: ServerKind[]): Scenario {
  return {
    id,
    description: `${FANOUT_MEMBERS} rich members in one room${batched ? ", batch" : ""}, ` +
      `one sender at ${FANOUT_RATES.join(" then ")} msgs/s`,
    servers,
    args: (s, kind) => [
      "--mode",
      "fanout",
      ...(kind === "parley" ? ["--rich"] : []),
      ...(batched ? ["--batched"] : []),
      "--clients",
      String(FANOUT_MEMBERS),
      "--rates",
      FANOUT_RATES.join(","),
      "--window",
      String(s.fanoutWindow),
      "--settle",
      "5",
      "--timeout",
      String(FANOUT_TIMEOUT),
    ],
    figures: fanoutFigures,
    reps: () => 1,
    killAfter: () => FANOUT_TIMEOUT + 30,
  };
}

/**
 * The suite. The default set fits in 10 minutes: the 16-client raw, redis and
 * rich bursts, binary and paced at 100 msgs/s run twice per server; the rest
 * three times, except idle and the big rooms, which are steady or slow to set
 * up (once).
 */
export const SCENARIOS: Scenario[] = [
  burstScenario("burst-raw-16", "16 raw clients, batch 1,600", [
    "--raw",
    "--clients",
    "16",
    "--batch",
    "1600",
  ], { servers: ALL_SERVERS, reps: 2 }),
  // Right after its memory-engine twin, so machine noise hits both alike. At
  // the target a round takes 5 s; a run still in its first after 15 s is far
  // below it, and the cut says so.
  burstScenario("burst-redis-16", "burst-raw-16 on ENGINE=redis", [
    "--raw",
    "--clients",
    "16",
    "--batch",
    "1600",
  ], {
    servers: ["parley"],
    env: { ENGINE: "redis" },
    redis: true,
    reps: 2,
    limits: { parley: 15 },
  }),
  burstScenario("burst-raw-32", "32 raw clients, batch 1,600", [
    "--raw",
    "--clients",
    "32",
    "--batch",
    "1600",
  ], { servers: ALL_SERVERS }),
  // A whole 64-client round takes Parley about 40 s, most of the budget: the
  // Deno relay falls over there, and as no target needs its figure, a short
  // run records that.
  burstScenario("burst-raw-64", "64 raw clients, batch 1,600", [
    "--raw",
    "--clients",
    "64",
    "--batch",
    "1600",
  ], { servers: ALL_SERVERS, limits: { parley: 45, baseline: 6 }, extra: true }),
  // Rich against raw at 16 clients: whole rounds fit the window.
  burstScenario("burst-rich-16", "16 rich clients, batch 1,600", [
    "--rich",
    "--clients",
    "16",
    "--batch",
    "1600",
  ], { servers: ["parley"], reps: 2 }),
  burstScenario("burst-rich-32", "32 rich clients, batch 1,600", [
    "--rich",
    "--clients",
    "32",
    "--batch",
    "1600",
  ], { servers: ["parley"], extra: true }),
  // At the target (3× raw-32) a round takes under 6 s; one still running
  // after 15 s is below 1.1× raw-32, and the cut says so.
  burstScenario("burst-rich-batch-32", "32 rich clients, batch 1,600, batch: true", [
    "--rich",
    "--batched",
    "--clients",
    "32",
    "--batch",
    "1600",
  ], { servers: ["parley"], limits: { parley: 15 } }),
  burstScenario("binary-32", "32 raw clients, batch 100 of 1 KiB binary frames", [
    "--raw",
    "--clients",
    "32",
    "--batch",
    "100",
    "--binary",
    "1024",
  ], { reps: 2 }),
  pacedScenario("paced-raw-100", 100, false, { reps: 2 }),
  pacedScenario("paced-raw-1000", 1000, false),
  // Rich paced runs only with --all: the default suite must fit in 10 minutes.
  pacedScenario("paced-rich-100", 100, true, { extra: true }),
  pacedScenario("paced-rich-1000", 1000, true, { extra: true }),
  idleScenario("idle-raw", false, 1),
  idleScenario("idle-rich", true, 1, true),
  {
    id: "bigroom-join",
    description: `rich members join one room, 50 at a time, up to ${
      JOIN_COUNTS.map(thousands).join(" then ")
    }`,
    servers: ["parley"],
    args: () => [
      "--mode",
      "join",
      "--rich",
      "--batched",
      "--counts",
      JOIN_COUNTS.join(","),
      "--concurrency",
      "50",
      "--settle",
      "5",
      "--timeout",
      String(JOIN_TIMEOUT),
    ],
    figures: joinFigures,
    reps: () => 1,
    killAfter: () => JOIN_TIMEOUT + 30,
  },
  fanoutScenario("bigroom-fanout", false, ["parley", "bun"]),
  fanoutScenario("bigroom-fanout-batch", true, ["parley"]),
  {
    id: "engines",
    description: "appends/s of each engine (bench/engines.ts)",
    servers: ["parley"],
    args: () => [],
    figures: engineFigures,
    reps: () => 1,
    script: (s) => ["bench/engines.ts", "--seconds", String(s.engineSeconds)],
    killAfter: (s) => 20 * s.engineSeconds + 60,
  },
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

/** Parley ÷ another server on the same figure. */
function ratioTarget(
  scenario: string,
  figure: string,
  op: "≥" | "≤",
  limit: number,
  other: ServerKind = "baseline",
): Target {
  return {
    scenario,
    figure,
    text: `${op} ${limit.toFixed(2)}× ${SERVER_LABELS[other]}`,
    check(m) {
      const v = m.get(`${scenario}/${figure}`);
      return ratioVerdict(v?.parley, v?.[other], op, limit);
    },
  };
}

/** Parley's figure against Parley's (or another server's) figure of another scenario. */
function crossTarget(
  scenario: string,
  figure: string,
  op: "≥" | "≤",
  limit: number,
  against: { scenario: string; server?: ServerKind; name: string },
): Target {
  return {
    scenario,
    figure,
    text: `${op} ${limit.toFixed(2)}× ${against.name}`,
    check(m) {
      const p = m.get(`${scenario}/${figure}`)?.parley;
      const other = m.get(`${against.scenario}/${figure}`)?.[against.server ?? "parley"];
      return ratioVerdict(p, other, op, limit);
    },
  };
}

/** Parley's figure against a fixed bound. */
function boundTarget(
  scenario: string,
  figure: string,
  op: "≥" | "≤" | "<",
  limit: number,
  unit: string,
  format: (v: number) => string,
): Target {
  return {
    scenario,
    figure,
    text: `${op} ${format(limit)}${unit}`,
    check(m) {
      const p = m.get(`${scenario}/${figure}`)?.parley;
      if (!p) return null;
      const met = op === "≥" ? p.value >= limit : op === "≤" ? p.value <= limit : p.value < limit;
      return { shown: `${format(p.value)}${unit}`, met, partial: p.partial };
    },
  };
}

const whole = (v: number) => v.toFixed(0);
const LARGE = JOIN_COUNTS.at(-1)!;

/** The targets, each on the row of the figure it checks. */
export const TARGETS: Target[] = [
  ...["burst-raw-16", "burst-raw-32"].flatMap((id) => [
    ratioTarget(id, "deliveriesPerSecond", "≥", 1),
    ratioTarget(id, "peakRssMB", "≤", 0.1),
    ratioTarget(id, "cpuMicrosPerCopy", "≤", 1.15),
  ]),
  crossTarget("burst-redis-16", "deliveriesPerSecond", "≥", 0.9, {
    scenario: "burst-raw-16",
    name: "memory",
  }),
  crossTarget("burst-raw-64", "deliveriesPerSecond", "≥", 1, {
    scenario: "burst-raw-32",
    server: "baseline",
    name: "Deno@32",
  }),
  boundTarget("burst-raw-64", "peakRssMB", "<", 256, " MB", whole),
  ratioTarget("binary-32", "deliveriesPerSecond", "≥", 1),
  ...[16, 32].map((clients) =>
    crossTarget(`burst-rich-${clients}`, "deliveriesPerSecond", "≥", 0.7, {
      scenario: `burst-raw-${clients}`,
      name: `raw-${clients}`,
    })
  ),
  crossTarget("burst-rich-batch-32", "deliveriesPerSecond", "≥", 3, {
    scenario: "burst-raw-32",
    name: "raw-32",
  }),
  crossTarget("burst-rich-batch-32", "deliveriesPerSecond", "≥", 2, {
    scenario: "burst-raw-32",
    server: "node",
    name: "Node ws raw-32",
  }),
  ratioTarget("paced-raw-100", "p99Ms", "≤", 1.5),
  ratioTarget("paced-raw-1000", "p99Ms", "≤", 1.5),
  ...IDLE_COUNTS.map((n) => ratioTarget("idle-raw", `kibPerConnection${n}`, "≤", 1.1)),
  boundTarget("bigroom-join", "joinCpuRatio", "≤", 12, "×", (v) => v.toFixed(2)),
  boundTarget("bigroom-join", `cpuMicrosPerJoin${LARGE}`, "≤", 2000, " µs", whole),
  boundTarget("bigroom-join", `kibPerMember${LARGE}`, "≤", 40, " KiB", (v) => v.toFixed(1)),
  ...["bigroom-fanout", "bigroom-fanout-batch"].map((id) =>
    boundTarget(id, "p99MsAt20", "≤", 50, " ms", (v) => v.toFixed(1))
  ),
  boundTarget(
    "bigroom-fanout-batch",
    "deliveredPercentAt200",
    "≥",
    100,
    "%",
    (v) => v.toFixed(v >= 99.95 ? 0 : 1),
  ),
  boundTarget("bigroom-fanout-batch", "p99MsAt200", "≤", 250, " ms", (v) => v.toFixed(1)),
];
