/**
 * The chat page as people see it (issue #14): headless Chromium at desktop
 * (1280×800) and phone (390×844) size, in light and dark, driven by
 * Playwright against a real server; axe-core checks each view.
 *
 * Chromium must be at /usr/bin/chromium. Without it these tests are skipped
 * with a warning on a developer's machine, and fail in CI (`CI=true`).
 * Screenshots of every view go to `test-output/page-*.png`.
 *
 * @module
 */

import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { fileURLToPath } from "node:url";
// deno-lint-ignore no-import-prefix -- not in the import map, so `deno task start` never installs it
import axe from "npm:axe-core@4.14.1";
import { SignJWT } from "jose";
// deno-lint-ignore no-import-prefix -- not in the import map, so `deno task start` never installs it
import { type Browser, chromium, type Page, type WebSocketRoute } from "npm:playwright-core@1.65.1";
import { type App, createApp } from "../main.ts";
import { type Config, DEFAULT_CONFIG } from "../lib/config.ts";
import { silentLogger } from "../lib/log.ts";
import { type Client, connect, startServer, type TestServer, waitFor } from "./helpers.ts";
import { makePng } from "./png.ts";

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
/** Smallest touch target people can hit reliably on a phone, in CSS pixels. */
const TOUCH_TARGET = 44;
/** Files over this are refused by the server of these tests: a message that fails. */
const MAX_MESSAGE_BYTES = 8192;
const MAX_TEXT_LENGTH = 500;

const hasChromium = await Deno.stat(CHROMIUM).then((info) => info.isFile, () => false);
const inCi = Deno.env.get("CI") === "true";
const skipReason = `${CHROMIUM} not found; install it with: apt-get install -y chromium`;
if (!hasChromium && !inCi) console.warn(`Page tests skipped: ${skipReason}`);

/** A size and colour scheme the page is checked in. */
interface View {
  label: string;
  width: number;
  height: number;
  colorScheme: "light" | "dark";
  phone: boolean;
}

const DESKTOP_LIGHT: View = {
  label: "desktop-light",
  width: 1280,
  height: 800,
  colorScheme: "light",
  phone: false,
};
const DESKTOP_DARK: View = { ...DESKTOP_LIGHT, label: "desktop-dark", colorScheme: "dark" };
const PHONE_LIGHT: View = {
  label: "phone-light",
  width: 390,
  height: 844,
  colorScheme: "light",
  phone: true,
};
const PHONE_DARK: View = { ...PHONE_LIGHT, label: "phone-dark", colorScheme: "dark" };
const VIEWS = [DESKTOP_LIGHT, DESKTOP_DARK, PHONE_LIGHT, PHONE_DARK];

/** What a page test gets: its own server and browser, closed afterwards. */
interface Stage {
  server: TestServer;
  /** Stops the server early (the pages lose it); the test's end then skips it. */
  stopServer(): Promise<void>;
  /** Opens a page in a fresh context of this view; it is screenshotted at the end. */
  open(view: View, label?: string): Promise<Page>;
  /** Page errors and CSP violations seen so far, on every page. */
  problems: string[];
}

/**
 * Declares a test that needs Chromium: skipped with a reason when it is
 * missing, except in CI, where that is a failure.
 */
function pageTest(
  name: string,
  fn: (stage: Stage) => Promise<void>,
  serverOptions: Parameters<typeof startServer>[0] = {},
): void {
  if (!hasChromium && !inCi) {
    Deno.test({ name, ignore: true, fn() {} });
    return;
  }
  Deno.test(name, async () => {
    if (!hasChromium) throw new Error(`Cannot run page tests in CI: ${skipReason}`);
    const server = await startServer({
      maxMessageBytes: MAX_MESSAGE_BYTES,
      maxTextLength: MAX_TEXT_LENGTH,
      ...serverOptions,
    });
    let serverOpen = true;
    const stopServer = async () => {
      if (!serverOpen) return;
      serverOpen = false;
      await server.close();
    };
    let browser: Browser | undefined;
    const pages: { label: string; page: Page }[] = [];
    const problems: string[] = [];
    try {
      browser = await chromium.launch({ executablePath: CHROMIUM, args: LAUNCH_ARGS });
      const opened = browser;
      const open = async (view: View, label = view.label): Promise<Page> => {
        const context = await opened.newContext({
          viewport: { width: view.width, height: view.height },
          colorScheme: view.colorScheme,
        });
        context.setDefaultTimeout(TIMEOUT_MS);
        const page = await context.newPage();
        page.on("pageerror", (error) => problems.push(`${label}: page error: ${error.message}`));
        page.on("console", (message) => {
          if (message.type() === "error" && /Content Security Policy/i.test(message.text())) {
            problems.push(`${label}: CSP: ${message.text()}`);
          }
        });
        pages.push({ label, page });
        return page;
      };
      await fn({ server, stopServer, open, problems });
    } finally {
      await Deno.mkdir(OUTPUT_DIR, { recursive: true });
      for (const { label, page } of pages) {
        const path = fileURLToPath(new URL(`page-${label}.png`, OUTPUT_DIR));
        await page.screenshot({ path }).catch((error) => {
          console.warn(`Cannot take screenshot ${path}: ${error}`);
        });
      }
      try {
        await browser?.close();
      } finally {
        await stopServer();
      }
    }
  });
}

