/**
 * End-to-end tests of the chat page (and of the seed sample client) in
 * headless Chromium, driven by Playwright against a real server.
 *
 * Chromium must be at /usr/bin/chromium. Without it these tests are skipped
 * with a warning on a developer's machine, and fail in CI (`CI=true`).
 * Screenshots of every page go to `test-output/`.
 *
 * @module
 */

import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { type Browser, chromium, type Page } from "playwright-core";
import { startServer, type TestServer } from "./helpers.ts";

const CHROMIUM = "/usr/bin/chromium";
const LAUNCH_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
  "--disable-features=LocalNetworkAccessChecks",
];
const TIMEOUT_MS = 10_000;
const OUTPUT_DIR = new URL("../test-output/", import.meta.url);
const SAMPLE_PAGE = new URL("./fixtures/sample.html", import.meta.url);

const hasChromium = await Deno.stat(CHROMIUM).then((info) => info.isFile, () => false);
const inCi = Deno.env.get("CI") === "true";
const skipReason = `${CHROMIUM} not found; install it with: apt-get install -y chromium`;
if (!hasChromium && !inCi) console.warn(`Browser tests skipped: ${skipReason}`);

/** One person in the chat: a page in a browser context of its own. */
interface Person {
  nick: string;
  page: Page;
  /** Messages of dialogs (alert, prompt) the page opened. */
  dialogs: string[];
  /** Uncaught page errors and CSP violations. */
  problems: string[];
}

/** What a browser test gets: its own server and browser, closed afterwards. */
interface World {
  server: TestServer;
  browser: Browser;
  /** Opens the chat page of `room` in a fresh context and joins as `nick`. */
  join(nick: string, room?: string): Promise<Person>;
  /** Opens a page in a fresh context, for the test to drive; it is screenshotted too. */
  newPage(label: string): Promise<Page>;
}

/** A message element as the tests read it. */
interface Shown {
  id: string | null;
  cid: string | null;
  from: string;
  text: string;
  pending: boolean;
  hasImage: boolean;
}

/**
 * Declares a test that needs Chromium: skipped with a reason when it is
 * missing, except in CI, where that is a failure.
 */
function browserTest(
  name: string,
  fn: (world: World) => Promise<void>,
  serverOptions: Parameters<typeof startServer>[0] = {},
): void {
  if (!hasChromium && !inCi) {
    Deno.test({ name, ignore: true, fn() {} });
    return;
  }
  Deno.test(name, async () => {
    if (!hasChromium) {
      throw new Error(`Cannot run browser tests in CI: ${skipReason}`);
    }
    const slug = name.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-|-$/g, "");
    const server = await startServer(serverOptions);
    let browser: Browser | undefined;
    const pages: { label: string; page: Page }[] = [];
    try {
      browser = await chromium.launch({ executablePath: CHROMIUM, args: LAUNCH_ARGS });
      const opened = browser;
      const newPage = async (label: string): Promise<Page> => {
        const context = await opened.newContext({ viewport: { width: 900, height: 640 } });
        context.setDefaultTimeout(TIMEOUT_MS);
        const page = await context.newPage();
        pages.push({ label, page });
        return page;
      };
      await fn({
        server,
        browser,
        newPage,
        join: async (nick, room = "lobby") => {
          const page = await newPage(nick);
          const person = watch(nick, page);
          await openChat(person, server, room);
          return person;
        },
      });
    } finally {
      await Deno.mkdir(OUTPUT_DIR, { recursive: true });
      for (const { label, page } of pages) {
        const path = fileURLToPath(new URL(`browser-${slug}-${label}.png`, OUTPUT_DIR));
        await page.screenshot({ path }).catch((error) => {
          console.warn(`Cannot take screenshot ${path}: ${error}`);
        });
      }
      try {
        await browser?.close();
      } finally {
        await server.close();
      }
    }
  });
}

/** Records dialogs, page errors and CSP violations of a page. */
function watch(nick: string, page: Page): Person {
  const person: Person = { nick, page, dialogs: [], problems: [] };
  page.on("dialog", (dialog) => {
    person.dialogs.push(dialog.message());
    dialog.dismiss().catch(() => {});
  });
  page.on("pageerror", (error) => person.problems.push(`page error: ${error.message}`));
  page.on("console", (message) => {
    if (message.type() === "error" && /Content Security Policy|Refused to/i.test(message.text())) {
      person.problems.push(`CSP: ${message.text()}`);
    }
  });
  return person;
}

