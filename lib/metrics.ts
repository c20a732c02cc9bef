/**
 * Counters and gauges, rendered in the Prometheus text format.
 *
 * @module
 */

type Labels = Record<string, string | number>;

function key(name: string, labels?: Labels): string {
  if (!labels) return name;
  const parts = Object.entries(labels).map(([k, v]) =>
    `${k}="${String(v).replace(/["\\\n]/g, (c) => (c === "\n" ? "\\n" : `\\${c}`))}"`
  );
  return `${name}{${parts.join(",")}}`;
}

/** A registry of counters plus gauges read at render time. */
export class Metrics {
  #help = new Map<string, [type: "counter" | "gauge", help: string]>();
  #values = new Map<string, Map<string, number>>();
  /** Gauges and counters kept elsewhere, read at render time. */
  #readers = new Map<string, () => Iterable<[Labels | undefined, number]>>();

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

  /** Adds `by` (default 1) to a counter. */
  inc(name: string, labels?: Labels, by = 1): void {
    const series = this.#values.get(name);
    if (!series) throw new Error(`unknown metric ${name}`);
    const k = key(name, labels);
    series.set(k, (series.get(k) ?? 0) + by);
  }

  /** The value of one counter series, 0 when never incremented. */
  get(name: string, labels?: Labels): number {
    const read = this.#readers.get(name);
    if (!read) return this.#values.get(name)?.get(key(name, labels)) ?? 0;
    const wanted = key(name, labels);
    for (const [l, value] of read()) if (key(name, l) === wanted) return value;
    return 0;
  }

  /** Renders every metric in the Prometheus text exposition format. */
  render(): string {
    const lines: string[] = [];
    for (const [name, [type, help]] of this.#help) {
      lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
      const read = this.#readers.get(name);
      if (read) {
        for (const [labels, value] of read()) lines.push(`${key(name, labels)} ${value}`);
      } else {
        const series = this.#values.get(name)!;
        if (series.size === 0) lines.push(`${name} 0`);
        for (const [k, value] of series) lines.push(`${k} ${value}`);
      }
    }
    return lines.join("\n") + "\n";
  }
}
