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
import { SignJWT } from "jose";
// deno-lint-ignore no-import-prefix -- not in the import map, so `deno task start` never installs it
import { type Browser, chromium, type Locator, type Page } from "npm:playwright-core@1.65.1";
import { type Client, connect, startServer, type TestServer } from "./helpers.ts";
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
  /** URLs of the WebSockets the page opened, in order. */
  sockets: string[];
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
  const person: Person = { nick, page, dialogs: [], problems: [], sockets: [] };
  page.on("websocket", (socket) => person.sockets.push(socket.url()));
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

/** The delivered message element whose body is exactly `text`. */
function messageWith(page: Page, text: string): Locator {
  const exact = new RegExp(`^${text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}$`);
  return page.locator("#messages .msg:not(.pending)", {
    has: page.locator(".body", { hasText: exact }),
  });
}

/** The visible text of an element, or "" while it is hidden. */
async function visibleText(locator: Locator): Promise<string> {
  return await locator.isVisible() ? (await locator.textContent() ?? "") : "";
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
    // What was shown stays; the gap is marked where it is; the replay follows it.
    assert.deepEqual(
      await bob.page.locator("#messages .msg, #messages .note.gap").evaluateAll((items) =>
        items.map((li) =>
          li.classList.contains("gap") ? "[gap]" : li.querySelector(".body")?.textContent
        )
      ),
      ["m1", "m2", "m3", "[gap]", "m6", "m7", "m8", "m9", "m10"],
      "the list keeps what it showed, then the gap, then the replay",
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

browserTest("an edit and a delete reach every page, and a later page too", async (world) => {
  const room = "lifecycle";
  const ann = await world.join("ann", room);
  const bob = await world.join("bob", room);
  await say(ann, "frist post");
  await waitForMessage(bob.page, "frist post", "ann");
  await waitForMessage(ann.page, "frist post", "ann");
  await ann.page.locator("#text").fill("a draft that waits");

  await messageWith(ann.page, "frist post").locator("button.tool", { hasText: "Edit" }).click();
  assert.equal(await ann.page.locator("#text").inputValue(), "frist post");
  assert.equal(
    await visibleText(ann.page.locator("#compose-context-text")),
    "Editing your message",
  );
  assert.equal(await ann.page.locator("#send").textContent(), "Save");
  await ann.page.locator("#text").fill("first post");
  await ann.page.locator("#text").press("Enter");
  for (const page of [bob.page, ann.page]) {
    await waitForMessage(page, "first post", "ann");
    const edited = messageWith(page, "first post");
    assert.equal(await visibleText(edited.locator(".edited")), "(edited)");
  }
  assert.equal(
    await ann.page.locator("#text").inputValue(),
    "a draft that waits",
    "the draft comes back after the edit",
  );
  assert.equal(await ann.page.locator("#compose-context").isHidden(), true);
  const id = await messageWith(bob.page, "first post").getAttribute("data-id");
  assert.ok(id, "the message has an id");

  await messageWith(ann.page, "first post").locator("button.tool", { hasText: "Delete" }).click();
  for (const page of [ann.page, bob.page]) {
    await page.locator(`#messages .msg[data-id="${id}"] .tombstone`).waitFor();
  }
  await say(bob, "after the delete");
  await waitForMessage(ann.page, "after the delete", "bob");
  const expected = [[id, "ann", "message deleted"], [null, "bob", "after the delete"]];
  const rows = (list: Shown[]) => list.map((m, i) => [i === 0 ? m.id : null, m.from, m.text]);
  // Edit and delete entries change their target; they are never rows of their own.
  assert.deepEqual(rows(await shown(bob.page)), expected);
  assert.equal(
    await ann.page.locator(`#messages .msg[data-id="${id}"] button.tool`).count(),
    0,
    "a tombstone has no controls",
  );

  // Carol's replay holds the tombstone, the edit (of a deleted message) and the delete.
  const carol = await world.join("carol", room);
  await waitForMessage(carol.page, "after the delete", "bob");
  assert.deepEqual(rows(await shown(carol.page)), expected);
  // Bob's page keeps the tombstone across a reload.
  await bob.page.reload();
  await waitForStatus(bob.page, "open");
  await waitForMessage(bob.page, "after the delete", "bob");
  assert.deepEqual(rows(await shown(bob.page)), expected);
  assertNoProblems(ann, bob, carol);
});

browserTest(
  "only one's own messages offer Edit and Delete, and refusals read as sentences",
  async (world) => {
    const ann = await world.join("ann");
    const bob = await world.join("bob");
    await say(ann, "ann's words");
    await waitForMessage(bob.page, "ann's words", "ann");
    await say(bob, "bob's words");
    await waitForMessage(bob.page, "bob's words", "bob");

    const theirs = messageWith(bob.page, "ann's words");
    assert.deepEqual(await theirs.locator("button.tool").allTextContents(), ["Reply"]);
    const mine = messageWith(bob.page, "bob's words");
    assert.deepEqual(await mine.locator("button.tool").allTextContents(), [
      "Reply",
      "Edit",
      "Delete",
    ]);

    // What the page does not offer, the server refuses; the page says so plainly.
    const annId = Number(await theirs.getAttribute("data-id"));
    await bob.page.evaluate((id) => {
      const parley = (globalThis as unknown as { parley: { ws: WebSocket } }).parley;
      parley.ws.send(JSON.stringify({ type: "edit", cid: "forged-1", id, text: "hacked" }));
    }, annId);
    await bob.page.locator("#notice-text", { hasText: "You can only change your own messages." })
      .waitFor();
    await bob.page.evaluate(() => {
      const parley = (globalThis as unknown as { parley: { ws: WebSocket } }).parley;
      parley.ws.send(JSON.stringify({ type: "delete", cid: "forged-2", id: 999 }));
    });
    await bob.page.locator("#notice-text", { hasText: "no longer in the room's history" })
      .waitFor();
    await say(ann, "still mine");
    await waitForMessage(bob.page, "still mine", "ann");
    assert.equal(await messageWith(bob.page, "ann's words").locator(".edited").isHidden(), true);
    assert.equal(await messageWith(ann.page, "ann's words").count(), 1, "ann's text is unchanged");
    assertNoProblems(ann, bob);
  },
);

browserTest("typing shows under the list and ends when the message comes", async (world) => {
  const room = "typing";
  const ann = await world.join("ann", room);
  const bob = await world.join("bob", room);
  const carol = await world.join("carol", room);
  await bob.page.locator("#members li", { hasText: "carol" }).waitFor();
  assert.equal(await bob.page.locator("#typing").getAttribute("aria-live"), "polite");

  await ann.page.locator("#text").fill("hel");
  await bob.page.locator("#typing", { hasText: "ann is typing…" }).waitFor();
  await carol.page.locator("#text").fill("wait");
  const carolTypedAt = Date.now();
  await bob.page.locator("#typing", { hasText: "ann and carol are typing…" }).waitFor();
  // Nobody is told about themselves.
  await ann.page.locator("#typing", { hasText: "carol is typing…" }).waitFor();

  await ann.page.locator("#text").fill("hello");
  await ann.page.locator("#text").press("Enter");
  await waitForMessage(bob.page, "hello", "ann");
  const typing = await bob.page.locator("#typing").textContent() ?? "";
  assert.ok(!typing.includes("ann"), `ann's message ends her indicator: "${typing}"`);
  // Carol's lasts 6 s from her signal; on a very slow run it may be gone already.
  if (Date.now() - carolTypedAt < 5_000) assert.equal(typing, "carol is typing…");
  assertNoProblems(ann, bob, carol);
});

/** Text messages seeded for the scroll-back test; the join replay holds 50 entries. */
const SEEDED = 120;

browserTest(
  "scrolling back loads every older message once, in order, up to the start",
  async (world) => {
    const room = "archive";
    const seeder = await connect(`${world.server.ws}/${room}`, "parley.v1");
    try {
      seeder.send({ type: "hello", nick: "seeder" });
      await seeder.until("welcome");
      let sent = 0;
      for (let i = 1; i <= SEEDED; i++) {
        seeder.send({ type: "message", cid: `seed-${i}`, text: `seed ${i}` });
        sent++;
        if (i === 10) {
          seeder.send({
            type: "file",
            cid: "seed-file",
            name: "notes.txt",
            mime: "text/plain",
            size: 5,
          });
          seeder.send(new TextEncoder().encode("notes"));
          sent++;
        }
      }
      seeder.send({ type: "message", cid: "seed-reply", text: "a late reply", reply_to: 1 });
      sent++;
      for (let acked = 0; acked < sent; acked++) await seeder.until("ack");
    } finally {
      await seeder.close();
    }
    const fileRow = "notes.txt (5 B): file (not loaded)";
    const expected = [
      ...Array.from({ length: 10 }, (_, i) => `seed ${i + 1}`),
      fileRow,
      ...Array.from({ length: SEEDED - 10 }, (_, i) => `seed ${i + 11}`),
      "a late reply",
    ];

    const bob = await world.join("bob", room);
    const page = bob.page;
    await waitForMessage(page, "a late reply", "seeder");
    const firstShown = (await shown(page))[0].text;
    assert.equal((await shown(page)).length, 50, "the join replay is the last 50 messages");
    const reply = messageWith(page, "a late reply").locator(".quote");
    assert.equal(await visibleText(reply), "In reply to an earlier message");

    // Scrolling to the top asks for the page before; what was in view stays put.
    const offsetBefore = await page.evaluate((text) => {
      const list = document.getElementById("messages")!;
      list.scrollTop = 0;
      const li = [...list.querySelectorAll(".msg")].find((item) =>
        item.querySelector(".body")?.textContent === text
      )!;
      return li.getBoundingClientRect().top - list.getBoundingClientRect().top;
    }, firstShown);
    await waitForMessage(page, expected[expected.indexOf(firstShown) - 1]);
    const offsetAfter = await page.evaluate((text) => {
      const list = document.getElementById("messages")!;
      const li = [...list.querySelectorAll(".msg")].find((item) =>
        item.querySelector(".body")?.textContent === text
      )!;
      return li.getBoundingClientRect().top - list.getBoundingClientRect().top;
    }, firstShown);
    assert.ok(
      Math.abs(offsetAfter - offsetBefore) <= 2,
      `the message in view stays in place: ${offsetBefore} px, then ${offsetAfter} px`,
    );

    // The button does the same, for keyboards; pressed until the start is reached.
    const loadOlder = page.locator("#load-older");
    const start = page.locator("#history-start");
    const settled = () =>
      page.waitForFunction(
        () => {
          const button = document.getElementById("load-older") as HTMLButtonElement;
          return button.hidden || !button.disabled;
        },
        null,
        { timeout: TIMEOUT_MS },
      );
    for (let presses = 0; !(await start.isVisible()); presses++) {
      assert.ok(presses < 5, "the start of history is reached within a few pages");
      await settled();
      if (await start.isVisible()) break;
      // A click without scrolling: scrolling to the top would load on its own.
      await loadOlder.dispatchEvent("click");
      await settled();
    }
    assert.equal(await visibleText(start), "Start of history");
    assert.equal(await loadOlder.isHidden(), true);
    assert.deepEqual((await shown(page)).map((m) => m.text), expected);
    assert.equal(await visibleText(reply), "In reply to seeder: seed 1", "the quote fills in");
    assertNoProblems(bob);
  },
  { rateBurst: 500 },
);

browserTest("a reply quotes the message it answers", async (world) => {
  const ann = await world.join("ann");
  const bob = await world.join("bob");
  await say(ann, "what's for lunch?");
  await waitForMessage(bob.page, "what's for lunch?", "ann");

  const question = messageWith(bob.page, "what's for lunch?");
  await question.locator("button.tool", { hasText: "Reply" }).click();
  const context = bob.page.locator("#compose-context-text");
  assert.equal(await visibleText(context), "Replying to ann: what's for lunch?");
  await bob.page.locator("#compose-cancel").click();
  assert.equal(await bob.page.locator("#compose-context").isHidden(), true, "cancel ends it");

  await question.locator("button.tool", { hasText: "Reply" }).click();
  await say(bob, "pizza");
  assert.equal(await bob.page.locator("#compose-context").isHidden(), true, "sending ends it");
  for (const page of [ann.page, bob.page]) {
    await waitForMessage(page, "pizza", "bob");
    assert.equal(
      await visibleText(messageWith(page, "pizza").locator(".quote")),
      "In reply to ann: what's for lunch?",
    );
  }
  await say(ann, "no reply here");
  await waitForMessage(bob.page, "no reply here", "ann");
  assert.equal(await messageWith(bob.page, "no reply here").locator(".quote").isHidden(), true);
  assertNoProblems(ann, bob);
});

// ---------------------------------------------------------------- large rooms

/** A phone's viewport: the members list is then behind its toggle. */
const PHONE = { width: 390, height: 844 };
const DESKTOP = { width: 900, height: 640 };

/**
 * Brings members into a room as a script would: one rich connection each,
 * without batches, joined in groups.
 *
 * @returns The connections, in the order of `nicks`; all are closed again on failure.
 */
async function joinCrowd(server: TestServer, room: string, nicks: string[]): Promise<Client[]> {
  const clients: Client[] = [];
  const GROUP = 25;
  try {
    for (let start = 0; start < nicks.length; start += GROUP) {
      const joins = nicks.slice(start, start + GROUP).map(async (nick, i) => {
        const client = await connect(`${server.ws}/${room}`, "parley.v1");
        clients[start + i] = client;
        client.send({ type: "hello", nick, batch: false });
        await client.until("welcome");
      });
      const failed = (await Promise.allSettled(joins)).find((r) => r.status === "rejected");
      if (failed) throw (failed as PromiseRejectedResult).reason;
    }
    return clients;
  } catch (error) {
    await Promise.all(clients.filter(Boolean).map((client) => client.close()));
    throw error;
  }
}

/** Opens the chat page of `room` at phone size and joins as `nick`. */
async function joinOnPhone(world: World, nick: string, room: string): Promise<Person> {
  const page = await world.newPage(nick);
  await page.setViewportSize(PHONE);
  const person = watch(nick, page);
  await page.goto(`${world.server.url}/${room}`);
  await page.locator("#nick-input").fill(nick);
  await page.locator("#nick-input").press("Enter");
  await waitForStatus(page, "open");
  await page.locator("#members li.me", { hasText: nick }).waitFor({ state: "attached" });
  return person;
}

/** Waits until the visible member count reads `Members (count)`. */
async function waitForMemberCount(page: Page, count: string): Promise<void> {
  await page.waitForFunction(
    (expected) =>
      [...document.querySelectorAll<HTMLElement>("#members-toggle, .members-title")].some((e) =>
        e.checkVisibility() && e.textContent?.replace(/\s+/g, " ").trim() === expected
      ),
    `Members (${count})`,
    { timeout: TIMEOUT_MS },
  );
}

/** Presses "Show more members" until the list is complete. */
async function showAllMembers(page: Page): Promise<number> {
  const more = page.locator("#members-more");
  const settled = () =>
    page.waitForFunction(
      () => {
        const button = document.getElementById("members-more") as HTMLButtonElement;
        return button.hidden || !button.disabled;
      },
      null,
      { timeout: TIMEOUT_MS },
    );
  let presses = 0;
  for (await settled(); await more.isVisible(); await settled()) {
    assert.ok(presses < 10, "the list is complete within a few pages");
    await more.click();
    presses++;
  }
  return presses;
}

/** The names of the members list, as shown. */
function memberNames(page: Page): Promise<string[]> {
  return page.locator("#members li .member-name").allTextContents();
}

/** The quiet lines of the conversation (joins, leaves, removals). */
function notes(page: Page): Promise<string[]> {
  return page.locator("#messages .note .note-text").allTextContents();
}

/** Members a script brings into the room of the member-list test. */
const CROWD = 150;

browserTest(
  "a page in a room of 151 shows the count and lists every member once, page by page",
  async (world) => {
    const room = "crowd";
    const nicks = Array.from(
      { length: CROWD },
      (_, i) => `guest-${String(i + 1).padStart(3, "0")}`,
    );
    const guests = await joinCrowd(world.server, room, nicks);
    let newcomer: Client | undefined;
    try {
      const ann = await joinOnPhone(world, "ann", room);
      const page = ann.page;
      await waitForMemberCount(page, "151");
      assert.ok(
        (await memberNames(page)).length < CROWD + 1,
        "the welcome does not list everyone",
      );
      assert.equal(await page.locator("#members").isVisible(), false, "the list starts closed");

      // Opening the list asks for the first page; the button brings the rest.
      await page.locator("#members-toggle").click();
      assert.equal(await page.locator("#members-toggle").getAttribute("aria-expanded"), "true");
      const presses = await showAllMembers(page);
      assert.ok(presses >= 1, `"Show more members" was needed (${presses} presses)`);
      const listed = await memberNames(page);
      assert.equal(listed.length, CROWD + 1, "every member is listed");
      assert.deepEqual([...listed].sort(), [...nicks, "ann"].sort(), "each of them exactly once");
      await waitForMemberCount(page, "151");
      assert.deepEqual(await notes(page), [], "members who were there before are not announced");

      // Presence keeps the list right: two leave, one comes.
      await guests[0].close();
      await guests[1].close();
      newcomer = (await joinCrowd(world.server, room, ["newcomer"]))[0];
      await waitForMemberCount(page, "150");
      await page.locator("#members li", { hasText: "newcomer" }).waitFor();
      await page.waitForFunction(
        () => document.querySelectorAll("#members li").length === 150,
        null,
        { timeout: TIMEOUT_MS },
      );
      const after = await memberNames(page);
      assert.equal(new Set(after).size, 150, "no member is listed twice");
      assert.ok(!after.includes("guest-001") && !after.includes("guest-002"), "leavers are gone");
      assert.equal(await page.locator("#members-more").isHidden(), true, "nothing more to list");
      await page.locator("#messages .note", { hasText: "newcomer joined" }).waitFor();
      const said = (await notes(page)).join("\n");
      assert.match(said, /guest-001/, "the leaves are said quietly");
      assert.match(said, /guest-002/);

      // On a desktop the list is always shown, under its count.
      await page.setViewportSize(DESKTOP);
      await waitForMemberCount(page, "150");
      assert.equal(await page.locator("#members-toggle").isVisible(), false);
      assertNoProblems(ann);
    } finally {
      await Promise.all([...guests, ...(newcomer ? [newcomer] : [])].map((c) => c.close()));
    }
  },
);

/** Messages of the burst test. */
const BURST = 200;

browserTest(
  "a burst of 200 messages and 2 files reaches the page in order, in batch frames",
  async (world) => {
    const room = "burst";
    const page = await world.newPage("ann");
    const ann = watch("ann", page);
    /** Events in each batch frame the page received; whether its hello asked for them. */
    const batches: number[] = [];
    let askedForBatches = false;
    page.on("websocket", (socket) => {
      socket.on("framesent", ({ payload }) => {
        if (typeof payload !== "string") return;
        const envelope = JSON.parse(payload);
        if (envelope.type === "hello") askedForBatches = envelope.batch === true;
      });
      socket.on("framereceived", ({ payload }) => {
        if (typeof payload !== "string") return;
        const envelope = JSON.parse(payload);
        if (envelope.type === "batch") batches.push(envelope.events.length);
      });
    });
    await openChat(ann, world.server, room);
    assert.equal(askedForBatches, true, "the page says batch: true in its hello");

    const picture = await makePng(16);
    const sender = await connect(`${world.server.ws}/${room}`, "parley.v1");
    const expected: string[] = [];
    try {
      sender.send({ type: "hello", nick: "burst", batch: false });
      await sender.until("welcome");
      let sent = 0;
      for (let i = 1; i <= BURST; i++) {
        sender.send({ type: "message", cid: `burst-${i}`, text: `burst ${i}` });
        expected.push(`burst ${i}`);
        sent++;
        if (i === 70) {
          sender.send({
            type: "file",
            cid: "burst-picture",
            name: "burst.png",
            mime: "image/png",
            size: picture.length,
          });
          sender.send(picture);
          expected.push(`burst.png (${picture.length} B)`);
          sent++;
        }
        if (i === 140) {
          sender.send({
            type: "file",
            cid: "burst-notes",
            name: "notes.txt",
            mime: "text/plain",
            size: 5,
          });
          sender.send(new TextEncoder().encode("notes"));
          expected.push("notes.txt (5 B)");
          sent++;
        }
      }
      for (let acked = 0; acked < sent; acked++) await sender.until("ack");
    } finally {
      await sender.close();
    }

    await waitForMessage(page, `burst ${BURST}`, "burst");
    await waitForImage(page, "burst.png");
    const list = await shown(page);
    assert.deepEqual(list.map((m) => m.text), expected, "every message once, in order");
    assert.ok(list.every((m) => m.from === "burst" && !m.pending && m.id !== null));
    const ids = list.map((m) => Number(m.id));
    assert.ok(ids.every((id, i) => i === 0 || id > ids[i - 1]), "ids increase");
    // Each file got its own bytes, though several may share one batch frame.
    const [download] = await Promise.all([
      page.waitForEvent("download"),
      page.locator("#messages .msg a", { hasText: "notes.txt" }).click(),
    ]);
    const saved = await download.path();
    assert.equal(await Deno.readTextFile(saved), "notes");
    await download.delete();
    assert.ok(batches.length >= 1, "the page received batch frames");
    assertNoProblems(ann);
  },
  { rateBurst: 500 },
);

browserTest(
  "in a large room the page follows the member count without a line per member",
  async (world) => {
    // Above this many members the server sends only the count, at most once a second.
    world.server.app.hub.options.largeRoom = 3;
    const room = "large";
    const guests = await joinCrowd(world.server, room, ["gail", "gus", "gwen"]);
    let late: Client[] = [];
    try {
      const ann = await world.join("ann", room);
      const page = ann.page;
      await waitForMemberCount(page, "4");
      assert.deepEqual([...await memberNames(page)].sort(), ["ann", "gail", "gus", "gwen"]);

      late = await joinCrowd(world.server, room, ["hal"]);
      await waitForMemberCount(page, "5");
      // Who came is not said, and the list offers to catch up.
      const more = page.locator("#members-more");
      await more.waitFor();
      await more.click();
      await page.locator("#members li", { hasText: "hal" }).waitFor();
      await page.waitForFunction(
        () => (document.getElementById("members-more") as HTMLElement).hidden,
        null,
        { timeout: TIMEOUT_MS },
      );
      assert.deepEqual([...await memberNames(page)].sort(), ["ann", "gail", "gus", "gwen", "hal"]);

      // A leave lowers the count; listing again drops the leaver.
      await guests[0].close();
      await waitForMemberCount(page, "4");
      await more.click();
      await page.waitForFunction(
        () =>
          ![...document.querySelectorAll("#members li")].some((li) => li.textContent === "gail"),
        null,
        { timeout: TIMEOUT_MS },
      );
      assert.deepEqual([...await memberNames(page)].sort(), ["ann", "gus", "gwen", "hal"]);
      assert.deepEqual(await notes(page), [], "no line per member in a large room");

      // Messages still flow as ever.
      late[0].send({ type: "message", cid: "hal-1", text: "hello, large room" });
      await waitForMessage(page, "hello, large room", "hal");
      assertNoProblems(ann);
    } finally {
      await Promise.all([...guests, ...late].map((client) => client.close()));
    }
  },
);

// ---------------------------------------------------------------- identity and moderation

/** The signing secret of the token-mode tests: 32 bytes or more, as the server requires. */
const AUTH_SECRET = "browser-test-secret-that-is-long-enough-0123456789";
const TOKEN_MODE = { auth: "token", authSecret: AUTH_SECRET } as const;

/** Claims of a test token; `ttl` in seconds, negative for one that expired. */
interface TokenClaims {
  sub: string;
  name?: string;
  rooms?: string[];
  read?: string[];
  mod?: string[];
  ttl?: number;
  secret?: string;
}

/** Signs an HS256 token as an identity provider would. */
function signToken({ ttl = 600, secret = AUTH_SECRET, ...claims }: TokenClaims): Promise<string> {
  return new SignJWT({ ...claims })
    .setProtectedHeader({ alg: "HS256" })
    .setIssuedAt()
    .setExpirationTime(Math.floor(Date.now() / 1000) + ttl)
    .sign(new TextEncoder().encode(secret));
}

/** Opens an invite link (`/room#token=...`) in a fresh context, without waiting to join. */
async function openInvite(world: World, label: string, room: string, token: string) {
  const person = watch(label, await world.newPage(label));
  const response = await person.page.goto(`${world.server.url}/${room}#token=${token}`);
  assert.equal(response?.status(), 200);
  return person;
}

/** Opens an invite link and waits until the page has joined as `name`. */
async function joinInvite(world: World, name: string, room: string, token: string) {
  const person = await openInvite(world, name, room, token);
  await waitForStatus(person.page, "open");
  await person.page.locator("#members li.me", { hasText: name }).waitFor();
  return person;
}

/** Waits until the page shows why it was refused, and returns the words. */
async function waitForRefusal(page: Page, words: string | RegExp): Promise<string> {
  const text = page.locator("#refusal-text");
  await page.locator("#refusal", { has: page.locator("#refusal-text", { hasText: words }) })
    .waitFor();
  return await text.textContent() ?? "";
}

/** Asserts that the page opens no WebSocket for `ms` after its last one. */
async function assertNoReconnect(person: Person, ms = 2_000): Promise<void> {
  const before = person.sockets.length;
  await new Promise((resolve) => setTimeout(resolve, ms));
  assert.equal(
    person.sockets.length,
    before,
    `${person.nick}'s page opened no new connection in ${ms} ms`,
  );
  assert.equal(await person.page.locator("#status").textContent(), "closed");
  assert.equal(await person.page.locator("#reconnect").isHidden(), true, "no Reconnect button");
  assert.equal(await person.page.locator("#try-again").isVisible(), true, "Try again is offered");
}

/** Whether the nickname dialog is open. */
function nickDialogOpen(page: Page): Promise<boolean> {
  return page.locator("#nick-dialog").evaluate((dialog) => (dialog as HTMLDialogElement).open);
}

browserTest(
  "an invite link joins under the token's name, leaves the address and survives a reload",
  async (world) => {
    const token = await signToken({ sub: "u-ann", name: "Ann Lee", rooms: ["team"] });
    const ann = await joinInvite(world, "Ann Lee", "team", token);
    const page = ann.page;
    assert.equal(page.url(), `${world.server.url}/team`, "the token left the address bar");
    assert.equal(await nickDialogOpen(page), false, "no nickname is asked for");
    assert.equal(await page.locator("#nick-label").textContent(), "Ann Lee");
    assert.equal(await page.locator("#nick-button").isDisabled(), true, "the name cannot change");
    assert.equal(
      await page.evaluate(() =>
        (globalThis as unknown as { parley: { me: { verified?: boolean } } }).parley.me.verified
      ),
      true,
    );

    // A rename is refused without a cid, and only the rename: the connection stays.
    await page.evaluate(() => {
      const parley = (globalThis as unknown as { parley: { ws: WebSocket } }).parley;
      parley.ws.send(JSON.stringify({ type: "nick", nick: "Annie" }));
    });
    await page.locator("#notice-text", { hasText: "Your name comes from your invite link" })
      .waitFor();
    assert.equal(await page.locator("#refusal").isHidden(), true, "a refused rename is no refusal");

    await say(ann, "hello from an invite");
    await waitForMessage(page, "hello from an invite", "Ann Lee");
    assert.equal(await page.locator("#status").textContent(), "open");
    assert.equal(ann.sockets.length, 1, "the refused rename did not end the connection");
    // A message posted through the server API carries a bot tag; a person's does not.
    await world.server.app.hub.post("team", { text: "build 42 passed", name: "ci" });
    await waitForMessage(page, "build 42 passed", "ci");
    assert.equal(
      await visibleText(messageWith(page, "build 42 passed").locator(".bot-tag")),
      "bot",
    );
    assert.equal(
      await messageWith(page, "hello from an invite").locator(".bot-tag").isHidden(),
      true,
    );

    // The token was kept: a reload joins again, still without a prompt or a fragment.
    await page.reload();
    await waitForStatus(page, "open");
    await page.locator("#members li.me", { hasText: "Ann Lee" }).waitFor();
    await waitForMessage(page, "build 42 passed", "ci");
    assert.equal(await nickDialogOpen(page), false);
    assert.equal(page.url(), `${world.server.url}/team`);
    assert.equal(ann.sockets.length, 2, "one connection per load");

    // A room the invite does not name is refused; going back to one it names joins.
    await page.locator("#room-input").fill("elsewhere");
    await page.locator("#room-input").press("Enter");
    await waitForRefusal(page, "Your invite does not include this room.");
    await page.goBack();
    await page.waitForURL(`${world.server.url}/team`);
    await waitForStatus(page, "open");
    await page.locator("#members li.me", { hasText: "Ann Lee" }).waitFor();
    assert.equal(
      await page.locator("#refusal").isHidden(),
      true,
      "the refusal was for the other room",
    );
    assertNoProblems(ann);
  },
  TOKEN_MODE,
);

browserTest("an invite that expires while connected says so and stops", async (world) => {
  // Whole seconds: it expires 5 to 6 s from now, after the page has joined even on a busy machine.
  const token = await signToken({ sub: "u-tim", name: "tim", rooms: ["team"], ttl: 6 });
  const tim = await joinInvite(world, "tim", "team", token);
  await waitForRefusal(tim.page, "Your access expired. Open a fresh invite link to continue.");
  await assertNoReconnect(tim);
  assert.equal(tim.sockets.length, 1);
  assertNoProblems(tim);
}, TOKEN_MODE);

browserTest(
  "an expired, forged or missing invite is refused in plain words and not retried",
  async (world) => {
    const expired = await signToken({ sub: "u-old", name: "old", rooms: ["team"], ttl: -600 });
    const forged = await signToken({
      sub: "u-eve",
      name: "eve",
      rooms: ["team"],
      secret: "not-the-server-secret-but-just-as-long-0123456789",
    });
    const invalid = "Your invite link has expired or is not valid. Ask for a new link.";
    const late = await openInvite(world, "expired", "team", expired);
    const eve = await openInvite(world, "forged", "team", forged);
    // Without any token the page cannot know it needs one: it asks for a nickname first.
    const bare = watch("no-token", await world.newPage("no-token"));
    await bare.page.goto(`${world.server.url}/team`);
    await bare.page.locator("#nick-input").fill("walk-in");
    await bare.page.locator("#nick-input").press("Enter");

    await waitForRefusal(late.page, invalid);
    await waitForRefusal(eve.page, invalid);
    await waitForRefusal(bare.page, "This room needs an invite link. Ask for one to join.");
    assert.equal(
      late.page.url(),
      `${world.server.url}/team`,
      "a refused token leaves the address too",
    );
    await Promise.all([late, eve, bare].map((person) => assertNoReconnect(person)));
    for (const person of [late, eve, bare]) {
      assert.equal(person.sockets.length, 1, `${person.nick}: one connection, then none`);
    }

    // "Try again" connects once more, and stops again when refused again.
    await late.page.locator("#try-again").click();
    await waitForRefusal(late.page, invalid);
    await assertNoReconnect(late, 1_000);
    assert.equal(late.sockets.length, 2, "Try again made exactly one connection");
    assertNoProblems(late, eve, bare);
  },
  TOKEN_MODE,
);

browserTest(
  "a moderator deletes any message and removes a member with a ban",
  async (world) => {
    const modToken = await signToken({ sub: "u-mo", name: "Mo", rooms: ["team"], mod: ["team"] });
    const annToken = await signToken({ sub: "u-ann", name: "ann", rooms: ["team"] });
    const mo = await joinInvite(world, "Mo", "team", modToken);
    const ann = await joinInvite(world, "ann", "team", annToken);
    await mo.page.locator("#members li", { hasText: "ann" }).waitFor();

    await say(ann, "buy cheap pills");
    await waitForMessage(mo.page, "buy cheap pills", "ann");
    await say(mo, "please don't");
    await waitForMessage(ann.page, "please don't", "Mo");
    const spam = messageWith(mo.page, "buy cheap pills");
    assert.deepEqual(await spam.locator("button.tool").allTextContents(), ["Reply", "Delete"]);
    assert.deepEqual(
      await messageWith(ann.page, "please don't").locator("button.tool").allTextContents(),
      ["Reply"],
      "a member deletes only their own",
    );
    const id = await spam.getAttribute("data-id");
    await spam.locator("button.tool", { hasText: "Delete" }).click();
    for (const page of [mo.page, ann.page]) {
      await page.locator(`#messages .msg[data-id="${id}"] .tombstone`, {
        hasText: "message removed by a moderator",
      }).waitFor();
    }

    // Remove controls: for the moderator, next to everyone but themselves.
    assert.equal(await ann.page.locator("#members button.member-remove").count(), 0);
    assert.equal(await mo.page.locator("#members li.me button.member-remove").count(), 0);
    const annItem = mo.page.locator("#members li", { hasText: "ann" });
    await annItem.locator("button.member-remove").click();
    const form = annItem.locator("#remove-form");
    await form.waitFor();
    assert.equal(await mo.page.locator("#remove-who").textContent(), "ann");
    await form.locator("#remove-minutes").selectOption("10");
    await form.locator("#remove-reason").fill("spam");
    const sockets = ann.sockets.length;
    await form.locator("button[type=submit]").click();

    await waitForRefusal(ann.page, "You were removed from this room by a moderator: spam");
    await assertNoReconnect(ann);
    assert.equal(ann.sockets.length, sockets, "the removed page did not reconnect");
    const note = mo.page.locator("#messages .note .note-text", { hasText: "was removed" });
    await note.waitFor();
    assert.match(await note.textContent() ?? "", /^ann was removed by Mo until .+ \(spam\)$/);
    await mo.page.waitForFunction(
      () => document.querySelectorAll("#members li").length === 1,
      null,
      { timeout: TIMEOUT_MS },
    );
    assert.equal(await mo.page.locator("#remove-form").isHidden(), true);

    // Trying again meets the ban, said with a local time, and stops again.
    await ann.page.locator("#try-again").click();
    const banned = await waitForRefusal(ann.page, /^You can't join this room until /);
    assert.match(banned, /^You can't join this room until .*\d\d.*\.$/);
    await assertNoReconnect(ann, 1_000);
    assert.equal(ann.sockets.length, sockets + 1, "Try again connected exactly once");
    assertNoProblems(mo, ann);
  },
  TOKEN_MODE,
);

browserTest("a read-only invite shows the room without a message box", async (world) => {
  const writer = await signToken({ sub: "u-wes", name: "wes", rooms: ["team"] });
  const reader = await signToken({ sub: "u-rita", name: "rita", read: ["team"] });
  const wes = await joinInvite(world, "wes", "team", writer);
  const rita = await joinInvite(world, "rita", "team", reader);
  await say(wes, "the plan for today");
  await waitForMessage(rita.page, "the plan for today", "wes");

  const page = rita.page;
  assert.equal(await visibleText(page.locator("#read-only")), "This room is read-only for you");
  assert.equal(await page.locator("#text").isDisabled(), true, "the message box is disabled");
  assert.equal(await page.locator("#send").isDisabled(), true);
  assert.equal(await page.locator("#file").isDisabled(), true, "files cannot be attached");
  assert.equal(await page.locator("#messages button.tool").count(), 0, "no reply, edit or delete");
  assert.equal(await wes.page.locator("#read-only").isHidden(), true);
  assert.equal(await wes.page.locator("#text").isDisabled(), false);

  // What the page does not offer, the server refuses; the page says why.
  await page.evaluate(() => {
    const parley = (globalThis as unknown as { parley: { ws: WebSocket } }).parley;
    parley.ws.send(JSON.stringify({ type: "message", cid: "forged-1", text: "let me in" }));
  });
  await page.locator("#notice-text", { hasText: "This room is read-only for you." }).waitFor();
  await say(wes, "still only mine");
  await waitForMessage(page, "still only mine", "wes");
  assert.equal(await messageWith(wes.page, "let me in").count(), 0, "nothing was posted");
  assert.equal(await page.locator("#status").textContent(), "open", "a refusal is not a kick");
  assertNoProblems(wes, rita);
}, TOKEN_MODE);

browserTest(
  "a nickname taken in another case asks for another one, then joins",
  async (world) => {
    const ann = await world.join("ann");
    assert.equal(
      await ann.page.evaluate(() =>
        (globalThis as unknown as { parley: { me: { verified?: boolean } } }).parley.me.verified
      ),
      false,
      "open mode: nobody is verified",
    );
    const page = await world.newPage("second");
    const second = watch("second", page);
    await page.goto(world.server.url);
    await page.locator("#nick-input").fill("ANN");
    await page.locator("#nick-input").press("Enter");
    await page.locator("#nick-error", {
      hasText: "That name is taken in this room; choose another.",
    }).waitFor();
    assert.equal(await nickDialogOpen(page), true, "the prompt stays for another name");
    assert.equal(await page.locator("#nick-cancel").isHidden(), true, "no way around it");
    assert.equal(await page.locator("#nick-input").inputValue(), "ANN");
    assert.equal(await page.locator("#members li").count(), 0, "not joined");

    // Invisible characters are refused before asking the server.
    await page.locator("#nick-input").fill("bo\u200bb");
    await page.locator("#nick-input").press("Enter");
    await page.locator("#nick-error", { hasText: "invisible characters" }).waitFor();

    await page.locator("#nick-input").fill("bob");
    await page.locator("#nick-input").press("Enter");
    await page.locator("#members li.me", { hasText: "bob" }).waitFor();
    await ann.page.locator("#members li", { hasText: "bob" }).waitFor();
    assert.equal(second.sockets.length, 1, "the same connection said hello again");
    await say(second, "hi, I'm bob");
    await waitForMessage(ann.page, "hi, I'm bob", "bob");

    // A rename to a taken name is refused too, and the old name stays.
    await page.locator("#nick-button").click();
    await page.locator("#nick-input").fill("Ann");
    await page.locator("#nick-input").press("Enter");
    await page.locator("#nick-error", { hasText: "taken" }).waitFor();
    await page.locator("#nick-cancel").click();
    assert.equal(await page.locator("#nick-label").textContent(), "bob");
    const names = await ann.page.locator("#members li").allTextContents();
    assert.deepEqual(names.sort(), ["ann", "bob"]);
    assertNoProblems(ann, second);
  },
);