async function openChat(person: Person, server: TestServer, room: string): Promise<void> {
  const { page, nick } = person;
  const response = await page.goto(`${server.url}/${room === "lobby" ? "" : room}`);
  assert.equal(response?.status(), 200, `GET /${room} should serve the chat page`);
  // Every test runs the page under the server's strict policy: no inline code or style.
  assert.match(response?.headers()["content-security-policy"] ?? "", /script-src 'self'/);
  await page.locator("#nick-input").fill(nick);
  await page.locator("#nick-input").press("Enter");
  await waitForStatus(page, "open");
  // The member list holds our own nick once the server has welcomed us.
  await page.locator("#members li.me", { hasText: nick }).waitFor();
}

async function waitForStatus(page: Page, word: string): Promise<void> {
  await page.waitForFunction(
    (expected) => document.getElementById("status")?.textContent === expected,
    word,
    { timeout: TIMEOUT_MS },
  );
}

/** Every message element of the page, in list order. */
function shown(page: Page): Promise<Shown[]> {
  return page.locator("#messages .msg").evaluateAll((items) =>
    items.map((li) => {
      const element = li as HTMLElement;
      return {
        id: element.dataset.id ?? null,
        cid: element.dataset.cid ?? null,
        from: element.querySelector(".from")?.textContent ?? "",
        text: element.querySelector(".body")?.textContent ?? "",
        pending: element.classList.contains("pending"),
        hasImage: element.querySelector("img") !== null,
      };
    })
  );
}

/** Waits until the page shows, as delivered (not pending), a message with exactly this text. */
async function waitForMessage(page: Page, text: string, from?: string): Promise<void> {
  await page.waitForFunction(
    ([text, from]) =>
      [...document.querySelectorAll("#messages .msg:not(.pending)")].some((li) =>
        li.querySelector(".body")?.textContent === text &&
        (from === null || li.querySelector(".from")?.textContent === from)
      ),
    [text, from ?? null] as const,
    { timeout: TIMEOUT_MS },
  );
}

/** Waits until the page shows a loaded picture with this alt text (the file name). */
async function waitForImage(page: Page, alt: string): Promise<void> {
  await page.waitForFunction(
    (alt) =>
      [...document.querySelectorAll<HTMLImageElement>("#messages .msg img")].some((img) =>
        img.getAttribute("alt") === alt && img.complete && img.naturalWidth > 0
      ),
    alt,
    { timeout: TIMEOUT_MS },
  );
}

async function say(person: Person, text: string): Promise<void> {
  await person.page.locator("#text").fill(text);
  await person.page.locator("#text").press("Enter");
}

function assertNoProblems(...people: Person[]): void {
  for (const person of people) {
    assert.deepEqual(person.problems, [], `${person.nick}'s page had errors`);
  }
}