// ---------------------------------------------------------------- helpers

/** Opens the page of `room` and joins as `nick`. */
async function join(page: Page, server: TestServer, nick: string, room = "lobby") {
  const response = await page.goto(`${server.url}/${room === "lobby" ? "" : room}`);
  assert.equal(response?.status(), 200);
  await page.locator("#nick-input").fill(nick);
  await page.locator("#nick-input").press("Enter");
  await waitForJoined(page, nick);
}

/** Waits until the connection is open and our own nick is in the member list. */
async function waitForJoined(page: Page, nick: string): Promise<void> {
  await page.waitForFunction(
    () => document.getElementById("status")?.dataset.state === "open",
    null,
    { timeout: TIMEOUT_MS },
  );
  await page.locator("#members li.me", { hasText: nick }).waitFor({ state: "attached" });
}

/** A second person, as a rich client, who has said `count` things in `room`. */
async function seed(server: TestServer, room: string, count: number): Promise<Client> {
  const bob = await connect(`${server.ws}/${room === "lobby" ? "" : room}`, "parley.v1");
  bob.send({ type: "hello", nick: "bob", client: "bob-seed-client" });
  await bob.until("welcome");
  for (let i = 1; i <= count; i++) {
    bob.send({ type: "message", cid: `b-${i}`, text: `message ${i} from bob` });
  }
  while ((await bob.until<{ cid: string }>("ack")).cid !== `b-${count}`) {
    // earlier acks
  }
  return bob;
}

async function say(page: Page, text: string): Promise<void> {
  await page.locator("#text").fill(text);
  await page.locator("#text").press("Enter");
}

/** Waits until a delivered (not pending) message has exactly this text. */
async function waitForMessage(page: Page, text: string): Promise<void> {
  await page.waitForFunction(
    (text) =>
      [...document.querySelectorAll("#messages .msg:not(.pending)")].some((li) =>
        li.querySelector(".body")?.textContent === text
      ),
    text,
    { timeout: TIMEOUT_MS },
  );
}

/** Sends a file through the page's file input. */
async function attach(page: Page, name: string, mimeType: string, bytes: Uint8Array) {
  await page.setInputFiles("#file", { name, mimeType, buffer: Buffer.from(bytes) });
}

/** Waits until a loaded picture with this alt text is shown, and returns its `src`. */
async function waitForImage(page: Page, alt: string): Promise<string> {
  await page.waitForFunction(
    (alt) =>
      [...document.querySelectorAll<HTMLImageElement>("#messages .msg:not(.pending) img")].some(
        (img) => img.getAttribute("alt") === alt && img.complete && img.naturalWidth > 0,
      ),
    alt,
    { timeout: TIMEOUT_MS },
  );
  return await page.locator(`#messages .msg:not(.pending) img[alt="${alt}"]`).first()
    .getAttribute("src") ?? "";
}

/** Serious and critical axe-core violations of the page, one line each. */
async function axeViolations(page: Page): Promise<string[]> {
  // evaluate() is not subject to the page's CSP, which forbids inline scripts.
  await page.evaluate(axe.source);
  const violations = await page.evaluate(async () => {
    const runner = (globalThis as unknown as { axe: typeof axe }).axe;
    const result = await runner.run(document, { resultTypes: ["violations"] });
    return result.violations.map((v) => ({
      id: v.id,
      impact: v.impact ?? null,
      help: v.help,
      nodes: v.nodes.length,
      // The first few say what is wrong; the rest are alike.
      examples: v.nodes.slice(0, 3).map((n) =>
        `${n.target.join(" ")}: ${(n.failureSummary ?? "").replace(/\s+/g, " ")}`
      ),
    }));
  });
  return violations
    .filter((v) => v.impact === "serious" || v.impact === "critical")
    .map((v) => `${v.impact} ${v.id} (${v.help}), ${v.nodes} nodes: ${v.examples.join(" | ")}`);
}

/** A rectangle of the page, in CSS pixels. */
interface Box {
  top: number;
  bottom: number;
  left: number;
  right: number;
}

function boxOf(page: Page, selector: string): Promise<Box> {
  return page.locator(selector).first().evaluate((el) => {
    const r = el.getBoundingClientRect();
    return { top: r.top, bottom: r.bottom, left: r.left, right: r.right };
  });
}

