/**
 * The processes of the benchmark suite: the servers it measures (Parley, the
 * Deno baseline, the Node `ws` and Bun peers), a `redis-server` for Parley's
 * redis engine, and the generator, each pinned to its core.
 *
 * @module
 */

/** A server the suite measures. */
export type ServerKind = "parley" | "baseline" | "node" | "bun";

/** How each server is named in the table. */
export const SERVER_LABELS: Record<ServerKind, string> = {
  parley: "Parley",
  baseline: "Deno",
  node: "Node ws",
  bun: "Bun",
};

/** The repository. */
export const ROOT = new URL("../", import.meta.url);
/** The core servers run on. */
export const SERVER_CORE = "0";
/** The core the generator runs on. */
export const GENERATOR_CORE = "1";
/** Raises the descriptor limit as far as allowed, then runs the command. */
const ULIMIT_EXEC = 'ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec "$@"';
/** Parley's limits are for people, not for a benchmark: raise them. */
export const PARLEY_ENV: Record<string, string> = {
  PORT: "0",
  HOSTNAME: "127.0.0.1",
  RATE_LIMIT: "1000000",
  RATE_BURST: "1000000",
  MAX_CONNECTIONS: "100000",
  MAX_CONNECTIONS_PER_IP: "100000",
  LOG_LEVEL: "warn",
};
const PEER_ENV: Record<string, string> = { PORT: "0", HOSTNAME: "127.0.0.1" };
/** Every server prints its address so. */
const LISTENING = /listening on http:\/\/127\.0\.0\.1:(\d+)\//;
/** Where `bench/install_peers.sh` puts `ws` and Bun. */
const PEERS = new URL("bench/.peers/node_modules/", ROOT);

/** How to start one kind of server: the program, its arguments and the executable it runs as. */
interface Launch {
  program: string;
  args: string[];
  env: Record<string, string>;
  /** The real path of the process that serves, to check the pid is the server's. */
  exe: string;
}

/** What `launchOf` found: how to start each server, or why it cannot be. */
const launches = new Map<ServerKind, Launch | string>();

function run(program: string, args: string[]): string | null {
  try {
    const out = new Deno.Command(program, { args, stdout: "piped", stderr: "null" }).outputSync();
    return out.success ? new TextDecoder().decode(out.stdout).trim() : null;
  } catch {
    return null;
  }
}

function exists(path: string | URL): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

/** How to start a server of this kind, or a sentence saying why it cannot be started here. */
export function launchOf(kind: ServerKind): Launch | string {
  const known = launches.get(kind);
  if (known) return known;
  const deno = Deno.realPathSync(Deno.execPath());
  let launch: Launch | string;
  if (kind === "parley") {
    launch = { program: deno, args: ["run", "-A", "main.ts"], env: PARLEY_ENV, exe: deno };
  } else if (kind === "baseline") {
    launch = { program: deno, args: ["run", "-A", "bench/baseline.ts"], env: PEER_ENV, exe: deno };
  } else if (kind === "node") {
    const node = run("node", ["-p", "process.execPath"]);
    if (!node) launch = "Node ws: skipped, node is not on PATH";
    else if (!exists(new URL("ws/package.json", PEERS))) {
      launch = "Node ws: skipped, ws is not installed (bash bench/install_peers.sh)";
    } else {
      launch = {
        program: node,
        args: ["bench/peer_node_ws.mjs"],
        env: PEER_ENV,
        exe: Deno.realPathSync(node),
      };
    }
  } else {
    // The `bun` package's install script puts the binary in place of
    // `bun.exe`; without it the platform package still has it.
    const bun = ["bun/bin/bun.exe", "@oven/bun-linux-x64/bin/bun"]
      .map((path) => new URL(path, PEERS).pathname)
      .find((path) => exists(path) && run(path, ["--version"]) !== null);
    launch = bun
      ? {
        program: bun,
        args: ["bench/peer_bun.ts"],
        env: PEER_ENV,
        exe: Deno.realPathSync(bun),
      }
      : "Bun: skipped, it is not installed (bash bench/install_peers.sh) or does not run here";
  }
  launches.set(kind, launch);
  return launch;
}

/** The version of a server's runtime, for the results. */
export function versionOf(kind: ServerKind): string | null {
  const launch = launchOf(kind);
  if (typeof launch === "string") return null;
  if (kind === "node") {
    const ws = JSON.parse(Deno.readTextFileSync(new URL("ws/package.json", PEERS))).version;
    return `node ${run(launch.program, ["--version"])}, ws ${ws}`;
  }
  if (kind === "bun") return `bun ${run(launch.program, ["--version"])}`;
  return `deno ${Deno.version.deno}`;
}

/** A running server. */
export interface Server {
  child: Deno.ChildProcess;
  pid: number;
  port: number;
  /** The end of its standard error, for failures. */
  stderr(): string;
}

