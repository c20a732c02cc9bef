import assert from "node:assert/strict";
import {
  ConfigError,
  DEFAULT_CONFIG,
  ENV_VARS,
  hostPort,
  listenError,
  loadConfig,
  MAX_REDIS_PREFIX_LENGTH,
  startupFailure,
} from "../lib/config.ts";

const env = (vars: Record<string, string>) => (name: string) => vars[name];
const SECRET = "s3cret-value-of-at-least-32-byte";

Deno.test("config: defaults when nothing is set", () => {
  assert.deepEqual(loadConfig(env({})), {
    ...DEFAULT_CONFIG,
    certFile: undefined,
    keyFile: undefined,
    kvPath: undefined,
    authSecret: undefined,
    authPublicKeyFile: undefined,
    apiKey: undefined,
  });
  assert.equal(DEFAULT_CONFIG.port, 8000);
  assert.equal(DEFAULT_CONFIG.hostname, "0.0.0.0");
});

Deno.test("config: reads every variable", () => {
  const config = loadConfig(env({
    PORT: "9000",
    HOSTNAME: "127.0.0.1",
    TLS_CERT_FILE: "cert.pem",
    TLS_KEY_FILE: "key.pem",
    HISTORY_SIZE: "200",
    JOIN_HISTORY: "20",
    HISTORY_BYTES: "4MiB",
    HISTORY_FILE_BYTES: "512KiB",
    MAX_MESSAGE_BYTES: "65536",
    MAX_TEXT_LENGTH: "500",
    SLOW_CONSUMER_BYTES: "1MiB",
    IDLE_TIMEOUT: "0",
    ALLOWED_ORIGINS: "https://chat.example.com, http://localhost:8000",
    MAX_CONNECTIONS: "500",
    MAX_CONNECTIONS_PER_IP: "20",
    TRUSTED_PROXIES: "127.0.0.1,::1",
    RATE_LIMIT: "2",
    RATE_BURST: "10",
    ENGINE: "Redis",
    KV_PATH: "data/parley.kv",
    REDIS_URL: "redis://10.1.2.3:6380/2",
    REDIS_PREFIX: "staging:",
    LOG_LEVEL: "WARN",
    PRESENCE_TTL: "90",
    PRESENCE_REFRESH: "30",
    DRAIN_SECONDS: "2",
    DRAIN_SPREAD_SECONDS: "20",
    AUTH: "Token",
    AUTH_SECRET: SECRET,
    API_KEY: "api-key-0123456789",
    AUTH_SKEW: "5",
  }));
  assert.deepEqual(config, {
    port: 9000,
    hostname: "127.0.0.1",
    certFile: "cert.pem",
    keyFile: "key.pem",
    historySize: 200,
    joinHistory: 20,
    historyBytes: 4 * 1024 * 1024,
    historyFileBytes: 512 * 1024,
    maxMessageBytes: 65536,
    maxTextLength: 500,
    slowConsumerBytes: 1024 * 1024,
    idleTimeout: 0,
    allowedOrigins: ["https://chat.example.com", "http://localhost:8000"],
    maxConnections: 500,
    maxConnectionsPerIp: 20,
    trustedProxies: ["127.0.0.1", "::1"],
    rateLimit: 2,
    rateBurst: 10,
    engine: "redis",
    kvPath: "data/parley.kv",
    redisUrl: "redis://10.1.2.3:6380/2",
    redisPrefix: "staging:",
    logLevel: "warn",
    presenceTtl: 90,
    presenceRefresh: 30,
    drainSeconds: 2,
    drainSpreadSeconds: 20,
    auth: "token",
    authSecret: SECRET,
    authPublicKeyFile: undefined,
    apiKey: "api-key-0123456789",
    authSkew: 5,
  });
});

