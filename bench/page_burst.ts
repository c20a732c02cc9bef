/**
 * The chat page under a burst (issue #14, item 12): headless Chromium joins
 * a room, a raw rich client sends 200 messages as fast as it can, and the
 * page reports how long it took from the first message shown to the last,
 * and its longest frame (the largest gap between two animation frames from
 * the first message sent to the frame after the last one was shown).
 * Target: no frame over 50 ms.
 *
 * A script, not a test: timings depend on the machine.
 *
 * ```sh
 * deno run -A --lock=tests/deno.lock bench/page_burst.ts [--messages 200] [--runs 3]
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";
// deno-lint-ignore no-import-prefix -- not in the import map, so `deno task start` never installs it
import { chromium } from "npm:playwright-core@1.65.1";
import { connect, startServer } from "../tests/helpers.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    messages: { type: "string", default: "200" },
    runs: { type: "string", default: "3" },
  },
});
const MESSAGES = Number(values.messages);
const RUNS = Number(values.runs);

// No rate limit: the burst comes as fast as the sender can write it.
const server = await startServer({ rateLimit: 100_000, rateBurst: 1_000 });
const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"],
});
const results: { run: number; totalMs: number; longestFrameMs: number; frames: number }[] = [];
try {
  for (let run = 1; run <= RUNS; run++) {
    const room = `burst-${run}`;
    const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
    await page.goto(`${server.url}/${room}`);
    await page.locator("#nick-input").fill("ann");
    await page.locator("#nick-input").press("Enter");
    await page.waitForFunction(() => document.getElementById("status")?.textContent === "open");
    // Frame gaps, measured in the page from the first message sent to the frame after the last
    // message is shown.
    await page.evaluate((count) => {
      const probe = { armed: false, start: 0, end: 0, longest: 0, frames: 0, last: 0, done: false };
      Object.defineProperty(globalThis, "burstProbe", { value: probe });
      const list = document.getElementById("messages")!;
      new MutationObserver(() => {
        const shown = list.querySelectorAll(".msg").length;
        if (probe.start === 0 && shown > 0) probe.start = performance.now();
        if (probe.end === 0 && shown >= count) probe.end = performance.now();
      }).observe(list, { childList: true });
      const tick = (now: number) => {
        if (probe.armed && probe.last > 0) {
          probe.longest = Math.max(probe.longest, now - probe.last);
          probe.frames++;
          if (probe.end > 0) probe.done = true;
        }
        probe.last = now;
        if (!probe.done) requestAnimationFrame(tick);
      };
      requestAnimationFrame(tick);
    }, MESSAGES);
    const bob = await connect(`${server.ws}/${room}`, "parley.v1");
    bob.send({ type: "hello", nick: "bob", client: `bench-bob-${run}` });
    await bob.until("welcome");
    await page.evaluate(() => {
      (globalThis as unknown as { burstProbe: { armed: boolean } }).burstProbe.armed = true;
    });
    for (let i = 1; i <= MESSAGES; i++) {
      bob.send({ type: "message", cid: `b-${i}`, text: `burst message ${i} of ${MESSAGES}` });
    }
    await page.waitForFunction(
      () => (globalThis as unknown as { burstProbe: { done: boolean } }).burstProbe.done,
      null,
      { timeout: 60_000 },
    );
    const probe = await page.evaluate(() =>
      (globalThis as unknown as {
        burstProbe: { start: number; end: number; longest: number; frames: number };
      }).burstProbe
    );
    results.push({
      run,
      totalMs: Math.round(probe.end - probe.start),
      longestFrameMs: Math.round(probe.longest),
      frames: probe.frames,
    });
    await bob.close();
    await page.close();
  }
} finally {
  await browser.close();
  await server.close();
}
console.table(results);
const worst = Math.max(...results.map((r) => r.longestFrameMs));
console.log(
  `${MESSAGES}-message burst: longest frame ${worst} ms over ${RUNS} runs (target: 50 ms)`,
);