/** Whether a tap at the centre of the element would reach it (nothing covers it). */
function reachable(page: Page, selector: string): Promise<boolean> {
  return page.locator(selector).first().evaluate((el) => {
    const r = el.getBoundingClientRect();
    if (r.width === 0 || r.height === 0) return false;
    const x = r.left + r.width / 2;
    const y = r.top + r.height / 2;
    if (x < 0 || y < 0 || x > innerWidth || y > innerHeight) return false;
    const hit = document.elementFromPoint(x, y);
    return hit !== null && (hit === el || el.contains(hit));
  });
}

/** Controls smaller than a touch target, with their size. */
function smallTargets(page: Page, min: number): Promise<string[]> {
  return page.evaluate((min) => {
    const controls = document.querySelectorAll<HTMLElement>(
      "button, .button, input:not([type=file]):not(.visually-hidden), select, textarea",
    );
    const small: string[] = [];
    for (const el of controls) {
      const r = el.getBoundingClientRect();
      if (r.width === 0 && r.height === 0) continue; // not rendered
      if (r.width < min || r.height < min) {
        const name = el.id ? `#${el.id}` : `${el.tagName.toLowerCase()}.${el.className}`;
        small.push(`${name} "${el.textContent?.trim() ?? ""}" ${r.width}x${r.height}`);
      }
    }
    return small;
  }, min);
}

// ---------------------------------------------------------------- the four views

/** What keeps the page from people who use a screen reader or a phone, one line each. */
async function accessProblems(page: Page, view: View): Promise<string[]> {
  const problems: string[] = [];
  // The list keeps list semantics and is announced as it grows.
  const list = await page.locator("#messages").evaluate((el) => ({
    tag: el.tagName,
    role: el.getAttribute("role"),
    live: el.closest("[aria-live], [role=log]") !== null,
  }));
  if (list.tag !== "OL" || (list.role !== null && list.role !== "list")) {
    problems.push(`the messages are a <${list.tag.toLowerCase()}> with role ${list.role}`);
  }
  if (!list.live) problems.push("new messages are not announced (no aria-live or log)");
  if (!await page.locator('label[for="room-input"]').isVisible()) {
    problems.push("the Room field has no visible label");
  }
  if (view.phone) {
    for (const small of await smallTargets(page, TOUCH_TARGET)) {
      problems.push(`touch target under ${TOUCH_TARGET} px: ${small}`);
    }
  }
  problems.push(...await axeViolations(page));
  return problems;
}

for (const view of VIEWS) {
  pageTest(
    `${view.label}: a conversation with pictures, a failed and a pending message passes axe-core`,
    async ({ server, stopServer, open, problems }) => {
      const bob = await seed(server, "lobby", 16);
      try {
        const page = await open(view);
        await join(page, server, "ann");
        await waitForMessage(page, "message 16 from bob");
        await say(page, "hello bob, here is the board");
        await waitForMessage(page, "hello bob, here is the board");
        const png = await makePng(48);
        assert.ok(png.byteLength < MAX_MESSAGE_BYTES, `the picture (${png.byteLength} B) fits`);
        await attach(page, "board.png", "image/png", png);
        await waitForImage(page, "board.png");
        // Over the server's limit: refused, and shown as not sent.
        await attach(page, "too-big.bin", "application/octet-stream", new Uint8Array(10_000));
        await page.locator("#messages .msg.failed").waitFor();
        // With the server gone, what is typed waits.
        await stopServer();
        await say(page, "are you still there?");
        await page.locator("#messages .msg.pending", { hasText: "are you still there?" })
          .waitFor();
        await page.locator("#messages").evaluate((list) => list.scrollTop = list.scrollHeight);

        assert.deepEqual(await accessProblems(page, view), []);
        assert.deepEqual(problems, []);
      } finally {
        await bob.close();
      }
    },
  );
}

// ---------------------------------------------------------------- the broken items

pageTest(
  "phone: a long conversation leaves the header on top and tappable, and the list scrolls",
  async ({ server, open }) => {
    const bob = await seed(server, "lobby", 30);
    try {
      const page = await open(PHONE_LIGHT, "phone-long-conversation");
      await join(page, server, "ann");
      await waitForMessage(page, "message 30 from bob");
      const header = await boxOf(page, ".bar");
      const list = await boxOf(page, "#messages");
      assert.ok(header.top >= 0, `the header starts on screen (top ${header.top})`);
      assert.ok(
        list.top >= header.bottom - 1,
        `the list (top ${list.top}) stays below the header (bottom ${header.bottom})`,
      );
      const compose = await boxOf(page, "#compose");
      assert.ok(compose.bottom <= PHONE_LIGHT.height + 1, "the message box is on screen");
      for (const control of ["#room-input", "#room-form button", "#nick-button", "#status"]) {
        assert.equal(await reachable(page, control), true, `${control} can be tapped`);
      }
      assert.equal(await reachable(page, "#members-toggle"), true, "Members can be tapped");

      // The list scrolls back to the first message.
      const scroller = page.locator("#messages");
      const before = await scroller.evaluate((el) => el.scrollTop);
      assert.ok(
        await scroller.evaluate((el) => el.scrollHeight > el.clientHeight + 1),
        "the list overflows and must scroll",
      );
      await page.mouse.move((list.left + list.right) / 2, Math.max(list.top, header.bottom) + 40);
      for (let i = 0; i < 20; i++) await page.mouse.wheel(0, -400);
      await page.waitForFunction(
        () => (document.getElementById("messages")?.scrollTop ?? 1) <= 0,
        null,
        { timeout: TIMEOUT_MS },
      );
      assert.ok(before > 0, `the list started at its end (scrollTop ${before})`);
      const first = await boxOf(page, "#messages .msg");
      const after = await boxOf(page, "#messages");
      assert.ok(
        first.top >= after.top - 1 && first.top >= header.bottom - 1,
        "the oldest message is in view",
      );
    } finally {
      await bob.close();
    }
  },
);

