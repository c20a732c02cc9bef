import assert from "node:assert/strict";
import { Metrics } from "../lib/metrics.ts";

/** The sample lines of a rendering, without `# HELP` and `# TYPE`. */
function samples(text: string): string[] {
  return text.split("\n").filter((line) => line !== "" && !line.startsWith("#"));
}

Deno.test("Metrics renders counters, counters kept elsewhere and gauges", () => {
  let kept = 7;
  const metrics = new Metrics()
    .counter("c_total", "A counter.")
    .counterFrom("k_total", "Kept elsewhere.", () => [[undefined, kept]])
    .gauge("g", "A gauge.", () => [[{ mode: "raw" }, 2], [{ mode: "rich" }, 3]]);
  assert.equal(metrics.get("c_total"), 0);
  metrics.inc("c_total", { code: 4000 });
  metrics.inc("c_total", { code: 4000 }, 2);
  kept = 9;
  const text = metrics.render();
  assert.match(text, /^# HELP c_total A counter\.$/m);
  assert.match(text, /^# TYPE c_total counter$/m);
  assert.match(text, /^# TYPE g gauge$/m);
  assert.deepEqual(samples(text), [
    'c_total{code="4000"} 3',
    "k_total 9",
    'g{mode="raw"} 2',
    'g{mode="rich"} 3',
  ]);
  assert.equal(metrics.get("c_total", { code: 4000 }), 3);
  assert.equal(metrics.get("g", { mode: "rich" }), 3);
});

Deno.test("Metrics escapes quotes, backslashes and newlines in label values", () => {
  const metrics = new Metrics().counter("c_total", "A counter.");
  metrics.inc("c_total", { reason: 'a "b"\\c\nd' });
  assert.deepEqual(samples(metrics.render()), ['c_total{reason="a \\"b\\"\\\\c\\nd"} 1']);
});

Deno.test("Metrics.histogram() counts observations into cumulative buckets, +Inf, _sum and _count", () => {
  const metrics = new Metrics().histogram("h_seconds", "A histogram.", [0.1, 1, 5]);
  for (const value of [0.05, 0.1, 0.5, 1, 3, 9]) metrics.observe("h_seconds", value);
  const text = metrics.render();
  assert.match(text, /^# TYPE h_seconds histogram$/m);
  assert.deepEqual(samples(text), [
    'h_seconds_bucket{le="0.1"} 2',
    'h_seconds_bucket{le="1"} 4',
    'h_seconds_bucket{le="5"} 5',
    'h_seconds_bucket{le="+Inf"} 6',
    "h_seconds_sum 13.65",
    "h_seconds_count 6",
  ]);
  const snapshot = metrics.snapshot("h_seconds")!;
  assert.deepEqual(snapshot.cumulative, [2, 4, 5]);
  assert.equal(snapshot.count, 6);
  assert.equal(snapshot.sum, 13.65);
});

Deno.test("Metrics.histogram() renders zeros before any observation, and labels beside le", () => {
  const metrics = new Metrics().histogram("b", "Batch sizes.", [1, 4]);
  assert.deepEqual(samples(metrics.render()), [
    'b_bucket{le="1"} 0',
    'b_bucket{le="4"} 0',
    'b_bucket{le="+Inf"} 0',
    "b_sum 0",
    "b_count 0",
  ]);
  metrics.observe("b", 2, { engine: "kv" });
  assert.deepEqual(samples(metrics.render()), [
    'b_bucket{engine="kv",le="1"} 0',
    'b_bucket{engine="kv",le="4"} 1',
    'b_bucket{engine="kv",le="+Inf"} 1',
    'b_sum{engine="kv"} 2',
    'b_count{engine="kv"} 1',
  ]);
  assert.equal(metrics.snapshot("b")!.count, 0, "the unlabelled series is another one");
  assert.equal(metrics.snapshot("b", { engine: "kv" })!.count, 1);
  assert.equal(metrics.snapshot("nope"), undefined);
});

Deno.test("Metrics.histogram() refuses buckets that are empty, unordered or not finite", () => {
  for (const buckets of [[], [1, 1], [2, 1], [1, Infinity], [NaN]]) {
    assert.throws(
      () => new Metrics().histogram("h", "A histogram.", buckets),
      (error: unknown) =>
        error instanceof RangeError && /^Cannot declare histogram h: buckets/.test(error.message),
      JSON.stringify(buckets),
    );
  }
});

Deno.test("Metrics.observe() and inc() refuse undeclared names", () => {
  const metrics = new Metrics().counter("c_total", "A counter.");
  assert.throws(() => metrics.observe("c_total", 1), /unknown histogram c_total/);
  assert.throws(() => metrics.inc("h"), /unknown metric h/);
});

Deno.test("Metrics.include() renders another registry after its own and finds its series", () => {
  const engine = new Metrics()
    .counter("e_total", "An engine counter.")
    .histogram("e_seconds", "An engine histogram.", [1]);
  engine.inc("e_total", undefined, 4);
  engine.observe("e_seconds", 0.5);
  const hub = new Metrics().counter("h_total", "A hub counter.").include(engine).include(engine)
    .include(undefined);
  const lines = samples(hub.render());
  assert.deepEqual(lines, [
    "h_total 0",
    "e_total 4",
    'e_seconds_bucket{le="1"} 1',
    'e_seconds_bucket{le="+Inf"} 1',
    "e_seconds_sum 0.5",
    "e_seconds_count 1",
  ], "included once, after the hub's own");
  assert.equal(hub.get("e_total"), 4);
  assert.equal(hub.snapshot("e_seconds")!.count, 1);
  assert.ok(hub.has("e_total") && hub.has("h_total") && !hub.has("x"));
  // Later changes show: the registry is read at render time.
  engine.inc("e_total");
  assert.match(hub.render(), /^e_total 5$/m);
});
