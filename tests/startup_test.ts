/**
 * Start-up failures, as an operator sees them: `main.ts` (and `serve.ts`)
 * run as child processes, and every failure before listening must be one
 * line on standard error starting with `parley:`, with a non-zero exit code
 * (2 for a setting that cannot work), never a stack trace.
 */
import assert from "node:assert/strict";
import { DEFAULT_CONFIG } from "../lib/config.ts";
import { silentLogger } from "../lib/log.ts";
import { createApp } from "../main.ts";

const root = new URL("..", import.meta.url).pathname;

/** The arguments of `deno task <name>`, after `deno`, as deno.json has them. */
async function taskArgs(name: string): Promise<string[]> {
  const deno = JSON.parse(await Deno.readTextFile(new URL("../deno.json", import.meta.url)));
  const words = (deno.tasks[name] as string).split(" ");
  return words.slice(words.indexOf("deno") + 1);
}

interface Outcome {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * Runs Deno with `args` in the project folder and only `vars` (and what Deno
 * needs to find its cache) in the environment; kills it after 30 s.
 */
async function run(args: string[], vars: Record<string, string>): Promise<Outcome> {
  const cache: Record<string, string> = {};
  for (const name of ["HOME", "DENO_DIR", "XDG_CACHE_HOME"]) {
    const value = Deno.env.get(name);
    if (value !== undefined) cache[name] = value;
  }
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), 30_000);
  try {
    const output = await new Deno.Command(Deno.execPath(), {
      args,
      cwd: root,
      clearEnv: true,
      env: { ...cache, NO_COLOR: "1", ...vars },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
      signal: abort.signal,
    }).output();
    const decoder = new TextDecoder();
    return {
      code: output.code,
      stdout: decoder.decode(output.stdout),
      stderr: decoder.decode(output.stderr),
    };
  } finally {
    clearTimeout(timer);
  }
}

/** Asserts the process exited with `code` and said exactly one line matching `line`. */
function assertOneLine(outcome: Outcome, code: number, line: RegExp): void {
  const context = JSON.stringify(outcome);
  assert.equal(outcome.code, code, context);
  assert.match(outcome.stderr, /^parley: [^\n]+\n$/, context);
  assert.match(outcome.stderr.trimEnd(), line, context);
  assert.doesNotMatch(outcome.stdout, /listening/i, context);
}

Deno.test("start-up: a value that does not parse is one line and exit code 2", async () => {
  const outcome = await run(await taskArgs("start"), { PORT: "abc" });
  assertOneLine(outcome, 2, /^parley: PORT="abc": expected an integer port from 0 to 65535$/);
});

Deno.test("start-up: a KV_PATH that `deno task start` may not open is one line naming it, exit code 2", async () => {
  const outcome = await run(await taskArgs("start"), { ENGINE: "kv", KV_PATH: "/x" });
  assertOneLine(outcome, 2, /^parley: KV_PATH="\/x": expected .*NotCapable/);
});

Deno.test("start-up: a KV_PATH in a missing folder is one line naming it, exit code 2", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/missing/parley.sqlite`;
    const outcome = await run(["run", "-A", "main.ts"], { ENGINE: "kv", KV_PATH: path });
    assertOneLine(outcome, 2, new RegExp(`^parley: KV_PATH=${JSON.stringify(path)}: expected `));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("start-up: a missing TLS certificate file is one line naming it, exit code 2", async () => {
  const outcome = await run(await taskArgs("start"), {
    PORT: "0",
    HOSTNAME: "127.0.0.1",
    TLS_CERT_FILE: "missing-cert.pem",
    TLS_KEY_FILE: "missing-key.pem",
  });
  assertOneLine(outcome, 2, /^parley: TLS_CERT_FILE="missing-cert\.pem": expected .*NotFound/);
});

Deno.test("start-up: a port in use is one line naming PORT, exit code 2", async () => {
  const taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  try {
    const port = String(taken.addr.port);
    const outcome = await run(await taskArgs("start"), { PORT: port, HOSTNAME: "127.0.0.1" });
    assertOneLine(outcome, 2, new RegExp(`^parley: PORT="${port}": expected a free port.*in use`));
  } finally {
    taken.close();
  }
});

Deno.test("start-up: under `deno serve`, a KV_PATH that cannot be opened is one line, exit code 2", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/missing/parley.sqlite`;
    const outcome = await run(
      ["serve", "-A", "--port", "0", "--host", "127.0.0.1", "serve.ts"],
      { KV_PATH: path },
    );
    assertOneLine(outcome, 2, new RegExp(`^parley: KV_PATH=${JSON.stringify(path)}: expected `));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("createApp gives the hub PRESENCE_TTL and PRESENCE_REFRESH", async () => {
  const app = await createApp(
    { ...DEFAULT_CONFIG, logLevel: "silent", presenceTtl: 7, presenceRefresh: 3 },
    silentLogger,
  );
  try {
    assert.equal(app.hub.presenceTtlMs, 7000);
    assert.equal(app.hub.options.presenceRefreshMs, 3000);
  } finally {
    await app.close();
  }
});