for (const view of [DESKTOP_LIGHT, PHONE_LIGHT]) {
  pageTest(
    `${view.label}: the notice banner leaves the newest message in view`,
    async ({ server, open }) => {
      const bob = await seed(server, "lobby", 30);
      try {
        const page = await open(view, `${view.label}-notice`);
        await join(page, server, "ann");
        await say(page, "a message of ann's");
        await waitForMessage(page, "a message of ann's");
        // Over the server's limit: the file is not sent, and the notice banner says why.
        await attach(page, "too-big.bin", "application/octet-stream", new Uint8Array(10_000));
        await page.locator("#notice").waitFor();
        await page.locator("#messages .msg.failed").waitFor();
        const newest = page.locator("#messages .msg").last();
        assert.match(await newest.textContent() ?? "", /too-big\.bin/);
        // Let layout settle, as a person would look: nothing here moves on its own after this.
        await page.evaluate(() =>
          new Promise((done) => requestAnimationFrame(() => setTimeout(done, 50)))
        );
        const message = await newest.evaluate((el) => {
          const r = el.getBoundingClientRect();
          return { top: r.top, bottom: r.bottom };
        });
        const list = await boxOf(page, "#messages");
        const notice = await boxOf(page, "#notice");
        assert.ok(
          message.bottom <= list.bottom + 1 && message.top >= list.top - 1,
          `the newest message (${message.top}-${message.bottom}) is inside the list's view ` +
            `(${list.top}-${list.bottom})`,
        );
        assert.ok(
          message.bottom <= notice.top || message.top >= notice.bottom,
          "the notice does not cover the newest message",
        );
      } finally {
        await bob.close();
      }
    },
  );
}

pageTest(
  "the message box has focus after choosing a nickname and after a reload",
  async ({ server, open }) => {
    const page = await open(DESKTOP_LIGHT, "focus");
    await join(page, server, "ann");
    const focused = () => page.evaluate(() => document.activeElement?.id ?? null);
    assert.equal(await focused(), "text", "after the nickname");
    await page.reload();
    await waitForJoined(page, "ann");
    assert.equal(await focused(), "text", "on load");
    // It is the box itself that takes the keys.
    await page.keyboard.type("typed at once");
    assert.equal(await page.locator("#text").inputValue(), "typed at once");
  },
);

pageTest(
  "a reloaded page shows its pictures again, from the server's file URL",
  async ({ server, open, problems }) => {
    const page = await open(DESKTOP_LIGHT, "reload-pictures");
    await join(page, server, "ann");
    await attach(page, "board.png", "image/png", await makePng(48));
    assert.match(await waitForImage(page, "board.png"), /^blob:/);
    // After a reload the page no longer holds the bytes: the server serves them.
    await page.reload();
    await waitForJoined(page, "ann");
    const src = await waitForImage(page, "board.png");
    assert.match(src, /^http:\/\/127\.0\.0\.1:\d+\/lobby\/files\/[A-Za-z0-9_-]+\/\d+$/);
    const width = await page.locator('img[alt="board.png"]').evaluate((img) =>
      (img as HTMLImageElement).naturalWidth
    );
    assert.equal(width, 48);
    assert.deepEqual(problems, [], "the page's CSP allows the picture");
  },
);

/** The signing secret of the token-mode test: 32 bytes or more, as the server requires. */
const AUTH_SECRET = "page-test-secret-that-is-long-enough-0123456789";