// ---------------------------------------------------------------- PNG

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function crc32(bytes: Uint8Array): number {
  let crc = 0xffffffff;
  for (const b of bytes) crc = CRC_TABLE[(crc ^ b) & 0xff] ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

function pngChunk(type: string, data: Uint8Array): Uint8Array {
  const chunk = new Uint8Array(12 + data.length);
  const view = new DataView(chunk.buffer);
  view.setUint32(0, data.length);
  chunk.set(new TextEncoder().encode(type), 4);
  chunk.set(data, 8);
  view.setUint32(8 + data.length, crc32(chunk.subarray(4, 8 + data.length)));
  return chunk;
}

/** A `size`×`size` RGB checkerboard PNG, made here so the test needs no binary fixture. */
async function makePng(size: number): Promise<Uint8Array> {
  const row = 1 + size * 3;
  const raw = new Uint8Array(size * row);
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) {
      const dark = (Math.floor(x / 8) + Math.floor(y / 8)) % 2 === 0;
      raw.set(dark ? [0x25, 0x57, 0xb8] : [0xf5, 0xa6, 0x23], y * row + 1 + x * 3);
    }
  }
  const deflated = new Uint8Array(
    await new Response(new Blob([raw]).stream().pipeThrough(new CompressionStream("deflate")))
      .arrayBuffer(),
  );
  const header = new Uint8Array(13);
  const view = new DataView(header.buffer);
  view.setUint32(0, size);
  view.setUint32(4, size);
  header.set([8, 2, 0, 0, 0], 8); // 8-bit RGB, no interlace
  const parts = [
    new Uint8Array([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    pngChunk("IHDR", header),
    pngChunk("IDAT", deflated),
    pngChunk("IEND", new Uint8Array()),
  ];
  const png = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let offset = 0;
  for (const part of parts) {
    png.set(part, offset);
    offset += part.length;
  }
  return png;
}

// ---------------------------------------------------------------- tests

browserTest("the seed sample client chats in raw mode", async ({ server, newPage }) => {
  const sample = await Deno.readTextFile(SAMPLE_PAGE);
  const pages: Page[] = [];
  for (const label of ["sample-1", "sample-2"]) {
    const page = await newPage(label);
    page.on("dialog", (dialog) => dialog.accept("ann"));
    // The server does not serve the fixture; the browser gets it from here.
    await page.route(
      `${server.url}/sample.html`,
      (route) =>
        route.fulfill({ status: 200, contentType: "text/html; charset=utf-8", body: sample }),
    );
    await page.goto(`${server.url}/sample.html`);
    await page.waitForFunction("ws.readyState === WebSocket.OPEN", null, { timeout: TIMEOUT_MS });
    pages.push(page);
  }
  await pages[0].locator("#line").fill("hello");
  await pages[0].locator("#line").press("Enter");
  for (const page of pages) {
    await page.waitForFunction(
      () => document.getElementById("list")?.textContent?.includes("ann: hello"),
      null,
      { timeout: TIMEOUT_MS },
    );
  }
  assert.equal(await pages[0].locator("#line").inputValue(), "", "the input is cleared");
  assert.equal(await pages[1].locator("#list").textContent(), "ann: hello");
});

browserTest("two people chat and a third sees the history and the members", async (world) => {
  const ann = await world.join("ann");
  const bob = await world.join("bob");
  await ann.page.locator("#members li", { hasText: "bob" }).waitFor();

  await say(ann, "hi bob");
  await waitForMessage(bob.page, "hi bob", "ann");
  await say(bob, "hi ann, how are you?");
  await waitForMessage(ann.page, "hi ann, how are you?", "bob");
  await waitForMessage(ann.page, "hi bob", "ann"); // acked: no longer pending

  const carol = await world.join("carol");
  await waitForMessage(carol.page, "hi ann, how are you?", "bob");
  const history = await shown(carol.page);
  assert.deepEqual(
    history.map((m) => [m.from, m.text]),
    [["ann", "hi bob"], ["bob", "hi ann, how are you?"]],
  );
  assert.ok(history.every((m) => m.id !== null && !m.pending), "replayed messages have ids");
  const members = await carol.page.locator("#members li").allTextContents();
  assert.deepEqual(members.sort(), ["ann", "bob", "carol"]);
  await ann.page.locator("#members li", { hasText: "carol" }).waitFor();
  assert.equal(await carol.page.locator("#room-name").textContent(), "lobby");
  assertNoProblems(ann, bob, carol);
});

browserTest(
  "a page that loses its connection resends and shows every message once",
  async (world) => {
    const room = "drop-test";
    const ann = await world.join("ann", room);
    const bob = await world.join("bob", room);
    const carol = await world.join("carol", room);
    await say(ann, "one");
    await say(bob, "two");
    for (const person of [ann, bob, carol]) await waitForMessage(person.page, "two", "bob");

    // Record each message element as it is added, to see carol's at the moment it appears.
    await carol.page.evaluate(() => {
      const added: { text: string; pending: boolean; id: string | null }[] = [];
      Object.defineProperty(globalThis, "addedMessages", { value: added });
      new MutationObserver((records) => {
        for (const node of records.flatMap((r) => [...r.addedNodes])) {
          if (!(node instanceof HTMLElement) || !node.matches(".msg")) continue;
          added.push({
            text: node.querySelector(".body")?.textContent ?? "",
            pending: node.classList.contains("pending"),
            id: node.dataset.id ?? null,
          });
        }
      }).observe(document.getElementById("messages")!, { childList: true });
    });

    // dropConnections() closes every socket of the room, so everyone is cut off;
    // carol and ann both type while it happens.
    world.server.dropConnections(room);
    await say(carol, "three, sent during the drop");
    await say(ann, "four, also during the drop");
    const first = await carol.page.evaluate(() =>
      (globalThis as unknown as {
        addedMessages: { text: string; pending: boolean; id: string | null }[];
      })
        .addedMessages.find((m) => m.text === "three, sent during the drop")
    );
    assert.ok(first, "carol's message was shown at once");
    assert.equal(first.pending, true, "carol's message is pending while the connection is down");
    assert.equal(first.id, null, "a pending message has no id yet");

    for (const person of [ann, bob, carol]) await waitForStatus(person.page, "open");
    await say(bob, "five, after the drop");

    const expected = [
      "one",
      "two",
      "three, sent during the drop",
      "four, also during the drop",
      "five, after the drop",
    ];
    for (const person of [ann, bob, carol]) {
      for (const text of expected) await waitForMessage(person.page, text);
    }
    const lists = await Promise.all([ann, bob, carol].map((p) => shown(p.page)));
    for (const [index, list] of lists.entries()) {
      const who = [ann, bob, carol][index].nick;
      assert.deepEqual(list.filter((m) => m.pending), [], `${who} has nothing pending`);
      const texts = list.map((m) => m.text);
      for (const text of expected) {
        assert.equal(
          texts.filter((t) => t === text).length,
          1,
          `${who} shows "${text}" exactly once`,
        );
      }
      const ids = list.map((m) => Number(m.id));
      assert.ok(ids.every((id, i) => i === 0 || id > ids[i - 1]), `${who}'s ids increase: ${ids}`);
      assert.deepEqual(
        list.map((m) => [m.id, m.text]),
        lists[0].map((m) => [m.id, m.text]),
        `${who} shows the same messages in the same order as ann`,
      );
    }
    assert.equal(lists[0].length, expected.length, "nothing else was stored");
    for (const person of [ann, bob, carol]) {
      assert.equal(await person.page.locator("#status").textContent(), "open");
    }
    assertNoProblems(ann, bob, carol);
  },
);

/** Files larger than this are replayed without their bytes in the picture test. */
const HISTORY_FILE_BYTES = 120;

browserTest(
  "a picture sent by one page shows as an image on the other and in history",
  async (world) => {
    const dir = await Deno.makeTempDir({ prefix: "parley-browser-" });
    try {
      const checker = await makePng(48);
      const tiny = await makePng(4);
      assert.ok(
        tiny.length <= HISTORY_FILE_BYTES && checker.length > HISTORY_FILE_BYTES,
        `the pictures straddle the history limit: ${tiny.length} and ${checker.length} bytes`,
      );
      await Deno.writeFile(`${dir}/checker.png`, checker);
      await Deno.writeFile(`${dir}/tiny.png`, tiny);
      const ann = await world.join("ann");
      const bob = await world.join("bob");
      await ann.page.locator("#members li", { hasText: "bob" }).waitFor();

      await ann.page.setInputFiles("#file", `${dir}/checker.png`);
      await waitForImage(bob.page, "checker.png");
      const message = bob.page.locator("#messages .msg", { has: bob.page.locator("img") });
      assert.equal(await message.locator(".from").textContent(), "ann");
      const img = message.locator("img");
      assert.equal(await img.evaluate((e) => (e as HTMLImageElement).naturalWidth), 48);
      assert.match((await img.getAttribute("src")) ?? "", /^blob:/);
      // The sender's own copy leaves the pending state once the server has it.
      await ann.page.locator("#messages .msg:not(.pending) img").waitFor();

      // Carol comes later: the small picture comes with the history, the large
      // one only by name.
      await ann.page.setInputFiles("#file", `${dir}/tiny.png`);
      await waitForImage(bob.page, "tiny.png");
      const carol = await world.join("carol");
      await waitForImage(carol.page, "tiny.png");
      const omitted = carol.page.locator("#messages .msg", { hasText: "checker.png" });
      await omitted.locator(".body", { hasText: "file too large for history" }).waitFor();
      assert.equal(await omitted.locator("img").count(), 0);
      assert.equal(await omitted.locator(".from").textContent(), "ann");
      assertNoProblems(ann, bob, carol);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
  { historyFileBytes: HISTORY_FILE_BYTES },
);

browserTest("markup typed as a message shows as text", async (world) => {
  const ann = await world.join("ann");
  const bob = await world.join("bob");
  const markup = "<img src=x onerror=alert(1)>";
  await say(ann, markup);
  await waitForMessage(bob.page, markup, "ann");
  // A second message proves the page kept going after rendering the first.
  await say(ann, "after the markup");
  await waitForMessage(bob.page, "after the markup", "ann");
  const messages = await shown(bob.page);
  const hostile = messages.find((m) => m.text === markup);
  assert.ok(hostile, "the markup is shown as text");
  assert.equal(hostile.hasImage, false, "no <img> was made from it");
  assert.equal(await bob.page.locator("#messages img").count(), 0);
  assert.deepEqual(bob.dialogs, [], "no dialog opened on the receiving page");
  assert.deepEqual(ann.dialogs, [], "no dialog opened on the sending page");
  assertNoProblems(ann, bob);
});

browserTest(
  "a reload resumes without duplicates and a gap in history is reported",
  async (world) => {
    const room = "resume";
    const ann = await world.join("ann", room);
    const bob = await world.join("bob", room);
    await say(ann, "m1");
    await say(ann, "m2");
    await waitForMessage(bob.page, "m2", "ann");

    await bob.page.reload();
    await waitForStatus(bob.page, "open");
    await bob.page.locator("#members li.me", { hasText: "bob" }).waitFor(); // no nick asked again
    await say(ann, "m3");
    await waitForMessage(bob.page, "m3", "ann");
    assert.deepEqual((await shown(bob.page)).map((m) => m.text), ["m1", "m2", "m3"]);
    assert.equal(await bob.page.locator("#notice").isHidden(), true, "a full resume has no notice");

    // Bob leaves while more messages than the history holds are posted.
    await bob.page.goto("about:blank");
    for (let i = 4; i <= 10; i++) await say(ann, `m${i}`);
    await waitForMessage(ann.page, "m10", "ann");
    await bob.page.goto(`${world.server.url}/${room}`);
    await waitForStatus(bob.page, "open");
    await bob.page.locator("#notice", { hasText: "Could not resume" }).waitFor();
    await waitForMessage(bob.page, "m10", "ann");
    assert.deepEqual(
      (await shown(bob.page)).map((m) => m.text),
      ["m6", "m7", "m8", "m9", "m10"],
      "the list is reset to the replay",
    );
    assertNoProblems(ann, bob);
  },
  { historySize: 5, joinHistory: 5 },
);

browserTest("switching rooms keeps them apart and the URL follows", async (world) => {
  const ann = await world.join("ann");
  const bob = await world.join("bob");
  const url = world.server.url;
  await say(ann, "in the lobby");
  await waitForMessage(bob.page, "in the lobby", "ann");

  await ann.page.locator("#room-input").fill("no spaces allowed");
  await ann.page.locator("#room-input").press("Enter");
  assert.equal(ann.page.url(), `${url}/`, "an invalid room name goes nowhere");

  await ann.page.locator("#room-input").fill("side");
  await ann.page.locator("#room-input").press("Enter");
  await ann.page.waitForURL(`${url}/side`);
  await waitForStatus(ann.page, "open");
  await ann.page.locator("#members li.me", { hasText: "ann" }).waitFor();
  assert.equal(await ann.page.locator("#room-name").textContent(), "side");
  assert.equal(await ann.page.locator("#messages .msg").count(), 0, "the side room is empty");
  await say(ann, "in the side room");
  await waitForMessage(ann.page, "in the side room", "ann");

  // Bob, still in the lobby, sees ann leave and never sees the side room.
  await bob.page.waitForFunction(
    () => document.querySelectorAll("#members li").length === 1,
    null,
    { timeout: TIMEOUT_MS },
  );
  await say(bob, "anyone here?");
  await waitForMessage(bob.page, "anyone here?", "bob");
  assert.deepEqual((await shown(bob.page)).map((m) => m.text), ["in the lobby", "anyone here?"]);

  // Back to the lobby: what bob said meanwhile is there, nothing twice.
  await ann.page.goBack();
  await ann.page.waitForURL(`${url}/`);
  await waitForMessage(ann.page, "anyone here?", "bob");
  assert.equal(await ann.page.locator("#room-name").textContent(), "lobby");
  assert.deepEqual((await shown(ann.page)).map((m) => m.text), ["in the lobby", "anyone here?"]);

  // A new nickname reaches the others.
  await ann.page.locator("#nick-button").click();
  await ann.page.locator("#nick-input").fill("anna");
  await ann.page.locator("#nick-input").press("Enter");
  await bob.page.locator("#members li", { hasText: "anna" }).waitFor();
  await say(ann, "call me anna");
  await waitForMessage(bob.page, "call me anna", "anna");
  assertNoProblems(ann, bob);
});
