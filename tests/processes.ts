/**
 * Test helpers for whole Parley processes: a server started as
 * `deno run -A main.ts` (stopped with SIGTERM or killed with SIGKILL), and a
 * TCP proxy in front of one or more of them whose port stays the same across
 * restarts and which can cut every connection without a close frame.
 *
 * @module
 */

const LISTENING = /^Parley listening on http:\/\/127\.0\.0\.1:(\d+)\/$/m;

/** How a stopped server ended. */
export interface Exit {
  code: number;
  /** Milliseconds from the signal to the exit. */
  ms: number;
}

/** A Parley process; its port is kept across restarts once known. */
export class ServerProcess {
  port = 0;
  #env: Record<string, string>;
  #child: Deno.ChildProcess | undefined;
  #done: Promise<Deno.CommandStatus> | undefined;
  /** Everything the process wrote to standard error so far. */
  stderr = "";

  constructor(env: Record<string, string>) {
    this.#env = env;
  }

  /** Starts it (again, on the same port once it had one) and waits until it listens. */
  async start(): Promise<void> {
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "main.ts"],
      cwd: new URL("../", import.meta.url),
      env: {
        PORT: String(this.port),
        HOSTNAME: "127.0.0.1",
        LOG_LEVEL: "silent",
        ...this.#env,
      },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.#child = child;
    const stderr = (async () => {
      for await (const chunk of child.stderr.pipeThrough(new TextDecoderStream())) {
        this.stderr += chunk;
      }
    })();
    const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    const timer = setTimeout(() => child.kill("SIGKILL"), 30_000);
    let stdout = "";
    let port: string | undefined;
    try {
      while (port === undefined) {
        const { done, value } = await reader.read();
        if (done) break;
        stdout += value;
        port = LISTENING.exec(stdout)?.[1];
      }
    } finally {
      clearTimeout(timer);
    }
    const drained = (async () => {
      while (!(await reader.read()).done) { /* nothing else is expected */ }
    })();
    this.#done = Promise.all([child.status, drained, stderr]).then(([status]) => status);
    if (port === undefined) {
      await this.kill();
      throw new Error(`the server did not start: ${stdout}${this.stderr}`);
    }
    this.port = Number(port);
  }

  /** Whether it runs. */
  get running(): boolean {
    return this.#child !== undefined;
  }

  /** Sends SIGTERM and waits for the exit. */
  async stop(): Promise<Exit> {
    const start = performance.now();
    this.#child?.kill("SIGTERM");
    const status = await this.#done!;
    this.#child = undefined;
    return { code: status.code, ms: performance.now() - start };
  }

  /** SIGKILL: no close frames, no shutdown. */
  async kill(): Promise<void> {
    try {
      this.#child?.kill("SIGKILL");
    } catch {
      // Exited already.
    }
    await this.#done;
    this.#child = undefined;
  }
}

/**
 * A TCP proxy on 127.0.0.1: each connection goes to the port `upstream()`
 * names at that moment (undefined: refused), so its own port stays the same
 * across restarts; `cut()` drops every connection without a close frame.
 */
export class Proxy {
  readonly port: number;
  #listener: Deno.Listener;
  #upstream: () => number | undefined;
  #pairs = new Set<[Deno.Conn, Deno.Conn | undefined]>();
  /** While true, what the server sends is thrown away (acks lost on the way). */
  muted = false;
  #tasks = new Set<Promise<void>>();
  #accepting: Promise<void>;
  /** Called with the upstream port of each connection made. */
  onConnect?: (port: number) => void;

  constructor(upstream: () => number | undefined) {
    this.#upstream = upstream;
    this.#listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    this.port = (this.#listener.addr as Deno.NetAddr).port;
    this.#accepting = this.#accept();
  }

  /** `ws://127.0.0.1:PORT`, without a path. */
  get url(): string {
    return `ws://127.0.0.1:${this.port}`;
  }

  async #accept(): Promise<void> {
    try {
      for await (const conn of this.#listener) {
        const task = this.#serve(conn);
        this.#tasks.add(task);
        task.finally(() => this.#tasks.delete(task));
      }
    } catch {
      // Closed.
    }
  }

  async #serve(client: Deno.Conn): Promise<void> {
    const pair: [Deno.Conn, Deno.Conn | undefined] = [client, undefined];
    this.#pairs.add(pair);
    try {
      const port = this.#upstream();
      if (port === undefined) return;
      pair[1] = await Deno.connect({ hostname: "127.0.0.1", port });
      this.onConnect?.(port);
      if (!this.#pairs.has(pair)) return;
      await Promise.race([copy(client, pair[1]), copy(pair[1], client, () => this.muted)]);
    } catch {
      // The server is down: the client sees its socket fail.
    } finally {
      this.#drop(pair);
    }
  }

  #drop(pair: [Deno.Conn, Deno.Conn | undefined]): void {
    if (!this.#pairs.delete(pair)) return;
    for (const conn of pair) {
      try {
        conn?.close();
      } catch {
        // Closed already.
      }
    }
  }

  /** Drops every connection at the TCP level. */
  cut(): void {
    for (const pair of [...this.#pairs]) this.#drop(pair);
  }

  /** Stops listening and drops every connection. */
  async close(): Promise<void> {
    this.#listener.close();
    await this.#accepting;
    this.cut();
    await Promise.all([...this.#tasks]);
  }
}

async function copy(from: Deno.Conn, to: Deno.Conn, muted = () => false): Promise<void> {
  const buffer = new Uint8Array(64 * 1024);
  try {
    while (true) {
      const n = await from.read(buffer);
      if (n === null) return;
      if (muted()) continue;
      let written = 0;
      while (written < n) written += await to.write(buffer.subarray(written, n));
    }
  } catch {
    // One side closed.
  }
}
