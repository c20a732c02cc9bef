/**
 * What every engine reports about itself at `/metrics`: whether it is up,
 * its reconnections, feed gaps and how they were filled, how long appends
 * take, its presence sweeps and how many appends each batch stores. The
 * series carry no room label, so their number never grows with rooms.
 *
 * An engine keeps an {@linkcode EngineMetrics} and exposes its registry as
 * `Engine.metrics`; the hub's registry includes it (`Metrics.include`).
 *
 * @module
 */

import { Metrics } from "../metrics.ts";

/** Upper bounds of the append and sweep latency histograms, in seconds. */
export const LATENCY_BUCKETS: readonly number[] = [
  0.0005,
  0.001,
  0.0025,
  0.005,
  0.01,
  0.025,
  0.05,
  0.1,
  0.25,
  0.5,
  1,
  2.5,
  5,
];

/** Upper bounds of the batch size histogram, in appends. */
export const BATCH_BUCKETS: readonly number[] = [1, 2, 4, 8, 16, 32, 64, 128, 256];

/** The names of the engine's series, to alert on (see the README). */
export const ENGINE_METRICS = {
  up: "parley_engine_up",
  reconnects: "parley_engine_reconnects_total",
  feedGaps: "parley_engine_feed_gaps_total",
  gapFilled: "parley_engine_gap_filled_messages_total",
  appendSeconds: "parley_engine_append_seconds",
  appendErrors: "parley_engine_append_errors_total",
  sweepSeconds: "parley_engine_presence_sweep_seconds",
  batchSize: "parley_engine_append_batch_size",
} as const;

/** The seconds since `start`, a `performance.now()` reading. */
export function since(start: number): number {
  return (performance.now() - start) / 1000;
}

/**
 * The metrics of one engine. Latencies are measured with `performance.now()`,
 * never with an engine's injectable clock, so a test clock cannot bend them.
 *
 * @example
 * ```ts
 * const stats = new EngineMetrics("memory", () => true);
 * const start = performance.now();
 * stats.appended(since(start));
 * stats.registry.render(); // includes parley_engine_append_seconds_count 1
 * ```
 */
export class EngineMetrics {
  /** The registry to render, or to include in another. */
  readonly registry: Metrics;

  /**
   * @param engine The engine's name, the one label of `parley_engine_up`.
   * @param up Whether the engine can serve now, read at render time.
   */
  constructor(engine: string, up: () => boolean) {
    const m = ENGINE_METRICS;
    this.registry = new Metrics()
      .gauge(
        m.up,
        "1 while the engine can serve requests, 0 while its store is unreachable.",
        () => [
          [{ engine }, up() ? 1 : 0],
        ],
      )
      .counter(
        m.reconnects,
        "Times the engine got its store back after losing it (or after starting without it).",
      )
      .counter(
        m.feedGaps,
        "Room feeds found cut or skipping ids, each then filled from the stored history.",
      )
      .counter(m.gapFilled, "Messages delivered from stored history to fill feed gaps.")
      .histogram(m.appendSeconds, "Seconds from an append call to its answer.", LATENCY_BUCKETS)
      .counter(m.appendErrors, "Append calls that failed.")
      .histogram(
        m.sweepSeconds,
        "Seconds per sweep of one room's expired presence entries (_count: sweeps).",
        LATENCY_BUCKETS,
      )
      .histogram(
        m.batchSize,
        "Appends stored per batch: one KV atomic write of a room, one Redis script call.",
        BATCH_BUCKETS,
      );
  }

  /** An append answered after `seconds`. */
  appended(seconds: number): void {
    this.registry.observe(ENGINE_METRICS.appendSeconds, seconds);
  }

  /** An append failed. */
  appendFailed(): void {
    this.registry.inc(ENGINE_METRICS.appendErrors);
  }

  /**
   * Times an append: its latency when it resolves, an error when it rejects.
   *
   * @returns `work`, settled the same way.
   */
  async timeAppend<T>(start: number, work: Promise<T>): Promise<T> {
    try {
      const result = await work;
      this.appended(since(start));
      return result;
    } catch (error) {
      this.appendFailed();
      throw error;
    }
  }

  /** The store came back after being lost. */
  reconnected(): void {
    this.registry.inc(ENGINE_METRICS.reconnects);
  }

  /** A room's feed was found cut or skipping ids. */
  feedGap(): void {
    this.registry.inc(ENGINE_METRICS.feedGaps);
  }

  /** `count` messages were delivered from history to fill a gap. */
  gapFilled(count: number): void {
    if (count > 0) this.registry.inc(ENGINE_METRICS.gapFilled, undefined, count);
  }

  /** A sweep of one room's presence took `seconds`. */
  swept(seconds: number): void {
    this.registry.observe(ENGINE_METRICS.sweepSeconds, seconds);
  }

  /** One batch stored `size` appends. */
  batch(size: number): void {
    this.registry.observe(ENGINE_METRICS.batchSize, size);
  }
}
