/**
 * Test helper: a throwaway `redis-server` on 127.0.0.1 and a free port, with
 * nothing saved to disk.
 *
 * @module
 */

/** A running (or stopped) test Redis. */
export interface RedisServer {
  /** `redis://127.0.0.1:PORT` */
  url: string;
  port: number;
  /**
   * Stops the server (SIGTERM), waits for it to exit and removes its
   * directory. Safe to call twice; `restart()` starts it again.
   */
  stop(): Promise<void>;
  /** Starts it again on the same port, empty; waits until it answers. */
  restart(): Promise<void>;
  /** Kills the server and removes its directory without waiting, for `unload`. */
  kill(): void;
  /**
   * Freezes the server (SIGSTOP): its sockets stay open and take what is
   * sent, but nothing is answered until `resume()`, as a Redis that hangs.
   */
  pause(): void;
  /** Lets a paused server go on (SIGCONT): it runs what it was sent meanwhile. */
  resume(): void;
}

/** Why the Redis tests cannot run here, or undefined when they can. */
export async function redisUnavailable(): Promise<string | undefined> {
  try {
    const { success } = await new Deno.Command("redis-server", {
      args: ["--version"],
      stdout: "null",
      stderr: "null",
    }).output();
    return success ? undefined : "redis-server --version failed";
  } catch {
    return "redis-server is not installed (apt-get install redis-server)";
  }
}

/** Whether `redis-server` can be started here. */
export async function redisAvailable(): Promise<boolean> {
  return await redisUnavailable() === undefined;
}

/**
 * Decides how a test file that needs Redis runs: undefined when it can; else
 * the reason to skip, printed. In CI (`CI=true`) a missing Redis is a failure,
 * not a skip: a test that fails with the reason is registered instead.
 */
export async function redisSkipReason(file: string): Promise<string | undefined> {
  const reason = await redisUnavailable();
  if (reason === undefined) return undefined;
  if (Deno.env.get("CI") === "true") {
    Deno.test(`${file}: redis-server is required in CI`, () => {
      throw new Error(`${file} needs redis-server, and CI must have it: ${reason}`);
    });
  } else {
    console.warn(`${file}: skipping the Redis tests: ${reason}`);
  }
  return reason;
}

/** A free TCP port on 127.0.0.1 (free when probed: bind it soon). */
export function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr as Deno.NetAddr;
  listener.close();
  return port;
}

/** Sends PING on a raw connection; true on `+PONG`. */
export async function ping(port: number): Promise<boolean> {
  let conn: Deno.TcpConn | undefined;
  try {
    conn = await Deno.connect({ hostname: "127.0.0.1", port });
    await conn.write(new TextEncoder().encode("PING\r\n"));
    const buffer = new Uint8Array(64);
    const n = await conn.read(buffer);
    return n !== null && new TextDecoder().decode(buffer.subarray(0, n)).startsWith("+PONG");
  } catch {
    return false;
  } finally {
    conn?.close();
  }
}

/** Starts `redis-server` on a free port and waits until it answers PING. */
export async function startRedis(): Promise<RedisServer> {
  const dir = await Deno.makeTempDir({ prefix: "parley-redis-" });
  let port = freePort();
  let child: Deno.ChildProcess | undefined;

  const launch = async () => {
    await Deno.mkdir(dir, { recursive: true });
    child = new Deno.Command("redis-server", {
      args: [
        "--port",
        String(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        dir,
      ],
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).spawn();
    let exited = false;
    child.status.then(() => exited = true);
    const end = Date.now() + 5000;
    while (!(await ping(port))) {
      if (exited) {
        await halt();
        throw new Error(`redis-server exited at start (is port ${port} taken?)`);
      }
      if (Date.now() > end) {
        await halt();
        throw new Error(`redis-server did not answer on port ${port} within 5 s`);
      }
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  };

  const halt = async () => {
    const running = child;
    child = undefined;
    if (!running) return;
    try {
      // A stopped process takes SIGTERM only once it runs again.
      running.kill("SIGCONT");
      running.kill("SIGTERM");
    } catch {
      // Already gone.
    }
    await running.status;
  };

  try {
    await launch();
  } catch {
    // The port was taken between probing and binding: one more try.
    port = freePort();
    await launch();
  }
  return {
    url: `redis://127.0.0.1:${port}`,
    port,
    async stop() {
      await halt();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    },
    kill() {
      try {
        child?.kill("SIGKILL");
      } catch {
        // Already gone.
      }
      child = undefined;
      try {
        Deno.removeSync(dir, { recursive: true });
      } catch {
        // Already gone.
      }
    },
    async restart() {
      await halt();
      await launch();
    },
    pause() {
      if (!child) throw new Error("Cannot pause redis-server: it is not running");
      child.kill("SIGSTOP");
    },
    resume() {
      if (!child) throw new Error("Cannot resume redis-server: it is not running");
      child.kill("SIGCONT");
    },
  };
}

/**
 * Sends one command on a raw connection and returns the reply's first line,
 * for tests that poke the server (`CLIENT KILL`, `FLUSHALL`).
 */
export async function redisCommand(port: number, ...args: string[]): Promise<string> {
  const encoder = new TextEncoder();
  const parts = [`*${args.length}\r\n`];
  for (const arg of args) parts.push(`$${encoder.encode(arg).length}\r\n${arg}\r\n`);
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await conn.write(encoder.encode(parts.join("")));
    const buffer = new Uint8Array(4096);
    const n = await conn.read(buffer);
    return n === null ? "" : new TextDecoder().decode(buffer.subarray(0, n)).split("\r\n")[0];
  } finally {
    conn.close();
  }
}

/**
 * Sends one command whose reply is a bulk string (`INFO`, `CLIENT LIST`) and
 * returns that string whole.
 */
export async function redisBulk(port: number, ...args: string[]): Promise<string> {
  const encoder = new TextEncoder();
  const parts = [`*${args.length}\r\n`];
  for (const arg of args) parts.push(`$${encoder.encode(arg).length}\r\n${arg}\r\n`);
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await conn.write(encoder.encode(parts.join("")));
    const chunks: Uint8Array[] = [];
    let total = 0;
    const buffer = new Uint8Array(65536);
    while (true) {
      const n = await conn.read(buffer);
      if (n === null) throw new Error(`Redis closed the connection before answering ${args[0]}`);
      chunks.push(buffer.slice(0, n));
      total += n;
      const all = new Uint8Array(total);
      let at = 0;
      for (const chunk of chunks) {
        all.set(chunk, at);
        at += chunk.length;
      }
      const text = new TextDecoder().decode(all);
      const header = /^\$(-?\d+)\r\n/.exec(text);
      if (!header) {
        if (text.includes("\r\n")) throw new Error(`Redis answered ${text.split("\r\n")[0]}`);
        continue;
      }
      const length = Number(header[1]);
      const body = all.subarray(header[0].length);
      if (length < 0) return "";
      if (body.length >= length + 2) return new TextDecoder().decode(body.subarray(0, length));
    }
  } finally {
    conn.close();
  }
}
