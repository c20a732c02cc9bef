/**
 * The benchmark suite's report: a line per run, the table of medians and
 * ratios with the targets, and notes on noise.
 *
 * @module
 */

import { MB, median, type RunRecord, si } from "./_figures.ts";
import { type Measured, type Medians, type Scenario, TARGETS, type Verdict } from "./_scenarios.ts";
import { SERVER_LABELS, type ServerKind } from "./_servers.ts";

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

/** A number with `digits` decimals; a dash for none (NaN becomes null in the JSON). */
function fixed(v: number | null, digits: number): string {
  return v === null || !Number.isFinite(v) ? "–" : v.toFixed(digits);
}

function ms(v: number | null): string {
  return fixed(v, v !== null && v < 10 ? 2 : 1);
}

/** What a run found, in a few words. */
function runSummary(run: RunRecord): string {
  const g = run.generator;
  if (g?.mode === "burst") {
    return `${si(g.deliveriesPerSecond)} deliveries/s over ${g.seconds.toFixed(1)} s, ` +
      `${g.rounds} round(s)${g.complete ? "" : ", PARTIAL"}` +
      (g.closed ? `, ${g.closed} closed ${g.closeCodes.join(" ")}` : "") +
      `, generator ${generatorShare(run)!.toFixed(0)}% busy`;
  }
  if (g?.mode === "paced") {
    return `p50 ${fixed(g.p50, 2)} p99 ${fixed(g.p99, 2)} max ${fixed(g.max, 2)} ms, ` +
      `${g.delivered}/${g.expected} copies`;
  }
  if (g?.mode === "idle") {
    return g.points.map((p) =>
      `${p.connections}: ${((p.bytesPerConnection ?? NaN) / 1024).toFixed(1)} KiB/conn`
    ).join(", ") + (g.complete ? "" : `, INCOMPLETE ${g.errors.join("; ")}`);
  }
  if (g?.mode === "join") {
    return g.points.map((p) =>
      `${p.members} in ${p.seconds.toFixed(1)} s, ` +
      `${((p.serverCpuSeconds ?? NaN) / p.members * 1e6).toFixed(0)} µs/join, ` +
      `peak ${((p.peakRss ?? NaN) / MB).toFixed(0)} MB`
    ).join("; ") + (g.complete ? "" : `; INCOMPLETE ${g.errors.join("; ")}`);
  }
  if (g?.mode === "fanout") {
    return `${g.members} joined in ${g.joinSeconds.toFixed(1)} s; ` +
      g.phases.map((p) =>
        `${p.rate}/s: p50 ${ms(p.p50)} p99 ${ms(p.p99)} ms, ${p.delivered}/${p.expected}, ` +
        `${
          Number.isFinite(p.deliveriesPerSecond) ? si(p.deliveriesPerSecond) : "–"
        }/s, generator ` +
        `${fixed(100 * p.generatorCpuSeconds / p.seconds, 0)}% busy`
      ).join("; ") + (g.errors.length ? `; ${g.errors.join("; ")}` : "");
  }
  if (g?.mode === "engines") {
    return g.engines.map((e) => `${e.name} ${si(e.perSecond)}/s`).join(", ");
  }
  return "";
}

/** The line printed after each run. */
export function progressLine(run: RunRecord, index: number, total: number): string {
  const head = `[${String(index).padStart(2)}/${total}] ${run.scenario} ${
    run.server.padEnd(8)
  } #${run.rep}`;
  const tail = `(${run.wallSeconds.toFixed(1)} s)`;
  if (run.error && !run.generator) return `${head}: FAILED ${run.error} ${tail}`;
  if (run.generator?.mode === "engines") return `${head}: ${runSummary(run)} ${tail}`;
  const s = run.serverStats;
  const rss = s ? `peak ${(s.peakRssBytes / MB).toFixed(0)} MB` : "";
  const cpuText = s
    ? `CPU ${s.cpuSeconds.toFixed(2)} s` +
      (s.redisCpuSeconds === undefined ? "" : ` + redis ${s.redisCpuSeconds.toFixed(2)} s`)
    : "";
  return `${head}: ${runSummary(run)}; ${rss}, ${cpuText}; others ${others(run)} ${tail}`;
}

/** One row of the table: a figure's medians by server and the targets on it. */
export interface Row {
  scenario: string;
  figure: string;
  label: string;
  /** Medians by server. */
  values: Partial<Record<ServerKind, number | null>>;
  /** Parley ÷ each other server. */
  ratios: Partial<Record<ServerKind, number | null>>;
  format: (v: number) => string;
  partial: Partial<Record<ServerKind, boolean>>;
  targets: { text: string; result: Verdict | null }[];
}

