/**
 * Configuration, read from environment variables.
 *
 * Every variable has a default; a value that does not parse is a
 * {@linkcode ConfigError} naming the variable, the value and what was expected.
 *
 * @module
 */

/** The whole configuration of one Parley server. */
export interface Config extends RedisTopologyConfig {
  /** TCP port to listen on (`PORT`, default 8000; 0 picks a free port). */
  port: number;
  /** Address to listen on (`HOSTNAME`, default `0.0.0.0`). */
  hostname: string;
  /** PEM certificate file for HTTPS/wss (`TLS_CERT_FILE`). */
  certFile?: string;
  /** PEM private key file for HTTPS/wss (`TLS_KEY_FILE`). */
  keyFile?: string;
  /** Messages kept per room for history, resume and dedup (`HISTORY_SIZE`). */
  historySize: number;
  /** Messages a rich client gets on a fresh join (`JOIN_HISTORY`). */
  joinHistory: number;
  /** Bytes of history kept per room (`HISTORY_BYTES`). */
  historyBytes: number;
  /** Files larger than this are kept in history without their bytes (`HISTORY_FILE_BYTES`). */
  historyFileBytes: number;
  /** Largest message, text or binary, in bytes (`MAX_MESSAGE_BYTES`). */
  maxMessageBytes: number;
  /** Longest rich-mode text, in characters (`MAX_TEXT_LENGTH`). */
  maxTextLength: number;
  /** A peer with more bytes than this queued is closed as a slow consumer (`SLOW_CONSUMER_BYTES`). */
  slowConsumerBytes: number;
  /** Seconds without a pong before a peer is dropped (`IDLE_TIMEOUT`; 0 turns it off). */
  idleTimeout: number;
  /**
   * Origins allowed to open WebSockets (`ALLOWED_ORIGINS`, comma-separated, or
   * `*`). Empty: the page's own origin. Requests without `Origin` are allowed.
   */
  allowedOrigins: string[];
  /** Most open WebSockets in this process (`MAX_CONNECTIONS`); more get 503. */
  maxConnections: number;
  /** Most open WebSockets per client address (`MAX_CONNECTIONS_PER_IP`); more get 429. */
  maxConnectionsPerIp: number;
  /** Proxy addresses whose `X-Forwarded-For` is believed (`TRUSTED_PROXIES`). */
  trustedProxies: string[];
  /** Messages per second a connection may send on average (`RATE_LIMIT`). */
  rateLimit: number;
  /** Messages a connection may send at once (`RATE_BURST`). */
  rateBurst: number;
  /** Storage and fan-out (`ENGINE`): memory (default), kv or redis. */
  engine: EngineName;
  /** Deno KV database path (`KV_PATH`); unset: Deno's default (the managed one on Deploy). */
  kvPath?: string;
  /** Redis server (`REDIS_URL`), for the redis engine. */
  redisUrl: string;
  /**
   * Put before every Redis key and pub/sub channel (`REDIS_PREFIX`, default
   * `parley:`): deployments sharing one Redis stay apart by prefix, since
   * pub/sub ignores the database number of `REDIS_URL`.
   */
  redisPrefix: string;
  /** Log level (`LOG_LEVEL`): debug, info, warn, error or silent. */
  logLevel: LogLevel;
  /**
   * Seconds a member's presence entry lives unless refreshed (`PRESENCE_TTL`,
   * default 60): how long a crashed instance's members linger in the list.
   */
  presenceTtl: number;
  /**
   * Seconds between refreshes of each presence entry (`PRESENCE_REFRESH`,
   * default 20, and below `PRESENCE_TTL`).
   */
  presenceRefresh: number;
  /**
   * Seconds between SIGTERM and the first close of a drain (`DRAIN_SECONDS`,
   * default 5): `/readyz` is 503 at once, so a proxy stops sending new
   * connections before any socket closes.
   */
  drainSeconds: number;
  /**
   * Seconds over which a drain spreads its closes with 1012
   * (`DRAIN_SPREAD_SECONDS`, default 10), so clients come back to the other
   * instances as a trickle, not all in one instant.
   */
  drainSpreadSeconds: number;
  /**
   * Who may connect (`AUTH`): `open` (default: anyone, with any free
   * nickname) or `token` (a signed token each, see `docs/auth.md`).
   */
  auth: AuthMode;
  /**
   * Shared secret of HS256 tokens (`AUTH_SECRET`, at least 32 bytes, used
   * byte for byte): verifies them when `AUTH=token`, mints them through the API.
   */
  authSecret?: string;
  /**
   * PEM public key (EC P-256 or RSA) of ES256 or RS256 tokens
   * (`AUTH_PUBLIC_KEY_FILE`); only with `AUTH=token`, instead of `AUTH_SECRET`.
   */
  authPublicKeyFile?: string;
  /** Key backends and bots present to the /api/ routes (`API_KEY`, at least 16 characters). */
  apiKey?: string;
  /** Clock difference tolerated for token times, in seconds (`AUTH_SKEW`, default 30). */
  authSkew: number;
}

