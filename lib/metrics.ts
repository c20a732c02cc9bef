/**
 * Counters, gauges and histograms, rendered in the Prometheus text format.
 *
 * @module
 */

/** Label names and values of one series. */
export type Labels = Record<string, string | number>;

function labelText(labels: Labels): string {
  return Object.entries(labels).map(([k, v]) =>
    `${k}="${String(v).replace(/["\\\n]/g, (c) => (c === "\n" ? "\\n" : `\\${c}`))}"`
  ).join(",");
}

function key(name: string, labels?: Labels): string {
  if (!labels) return name;
  return `${name}{${labelText(labels)}}`;
}

/** One histogram series: counts per bucket (not cumulative), sum and count. */
interface HistogramSeries {
  labels?: Labels;
  counts: number[];
  sum: number;
  count: number;
}

/** What {@linkcode Metrics.histogram} holds for one series, for tests and dashboards. */
export interface HistogramSnapshot {
  /** Upper bounds, ascending; `+Inf` is implied. */
  buckets: readonly number[];
  /** Observations at or below each bound, cumulative as Prometheus counts them. */
  cumulative: number[];
  sum: number;
  count: number;
}

interface Histogram {
  buckets: readonly number[];
  series: Map<string, HistogramSeries>;
}

type Kind = "counter" | "gauge" | "histogram";

/**
 * A registry of counters, histograms and gauges read at render time. Another
 * registry can be included (an engine's), rendered after this one's metrics.
 */
export class Metrics {
  #help = new Map<string, [type: Kind, help: string]>();
  #values = new Map<string, Map<string, number>>();
  #histograms = new Map<string, Histogram>();
  /** Gauges and counters kept elsewhere, read at render time. */
  #readers = new Map<string, () => Iterable<[Labels | undefined, number]>>();
  #included: Metrics[] = [];

  /** Declares a counter. */
  counter(name: string, help: string): this {
    this.#help.set(name, ["counter", help]);
    this.#values.set(name, new Map());
    return this;
  }

  /** Declares a gauge whose samples are read by `read` at render time. */
  gauge(name: string, help: string, read: () => Iterable<[Labels | undefined, number]>): this {
    this.#help.set(name, ["gauge", help]);
    this.#readers.set(name, read);
    return this;
  }

  /**
   * Declares a counter kept elsewhere (a plain number is cheaper than `inc`
   * on a path taken once per copy sent) and read by `read` at render time.
   */
  counterFrom(
    name: string,
    help: string,
    read: () => Iterable<[Labels | undefined, number]>,
  ): this {
    this.#help.set(name, ["counter", help]);
    this.#readers.set(name, read);
    return this;
  }

  /**
   * Declares a histogram with fixed bucket upper bounds (`+Inf` is added).
   *
   * @throws {RangeError} When `buckets` is empty, not ascending or not finite.
   */
  histogram(name: string, help: string, buckets: readonly number[]): this {
    const ascending = buckets.every((b, i) =>
      Number.isFinite(b) && (i === 0 || b > buckets[i - 1])
    );
    if (buckets.length === 0 || !ascending) {
      throw new RangeError(
        `Cannot declare histogram ${name}: buckets must be finite and ascending, got [${buckets}]`,
      );
    }
    this.#help.set(name, ["histogram", help]);
    this.#histograms.set(name, { buckets: [...buckets], series: new Map() });
    return this;
  }