/** Collects a stream's text, keeping only the end, and hands over each line. */
export function drain(stream: ReadableStream<Uint8Array>, onLine?: (line: string) => void) {
  let tail = "";
  let pending = "";
  const decoder = new TextDecoder();
  const done = (async () => {
    for await (const bytes of stream) {
      const chunk = decoder.decode(bytes, { stream: true });
      tail = (tail + chunk).slice(-4000);
      if (!onLine) continue;
      pending += chunk;
      const lines = pending.split("\n");
      pending = lines.pop()!;
      for (const line of lines) onLine(line);
    }
  })().catch(() => {});
  return { tail: () => tail, done };
}

/** A command on one core, with the descriptor limit raised. */
export function pinned(
  core: string,
  program: string,
  args: string[],
  env: Record<string, string>,
  signal?: AbortSignal,
): Deno.Command {
  return new Deno.Command("taskset", {
    signal,
    args: ["-c", core, "bash", "-c", ULIMIT_EXEC, "bash", program, ...args],
    cwd: ROOT,
    env,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  });
}

/** Starts a server on the server's core and waits until it listens. */
export async function startServer(
  kind: ServerKind,
  extraEnv: Record<string, string> = {},
): Promise<Server> {
  const launch = launchOf(kind);
  if (typeof launch === "string") throw new Error(launch);
  const env = { ...launch.env, ...extraEnv };
  const child = pinned(SERVER_CORE, launch.program, launch.args, env).spawn();
  const err = drain(child.stderr);
  let resolvePort: (port: number) => void;
  const port = new Promise<number>((resolve) => resolvePort = resolve);
  const out = drain(child.stdout, (line) => {
    const match = LISTENING.exec(line);
    if (match) resolvePort(Number(match[1]));
  });
  let timer: ReturnType<typeof setTimeout> | undefined;
  const failed = Promise.race([
    child.status.then((s) => `exited with code ${s.code}`),
    new Promise<string>((resolve) => {
      timer = setTimeout(() => resolve("did not listen within 30 s"), 30_000);
    }),
  ]);
  const outcome = await Promise.race([port, failed]);
  clearTimeout(timer);
  if (typeof outcome === "string") {
    try {
      child.kill("SIGKILL");
    } catch {
      // already gone
    }
    await Promise.all([child.status, out.done, err.done]);
    throw new Error(`Cannot start ${kind}: it ${outcome}: ${err.tail() || out.tail()}`);
  }
  // taskset and bash exec into the server, so the child's pid is the server's.
  const exe = Deno.readLinkSync(`/proc/${child.pid}/exe`);
  if (exe !== launch.exe) {
    child.kill("SIGKILL");
    throw new Error(`Cannot measure ${kind}: process ${child.pid} is ${exe}, not ${launch.exe}`);
  }
  return { child, pid: child.pid, port: outcome, stderr: err.tail };
}

/** Kills a server and waits for it to exit. */
export async function stopServer(server: { child: Deno.ChildProcess }): Promise<void> {
  try {
    server.child.kill("SIGKILL");
  } catch {
    // already gone
  }
  await server.child.status;
}

/** A `redis-server` for one run: empty, saving nothing, on the server's core. */
export interface Redis {
  child: Deno.ChildProcess;
  pid: number;
  url: string;
  dir: string;
}

function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr as Deno.NetAddr;
  listener.close();
  return port;
}

async function answersPing(port: number): Promise<boolean> {
  let conn: Deno.TcpConn | undefined;
  try {
    conn = await Deno.connect({ hostname: "127.0.0.1", port });
    await conn.write(new TextEncoder().encode("PING\r\n"));
    const buffer = new Uint8Array(16);
    const n = await conn.read(buffer);
    return n !== null && new TextDecoder().decode(buffer.subarray(0, n)).startsWith("+PONG");
  } catch {
    return false;
  } finally {
    conn?.close();
  }
}

/**
 * Starts `redis-server` on a free port, on the generator's core: Redis is a
 * service Parley uses, elsewhere in production, so it must not take the
 * server's core. (A burst leaves the generator's core mostly idle.)
 */
export async function startRedis(): Promise<Redis> {
  const dir = await Deno.makeTempDir({ prefix: "parley-bench-redis-" });
  const port = freePort();
  const child = new Deno.Command("taskset", {
    args: ["-c", GENERATOR_CORE, "redis-server", "--port", String(port), "--bind", "127.0.0.1"]
      .concat(["--save", "", "--appendonly", "no", "--dir", dir]),
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  let exited = false;
  child.status.then(() => exited = true);
  const end = performance.now() + 5000;
  while (!await answersPing(port)) {
    if (exited || performance.now() > end) {
      await stopRedis({ child, pid: child.pid, url: "", dir });
      throw new Error(
        `Cannot start redis-server on port ${port}: ${exited ? "it exited" : "no answer in 5 s"}`,
      );
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  return { child, pid: child.pid, url: `redis://127.0.0.1:${port}`, dir };
}

/** Kills a run's `redis-server` and removes its directory. */
export async function stopRedis(redis: Redis): Promise<void> {
  await stopServer(redis);
  await Deno.remove(redis.dir, { recursive: true }).catch(() => {});
}

/** Whether `redis-server` runs here, or why not. */
export function redisMissing(): string | undefined {
  return run("redis-server", ["--version"]) === null
    ? "redis-server is not installed (apt-get install redis-server)"
    : undefined;
}
