/**
 * What the benchmark suite reads from a run: the record of one measurement
 * and the figures the table shows, each a function of a run.
 *
 * @module
 */

import type { BurstResult, FanoutResult, IdleResult, JoinResult, PacedResult } from "./load.ts";
import type { ServerKind } from "./_servers.ts";

/** What `bench/engines.ts` printed, read into figures. */
export interface EnginesResult {
  mode: "engines";
  engines: { name: string; appends: number; perSecond: number; consistent: boolean }[];
  output: string;
  complete: boolean;
}

/** What a run's generator (or script) reported. */
export type GeneratorResult =
  & (BurstResult | PacedResult | IdleResult | JoinResult | FanoutResult | EnginesResult)
  & { processCpuSeconds?: number };

/** Settings of one suite run. */
export interface Settings {
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
  /** Fanout: seconds at each rate. */
  fanoutWindow: number;
  /** Seconds `bench/engines.ts` measures each engine. */
  engineSeconds: number;
  quick: boolean;
}

/** One measurement: a fresh server, one generator run. */
export interface RunRecord {
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
    /** CPU of the run's `redis-server` (on the generator's core). */
    redisCpuSeconds?: number;
  } | null;
}

/** One figure of a scenario: how to read it from a run. */
export interface Figure {
  key: string;
  label: string;
  value(run: RunRecord): number | null;
  format(value: number): string;
}