Deno.test("config: presence lasts PRESENCE_TTL seconds, refreshed every PRESENCE_REFRESH", () => {
  assert.equal(DEFAULT_CONFIG.presenceTtl, 60);
  assert.equal(DEFAULT_CONFIG.presenceRefresh, 20);
  const both = loadConfig(env({ PRESENCE_TTL: "120", PRESENCE_REFRESH: "119" }));
  assert.deepEqual([both.presenceTtl, both.presenceRefresh], [120, 119]);
  // A shorter TTL alone brings the default refresh under it: a third of it.
  const short = loadConfig(env({ PRESENCE_TTL: "30" }));
  assert.deepEqual([short.presenceTtl, short.presenceRefresh], [30, 10]);
  const shortest = loadConfig(env({ PRESENCE_TTL: "2" }));
  assert.deepEqual([shortest.presenceTtl, shortest.presenceRefresh], [2, 1]);
  const long = loadConfig(env({ PRESENCE_TTL: "600" }));
  assert.equal(long.presenceRefresh, 20);
});

Deno.test("config: a drain waits DRAIN_SECONDS, then spreads its closes over DRAIN_SPREAD_SECONDS", () => {
  assert.deepEqual([DEFAULT_CONFIG.drainSeconds, DEFAULT_CONFIG.drainSpreadSeconds], [5, 10]);
  const none = loadConfig(env({ DRAIN_SECONDS: "0", DRAIN_SPREAD_SECONDS: "0" }));
  assert.deepEqual([none.drainSeconds, none.drainSpreadSeconds], [0, 0]);
  assert.throws(() => loadConfig(env({ DRAIN_SECONDS: "-1" })), /DRAIN_SECONDS/);
  assert.throws(() => loadConfig(env({ DRAIN_SPREAD_SECONDS: "soon" })), /DRAIN_SPREAD_SECONDS/);
});

/** The deno.json tasks that start the server, with the variables each may read (if it lists them). */
async function serverTasks(): Promise<[string, string[] | undefined][]> {
  const deno = JSON.parse(await Deno.readTextFile(new URL("../deno.json", import.meta.url)));
  return Object.entries<string>(deno.tasks)
    .filter(([, command]) => /\b(main|serve)\.ts\b/.test(command))
    .map(([name, command]) => [name, /--allow-env=(\S+)/.exec(command)?.[1].split(",")]);
}

Deno.test("config: every deno task that lists variables allows the presence settings", async () => {
  for (const [name, listed] of await serverTasks()) {
    if (!listed) continue;
    for (const variable of ["PRESENCE_TTL", "PRESENCE_REFRESH"]) {
      assert.ok(listed.includes(variable), `${name} allows ${variable}`);
    }
  }
});

Deno.test("config: every server task that lists variables allows exactly those Parley reads", async () => {
  const tasks = await serverTasks();
  assert.ok(tasks.filter(([, listed]) => listed).length >= 3, "start, start:kv, start:parallel");
  for (const [name, listed] of tasks) {
    if (!listed) continue;
    assert.deepEqual([...listed].sort(), [...ENV_VARS].sort(), name);
  }
  for (const variable of ["AUTH", "AUTH_SECRET", "AUTH_PUBLIC_KEY_FILE", "API_KEY", "AUTH_SKEW"]) {
    assert.ok(ENV_VARS.includes(variable as typeof ENV_VARS[number]), variable);
  }
});

Deno.test("config: auth is open by default, with a skew of 30 seconds", () => {
  const config = loadConfig(env({}));
  assert.equal(config.auth, "open");
  assert.equal(config.authSkew, 30);
  assert.equal(DEFAULT_CONFIG.auth, "open");
  assert.equal(DEFAULT_CONFIG.authSkew, 30);
});

Deno.test("config: AUTH=token takes AUTH_SECRET or AUTH_PUBLIC_KEY_FILE", () => {
  const secret = loadConfig(env({ AUTH: "token", AUTH_SECRET: SECRET }));
  assert.deepEqual([secret.auth, secret.authSecret, secret.authPublicKeyFile], [
    "token",
    SECRET,
    undefined,
  ]);
  const key = loadConfig(env({ AUTH: "token", AUTH_PUBLIC_KEY_FILE: " keys/public.pem " }));
  assert.deepEqual([key.auth, key.authSecret, key.authPublicKeyFile], [
    "token",
    undefined,
    "keys/public.pem",
  ]);
  assert.equal(loadConfig(env({ AUTH: "token", AUTH_SECRET: SECRET, AUTH_SKEW: "0" })).authSkew, 0);
  assert.equal(loadConfig(env({ AUTH_SKEW: "300" })).authSkew, 300);
});