/**
 * Where the redis engine finds Redis when it is not the one server of
 * `REDIS_URL`: through Sentinel, or a Redis Cluster. Each field is present
 * only when its variable is set.
 */
export interface RedisTopologyConfig {
  /**
   * Sentinels to ask for the primary (`REDIS_SENTINELS`, comma-separated
   * `host:port`), with `REDIS_SENTINEL_NAME`. `REDIS_URL`'s host and port are
   * then not used; its user, password, database and `rediss:` (TLS) are.
   */
  redisSentinels?: string[];
  /** The name the sentinels monitor the primary under (`REDIS_SENTINEL_NAME`). */
  redisSentinelName?: string;
  /**
   * Nodes of a Redis Cluster, 7 or later (`REDIS_CLUSTER`, comma-separated
   * `host:port`; the others are discovered). `REDIS_URL`'s user, password and
   * `rediss:` apply to every node; its host and port are not used.
   */
  redisCluster?: string[];
}

/** The authentication modes: see {@linkcode Config.auth}. */
export const AUTH_MODES = ["open", "token"] as const;

/** One of {@linkcode AUTH_MODES}. */
export type AuthMode = typeof AUTH_MODES[number];

/** Shortest `AUTH_SECRET`, in bytes of UTF-8. */
export const MIN_AUTH_SECRET_BYTES = 32;
/** Shortest `API_KEY`, in characters. */
export const MIN_API_KEY_LENGTH = 16;
/** Largest `AUTH_SKEW`, in seconds. */
export const MAX_AUTH_SKEW = 300;

/** The engines Parley has. */
export const ENGINES = ["memory", "kv", "redis"] as const;

/** One of {@linkcode ENGINES}. */
export type EngineName = typeof ENGINES[number];

/** The levels of the JSON logger, from the most to the least verbose. */
export const LOG_LEVELS = ["debug", "info", "warn", "error", "silent"] as const;

/** One of {@linkcode LOG_LEVELS}. */
export type LogLevel = typeof LOG_LEVELS[number];

/** Longest `REDIS_PREFIX`, in characters. */
export const MAX_REDIS_PREFIX_LENGTH = 64;

/**
 * The defaults, used for every variable that is unset or empty (except
 * `REDIS_PREFIX`: see {@linkcode loadConfig}).
 */
export const DEFAULT_CONFIG: Readonly<Config> = {
  port: 8000,
  hostname: "0.0.0.0",
  historySize: 1000,
  joinHistory: 50,
  historyBytes: 16 * 1024 * 1024,
  historyFileBytes: 2 * 1024 * 1024,
  maxMessageBytes: 2 * 1024 * 1024,
  maxTextLength: 4000,
  slowConsumerBytes: 8 * 1024 * 1024,
  idleTimeout: 30,
  allowedOrigins: [],
  maxConnections: 10_000,
  maxConnectionsPerIp: 200,
  trustedProxies: [],
  rateLimit: 5,
  rateBurst: 30,
  engine: "memory",
  redisUrl: "redis://127.0.0.1:6379",
  redisPrefix: "parley:",
  logLevel: "info",
  presenceTtl: 60,
  presenceRefresh: 20,
  drainSeconds: 5,
  drainSpreadSeconds: 10,
  auth: "open",
  authSkew: 30,
};