  /**
   * Includes another registry: its metrics are rendered after this one's,
   * and `get` and `snapshot` find them. Undefined is ignored.
   */
  include(other: Metrics | undefined): this {
    if (other && other !== this && !this.#included.includes(other)) this.#included.push(other);
    return this;
  }

  /** Adds `by` (default 1) to a counter. */
  inc(name: string, labels?: Labels, by = 1): void {
    const series = this.#values.get(name);
    if (!series) throw new Error(`unknown metric ${name}`);
    const k = key(name, labels);
    series.set(k, (series.get(k) ?? 0) + by);
  }

  /** Records one observation of a histogram. */
  observe(name: string, value: number, labels?: Labels): void {
    const histogram = this.#histograms.get(name);
    if (!histogram) throw new Error(`unknown histogram ${name}`);
    const k = key(name, labels);
    let series = histogram.series.get(k);
    if (!series) {
      series = { labels, counts: new Array(histogram.buckets.length).fill(0), sum: 0, count: 0 };
      histogram.series.set(k, series);
    }
    const { buckets } = histogram;
    // Few buckets: a linear scan beats a binary search.
    let i = 0;
    while (i < buckets.length && value > buckets[i]) i++;
    if (i < buckets.length) series.counts[i]++;
    series.sum += value;
    series.count++;
  }

  /** The value of one counter or gauge series, 0 when never incremented. */
  get(name: string, labels?: Labels): number {
    if (!this.#help.has(name)) {
      const owner = this.#included.find((other) => other.has(name));
      return owner ? owner.get(name, labels) : 0;
    }
    const read = this.#readers.get(name);
    if (!read) return this.#values.get(name)?.get(key(name, labels)) ?? 0;
    const wanted = key(name, labels);
    for (const [l, value] of read()) if (key(name, l) === wanted) return value;
    return 0;
  }

  /** Whether this registry, or one it includes, declares `name`. */
  has(name: string): boolean {
    return this.#help.has(name) || this.#included.some((other) => other.has(name));
  }

  /**
   * One histogram series as it stands, or undefined when `name` is no
   * histogram; a series never observed is all zeros.
   */
  snapshot(name: string, labels?: Labels): HistogramSnapshot | undefined {
    const histogram = this.#histograms.get(name);
    if (!histogram) {
      for (const other of this.#included) {
        const found = other.snapshot(name, labels);
        if (found) return found;
      }
      return undefined;
    }
    const series = histogram.series.get(key(name, labels));
    let total = 0;
    const cumulative = histogram.buckets.map((_, i) => total += series?.counts[i] ?? 0);
    return {
      buckets: histogram.buckets,
      cumulative,
      sum: series?.sum ?? 0,
      count: series?.count ?? 0,
    };
  }

  /** Renders every metric in the Prometheus text exposition format. */
  render(): string {
    const lines: string[] = [];
    this.#renderInto(lines);
    return lines.join("\n") + "\n";
  }

  #renderInto(lines: string[]): void {
    for (const [name, [type, help]] of this.#help) {
      lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
      const read = this.#readers.get(name);
      const histogram = this.#histograms.get(name);
      if (read) {
        for (const [labels, value] of read()) lines.push(`${key(name, labels)} ${value}`);
      } else if (histogram) {
        renderHistogram(lines, name, histogram);
      } else {
        const series = this.#values.get(name)!;
        if (series.size === 0) lines.push(`${name} 0`);
        for (const [k, value] of series) lines.push(`${k} ${value}`);
      }
    }
    for (const other of this.#included) other.#renderInto(lines);
  }
}

/** A histogram's `_bucket`, `_sum` and `_count` lines; one empty series when never observed. */
function renderHistogram(lines: string[], name: string, histogram: Histogram): void {
  const all = histogram.series.size > 0
    ? [...histogram.series.values()]
    : [{ labels: undefined, counts: histogram.buckets.map(() => 0), sum: 0, count: 0 }];
  for (const series of all) {
    const own = series.labels ? labelText(series.labels) : "";
    const braces = (extra: string) => {
      const inside = [own, extra].filter(Boolean).join(",");
      return inside ? `{${inside}}` : "";
    };
    let total = 0;
    histogram.buckets.forEach((bound, i) => {
      total += series.counts[i];
      lines.push(`${name}_bucket${braces(`le="${bound}"`)} ${total}`);
    });
    lines.push(`${name}_bucket${braces('le="+Inf"')} ${series.count}`);
    lines.push(`${name}_sum${braces("")} ${series.sum}`);
    lines.push(`${name}_count${braces("")} ${series.count}`);
  }
}