Deno.test("config: AUTH=open may have AUTH_SECRET (to mint tokens) and API_KEY", () => {
  const config = loadConfig(env({ AUTH_SECRET: SECRET, API_KEY: "0123456789abcdef" }));
  assert.equal(config.auth, "open");
  assert.equal(config.authSecret, SECRET);
  assert.equal(config.apiKey, "0123456789abcdef");
});

Deno.test("config: secrets are read byte for byte, and 32 bytes means bytes of UTF-8", () => {
  const padded = ` ${SECRET} `;
  assert.equal(loadConfig(env({ AUTH_SECRET: padded })).authSecret, padded);
  assert.equal(loadConfig(env({ AUTH_SECRET: "é".repeat(16) })).authSecret, "é".repeat(16));
  assert.throws(() => loadConfig(env({ AUTH_SECRET: "é".repeat(15) + "a" })), /31 bytes/);
  assert.equal(loadConfig(env({ AUTH_SECRET: "" })).authSecret, undefined, "empty is unset");
});

Deno.test("config: an error about AUTH_SECRET or API_KEY tells the length, never the value", () => {
  const cases: [Record<string, string>, string, string, RegExp][] = [
    [
      { AUTH_SECRET: "hunter2-hunter2" },
      "AUTH_SECRET",
      "hunter2",
      /^AUTH_SECRET="\[15 bytes, not shown\]": expected a secret of at least 32 bytes/,
    ],
    [
      { AUTH: "token", AUTH_SECRET: "hunter2" },
      "AUTH_SECRET",
      "hunter2",
      /^AUTH_SECRET="\[7 bytes, not shown\]"/,
    ],
    [
      { API_KEY: "opensesame" },
      "API_KEY",
      "opensesame",
      /^API_KEY="\[10 characters, not shown\]": expected a key of at least 16 characters, /,
    ],
  ];
  for (const [vars, variable, secret, message] of cases) {
    assert.throws(() => loadConfig(env(vars)), (error: unknown) => {
      assert.ok(error instanceof ConfigError);
      assert.equal(error.variable, variable);
      assert.match(error.message, message);
      assert.ok(!error.message.includes(secret), error.message);
      assert.ok(!error.value.includes(secret), error.value);
      assert.ok(!String(error.stack).includes(secret), "nor in the stack");
      return true;
    });
  }
});

Deno.test("config: empty values mean the default", () => {
  assert.equal(loadConfig(env({ PORT: "", LOG_LEVEL: " " })).port, 8000);
});

Deno.test("config: REDIS_PREFIX is parley: when unset, and taken as it is when valid", () => {
  assert.equal(DEFAULT_CONFIG.redisPrefix, "parley:");
  assert.equal(loadConfig(env({})).redisPrefix, "parley:");
  for (const prefix of ["a:", "b", "team/chat:", "x".repeat(MAX_REDIS_PREFIX_LENGTH), "p@1-_.|"]) {
    assert.equal(loadConfig(env({ REDIS_PREFIX: prefix })).redisPrefix, prefix);
  }
});

Deno.test("config: REDIS_SENTINELS with REDIS_SENTINEL_NAME, or REDIS_CLUSTER, for the redis engine", () => {
  const none = loadConfig(env({ ENGINE: "redis" }));
  assert.equal("redisSentinels" in none || "redisSentinelName" in none, false, "absent unset");
  assert.equal("redisCluster" in none, false);
  const sentinel = loadConfig(env({
    ENGINE: "redis",
    REDIS_URL: "redis://:secret@ignored:6379/2",
    REDIS_SENTINELS: " 10.0.0.5:26379, sentinel-b.internal:26379 ,[::1]:26380",
    REDIS_SENTINEL_NAME: " parley-main ",
  }));
  assert.deepEqual(sentinel.redisSentinels, [
    "10.0.0.5:26379",
    "sentinel-b.internal:26379",
    "[::1]:26380",
  ]);
  assert.equal(sentinel.redisSentinelName, "parley-main");
  assert.equal(
    sentinel.redisUrl,
    "redis://:secret@ignored:6379/2",
    "credentials and db still read",
  );
  const cluster = loadConfig(env({
    ENGINE: "redis",
    REDIS_CLUSTER: "127.0.0.1:7000,127.0.0.1:7001",
    REDIS_URL: "rediss://user:pw@unused/0",
  }));
  assert.deepEqual(cluster.redisCluster, ["127.0.0.1:7000", "127.0.0.1:7001"]);
  assert.equal("redisSentinels" in cluster, false);
  assert.deepEqual(hostPort("[::1]:26380"), { host: "::1", port: 26380 });
  assert.deepEqual(hostPort("redis-a:7000"), { host: "redis-a", port: 7000 });
  for (const wrong of ["redis-a", "redis-a:0", "redis-a:65536", ":7000", "a b:1", "::1:7000"]) {
    assert.equal(hostPort(wrong), undefined, wrong);
  }
});