pageTest(
  "token mode: a reloaded page fetches its pictures with its token in a header",
  async ({ server, open, problems }) => {
    const token = await new SignJWT({ name: "ann", rooms: ["team"] })
      .setProtectedHeader({ alg: "HS256" })
      .setSubject("u-ann")
      .setIssuedAt()
      .setExpirationTime(Math.floor(Date.now() / 1000) + 600)
      .sign(new TextEncoder().encode(AUTH_SECRET));
    const page = await open(DESKTOP_LIGHT, "token-pictures");
    const requests: Promise<{ url: string; authorization: string | null; status: number }>[] = [];
    page.on("requestfinished", (request) => {
      if (!request.url().includes("/files/")) return;
      requests.push((async () => ({
        url: request.url(),
        authorization: (await request.allHeaders()).authorization ?? null,
        status: (await request.response())?.status() ?? 0,
      }))());
    });
    await page.goto(`${server.url}/team#token=${token}`);
    await waitForJoined(page, "ann");
    await attach(page, "team.png", "image/png", await makePng(32));
    await waitForImage(page, "team.png");
    assert.equal(requests.length, 0, "the sender's page holds the bytes");
    await page.reload();
    await waitForJoined(page, "ann");
    assert.match(await waitForImage(page, "team.png"), /^blob:/);
    const seen = await Promise.all(requests);
    assert.equal(seen.length, 1, JSON.stringify(seen));
    const url = new URL(seen[0].url);
    assert.match(url.pathname, /^\/team\/files\/[A-Za-z0-9_-]+\/\d+$/);
    assert.equal(url.search, "", "no token in the URL");
    assert.equal(seen[0].authorization, `Bearer ${token}`);
    assert.equal(seen[0].status, 200);
    // Without the token the same file is refused.
    const bare = await fetch(url);
    assert.equal(bare.status, 401);
    await bare.body?.cancel();
    assert.deepEqual(problems, []);
  },
  { auth: "token", authSecret: AUTH_SECRET },
);

// ---------------------------------------------------------------- on the client SDK

/** A memory-engine server on a port of its own, which a test can stop and start again. */
async function restartable(overrides: Partial<Config> = {}) {
  const probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = probe.addr as Deno.NetAddr;
  probe.close();
  let running: { app: App; server: Deno.HttpServer } | null = null;
  const start = async () => {
    const app = await createApp({
      ...DEFAULT_CONFIG,
      port,
      hostname: "127.0.0.1",
      logLevel: "silent",
      maxMessageBytes: MAX_MESSAGE_BYTES,
      maxTextLength: MAX_TEXT_LENGTH,
      ...overrides,
    }, silentLogger);
    const server = Deno.serve({ port, hostname: "127.0.0.1", onListen() {} }, app.handler);
    running = { app, server };
  };
  const stop = async () => {
    const current = running;
    running = null;
    if (!current) return;
    await current.app.close();
    await current.server.shutdown();
  };
  await start();
  return { url: `http://127.0.0.1:${port}`, start, stop };
}

/** The texts of the list, in order: messages by their body, a gap as "[gap]". */
function conversation(page: Page): Promise<string[]> {
  return page.locator("#messages .msg, #messages .note.gap").evaluateAll((items) =>
    items.map((li) =>
      li.classList.contains("gap") ? "[gap]" : li.querySelector(".body")?.textContent ?? ""
    )
  );
}

/** Waits until the status says this, in words. */
async function waitForStatusText(page: Page, pattern: RegExp, timeout = 30_000) {
  await page.waitForFunction(
    (source) => new RegExp(source).test(document.getElementById("status")?.textContent ?? ""),
    pattern.source,
    { timeout },
  );
}

pageTest(
  "a memory server's restart keeps the conversation, marks the gap and goes on after it",
  async ({ open, problems }) => {
    const server = await restartable();
    try {
      const page = await open(DESKTOP_LIGHT, "restart-gap");
      await page.goto(server.url);
      await page.locator("#nick-input").fill("ann");
      await page.locator("#nick-input").press("Enter");
      await waitForJoined(page, "ann");
      await say(page, "before the restart");
      await say(page, "also before");
      await waitForMessage(page, "also before");
      await server.stop();
      await server.start();
      await page.waitForFunction(
        () => document.getElementById("status")?.dataset.state === "open",
        null,
        { timeout: 30_000 },
      );
      await page.locator("#messages .note.gap", { hasText: "some messages may be missing here" })
        .waitFor();
      await say(page, "after the restart");
      await waitForMessage(page, "after the restart");
      assert.deepEqual(await conversation(page), [
        "before the restart",
        "also before",
        "[gap]",
        "after the restart",
      ]);
      // A reload keeps all of it, gap included.
      await page.reload();
      await waitForJoined(page, "ann");
      await waitForMessage(page, "after the restart");
      assert.deepEqual(await conversation(page), [
        "before the restart",
        "also before",
        "[gap]",
        "after the restart",
      ]);
      assert.deepEqual(problems, []);
    } finally {
      await server.stop();
    }
  },
);