/** The environment variables Parley reads; `deno task start` allows exactly these. */
export const ENV_VARS = [
  "PORT",
  "HOSTNAME",
  "TLS_CERT_FILE",
  "TLS_KEY_FILE",
  "HISTORY_SIZE",
  "JOIN_HISTORY",
  "HISTORY_BYTES",
  "HISTORY_FILE_BYTES",
  "MAX_MESSAGE_BYTES",
  "MAX_TEXT_LENGTH",
  "SLOW_CONSUMER_BYTES",
  "IDLE_TIMEOUT",
  "ALLOWED_ORIGINS",
  "MAX_CONNECTIONS",
  "MAX_CONNECTIONS_PER_IP",
  "TRUSTED_PROXIES",
  "RATE_LIMIT",
  "RATE_BURST",
  "ENGINE",
  "KV_PATH",
  "REDIS_URL",
  "REDIS_PREFIX",
  "REDIS_SENTINELS",
  "REDIS_SENTINEL_NAME",
  "REDIS_CLUSTER",
  "LOG_LEVEL",
  "PRESENCE_TTL",
  "PRESENCE_REFRESH",
  "DRAIN_SECONDS",
  "DRAIN_SPREAD_SECONDS",
  "AUTH",
  "AUTH_SECRET",
  "AUTH_PUBLIC_KEY_FILE",
  "API_KEY",
  "AUTH_SKEW",
] as const;

/**
 * A configuration value that does not parse, or that names something the
 * process cannot use (a file it cannot open, a port in use). Its message is
 * one line.
 */
export class ConfigError extends Error {
  /**
   * @param variable The environment variable.
   * @param value Its value.
   * @param expected What it should have been.
   * @param options `cause`: the failure that showed the value unusable, told
   *   at the end of the message.
   */
  constructor(
    readonly variable: string,
    readonly value: string,
    readonly expected: string,
    options?: ErrorOptions,
  ) {
    const cause = options && "cause" in options ? `; ${oneLine(options.cause)}` : "";
    super(`${variable}=${JSON.stringify(value)}: expected ${expected}${cause}`, options);
    this.name = "ConfigError";
  }
}

/**
 * What a {@linkcode ConfigError} shows instead of a secret's value: its length.
 *
 * @example
 * ```ts
 * hiddenValue("short"); // "[5 bytes, not shown]"
 * ```
 */
export function hiddenValue(value: string, unit: "bytes" | "characters" = "bytes"): string {
  const length = unit === "bytes" ? new TextEncoder().encode(value).length : [...value].length;
  return `[${length} ${unit}, not shown]`;
}

/** An error as one line: its name and message, whitespace runs collapsed. */
function oneLine(error: unknown): string {
  return String(error).replace(/\s+/g, " ").trim();
}

/**
 * Names the setting behind a failure of `Deno.serve` to listen: a port in
 * use is `PORT`'s, an address this machine does not have is `HOSTNAME`'s.
 *
 * @returns A {@linkcode ConfigError}, or `error` itself when no setting explains it.
 */
export function listenError(
  error: unknown,
  config: Pick<Config, "port" | "hostname" | "certFile" | "keyFile">,
): unknown {
  const { port, hostname, certFile, keyFile } = config;
  const address = `${hostname.includes(":") ? `[${hostname}]` : hostname}:${port}`;
  if (error instanceof Deno.errors.AddrInUse) {
    return new ConfigError("PORT", String(port), `a free port (${address} is in use)`, {
      cause: error,
    });
  }
  if (error instanceof Deno.errors.PermissionDenied) {
    return new ConfigError(
      "PORT",
      String(port),
      "a port this process may listen on (below 1024 needs privileges)",
      { cause: error },
    );
  }
  if (error instanceof Deno.errors.AddrNotAvailable) {
    return new ConfigError("HOSTNAME", hostname, "an address of this machine, or 0.0.0.0", {
      cause: error,
    });
  }
  if (error instanceof Deno.errors.InvalidData && certFile) {
    return new ConfigError(
      "TLS_CERT_FILE",
      certFile,
      `a PEM certificate that goes with the PEM key TLS_KEY_FILE=${JSON.stringify(keyFile)}`,
      { cause: error },
    );
  }
  return error;
}