const bad: [Record<string, string>, string, RegExp][] = [
  [
    { ENGINE: "redis", REDIS_SENTINELS: "10.0.0.5:26379" },
    "REDIS_SENTINEL_NAME",
    /^REDIS_SENTINEL_NAME="": expected the name the sentinels monitor the primary under .*since REDIS_SENTINELS is set$/,
  ],
  [
    { ENGINE: "redis", REDIS_SENTINEL_NAME: "parley" },
    "REDIS_SENTINELS",
    /^REDIS_SENTINELS="": expected a comma-separated list of sentinels as host:port, since REDIS_SENTINEL_NAME is set$/,
  ],
  [
    { ENGINE: "redis", REDIS_SENTINELS: "10.0.0.5:26379,10.0.0.6", REDIS_SENTINEL_NAME: "p" },
    "REDIS_SENTINELS",
    /^REDIS_SENTINELS="10.0.0.5:26379,10.0.0.6": expected a comma-separated list of host:port; "10.0.0.6" is not$/,
  ],
  [
    { ENGINE: "redis", REDIS_SENTINELS: "10.0.0.5:26379", REDIS_SENTINEL_NAME: "my master" },
    "REDIS_SENTINEL_NAME",
    /^REDIS_SENTINEL_NAME="my master": expected 1 to 64 characters/,
  ],
  [
    { ENGINE: "redis", REDIS_CLUSTER: "10.0.0.9:7000:1" },
    "REDIS_CLUSTER",
    /REDIS_CLUSTER="10.0.0.9:7000:1": expected a comma-separated list of host:port/,
  ],
  [
    {
      ENGINE: "redis",
      REDIS_CLUSTER: "10.0.0.9:7000",
      REDIS_SENTINELS: "10.0.0.5:26379",
      REDIS_SENTINEL_NAME: "p",
    },
    "REDIS_CLUSTER",
    /^REDIS_CLUSTER="10.0.0.9:7000": expected unset when REDIS_SENTINELS is set/,
  ],
  [
    { ENGINE: "redis", REDIS_CLUSTER: "10.0.0.9:7000", REDIS_URL: "redis://10.0.0.9:7000/3" },
    "REDIS_URL",
    /^REDIS_URL="redis:\/\/10.0.0.9:7000\/3": expected no database number \(or \/0\) when REDIS_CLUSTER is set/,
  ],
  [
    { REDIS_CLUSTER: "10.0.0.9:7000" },
    "REDIS_CLUSTER",
    /^REDIS_CLUSTER="10.0.0.9:7000": expected unset unless ENGINE=redis \(ENGINE is memory\)$/,
  ],
  [
    { ENGINE: "kv", REDIS_SENTINELS: "10.0.0.5:26379", REDIS_SENTINEL_NAME: "p" },
    "REDIS_SENTINELS",
    /expected unset unless ENGINE=redis \(ENGINE is kv\)$/,
  ],
  [{ PORT: "abc" }, "PORT", /^PORT="abc": expected an integer port from 0 to 65535$/],
  [{ PORT: "65536" }, "PORT", /65535/],
  [{ PORT: "-1" }, "PORT", /PORT="-1"/],
  [{ PORT: "80.5" }, "PORT", /PORT="80.5"/],
  [{ HOSTNAME: "bad host" }, "HOSTNAME", /host name or IP/],
  [{ TLS_CERT_FILE: "c.pem" }, "TLS_KEY_FILE", /since TLS_CERT_FILE is set/],
  [{ TLS_KEY_FILE: "k.pem" }, "TLS_CERT_FILE", /since TLS_KEY_FILE is set/],
  [{ HISTORY_SIZE: "0" }, "HISTORY_SIZE", /from 1 to/],
  [{ JOIN_HISTORY: "2000" }, "JOIN_HISTORY", /from 0 to 1000/],
  [{ MAX_MESSAGE_BYTES: "2 apples" }, "MAX_MESSAGE_BYTES", /byte count/],
  [{ MAX_MESSAGE_BYTES: "10" }, "MAX_MESSAGE_BYTES", /from 1024/],
  [{ IDLE_TIMEOUT: "soon" }, "IDLE_TIMEOUT", /seconds/],
  [{ ALLOWED_ORIGINS: "evil.com" }, "ALLOWED_ORIGINS", /"evil.com" is not/],
  [{ ALLOWED_ORIGINS: "https://a.com/path" }, "ALLOWED_ORIGINS", /list of origins/],
  [{ TRUSTED_PROXIES: "proxy.local" }, "TRUSTED_PROXIES", /IP addresses/],
  [{ MAX_CONNECTIONS: "0" }, "MAX_CONNECTIONS", /from 1/],
  [{ RATE_LIMIT: "fast" }, "RATE_LIMIT", /messages per second/],
  [{ ENGINE: "mongo" }, "ENGINE", /one of memory, kv, redis/],
  [{ REDIS_URL: "localhost:6379" }, "REDIS_URL", /redis:\/\//],
  // Set but empty is refused (not the default): it would share the default deployment's rooms.
  [
    { REDIS_PREFIX: "" },
    "REDIS_PREFIX",
    /^REDIS_PREFIX="": expected 1 to 64 visible ASCII characters without white space, \{ or \}, such as parley: or staging: \(unset it for the default parley:\)$/,
  ],
  [{ REDIS_PREFIX: " " }, "REDIS_PREFIX", /^REDIS_PREFIX=" ": expected 1 to 64/],
  [{ REDIS_PREFIX: "a :" }, "REDIS_PREFIX", /without white space/],
  [{ REDIS_PREFIX: "a:\t" }, "REDIS_PREFIX", /REDIS_PREFIX="a:\\t"/],
  [{ REDIS_PREFIX: "{a}:" }, "REDIS_PREFIX", /\{ or \}/],
  [{ REDIS_PREFIX: "a{" }, "REDIS_PREFIX", /\{ or \}/],
  [{ REDIS_PREFIX: "a}" }, "REDIS_PREFIX", /\{ or \}/],
  [{ REDIS_PREFIX: "chat\u00e9:" }, "REDIS_PREFIX", /visible ASCII/],
  [{ REDIS_PREFIX: "x".repeat(65) }, "REDIS_PREFIX", /1 to 64/],
  [{ LOG_LEVEL: "loud" }, "LOG_LEVEL", /one of debug, info, warn, error, silent/],
  [{ PRESENCE_TTL: "0" }, "PRESENCE_TTL", /^PRESENCE_TTL="0": expected seconds from 2 to 86400$/],
  [{ PRESENCE_TTL: "1.5" }, "PRESENCE_TTL", /PRESENCE_TTL="1.5"/],
  [{ PRESENCE_REFRESH: "0" }, "PRESENCE_REFRESH", /PRESENCE_REFRESH="0": expected seconds/],
  [{ PRESENCE_REFRESH: "-5" }, "PRESENCE_REFRESH", /PRESENCE_REFRESH="-5"/],
  [
    { PRESENCE_REFRESH: "60" },
    "PRESENCE_REFRESH",
    /^PRESENCE_REFRESH="60": expected seconds less than PRESENCE_TTL \(60\)$/,
  ],
  [
    { PRESENCE_TTL: "30", PRESENCE_REFRESH: "45" },
    "PRESENCE_REFRESH",
    /less than PRESENCE_TTL \(30\)/,
  ],
  [{ AUTH: "jwt" }, "AUTH", /^AUTH="jwt": expected one of open, token$/],
  [{ AUTH: "token" }, "AUTH_SECRET", /or AUTH_PUBLIC_KEY_FILE, since AUTH=token$/],
  [
    { AUTH: "token", AUTH_SECRET: SECRET, AUTH_PUBLIC_KEY_FILE: "k.pem" },
    "AUTH_PUBLIC_KEY_FILE",
    /^AUTH_PUBLIC_KEY_FILE="k.pem": expected unset when AUTH_SECRET is set/,
  ],
  [
    { AUTH_PUBLIC_KEY_FILE: "k.pem" },
    "AUTH_PUBLIC_KEY_FILE",
    /^AUTH_PUBLIC_KEY_FILE="k.pem": expected unset unless AUTH=token \(AUTH is open\)$/,
  ],
  [{ AUTH_SKEW: "301" }, "AUTH_SKEW", /^AUTH_SKEW="301": expected seconds from 0 to 300$/],
  [{ AUTH_SKEW: "-1" }, "AUTH_SKEW", /AUTH_SKEW="-1"/],
  [{ AUTH_SKEW: "a while" }, "AUTH_SKEW", /seconds/],
];

for (const [vars, variable, message] of bad) {
  Deno.test(`config: rejects ${JSON.stringify(vars)}`, () => {
    assert.throws(() => loadConfig(env(vars)), (error: unknown) => {
      assert.ok(error instanceof ConfigError);
      assert.equal(error.variable, variable);
      assert.match(error.message, message);
      assert.ok(!error.message.includes("\n"), "one line");
      return true;
    });
  });
}

Deno.test("config: `deno task start` may read exactly the variables Parley reads", async () => {
  const deno = JSON.parse(await Deno.readTextFile(new URL("../deno.json", import.meta.url)));
  const listed = /--allow-env=(\S+)/.exec(deno.tasks.start)?.[1].split(",") ?? [];
  assert.deepEqual([...listed].sort(), [...ENV_VARS].sort());
});

Deno.test("config: a ConfigError tells its cause on the same line", () => {
  const cause = new Deno.errors.NotFound("No such file\nor directory");
  const error = new ConfigError("TLS_KEY_FILE", "k.pem", "a readable PEM file", { cause });
  assert.equal(
    error.message,
    'TLS_KEY_FILE="k.pem": expected a readable PEM file; NotFound: No such file or directory',
  );
  assert.equal(error.cause, cause);
});

Deno.test("config: listenError names the setting behind a failure to listen", () => {
  const config = { port: 8000, hostname: "::1", certFile: "c.pem", keyFile: "k.pem" };
  const cases: [Error, string, RegExp][] = [
    [
      new Deno.errors.AddrInUse("in use"),
      "PORT",
      /^PORT="8000": expected a free port \(\[::1\]:8000/,
    ],
    [new Deno.errors.PermissionDenied("denied"), "PORT", /^PORT="8000": .*privileges/],
    [new Deno.errors.AddrNotAvailable("nope"), "HOSTNAME", /^HOSTNAME="::1": /],
    [new Deno.errors.InvalidData("no certs"), "TLS_CERT_FILE", /TLS_KEY_FILE="k.pem"/],
  ];
  for (const [cause, variable, message] of cases) {
    const error = listenError(cause, config);
    assert.ok(error instanceof ConfigError, cause.name);
    assert.equal(error.variable, variable);
    assert.match(error.message, message);
    assert.equal(error.cause, cause);
  }
  const other = new Deno.errors.NotCapable("no net");
  assert.equal(listenError(other, config), other);
  const plain = new Deno.errors.InvalidData("no certs");
  assert.equal(listenError(plain, { ...config, certFile: undefined }), plain);
});

Deno.test("config: startupFailure is one line, exit code 2 for a setting and 1 otherwise", () => {
  assert.deepEqual(startupFailure(new ConfigError("PORT", "x", "a port")), {
    line: 'parley: PORT="x": expected a port',
    code: 2,
  });
  assert.deepEqual(startupFailure(new TypeError("bad\n  thing")), {
    line: "parley: cannot start: TypeError: bad thing",
    code: 1,
  });
});

Deno.test("config: rejects an API_KEY with white space at either end, without showing it", () => {
  for (const key of [" a-key-of-sixteen-chars", "a-key-of-sixteen-chars\n"]) {
    assert.throws(
      () => loadConfig((name) => (name === "API_KEY" ? key : undefined)),
      (error: Error) => error.message.includes("white space") && !error.message.includes("sixteen"),
    );
  }
});
