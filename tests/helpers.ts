/**
 * Test helpers: a real server on 127.0.0.1 and a free port, and WebSocket
 * clients whose frames can be awaited in order.
 *
 * @module
 */

import { type App, createApp } from "../main.ts";
import { type Config, DEFAULT_CONFIG } from "../lib/config.ts";
import { silentLogger } from "../lib/log.ts";

/** A running server for one test. */
export interface TestServer {
  /** `http://127.0.0.1:PORT` */
  url: string;
  /** `ws://127.0.0.1:PORT` */
  ws: string;
  port: number;
  app: App;
  /** Closes sockets (1001), then the listener. */
  close(): Promise<void>;
  /** Closes sockets from the server side (code 4000), as a network drop would. */
  dropConnections(room?: string): void;
}

/** Starts Parley on 127.0.0.1 and a free port. */
export async function startServer(overrides: Partial<Config> = {}): Promise<TestServer> {
  const config: Config = {
    ...DEFAULT_CONFIG,
    port: 0,
    hostname: "127.0.0.1",
    logLevel: "silent",
    ...overrides,
  };
  const app = await createApp(config, silentLogger);
  const server = Deno.serve(
    { port: 0, hostname: "127.0.0.1", onListen() {} },
    app.handler,
  );
  const { port } = server.addr as Deno.NetAddr;
  return {
    url: `http://127.0.0.1:${port}`,
    ws: `ws://127.0.0.1:${port}`,
    port,
    app,
    async close() {
      await app.close();
      await server.shutdown();
    },
    dropConnections(room?: string) {
      for (const conn of [...app.hub.connections]) {
        if (room === undefined || conn.info.room === room) conn.close(4000, "dropped by test");
      }
    },
  };
}

/** A frame as a test sees it. */
export type Frame = string | Uint8Array;

/** A WebSocket client whose frames are awaited one by one. */
export class Client {
  readonly socket: WebSocket;
  readonly opened: Promise<void>;
  readonly closed: Promise<CloseEvent>;
  #frames: Frame[] = [];
  #waiters: ((frame: Frame) => void)[] = [];

  constructor(url: string, protocols?: string | string[]) {
    this.socket = new WebSocket(url, protocols);
    this.socket.binaryType = "arraybuffer";
    this.opened = new Promise((resolve, reject) => {
      this.socket.addEventListener("open", () => resolve(), { once: true });
      this.socket.addEventListener("error", () => reject(new Error(`cannot open ${url}`)), {
        once: true,
      });
    });
    this.closed = new Promise((resolve) => {
      this.socket.addEventListener("close", (e) => resolve(e), { once: true });
    });
    this.socket.onmessage = (e) => {
      const frame = typeof e.data === "string" ? e.data : new Uint8Array(e.data);
      const waiter = this.#waiters.shift();
      if (waiter) waiter(frame);
      else this.#frames.push(frame);
    };
  }

  /** Frames received and not yet taken. */
  get queued(): readonly Frame[] {
    return this.#frames;
  }

  /** The next frame, or a rejection after `ms`. */
  next(ms = 5000): Promise<Frame> {
    const frame = this.#frames.shift();
    if (frame !== undefined) return Promise.resolve(frame);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#waiters.splice(this.#waiters.indexOf(waiter), 1);
        reject(new Error(`no frame within ${ms} ms`));
      }, ms);
      const waiter = (f: Frame) => {
        clearTimeout(timer);
        resolve(f);
      };
      this.#waiters.push(waiter);
    });
  }

  /** The next text frame. */
  async text(ms?: number): Promise<string> {
    const frame = await this.next(ms);
    if (typeof frame !== "string") throw new Error(`expected text, got ${frame.byteLength} bytes`);
    return frame;
  }

  /** The next binary frame. */
  async binary(ms?: number): Promise<Uint8Array> {
    const frame = await this.next(ms);
    if (typeof frame === "string") throw new Error(`expected binary, got text ${frame}`);
    return frame;
  }

  /** The next frame as a JSON envelope. */
  async json<T = Record<string, unknown>>(ms?: number): Promise<T> {
    return JSON.parse(await this.text(ms));
  }

  /** Skips envelopes until one of `type`, and returns it. */
  async until<T = Record<string, unknown>>(type: string, ms = 5000): Promise<T> {
    const end = Date.now() + ms;
    while (true) {
      const frame = await this.next(Math.max(1, end - Date.now()));
      if (typeof frame !== "string") continue;
      const envelope = JSON.parse(frame);
      if (envelope.type === type) return envelope;
    }
  }

  /** Sends a frame, or an object as JSON. */
  send(data: Frame | Record<string, unknown>): void {
    if (typeof data === "string" || data instanceof Uint8Array) this.socket.send(data);
    else this.socket.send(JSON.stringify(data));
  }

  /** Closes and waits for the close to finish. */
  async close(code = 1000): Promise<CloseEvent> {
    if (this.socket.readyState < 2) this.socket.close(code);
    return await this.closed;
  }
}

/** Opens a client and waits until it is open. */
export async function connect(url: string, protocols?: string | string[]): Promise<Client> {
  const client = new Client(url, protocols);
  await client.opened;
  return client;
}

/** Waits until `check` is true, polling every 10 ms, or throws after `ms`. */
export async function waitFor(check: () => boolean, ms = 5000, what = "condition"): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Asserts that no frame arrives within `ms`. */
export async function expectSilence(client: Client, ms = 150): Promise<void> {
  await new Promise((r) => setTimeout(r, ms));
  if (client.queued.length > 0) {
    throw new Error(`expected no frame, got ${JSON.stringify(String(client.queued[0]))}`);
  }
}
