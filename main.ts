/**
 * Parley: reads the configuration, builds the parts and serves them.
 *
 * @module
 */

import { type Config, ConfigError, listenError, loadConfig, startupFailure } from "./lib/config.ts";
import type { Verifier } from "./lib/admission.ts";
import { type ApiOptions, createApi } from "./lib/api.ts";
import { AuthFailures } from "./lib/auth/failures.ts";
import type { Engine } from "./lib/engine.ts";
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

/**
 * Opens the configured engine. A KV database that cannot be opened (a path
 * this process may not read and write, a folder that does not exist) is a
 * {@linkcode ConfigError} naming `KV_PATH`, so it stops the start in one line.
 */
async function openEngine(config: Config, logger: Logger): Promise<Engine> {
  try {
    return await createEngine(config, logger);
  } catch (error) {
    if (config.engine !== "kv" || error instanceof ConfigError) throw error;
    // The kv engine wraps Deno's error; Deno's own says what was wrong.
    const cause = error instanceof Error && error.cause !== undefined ? error.cause : error;
    throw new ConfigError(
      "KV_PATH",
      config.kvPath ?? "",
      "a Deno KV database this process may open, read and write",
      { cause },
    );
  }
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

/** What token mode and the server API need, built from the configuration. */
interface AuthParts {
  verifier?: Verifier;
  failures?: AuthFailures;
  mint?: ApiOptions["mint"];
}

/**
 * Token mode's verifier, the failure counter and the API's token minting.
 * The JWT library is imported only when one of them needs it, so the open
 * mode's `deno task start` never downloads it.
 */
async function authParts(config: Config): Promise<AuthParts> {
  const parts: AuthParts = {};
  const secret = config.authSecret;
  if (secret !== undefined) {
    parts.mint = async (claims) => (await import("./lib/auth/token.ts")).mintToken(secret, claims);
  }
  if (config.auth !== "token") return parts;
  const { createVerifier } = await import("./lib/auth/token.ts");
  const publicKeyPem = config.authPublicKeyFile === undefined ? undefined : (() => {
    try {
      return Deno.readTextFileSync(config.authPublicKeyFile);
    } catch (cause) {
      throw new ConfigError(
        "AUTH_PUBLIC_KEY_FILE",
        config.authPublicKeyFile,
        "a readable PEM public key file",
        { cause },
      );
    }
  })();
  try {
    parts.verifier = await createVerifier({ secret, publicKeyPem, skewSeconds: config.authSkew });
  } catch (cause) {
    if (publicKeyPem === undefined) throw cause;
    throw new ConfigError(
      "AUTH_PUBLIC_KEY_FILE",
      config.authPublicKeyFile!,
      "an EC P-256 or RSA public key in PEM (SPKI)",
      { cause },
    );
  }
  parts.failures = new AuthFailures();
  return parts;
}

/** Builds every part from a configuration. */
export async function createApp(config: Config, log?: Logger): Promise<App> {
  const logger = log ?? createLogger(config.logLevel);
  const auth = await authParts(config);
  const engine = await openEngine(config, logger);
  const hub = new Hub({
    engine,
    joinHistory: config.joinHistory,
    historySize: config.historySize,
    maxMessageBytes: config.maxMessageBytes,
    maxTextLength: config.maxTextLength,
    maxBufferedBytes: config.slowConsumerBytes,
    rateLimit: config.rateLimit,
    rateBurst: config.rateBurst,
    presenceTtlMs: config.presenceTtl * 1000,
    presenceRefreshMs: config.presenceRefresh * 1000,
    verifier: auth.verifier,
    onAuthFailure: auth.failures && ((ip) => auth.failures!.fail(ip)),
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
    verifier: auth.verifier,
    failures: auth.failures,
    api: config.apiKey === undefined
      ? undefined
      : createApi({ hub, apiKey: config.apiKey, mint: auth.mint }),
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

/**
 * Reads the configuration, builds the parts and listens. Every failure
 * before listening is one line on standard error and a non-zero exit.
 */
async function start(): Promise<{ app: App; server: Deno.HttpServer }> {
  try {
    const config = loadConfig();
    const tls = readTls(config);
    const app = await createApp(config);
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
      }, app.handler);
    } catch (error) {
      throw listenError(error, config);
    }
    return { app, server };
  } catch (error) {
    const { line, code } = startupFailure(error);
    console.error(line);
    Deno.exit(code);
  }
}

if (import.meta.main) {
  const { app, server } = await start();
  // No exception may end the process: log it and go on.
  globalThis.addEventListener("error", (event) => {
    event.preventDefault();
    app.log.error("uncaught_error", { error: String(event.error ?? event.message) });
  });
  globalThis.addEventListener("unhandledrejection", (event) => {
    event.preventDefault();
    app.log.error("unhandled_rejection", { error: String(event.reason) });
  });
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