/** The median, or null without values. */
export function median(values: number[]): number | null {
  if (values.length === 0) return null;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

/** A count with k or M: `103.2k`. */
export function si(value: number): string {
  if (value >= 1e6) return `${(value / 1e6).toFixed(2)}M`;
  if (value >= 1e3) return `${(value / 1e3).toFixed(1)}k`;
  return value.toFixed(0);
}

/** Bytes in a megabyte as the table shows them (MiB). */
export const MB = 1024 * 1024;
/** Idle: open connections at which the server's memory is read. */
export const IDLE_COUNTS = [1000, 5000];
/** Big room: members at which the server's CPU and memory are read as one room fills. */
export const JOIN_COUNTS = [1000, 10000];
/** Big room: members of the fanout room. */
export const FANOUT_MEMBERS = 3000;
/** Big room: the fanout sender's rates, messages per second, one after the other. */
export const FANOUT_RATES = [20, 200];

// Figures ------------------------------------------------------------------

/** The server's peak resident memory (`VmHWM`). */
export const peakRss: Figure = {
  key: "peakRssMB",
  label: "peak RSS (MB)",
  value: (r) => r.serverStats ? r.serverStats.peakRssBytes / MB : null,
  format: (v) => v.toFixed(1),
};
/** The server's CPU time over the whole run. */
export const cpu: Figure = {
  key: "cpuSeconds",
  label: "server CPU (s)",
  value: (r) => r.serverStats?.cpuSeconds ?? null,
  format: (v) => v.toFixed(2),
};
/** Burst: copies delivered per second. */
export const deliveries: Figure = {
  key: "deliveriesPerSecond",
  label: "deliveries/s",
  value: (r) =>
    r.generator?.mode === "burst" && r.generator.delivered > 0
      ? r.generator.deliveriesPerSecond
      : null,
  format: si,
};
/** Burst: the server's CPU time per delivered copy, first send to last arrival. */
export const cpuPerCopy: Figure = {
  key: "cpuMicrosPerCopy",
  label: "CPU µs/copy",
  value: (r) =>
    r.generator?.mode === "burst" && r.generator.serverCpuSeconds !== null &&
      r.generator.delivered > 0
      ? r.generator.serverCpuSeconds / r.generator.delivered * 1e6
      : null,
  format: (v) => v.toFixed(2),
};

/** Paced: a latency percentile of every copy. */
export function latency(key: "p50" | "p99" | "max"): Figure {
  return {
    key: `${key}Ms`,
    label: `${key} (ms)`,
    value: (r) =>
      r.generator?.mode === "paced" && r.generator.delivered > 0 ? r.generator[key] : null,
    format: (v) => v.toFixed(2),
  };
}

/** Idle: resident memory per open connection at a count. */
export function perConnection(connections: number): Figure {
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
export const marginal: Figure = {
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

/** `10000` as `10k`. */
export function thousands(n: number): string {
  return n >= 1000 && n % 1000 === 0 ? `${n / 1000}k` : String(n);
}

/** A figure of a join run at one member count. */
function joinFigure(
  members: number,
  key: string,
  label: string,
  read: (p: JoinResult["points"][number], r: JoinResult) => number | null,
  format: (v: number) => string,
): Figure {
  return {
    key: `${key}${members}`,
    label: `${label} @${thousands(members)}`,
    value: (r) => {
      if (r.generator?.mode !== "join") return null;
      const point = r.generator.points.find((p) => p.members === members);
      return point ? read(point, r.generator) : null;
    },
    format,
  };
}

/** Big-room join: CPU per join, its growth, memory and time at each count. */
export const joinFigures: Figure[] = [
  ...JOIN_COUNTS.map((n) =>
    joinFigure(
      n,
      "cpuMicrosPerJoin",
      "CPU µs/join",
      (p) => p.serverCpuSeconds === null ? null : p.serverCpuSeconds / p.members * 1e6,
      (v) => v.toFixed(0),
    )
  ),
  {
    key: "joinCpuRatio",
    label: `join CPU ${JOIN_COUNTS.map(thousands).reverse().join(" ÷ ")}`,
    value: (r) => {
      if (r.generator?.mode !== "join") return null;
      const [small, large] = JOIN_COUNTS.map((n) =>
        (r.generator as JoinResult).points.find((p) => p.members === n)?.serverCpuSeconds
      );
      return small && large ? large / small : null;
    },
    format: (v) => `${v.toFixed(2)}×`,
  },
  ...JOIN_COUNTS.map((n) =>
    joinFigure(
      n,
      "peakRssMB",
      "peak RSS (MB)",
      (p) => p.peakRss && p.peakRss / MB,
      (v) => v.toFixed(0),
    )
  ),
  ...JOIN_COUNTS.map((n) =>
    joinFigure(
      n,
      "kibPerMember",
      "KiB/member",
      (p, r) =>
        p.peakRss === null || r.rssBefore === null
          ? null
          : (p.peakRss - r.rssBefore) / p.members / 1024,
      (v) => v.toFixed(1),
    )
  ),
  ...JOIN_COUNTS.map((n) =>
    joinFigure(n, "joinSeconds", "join time (s)", (p) => p.seconds, (v) => v.toFixed(1))
  ),
];

/** A figure of a fanout run at one rate. */
function fanoutFigure(
  rate: number,
  key: string,
  label: string,
  read: (p: FanoutResult["phases"][number]) => number | null,
  format: (v: number) => string,
): Figure {
  return {
    key: `${key}At${rate}`,
    label: `${label} @${rate}/s`,
    value: (r) => {
      if (r.generator?.mode !== "fanout") return null;
      const phase = r.generator.phases.find((p) => p.rate === rate);
      return phase && phase.delivered > 0 ? read(phase) : null;
    },
    format,
  };
}

/** Big-room fanout: latency, share delivered, rate and CPU at each rate. */
export const fanoutFigures: Figure[] = FANOUT_RATES.flatMap((rate) => [
  fanoutFigure(rate, "p50Ms", "p50 (ms)", (p) => p.p50, (v) => v.toFixed(1)),
  fanoutFigure(rate, "p99Ms", "p99 (ms)", (p) => p.p99, (v) => v.toFixed(1)),
  fanoutFigure(
    rate,
    "deliveredPercent",
    "delivered (%)",
    (p) => 100 * p.delivered / p.expected,
    (v) => v.toFixed(v >= 99.95 ? 0 : 1),
  ),
  fanoutFigure(rate, "deliveriesPerSecond", "deliveries/s", (p) => p.deliveriesPerSecond, si),
  fanoutFigure(
    rate,
    "cpuSeconds",
    "server CPU (s)",
    (p) => p.serverCpuSeconds,
    (v) => v.toFixed(2),
  ),
]);

/** The engines `bench/engines.ts` measures, as it names them. */
const ENGINE_NAMES = ["memory", "kv", "kv (one commit per append)", "redis"];

/** `bench/engines.ts`: appends per second of each engine. */
export const engineFigures: Figure[] = ENGINE_NAMES.map((name) => ({
  key: `appendsPerSecond:${name}`,
  label: `${name} appends/s`,
  value: (r) =>
    r.generator?.mode === "engines"
      ? r.generator.engines.find((e) => e.name === name)?.perSecond ?? null
      : null,
  format: si,
}));