/** Medians of every figure by server, ratios Parley ÷ each other server, targets checked. */
export function summarize(
  scenarios: Scenario[],
  runs: RunRecord[],
): { rows: Row[]; medians: Medians } {
  const medians: Medians = new Map();
  const rows: Row[] = [];
  for (const scenario of scenarios) {
    for (const figure of scenario.figures) {
      const row: Row = {
        scenario: scenario.id,
        figure: figure.key,
        label: figure.label,
        values: {},
        ratios: {},
        format: figure.format,
        partial: {},
        targets: [],
      };
      const entry: Partial<Record<ServerKind, Measured | null>> = {};
      for (const kind of scenario.servers) {
        const of = runs.filter((r) => r.scenario === scenario.id && r.server === kind);
        if (of.length === 0) continue;
        const value = median(
          of.map(figure.value).filter((v): v is number => v !== null && Number.isFinite(v)),
        );
        const partial = of.some((r) =>
          r.error !== undefined || (r.generator !== null && !r.generator.complete)
        );
        row.values[kind] = value;
        row.partial[kind] = partial;
        entry[kind] = value === null ? null : { value, partial };
      }
      const parley = row.values.parley;
      for (const kind of scenario.servers) {
        const other = row.values[kind];
        if (kind === "parley" || other === undefined) continue;
        row.ratios[kind] = parley != null && other ? parley / other : null;
      }
      medians.set(`${scenario.id}/${figure.key}`, entry);
      rows.push(row);
    }
  }
  for (const target of TARGETS) {
    const row = rows.find((r) => r.scenario === target.scenario && r.figure === target.figure);
    row?.targets.push({ text: target.text, result: target.check(medians) });
  }
  return { rows, medians };
}

function verdictText(verdict: Verdict | null | undefined): string {
  if (!verdict) return "n/a";
  return `${verdict.met ? "met" : "MISSED"}${verdict.partial ? "*" : ""} (${verdict.shown})`;
}

/** The table: Parley, then each other server that ran with Parley ÷ it, then the targets. */
export function table(rows: Row[], kinds: ServerKind[]): string {
  const others = kinds.filter((k) => k !== "parley");
  const header = [
    "scenario",
    "figure",
    "Parley",
    ...others.flatMap((k) => [SERVER_LABELS[k], `÷ ${SERVER_LABELS[k]}`]),
    "target",
    "result",
  ];
  const value = (r: Row, kind: ServerKind) => {
    const v = r.values[kind];
    if (v === undefined) return "";
    return (v === null ? "–" : r.format(v)) + (r.partial[kind] ? "*" : "");
  };
  const lines: { row: Row; cells: string[] }[] = [];
  for (const r of rows) {
    const [first, ...more] = r.targets;
    lines.push({
      row: r,
      cells: [
        r.scenario,
        r.label,
        value(r, "parley"),
        ...others.flatMap((k) => {
          const ratio = r.ratios[k];
          return [
            value(r, k),
            ratio === undefined ? "" : ratio === null ? "–" : `${ratio.toFixed(2)}×`,
          ];
        }),
        first?.text ?? "",
        first ? verdictText(first.result) : "",
      ],
    });
    for (const t of more) {
      const blank = header.slice(0, -2).map(() => "");
      lines.push({ row: r, cells: [...blank, t.text, verdictText(t.result)] });
    }
  }
  const widths = header.map((h, i) => Math.max(h.length, ...lines.map((l) => l.cells[i].length)));
  const right = header.map((_, i) => i >= 2 && i < header.length - 2);
  const line = (c: string[]) =>
    c.map((v, i) => right[i] ? v.padStart(widths[i]) : v.padEnd(widths[i])).join("  ").trimEnd();
  const out = [line(header), widths.map((w) => "-".repeat(w)).join("  ")];
  let last = "";
  for (const l of lines) {
    if (last && l.row.scenario !== last) out.push("");
    last = l.row.scenario;
    out.push(line(l.cells));
  }
  return out.join("\n");
}

/** Percent of its core the generator used while measuring a burst: near 100, it is the limit. */
function generatorShare(run: RunRecord): number | null {
  const g = run.generator;
  if (g?.mode === "burst" && g.seconds > 0) return 100 * g.generatorCpuSeconds / g.seconds;
  if (g?.mode === "fanout" && g.phases.length) {
    return Math.max(...g.phases.map((p) => 100 * p.generatorCpuSeconds / p.seconds));
  }
  return null;
}

/** Above this share of its core the generator may be what limits a burst run. */
const GENERATOR_BUSY_PERCENT = 90;

/** Burst and fanout runs in which the generator, not the server, may have set the pace. */
export function generatorNote(runs: RunRecord[]): string {
  const busy = runs.filter((r) => (generatorShare(r) ?? 0) >= GENERATOR_BUSY_PERCENT);
  return busy.length
    ? `The generator used over ${GENERATOR_BUSY_PERCENT}% of its core in ${busy.length} burst ` +
      `or fanout run(s), so they may measure it rather than the server: ` +
      busy.map((r) => `${r.scenario} ${r.server} #${r.rep}`).join(", ")
    : `The generator stayed under ${GENERATOR_BUSY_PERCENT}% of its core in every burst and ` +
      "fanout run";
}

/** How much other processes took of the pinned cores: noise to keep in mind. */
export function disturbanceNote(runs: RunRecord[]): string {
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
