/**
 * Parley: reads the configuration, builds the parts and serves them.
 *
 * @module
 */

import { type Config, ConfigError, loadConfig } from "./lib/config.ts";
import { createEngine } from "./lib/engines/mod.ts";
import { createHandler, type Handler } from "./lib/handler.ts";
import { Hub } from "./lib/hub.ts";
import { createLogger, type Logger } from "./lib/log.ts";
import { loadAssets } from "./lib/static.ts";

/** The parts of a running Parley, before and apart from the listener. */
export interface App {
  handler: Handler;
  hub: Hub;
  log: Logger;
  /** Stops accepting, closes every socket with 1001 and flushes the engine. */
  close(): Promise<void>;
}

/** Builds every part from a configuration. */
export async function createApp(config: Config, log?: Logger): Promise<App> {
  const logger = log ?? createLogger(config.logLevel);
  const engine = await createEngine(config, logger);
  const hub = new Hub({
    engine,
    joinHistory: config.joinHistory,
    historySize: config.historySize,
    maxMessageBytes: config.maxMessageBytes,
    maxTextLength: config.maxTextLength,
    maxBufferedBytes: config.slowConsumerBytes,
    rateLimit: config.rateLimit,
    rateBurst: config.rateBurst,
    presenceTtlMs: 60_000,
    presenceRefreshMs: 20_000,
    logger,
  });
  let accepting = true;
  const handler = createHandler({
    hub,
    assets: await loadAssets(new URL("./static/", import.meta.url)),
    idleTimeout: config.idleTimeout,
    accepting: () => accepting,
    allowedOrigins: config.allowedOrigins,
    maxConnections: config.maxConnections,
    maxConnectionsPerIp: config.maxConnectionsPerIp,
    trustedProxies: config.trustedProxies,
  });
  return {
    handler,
    hub,
    log: logger,
    async close() {
      accepting = false;
      hub.close();
      await engine.close();
    },
  };
}

if (import.meta.main) {
  let config: Config;
  try {
    config = loadConfig();
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    console.error(`parley: ${error.message}`);
    Deno.exit(2);
  }
  const app = await createApp(config).catch((error) => {
    if (!(error instanceof ConfigError)) throw error;
    console.error(`parley: ${error.message}`);
    Deno.exit(2);
  });
  // No exception may end the process: log it and go on.
  globalThis.addEventListener("error", (event) => {
    event.preventDefault();
    app.log.error("uncaught_error", { error: String(event.error ?? event.message) });
  });
  globalThis.addEventListener("unhandledrejection", (event) => {
    event.preventDefault();
    app.log.error("unhandled_rejection", { error: String(event.reason) });
  });
  const tls = config.certFile && config.keyFile
    ? { cert: Deno.readTextFileSync(config.certFile), key: Deno.readTextFileSync(config.keyFile) }
    : {};
  const server = Deno.serve({
    port: config.port,
    hostname: config.hostname,
    ...tls,
    onListen({ hostname, port }) {
      const scheme = config.certFile ? "https" : "http";
      const host = hostname.includes(":") ? `[${hostname}]` : hostname;
      console.log(`Parley listening on ${scheme}://${host}:${port}/`);
    },
  }, app.handler);
  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    app.log.info("shutdown", { signal });
    setTimeout(() => Deno.exit(1), 10_000); // bounded, whatever hangs
    await app.close();
    await server.shutdown();
    Deno.exit(0);
  };
  // When the listener dies on its own (Deno's accept loop stops when file
  // descriptors run out), exit non-zero so a supervisor restarts us.
  const fail = (why: string) => {
    app.log.error("listener_stopped", { why });
    Deno.exit(70);
  };
  server.finished.then(
    () => stopping || fail("the listener stopped"),
    (error) => fail(`the listener failed: ${error}`),
  );
  for (const signal of ["SIGINT", "SIGTERM"] as const) {
    try {
      Deno.addSignalListener(signal, () => stop(signal));
    } catch {
      // No signals here (Deno Deploy): the platform ends the instance.
    }
  }
}