/**
 * What to print, and the exit code, when the server cannot start: a
 * {@linkcode ConfigError} exits with 2, anything else with 1; either way one
 * line on standard error and no stack trace.
 */
export function startupFailure(error: unknown): { line: string; code: number } {
  if (error instanceof ConfigError) return { line: `parley: ${error.message}`, code: 2 };
  return { line: `parley: cannot start: ${oneLine(error)}`, code: 1 };
}

/** Reads a variable; unset and empty both mean "use the default". */
export type EnvReader = (name: string) => string | undefined;

function integer(
  env: EnvReader,
  name: string,
  fallback: number,
  min: number,
  max: number,
  what = "an integer",
): number {
  const raw = env(name)?.trim();
  if (raw === undefined || raw === "") return fallback;
  const value = /^\d+$/.test(raw) ? Number(raw) : NaN;
  if (!Number.isSafeInteger(value) || value < min || value > max) {
    throw new ConfigError(name, raw, `${what} from ${min} to ${max}`);
  }
  return value;
}

/** Parses a byte count with an optional suffix: `65536`, `64KiB`, `2MiB`. */
function bytes(env: EnvReader, name: string, fallback: number, min: number, max: number): number {
  const raw = env(name)?.trim();
  if (raw === undefined || raw === "") return fallback;
  const match = /^(\d+)\s*(B|KiB|MiB|GiB)?$/i.exec(raw);
  const units: Record<string, number> = { b: 1, kib: 1024, mib: 1024 ** 2, gib: 1024 ** 3 };
  const value = match ? Number(match[1]) * units[(match[2] ?? "b").toLowerCase()] : NaN;
  if (!Number.isSafeInteger(value) || value < min || value > max) {
    throw new ConfigError(
      name,
      raw,
      `a byte count from ${min} to ${max} (optionally with KiB, MiB or GiB)`,
    );
  }
  return value;
}

function list(env: EnvReader, name: string, check: (item: string) => boolean, what: string) {
  const raw = env(name)?.trim() ?? "";
  const items = raw.split(",").map((item) => item.trim()).filter(Boolean);
  const wrong = items.find((item) => !check(item));
  if (wrong !== undefined) {
    throw new ConfigError(name, raw, `${what}; ${JSON.stringify(wrong)} is not`);
  }
  return items;
}

/**
 * Reads `REDIS_PREFIX`. Unlike other variables, set but empty is an error,
 * not the default: a deployment that meant "no prefix" would otherwise
 * share every room with the deployments on the default one. White space
 * (a stray character from a template) and `{`/`}` (Redis Cluster's hash-tag
 * characters, which would move every room to one slot or break the tag)
 * are refused too.
 */
function prefix(env: EnvReader, fallback: string): string {
  const raw = env("REDIS_PREFIX");
  if (raw === undefined) return fallback;
  if (
    raw.length === 0 || raw.length > MAX_REDIS_PREFIX_LENGTH || !/^[\x21-\x7e]+$/.test(raw) ||
    /[{}]/.test(raw)
  ) {
    throw new ConfigError(
      "REDIS_PREFIX",
      raw,
      `1 to ${MAX_REDIS_PREFIX_LENGTH} visible ASCII characters without white space, { or }, ` +
        `such as ${fallback} or staging: (unset it for the default ${fallback})`,
    );
  }
  return raw;
}

/**
 * A `host:port` address (`[::1]:26379` for IPv6) as host and port, or
 * undefined when it is not one (a port from 1 to 65535).
 */
