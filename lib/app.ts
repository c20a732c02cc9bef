/**
 * The parts of a running Parley, built from a {@linkcode Config}: the engine,
 * the hub, the server API and the request handler. `mod.ts` builds them for an
 * embedding app, `main.ts` and `serve.ts` through `mod.ts`, tests directly.
 *
 * @module
 */

import { type Config, ConfigError } from "./config.ts";
import type { Verifier } from "./admission.ts";
import { type ApiOptions, createApi } from "./api.ts";
import { AuthFailures } from "./auth/failures.ts";
import type { Engine } from "./engine.ts";
import { createEngine } from "./engines/mod.ts";
import { createHandler, type Handler } from "./handler.ts";
import { Hub } from "./hub.ts";
import { createLogger, type Logger } from "./log.ts";
import { loadAssets } from "./static.ts";

/** The JWT module, loaded only when token mode or the API's minting needs it. */
function tokenModule(): Promise<typeof import("./auth/token.ts")> {
  return import("./auth/token.ts");
}

/** The parts of a running Parley, before and apart from the listener. */
export interface App {
  handler: Handler;
  hub: Hub;
  log: Logger;
  /** Stops accepting, closes every socket with 1001 and flushes the engine. */
  close(): Promise<void>;
  /**
   * A rolling deploy's stop: `/readyz` and new upgrades are 503 at once;
   * after `delayMs` every socket closes with 1012, spread evenly over
   * `spreadMs`; then the engine closes.
   */
  drain(options: { delayMs: number; spreadMs: number }): Promise<void>;
}

/** Where the handler is mounted, besides the configuration: see {@linkcode createApp}. */
export interface MountOptions {
  /** Path prefix without a trailing slash (`/chat`), or `""` for the root. */
  basePath?: string;
  /** Answers requests outside `basePath`; without it they get 404. */
  fallback?: Handler;
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
    parts.mint = async (claims) => (await tokenModule()).mintToken(secret, claims);
  }
  if (config.auth !== "token") return parts;
  const { createVerifier } = await tokenModule();
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

/**
 * Builds every part from a configuration.
 *
 * @param config The settings; the listener's (`port`, `hostname`, TLS) are not read here.
 * @param log Where events go; a JSON logger at `config.logLevel` by default.
 * @param mount The path prefix and what answers outside it.
 */
export async function createApp(
  config: Config,
  log?: Logger,
  mount: MountOptions = {},
): Promise<App> {
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
    assets: await loadAssets(new URL("../static/", import.meta.url)),
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
    basePath: mount.basePath,
    fallback: mount.fallback,
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
    async drain({ delayMs, spreadMs }) {
      accepting = false;
      logger.info("drain", { delayMs, spreadMs, connections: hub.connections.size });
      if (delayMs > 0) await new Promise((resolve) => setTimeout(resolve, delayMs));
      await hub.drain(spreadMs);
      hub.close();
      await engine.close();
    },
  };
}