pageTest(
  "unsent messages survive a reload and are sent after it; closing the tab warns first",
  async ({ server, open, problems }) => {
    const page = await open(DESKTOP_LIGHT, "unsent-reload");
    // A reload with unsent messages asks first (beforeunload): the test says yes.
    page.on("dialog", (dialog) => dialog.accept().catch(() => {}));
    // Routed from the start: Playwright routes a page's WebSockets by replacing
    // `WebSocket` as the page loads, and the page keeps the one it found then.
    // Until `blocked`, every socket goes through to the server.
    let blocked = false;
    const held: WebSocketRoute[] = [];
    await page.routeWebSocket(/.*/, (socket) => {
      if (blocked) held.push(socket);
      else socket.connectToServer();
    });
    await join(page, server, "ann");
    const warns = () =>
      page.evaluate(() => {
        const event = new Event("beforeunload", { cancelable: true });
        dispatchEvent(event);
        return event.defaultPrevented;
      });
    assert.equal(await warns(), false, "nothing unsent: no warning");
    // From now on the page's sockets reach no server (its pages still load).
    blocked = true;
    server.dropConnections();
    await page.waitForFunction(() => document.getElementById("status")?.textContent !== "open");
    await waitFor(() => held.length > 0, TIMEOUT_MS, "the page's reconnect, held here");
    await say(page, "written while the server was away");
    const pending = page.locator("#messages .msg.pending", { hasText: "written while the server" });
    await pending.waitFor();
    assert.equal(await warns(), true, "an unsent message: closing the tab warns");
    await page.reload();
    await pending.waitFor();
    assert.equal(await page.locator("#messages .msg.pending").count(), 1);
    // The server can be reached again.
    blocked = false;
    for (const socket of held) await socket.close({ code: 4000, reason: "test: back" });
    await waitForMessage(page, "written while the server was away");
    await page.waitForFunction(
      () => document.querySelectorAll("#messages .msg.pending").length === 0,
      null,
      { timeout: TIMEOUT_MS },
    );
    const texts = (await conversation(page)).filter((t) => t.startsWith("written while"));
    assert.equal(texts.length, 1, "sent once");
    assert.equal(await warns(), false, "all sent: no warning any more");
    // A second page sees it stored on the server, once.
    const other = await open(DESKTOP_LIGHT, "unsent-reload-bob");
    await join(other, server, "bob");
    await waitForMessage(other, "written while the server was away");
    assert.equal(
      (await conversation(other)).filter((t) => t.startsWith("written while")).length,
      1,
    );
    assert.deepEqual(problems, []);
  },
);