export function hostPort(item: string): { host: string; port: number } | undefined {
  const match = /^(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9._-]+)):(\d{1,5})$/.exec(item.trim());
  const port = match ? Number(match[3]) : NaN;
  if (!match || port < 1 || port > 65535) return undefined;
  return { host: match[1] ?? match[2], port };
}

/**
 * Reads `REDIS_SENTINELS`, `REDIS_SENTINEL_NAME` and `REDIS_CLUSTER`: the
 * sentinels and their name go together; Sentinel and a cluster exclude each
 * other; a cluster has only database 0; and all three belong to the redis
 * engine (set with another, they were most likely meant for it).
 */
function redisTopology(env: EnvReader, engine: EngineName, redisUrl: string): RedisTopologyConfig {
  const addresses = (name: string) =>
    list(env, name, (item) => hostPort(item) !== undefined, "a comma-separated list of host:port");
  const sentinels = addresses("REDIS_SENTINELS");
  const cluster = addresses("REDIS_CLUSTER");
  const name = env("REDIS_SENTINEL_NAME")?.trim() ?? "";
  const raw = (variable: string) => env(variable)?.trim() ?? "";
  for (
    const [variable, set] of [
      ["REDIS_SENTINELS", sentinels.length > 0],
      ["REDIS_SENTINEL_NAME", name !== ""],
      ["REDIS_CLUSTER", cluster.length > 0],
    ] as const
  ) {
    if (set && engine !== "redis") {
      throw new ConfigError(
        variable,
        raw(variable),
        `unset unless ENGINE=redis (ENGINE is ${engine})`,
      );
    }
  }
  if (name !== "" && !/^[A-Za-z0-9._:-]{1,64}$/.test(name)) {
    throw new ConfigError(
      "REDIS_SENTINEL_NAME",
      name,
      "1 to 64 characters from A-Z a-z 0-9 . _ : - (the <name> of sentinel monitor <name> ...)",
    );
  }
  if (sentinels.length > 0 && name === "") {
    throw new ConfigError(
      "REDIS_SENTINEL_NAME",
      "",
      "the name the sentinels monitor the primary under (sentinel monitor <name> ...), " +
        "since REDIS_SENTINELS is set",
    );
  }
  if (name !== "" && sentinels.length === 0) {
    throw new ConfigError(
      "REDIS_SENTINELS",
      raw("REDIS_SENTINELS"),
      "a comma-separated list of sentinels as host:port, since REDIS_SENTINEL_NAME is set",
    );
  }
  if (cluster.length > 0 && sentinels.length > 0) {
    throw new ConfigError(
      "REDIS_CLUSTER",
      raw("REDIS_CLUSTER"),
      "unset when REDIS_SENTINELS is set: Redis is reached through Sentinel or a cluster, not both",
    );
  }
  if (cluster.length > 0 && !/^rediss?:\/\/[^/]*(\/0?)?$/.test(redisUrl)) {
    throw new ConfigError(
      "REDIS_URL",
      redisUrl,
      "no database number (or /0) when REDIS_CLUSTER is set: a cluster has only database 0",
    );
  }
  const topology: RedisTopologyConfig = {};
  if (sentinels.length > 0) {
    topology.redisSentinels = sentinels;
    topology.redisSentinelName = name;
  }
  if (cluster.length > 0) topology.redisCluster = cluster;
  return topology;
}

const isOrigin = (item: string) => {
  if (item === "*") return true;
  try {
    return new URL(item).origin === item;
  } catch {
    return false;
  }
};

/**
 * Builds the configuration from the environment.
 *
 * @param env Where to read variables; defaults to `Deno.env.get`.
 * @throws {ConfigError} When a value does not parse.
 */
