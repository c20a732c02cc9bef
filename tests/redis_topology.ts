/**
 * Test helpers: Redis deployments of several processes on 127.0.0.1 and free
 * ports, nothing saved to disk. {@linkcode startSentinels} starts a primary,
 * a replica and three sentinels; {@linkcode startCluster} a Redis Cluster of
 * three primaries. Every process is stopped, and its directory removed, by
 * the `stop()` of what started it.
 *
 * @module
 */

import { freePort, ping } from "./redis_server.ts";

/** One `redis-server` process (a server or a sentinel). */
export interface RedisProcess {
  port: number;
  /** `127.0.0.1:PORT` */
  address: string;
  /** Kills it at once (SIGKILL), as a crash would. */
  kill(): void;
  /** Stops it (SIGTERM) and waits until it exited. Safe after `kill()` and twice. */
  stop(): Promise<void>;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Starts `redis-server` with `args` on `port` and waits until it answers PING. */
async function spawnRedis(port: number, args: string[]): Promise<RedisProcess> {
  const child = new Deno.Command("redis-server", {
    args,
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  let exited = false;
  const status = child.status.then(() => exited = true);
  const process: RedisProcess = {
    port,
    address: `127.0.0.1:${port}`,
    kill() {
      if (exited) return;
      try {
        child.kill("SIGKILL");
      } catch {
        // Already gone.
      }
    },
    async stop() {
      if (!exited) {
        try {
          child.kill("SIGTERM");
        } catch {
          // Already gone.
        }
      }
      await status;
    },
  };
  const end = Date.now() + 5000;
  while (!(await ping(port))) {
    if (exited || Date.now() > end) {
      await process.stop();
      throw new Error(`redis-server ${args.join(" ")} did not answer on port ${port}`);
    }
    await sleep(20);
  }
  return process;
}

/** The options every test server gets: loopback only, nothing saved. */
function serverArgs(port: number, dir: string): string[] {
  return ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    .concat(["--dir", dir]);
}

/** Runs `redis-cli` with `args` and returns its standard output (it must succeed). */
export async function redisCli(...args: string[]): Promise<string> {
  const { success, stdout, stderr } = await new Deno.Command("redis-cli", {
    args,
    stdin: "null",
  }).output();
  const text = new TextDecoder().decode(stdout);
  if (!success) {
    throw new Error(`redis-cli ${args.join(" ")} failed: ${new TextDecoder().decode(stderr)}`);
  }
  return text;
}

/** Polls `check` every 50 ms until it is true, or throws after `ms`. */
async function until(check: () => Promise<boolean>, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!(await check().catch(() => false))) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

/** `field:value` lines of `INFO` or `CLUSTER INFO`, as a map. */
function infoFields(text: string): Map<string, string> {
  const fields = new Map<string, string>();
  for (const line of text.split(/\r?\n/)) {
    const at = line.indexOf(":");
    if (at > 0) fields.set(line.slice(0, at), line.slice(at + 1).trim());
  }
  return fields;
}

/** A primary, its replica and three sentinels that watch them. */
export interface SentinelSetup {
  /** The name the sentinels monitor the primary under. */
  name: string;
  primary: RedisProcess;
  replica: RedisProcess;
  sentinels: RedisProcess[];
  /** The primary the sentinels name now, as `127.0.0.1:PORT`, asking the first that answers. */
  currentPrimary(): Promise<string>;
  /** Stops every process and removes the directory. */
  stop(): Promise<void>;
}

/**
 * Starts a primary, a replica of it and three sentinels (quorum 2) that
 * consider the primary down after `downAfterMs`, and waits until the
 * replica is in sync and every sentinel knows the replica and the two other
 * sentinels, so that a failover can happen.
 */
export async function startSentinels(
  options: { name?: string; downAfterMs?: number } = {},
): Promise<SentinelSetup> {
  const name = options.name ?? "parley-primary";
  const downAfterMs = options.downAfterMs ?? 1000;
  const dir = await Deno.makeTempDir({ prefix: "parley-sentinel-" });
  const started: RedisProcess[] = [];
  const stop = async () => {
    await Promise.all(started.map((p) => p.stop()));
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  };
  try {
    const primaryPort = freePort();
    await Deno.mkdir(`${dir}/primary`);
    const primary = await spawnRedis(primaryPort, serverArgs(primaryPort, `${dir}/primary`));
    started.push(primary);
    const replicaPort = freePort();
    await Deno.mkdir(`${dir}/replica`);
    const replica = await spawnRedis(
      replicaPort,
      [
        ...serverArgs(replicaPort, `${dir}/replica`),
        "--replicaof",
        "127.0.0.1",
        String(primaryPort),
      ],
    );
    started.push(replica);
    await until(
      async () => {
        const info = infoFields(await redisCli("-p", String(replicaPort), "INFO", "replication"));
        return info.get("master_link_status") === "up";
      },
      10_000,
      "the replica to sync",
    );

    const sentinels: RedisProcess[] = [];
    for (let i = 0; i < 3; i++) {
      const port = freePort();
      const conf = `${dir}/sentinel-${port}.conf`;
      await Deno.writeTextFile(
        conf,
        [
          `port ${port}`,
          "bind 127.0.0.1",
          `dir ${dir}`,
          `sentinel monitor ${name} 127.0.0.1 ${primaryPort} 2`,
          `sentinel down-after-milliseconds ${name} ${downAfterMs}`,
          `sentinel failover-timeout ${name} 5000`,
          `sentinel parallel-syncs ${name} 1`,
          "",
        ].join("\n"),
      );
      const sentinel = await spawnRedis(port, [conf, "--sentinel"]);
      started.push(sentinel);
      sentinels.push(sentinel);
    }
    // Sentinels find the replica and each other through hello messages, every 2 s.
    await until(
      async () => {
        for (const sentinel of sentinels) {
          const lines =
            (await redisCli("-p", String(sentinel.port), "--raw", "SENTINEL", "master", name))
              .split("\n");
          const field = (key: string) => lines[lines.indexOf(key) + 1];
          if (field("num-slaves") !== "1" || field("num-other-sentinels") !== "2") return false;
        }
        return true;
      },
      15_000,
      "the sentinels to know the replica and each other",
    );

    return {
      name,
      primary,
      replica,
      sentinels,
      async currentPrimary() {
        for (const sentinel of sentinels) {
          try {
            const [host, port] = (await redisCli(
              "-p",
              String(sentinel.port),
              "--raw",
              "SENTINEL",
              "get-master-addr-by-name",
              name,
            )).trim().split("\n");
            if (host && port) return `${host}:${port}`;
          } catch {
            // That sentinel is gone: ask the next.
          }
        }
        throw new Error("no sentinel answered");
      },
      stop,
    };
  } catch (error) {
    await stop();
    throw error;
  }
}

/** A Redis Cluster of primaries without replicas. */
export interface RedisCluster {
  nodes: RedisProcess[];
  /** `127.0.0.1:PORT` of each node. */
  addresses: string[];
  /** Stops every node and removes the directory. */
  stop(): Promise<void>;
  /** Kills every node and removes the directory without waiting, for `unload`. */
  kill(): void;
}

/**
 * Starts `count` (at least 3) cluster-enabled servers, joins them into one
 * cluster with `redis-cli --cluster create` (the slots split evenly) and
 * waits until every node says `cluster_state:ok`.
 */
export async function startCluster(count = 3): Promise<RedisCluster> {
  const dir = await Deno.makeTempDir({ prefix: "parley-cluster-" });
  const nodes: RedisProcess[] = [];
  const stop = async () => {
    await Promise.all(nodes.map((node) => node.stop()));
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  };
  try {
    for (let i = 0; i < count; i++) {
      const port = freePort();
      nodes.push(
        await spawnRedis(port, [
          ...serverArgs(port, dir),
          "--cluster-enabled",
          "yes",
          "--cluster-config-file",
          `${dir}/nodes-${port}.conf`,
          "--cluster-node-timeout",
          "2000",
        ]),
      );
    }
    const addresses = nodes.map((node) => node.address);
    await redisCli("--cluster", "create", ...addresses, "--cluster-replicas", "0", "--cluster-yes");
    await until(
      async () => {
        for (const node of nodes) {
          const info = infoFields(await redisCli("-p", String(node.port), "CLUSTER", "INFO"));
          if (
            info.get("cluster_state") !== "ok" || info.get("cluster_known_nodes") !== String(count)
          ) {
            return false;
          }
        }
        return true;
      },
      15_000,
      "cluster_state:ok on every node",
    );
    const kill = () => {
      for (const node of nodes) node.kill();
      try {
        Deno.removeSync(dir, { recursive: true });
      } catch {
        // Already gone.
      }
    };
    return { nodes, addresses, stop, kill };
  } catch (error) {
    await stop();
    throw error;
  }
}