pageTest(
  "the connection state and waiting messages are said in people's words",
  async ({ open, problems }) => {
    const server = await restartable();
    try {
      const page = await open(DESKTOP_LIGHT, "words");
      await page.goto(server.url);
      await page.locator("#nick-input").fill("ann");
      await page.locator("#nick-input").press("Enter");
      await waitForJoined(page, "ann");
      assert.equal(await page.locator("#member-count").textContent(), "1");
      await server.stop();
      await waitForStatusText(page, /^Reconnecting in \d+ s…/);
      assert.equal(await page.locator("#reconnect").isHidden(), true, "it retries on its own");
      assert.equal(await page.locator("#member-count").textContent(), "?", "members unknown");
      await say(page, "one");
      await say(page, "two");
      const pending = page.locator("#messages .msg.pending .state");
      await page.locator("#messages .msg.pending", { hasText: "two" }).waitFor();
      assert.deepEqual(await pending.allTextContents(), ["Waiting to send", "Waiting to send"]);
      // The browser says it is offline.
      await page.context().setOffline(true);
      await waitForStatusText(page, /^Offline: 2 messages will be sent when you're back$/);
      await page.context().setOffline(false);
      await server.start();
      await waitForMessage(page, "two");
      await page.waitForFunction(
        () => document.getElementById("status")?.textContent === "open",
        null,
        { timeout: 30_000 },
      );
      assert.equal(await page.locator("#member-count").textContent(), "1");
      assert.deepEqual(problems, []);
    } finally {
      await server.stop();
    }
  },
);

pageTest(
  "a long message shows a counter, keeps its text when over the limit; a failed one offers Retry and Delete",
  async ({ server, open, problems }) => {
    const page = await open(DESKTOP_LIGHT, "limits");
    await join(page, server, "ann");
    assert.equal(await page.locator("#counter").isHidden(), true, "no counter for short text");
    await page.locator("#text").fill("x".repeat(450));
    assert.equal(await page.locator("#counter").textContent(), `450 / ${MAX_TEXT_LENGTH}`);
    const long = "y".repeat(MAX_TEXT_LENGTH + 10);
    await page.locator("#text").fill(long);
    await page.locator("#text").press("Enter");
    await page.locator("#notice-text", { hasText: `the limit is ${MAX_TEXT_LENGTH}` }).waitFor();
    assert.match(await page.locator("#notice-text").textContent() ?? "", /Shorten it/);
    assert.equal(await page.locator("#text").inputValue(), long, "the text stays in the box");
    assert.equal(await page.locator("#counter.over").isVisible(), true);
    assert.equal(await page.locator("#messages .msg").count(), 0, "nothing was sent");

    await page.locator("#text").fill("");
    await attach(page, "too-big.bin", "application/octet-stream", new Uint8Array(10_000));
    const failed = page.locator("#messages .msg.failed", { hasText: "too-big.bin" });
    await failed.waitFor();
    assert.match(await failed.locator(".state").textContent() ?? "", /not sent: too large/);
    assert.equal(await failed.locator("button", { hasText: "Retry" }).count(), 1);
    await failed.locator("button", { hasText: "Delete" }).click();
    await page.waitForFunction(() => document.querySelectorAll("#messages .msg").length === 0);
    assert.deepEqual(problems, []);
  },
);

pageTest(
  "a draft stays with its room",
  async ({ server, open, problems }) => {
    const page = await open(DESKTOP_LIGHT, "drafts");
    await join(page, server, "ann");
    await page.locator("#text").fill("for the lobby");
    await page.locator("#room-input").fill("side");
    await page.locator("#room-input").press("Enter");
    await page.waitForURL(`${server.url}/side`);
    await waitForJoined(page, "ann");
    assert.equal(await page.locator("#text").inputValue(), "", "the side room's box is empty");
    await page.locator("#text").fill("for the side room");
    await page.goBack();
    await page.waitForURL(`${server.url}/`);
    await waitForJoined(page, "ann");
    assert.equal(await page.locator("#text").inputValue(), "for the lobby");
    await page.goForward();
    await waitForJoined(page, "ann");
    assert.equal(await page.locator("#text").inputValue(), "for the side room");
    // A reload keeps it too.
    await page.reload();
    await waitForJoined(page, "ann");
    assert.equal(await page.locator("#text").inputValue(), "for the side room");
    assert.deepEqual(problems, []);
  },
);

pageTest(
  "a burst of 200 messages is laid out per frame, not per message",
  async ({ server, open, problems }) => {
    const page = await open(DESKTOP_LIGHT, "burst");
    await join(page, server, "ann");
    // Count reads of the list's scroll size: each one forces a layout after a change.
    await page.evaluate(() => {
      const list = document.getElementById("messages")!;
      const proto = Element.prototype;
      const descriptor = Object.getOwnPropertyDescriptor(proto, "scrollHeight")!;
      const counter = { reads: 0 };
      Object.defineProperty(globalThis, "layoutReads", { value: counter });
      Object.defineProperty(list, "scrollHeight", {
        get() {
          counter.reads++;
          return descriptor.get!.call(this);
        },
      });
    });
    // Messages a few ms apart, each in a frame of its own: more than a screen refreshes.
    const bob = await connect(`${server.ws}/`, "parley.v1");
    try {
      bob.send({ type: "hello", nick: "bob", client: "bob-burst-client" });
      await bob.until("welcome");
      for (let i = 1; i <= 200; i++) {
        bob.send({ type: "message", cid: `b-${i}`, text: `message ${i} from bob` });
        await new Promise((resolve) => setTimeout(resolve, 3));
      }
      await waitForMessage(page, "message 200 from bob");
      assert.equal(await page.locator("#messages .msg").count(), 200);
      const reads = await page.evaluate(() =>
        (globalThis as unknown as { layoutReads: { reads: number } }).layoutReads.reads
      );
      console.log(`layout reads for 200 messages: ${reads}`);
      assert.ok(reads < 200, `${reads} layout reads for 200 messages: fewer than one each`);
      const atEnd = await page.locator("#messages").evaluate((list) =>
        list.scrollHeight - list.scrollTop - list.clientHeight < 80
      );
      assert.equal(atEnd, true, "the list shows the newest message");
    } finally {
      await bob.close();
    }
    assert.deepEqual(problems, []);
  }, // A burst: no rate limit holds the sender back.
  { rateLimit: 100_000, rateBurst: 1_000 },
);

// ---------------------------------------------------------------- what people expect

pageTest(
  "links open safely, markup stays text, mentions of me stand out, a picture opens large and Esc closes it",
  async ({ server, open, problems }) => {
    const bob = await seed(server, "lobby", 1);
    try {
      const page = await open(DESKTOP_LIGHT, "links");
      await join(page, server, "ann");
      bob.send({
        type: "message",
        cid: "b-link",
        text: "see https://example.com/a?b=1. <b>bold</b> javascript:alert(1) @ann and @carol",
      });
      const message = page.locator("#messages .msg", { hasText: "see " });
      await message.waitFor();
      const link = message.locator(".body a");
      assert.equal(await link.count(), 1, "one link: javascript: is not one");
      assert.equal(await link.getAttribute("href"), "https://example.com/a?b=1");
      assert.equal(await link.textContent(), "https://example.com/a?b=1", "the full stop is text");
      assert.equal(await link.getAttribute("rel"), "noopener noreferrer");
      assert.equal(await link.getAttribute("target"), "_blank");
      assert.equal(await message.locator(".body b").count(), 0, "no markup from a message");
      assert.match(await message.locator(".body").textContent() ?? "", /<b>bold<\/b>/);
      assert.equal(await message.locator(".body mark.mention.me").textContent(), "@ann");
      assert.equal(await message.locator(".body mark.mention:not(.me)").textContent(), "@carol");

      await attach(page, "board.png", "image/png", await makePng(48));
      await waitForImage(page, "board.png");
      await page.locator('#messages .msg:not(.pending) img[alt="board.png"]').click();
      const lightbox = page.locator("#lightbox");
      await lightbox.waitFor();
      assert.equal(await page.locator("#lightbox-image").getAttribute("alt"), "board.png");
      await page.keyboard.press("Escape");
      await page.waitForFunction(() =>
        !(document.getElementById("lightbox") as HTMLDialogElement).open
      );
      assert.deepEqual(problems, [], "the page's CSP is unchanged and nothing broke");
    } finally {
      await bob.close();
    }
  },
);

pageTest(
  "scrolled up, new messages get a marker, a jump button and a count in the tab title",
  async ({ server, open, problems }) => {
    const bob = await seed(server, "lobby", 40);
    try {
      const page = await open(DESKTOP_LIGHT, "unread");
      await join(page, server, "ann");
      await waitForMessage(page, "message 40 from bob");
      assert.equal(await page.title(), "lobby · Parley");
      assert.equal(await page.locator("#jump").isHidden(), true);
      await page.locator("#messages").evaluate((list) => list.scrollTop = 0);
      await page.waitForTimeout(300); // the scroll event is handled
      for (let i = 1; i <= 3; i++) {
        bob.send({ type: "message", cid: `u-${i}`, text: `unread ${i}` });
      }
      await page.locator("#jump", { hasText: "3 new messages" }).waitFor();
      assert.equal(await page.title(), "(3) lobby · Parley");
      assert.equal(
        await page.locator("#messages .msg.first-unread .body").textContent(),
        "unread 1",
        "the marker is at the first new message",
      );
      await page.locator("#jump").click();
      await page.waitForFunction(() => document.title === "lobby · Parley");
      assert.equal(await page.locator("#jump").isHidden(), true);
      const atEnd = await page.locator("#messages").evaluate((list) =>
        list.scrollHeight - list.scrollTop - list.clientHeight < 80
      );
      assert.equal(atEnd, true, "the list shows the newest message");
      assert.deepEqual(problems, []);
    } finally {
      await bob.close();
    }
  },
);

pageTest(
  "messages group by author under a day heading; the room's link copies; a first visit explains itself",
  async ({ server, open, problems }) => {
    const bob = await seed(server, "lobby", 3);
    try {
      const page = await open(DESKTOP_LIGHT, "grouping");
      await page.context().grantPermissions(["clipboard-read", "clipboard-write"]);
      await page.goto(server.url);
      const welcome = page.locator("#welcome");
      assert.equal(await welcome.isVisible(), true, "a first visit says what this is");
      assert.match(await welcome.textContent() ?? "", /only a nickname/);
      await page.locator("#nick-input").fill("ann");
      await page.locator("#nick-input").press("Enter");
      await waitForJoined(page, "ann");
      await waitForMessage(page, "message 3 from bob");
      await say(page, "ann says hi");
      await waitForMessage(page, "ann says hi");
      const rows = await page.locator("#messages .msg").evaluateAll((items) =>
        items.map((li) => ({
          grouped: li.classList.contains("grouped"),
          day: (li as HTMLElement).dataset.day ?? null,
        }))
      );
      assert.equal(rows.length, 4);
      assert.ok(rows[0].day, "the first message starts a day");
      assert.deepEqual(rows.map((r) => r.grouped), [false, true, true, false]);
      assert.deepEqual(rows.slice(1).map((r) => r.day), [null, null, null]);

      await page.locator("#copy-link").click();
      await page.locator("#copy-link", { hasText: "Link copied" }).waitFor();
      assert.equal(await page.evaluate(() => navigator.clipboard.readText()), `${server.url}/`);

      await page.locator("#welcome-close").click();
      assert.equal(await welcome.isHidden(), true);
      await page.reload();
      await waitForJoined(page, "ann");
      assert.equal(await welcome.isHidden(), true, "said once");
      assert.deepEqual(problems, []);
    } finally {
      await bob.close();
    }
  },
);

pageTest(
  "a picture dropped on the message box is sent",
  async ({ server, open, problems }) => {
    const page = await open(DESKTOP_LIGHT, "drop-on-box");
    await join(page, server, "ann");
    const png = Array.from(await makePng(24));
    const dataTransfer = await page.evaluateHandle((bytes) => {
      const transfer = new DataTransfer();
      transfer.items.add(new File([new Uint8Array(bytes)], "dropped.png", { type: "image/png" }));
      return transfer;
    }, png);
    await page.dispatchEvent("#text", "dragover", { dataTransfer });
    await page.dispatchEvent("#text", "drop", { dataTransfer });
    await waitForImage(page, "dropped.png");
    assert.deepEqual(problems, []);
  },
);