export function loadConfig(env: EnvReader = (name) => Deno.env.get(name)): Config {
  const d = DEFAULT_CONFIG;
  const hostname = env("HOSTNAME")?.trim() || d.hostname;
  if (!/^[A-Za-z0-9.:_\-\[\]]+$/.test(hostname)) {
    throw new ConfigError("HOSTNAME", hostname, "a host name or IP address");
  }
  const certFile = env("TLS_CERT_FILE")?.trim() || undefined;
  const keyFile = env("TLS_KEY_FILE")?.trim() || undefined;
  if (Boolean(certFile) !== Boolean(keyFile)) {
    const [set, unset] = certFile
      ? ["TLS_CERT_FILE", "TLS_KEY_FILE"]
      : ["TLS_KEY_FILE", "TLS_CERT_FILE"];
    throw new ConfigError(unset, "", `a PEM file path, since ${set} is set`);
  }
  const logLevel = (env("LOG_LEVEL")?.trim().toLowerCase() || d.logLevel) as LogLevel;
  if (!LOG_LEVELS.includes(logLevel)) {
    throw new ConfigError("LOG_LEVEL", env("LOG_LEVEL") ?? "", `one of ${LOG_LEVELS.join(", ")}`);
  }
  const engine = (env("ENGINE")?.trim().toLowerCase() || d.engine) as EngineName;
  if (!ENGINES.includes(engine)) {
    throw new ConfigError("ENGINE", env("ENGINE") ?? "", `one of ${ENGINES.join(", ")}`);
  }
  const redisUrl = env("REDIS_URL")?.trim() || d.redisUrl;
  if (!/^rediss?:\/\/[^\s]+$/.test(redisUrl)) {
    throw new ConfigError("REDIS_URL", redisUrl, "a URL such as redis://127.0.0.1:6379");
  }
  const redisPrefix = prefix(env, d.redisPrefix);
  const topology = redisTopology(env, engine, redisUrl);
  const historySize = integer(env, "HISTORY_SIZE", d.historySize, 1, 1_000_000);
  const presenceTtl = integer(env, "PRESENCE_TTL", d.presenceTtl, 2, 86400, "seconds");
  // Unset, the refresh stays under a shorter TTL: a third of it, so that a
  // late refresh or two still lands before the entry expires.
  const refreshFallback = Math.min(d.presenceRefresh, Math.max(1, Math.floor(presenceTtl / 3)));
  const presenceRefresh = integer(env, "PRESENCE_REFRESH", refreshFallback, 1, 86400, "seconds");
  if (presenceRefresh >= presenceTtl) {
    throw new ConfigError(
      "PRESENCE_REFRESH",
      env("PRESENCE_REFRESH")!.trim(),
      `seconds less than PRESENCE_TTL (${presenceTtl})`,
    );
  }
  const maxMessageBytes = bytes(env, "MAX_MESSAGE_BYTES", d.maxMessageBytes, 1024, 1024 ** 3);
  const auth = authSettings(env);
  return {
    port: integer(env, "PORT", d.port, 0, 65535, "an integer port"),
    hostname,
    certFile,
    keyFile,
    historySize,
    joinHistory: integer(env, "JOIN_HISTORY", Math.min(d.joinHistory, historySize), 0, historySize),
    historyBytes: bytes(env, "HISTORY_BYTES", d.historyBytes, 0, 1024 ** 3),
    historyFileBytes: bytes(env, "HISTORY_FILE_BYTES", d.historyFileBytes, 0, 1024 ** 3),
    maxMessageBytes,
    maxTextLength: integer(env, "MAX_TEXT_LENGTH", d.maxTextLength, 1, maxMessageBytes),
    slowConsumerBytes: bytes(env, "SLOW_CONSUMER_BYTES", d.slowConsumerBytes, 1024, 1024 ** 3),
    idleTimeout: integer(env, "IDLE_TIMEOUT", d.idleTimeout, 0, 86400, "seconds"),
    allowedOrigins: list(
      env,
      "ALLOWED_ORIGINS",
      isOrigin,
      "a comma-separated list of origins such as https://chat.example.com, or *",
    ),
    maxConnections: integer(env, "MAX_CONNECTIONS", d.maxConnections, 1, 10_000_000),
    maxConnectionsPerIp: integer(
      env,
      "MAX_CONNECTIONS_PER_IP",
      d.maxConnectionsPerIp,
      1,
      10_000_000,
    ),
    trustedProxies: list(
      env,
      "TRUSTED_PROXIES",
      (item) => /^[0-9A-Fa-f.:]+$/.test(item),
      "a comma-separated list of IP addresses",
    ),
    rateLimit: integer(env, "RATE_LIMIT", d.rateLimit, 1, 1_000_000, "messages per second"),
    rateBurst: integer(env, "RATE_BURST", d.rateBurst, 1, 1_000_000, "a message count"),
    engine,
    kvPath: env("KV_PATH")?.trim() || undefined,
    redisUrl,
    redisPrefix,
    logLevel,
    presenceTtl,
    presenceRefresh,
    drainSeconds: integer(env, "DRAIN_SECONDS", d.drainSeconds, 0, 3600, "seconds"),
    drainSpreadSeconds: integer(
      env,
      "DRAIN_SPREAD_SECONDS",
      d.drainSpreadSeconds,
      0,
      3600,
      "seconds",
    ),
    ...auth,
    ...topology,
  };
}

