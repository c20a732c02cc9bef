/**
 * Parley: reads the configuration, builds the parts and serves them.
 *
 * @module
 */

import { type Config, ConfigError, listenError, loadConfig, startupFailure } from "./lib/config.ts";
import { createLogger, type Logger } from "./lib/log.ts";
import { createParley, type Parley, type ParleySettings } from "./mod.ts";

// Tests build the parts from a `Config` without the options' round trip.
export { type App, createApp } from "./lib/app.ts";

/** The chat's settings of a configuration: all but the listener's. */
export function settingsOf(config: Config): ParleySettings {
  const settings: Partial<Config> = { ...config };
  for (const key of ["port", "hostname", "certFile", "keyFile"] as const) delete settings[key];
  return settings;
}

/**
 * Reads the TLS certificate and key the configuration names, if any; a file
 * that cannot be read is a {@linkcode ConfigError} naming its variable.
 */
function readTls(config: Config): { cert: string; key: string } | Record<never, never> {
  if (!config.certFile || !config.keyFile) return {};
  const read = (variable: string, path: string, what: string) => {
    try {
      return Deno.readTextFileSync(path);
    } catch (cause) {
      throw new ConfigError(variable, path, `a readable PEM ${what} file`, { cause });
    }
  };
  return {
    cert: read("TLS_CERT_FILE", config.certFile, "certificate"),
    key: read("TLS_KEY_FILE", config.keyFile, "private key"),
  };
}

/**
 * Reads the configuration, builds the parts and listens. Every failure
 * before listening is one line on standard error and a non-zero exit.
 */
async function start(): Promise<
  { parley: Parley; log: Logger; server: Deno.HttpServer; config: Config }
> {
  try {
    const config = loadConfig();
    const tls = readTls(config);
    const log = createLogger(config.logLevel);
    const parley = await createParley(settingsOf(config));
    let server: Deno.HttpServer;
    try {
      server = Deno.serve({
        port: config.port,
        hostname: config.hostname,
        ...tls,
        onListen({ hostname, port }) {
          const scheme = config.certFile ? "https" : "http";
          const host = hostname.includes(":") ? `[${hostname}]` : hostname;
          console.log(`Parley listening on ${scheme}://${host}:${port}/`);
        },
      }, parley.fetch);
    } catch (error) {
      throw listenError(error, config);
    }
    return { parley, log, server, config };
  } catch (error) {
    const { line, code } = startupFailure(error);
    console.error(line);
    Deno.exit(code);
  }
}

if (import.meta.main) {
  const { parley, log, server, config } = await start();
  // No exception may end the process: log it and go on.
  globalThis.addEventListener("error", (event) => {
    event.preventDefault();
    log.error("uncaught_error", { error: String(event.error ?? event.message) });
  });
  globalThis.addEventListener("unhandledrejection", (event) => {
    event.preventDefault();
    log.error("unhandled_rejection", { error: String(event.reason) });
  });
  let stopping = false;
  // SIGTERM (a deploy, a supervisor) drains: /readyz 503 at once, then closes
  // with 1012 spread over DRAIN_SPREAD_SECONDS. SIGINT (Ctrl-C) closes now.
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info("shutdown", { signal });
    const drain = signal === "SIGTERM";
    const bound = drain ? (config.drainSeconds + config.drainSpreadSeconds) * 1000 : 0;
    setTimeout(() => Deno.exit(1), bound + 10_000); // bounded, whatever hangs
    await (drain ? parley.drain() : parley.close());
    await server.shutdown();
    Deno.exit(0);
  };
  // When the listener dies on its own (Deno's accept loop stops when file
  // descriptors run out), exit non-zero so a supervisor restarts us.
  const fail = (why: string) => {
    log.error("listener_stopped", { why });
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