/**
 * Reads `AUTH`, `AUTH_SECRET`, `AUTH_PUBLIC_KEY_FILE`, `API_KEY` and
 * `AUTH_SKEW`. Secrets are read as they are (not trimmed), and an error about
 * one tells its length, never its value.
 */
function authSettings(
  env: EnvReader,
): Pick<Config, "auth" | "authSecret" | "authPublicKeyFile" | "apiKey" | "authSkew"> {
  const auth = (env("AUTH")?.trim().toLowerCase() || DEFAULT_CONFIG.auth) as AuthMode;
  if (!AUTH_MODES.includes(auth)) {
    throw new ConfigError("AUTH", env("AUTH") ?? "", `one of ${AUTH_MODES.join(", ")}`);
  }
  const authSecret = env("AUTH_SECRET") || undefined;
  if (
    authSecret !== undefined &&
    new TextEncoder().encode(authSecret).length < MIN_AUTH_SECRET_BYTES
  ) {
    throw new ConfigError(
      "AUTH_SECRET",
      hiddenValue(authSecret),
      `a secret of at least ${MIN_AUTH_SECRET_BYTES} bytes (openssl rand -base64 32 makes one)`,
    );
  }
  const authPublicKeyFile = env("AUTH_PUBLIC_KEY_FILE")?.trim() || undefined;
  if (auth === "token" && !authSecret && !authPublicKeyFile) {
    throw new ConfigError(
      "AUTH_SECRET",
      "",
      `a secret of at least ${MIN_AUTH_SECRET_BYTES} bytes, or AUTH_PUBLIC_KEY_FILE, ` +
        "since AUTH=token",
    );
  }
  if (auth === "token" && authSecret && authPublicKeyFile) {
    throw new ConfigError(
      "AUTH_PUBLIC_KEY_FILE",
      authPublicKeyFile,
      "unset when AUTH_SECRET is set: AUTH=token verifies tokens with one key",
    );
  }
  if (auth === "open" && authPublicKeyFile) {
    // Most likely AUTH=token was forgotten: refuse rather than run open by mistake.
    throw new ConfigError(
      "AUTH_PUBLIC_KEY_FILE",
      authPublicKeyFile,
      "unset unless AUTH=token (AUTH is open)",
    );
  }
  const apiKey = env("API_KEY") || undefined;
  if (apiKey !== undefined && ([...apiKey].length < MIN_API_KEY_LENGTH || /^\s|\s$/.test(apiKey))) {
    throw new ConfigError(
      "API_KEY",
      hiddenValue(apiKey, "characters"),
      `a key of at least ${MIN_API_KEY_LENGTH} characters, without white space at either end`,
    );
  }
  const authSkew = integer(
    env,
    "AUTH_SKEW",
    DEFAULT_CONFIG.authSkew,
    0,
    MAX_AUTH_SKEW,
    "seconds",
  );
  return { auth, authSecret, authPublicKeyFile, apiKey, authSkew };
}
