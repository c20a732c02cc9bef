/**
 * How the Redis engine reaches Redis: one server (`REDIS_URL`), a primary
 * found and followed through Sentinel (`REDIS_SENTINELS`), or a Redis Cluster
 * (`REDIS_CLUSTER`). Each gives the engine two connections, one for commands
 * and one for pub/sub, with the same calls whatever the topology:
 *
 * - Sentinel: ioredis asks the sentinels for the primary, checks the role of
 *   the server it reached, and asks again on every reconnection, so after a
 *   failover both connections come back to the new primary by themselves.
 * - Cluster: commands go to the shard of their key's slot (every key of a
 *   room has the room as its hash tag, so a room's scripts run on one shard),
 *   and fan-out is sharded pub/sub: `SPUBLISH` in the scripts, `SSUBSCRIBE`
 *   on one subscriber connection per shard, so no node carries every message.
 *
 * @module
 */

import type { Buffer } from "node:buffer";
import { Cluster, Redis, type RedisOptions } from "ioredis";
import { hostPort } from "../../config.ts";

/** A `host:port` address of a sentinel or a cluster node. */
export interface HostPort {
  host: string;
  port: number;
}

/** Where Redis is: see {@linkcode topologyOf}. */
export type RedisTopology =
  | { kind: "single"; url: string }
  | { kind: "sentinel"; url: string; sentinels: HostPort[]; name: string }
  | { kind: "cluster"; url: string; nodes: HostPort[] };

/** The settings that choose a topology; a Parley `Config` has them. */
export interface TopologyOptions {
  /** The server, or the credentials, database and TLS of the others. */
  redisUrl: string;
  /** Sentinels, as `host:port`; with `redisSentinelName`. */
  redisSentinels?: string[];
  /** The name the sentinels monitor the primary under. */
  redisSentinelName?: string;
  /** Some nodes of a Redis Cluster, as `host:port`; the others are discovered. */
  redisCluster?: string[];
}

/**
 * Parses `host:port` (`[::1]:6379` for IPv6).
 *
 * @throws {SyntaxError} When it is not a host and a port from 1 to 65535.
 */
export function parseHostPort(item: string): HostPort {
  const address = hostPort(item);
  if (!address) throw new SyntaxError(`Cannot use ${JSON.stringify(item)}: expected host:port`);
  return address;
}

/** Picks the topology the settings name: a cluster, Sentinel, or the one server of the URL. */
export function topologyOf(options: TopologyOptions): RedisTopology {
  const url = options.redisUrl;
  if (options.redisCluster && options.redisCluster.length > 0) {
    if (options.redisSentinels && options.redisSentinels.length > 0) {
      throw new RangeError("Cannot use Redis Cluster and Sentinel at once: choose one");
    }
    return { kind: "cluster", url, nodes: options.redisCluster.map(parseHostPort) };
  }
  if (options.redisSentinels && options.redisSentinels.length > 0) {
    if (!options.redisSentinelName) {
      throw new RangeError("Cannot use Sentinel without the name of the primary it monitors");
    }
    return {
      kind: "sentinel",
      url,
      sentinels: options.redisSentinels.map(parseHostPort),
      name: options.redisSentinelName,
    };
  }
  return { kind: "single", url };
}

/** The topology for logs, without a password. */
export function describeTopology(topology: RedisTopology): string {
  const url = topology.url.replace(/\/\/[^@/]*@/, "//***@");
  const list = (items: HostPort[]) =>
    items.map(({ host, port }) => `${host.includes(":") ? `[${host}]` : host}:${port}`).join(",");
  switch (topology.kind) {
    case "single":
      return url;
    case "sentinel":
      return `sentinel ${topology.name} via ${list(topology.sentinels)}`;
    case "cluster":
      return `cluster ${list(topology.nodes)}`;
  }
}

/** A connection of either kind; both have the commands the engine uses. */
export type Client = Redis | Cluster;

/**
 * The options the engine gives every connection (ioredis's names): no
 * offline queue, no retries of a failed command, a command timeout, and its
 * reconnection schedule.
 */
export interface ClientOptions {
  commandTimeout: number;
  disconnectTimeout: number;
  retryStrategy: (attempt: number) => number;
}

/** An engine's two connections and what differs between the topologies. */
export interface Connections {
  topology: RedisTopology;
  /** Commands and scripts. */
  commands: Client;
  /** Pub/sub only. */
  subscriber: Client;
  /** Sharded pub/sub (`SPUBLISH`, `SSUBSCRIBE`): on a cluster. */
  sharded: boolean;
  /** Subscribes to channels (each on its shard, on a cluster). */
  subscribe(channels: string[]): Promise<void>;
  /** Unsubscribes from a channel. */
  unsubscribe(channel: string): Promise<void>;
  /** Publishes on a channel, as the scripts do. */
  publish(channel: string, payload: string): Promise<unknown>;
  /** Calls `listener` with every message of a subscribed channel. */
  onMessage(listener: (channel: Buffer, payload: Buffer) => void): void;
  /**
   * Calls `lost` when a shard's subscriber connection went away (messages
   * may have been missed) and `regained` when the subscribers were set up
   * again; only a cluster has these, on top of the subscriber's own
   * `close` and `ready`.
   */
  onShards(lost: () => void, regained: () => void): void;
  /** Whether every primary answers PING. */
  ping(): Promise<boolean>;
}

/** How long a closing socket may take before it is destroyed. */
export const DISCONNECT_MS = 50;

/** `username`, `password`, `db` and `tls` of a URL, for connections that do not take it. */
function urlOptions(url: string): RedisOptions {
  const parsed = new URL(url);
  const options: RedisOptions = {};
  if (parsed.username) options.username = decodeURIComponent(parsed.username);
  if (parsed.password) options.password = decodeURIComponent(parsed.password);
  if (parsed.protocol === "rediss:") options.tls = {};
  return options;
}

/** Opens (lazily: `connect()` them) the two connections of a topology. */
export function openConnections(topology: RedisTopology, client: ClientOptions): Connections {
  const common = {
    lazyConnect: true,
    protocol: 2 as const,
    maxRetriesPerRequest: 0,
    autoResendUnfulfilledCommands: false,
    autoResubscribe: false,
    commandTimeout: client.commandTimeout,
    connectTimeout: client.commandTimeout,
    disconnectTimeout: client.disconnectTimeout,
  };
  if (topology.kind === "cluster") return clusterConnections(topology, client, common);
  const make = (connectionName: string) => {
    const options: RedisOptions = {
      ...common,
      enableOfflineQueue: false,
      retryStrategy: client.retryStrategy,
      connectionName,
    };
    if (topology.kind === "single") return new Redis(topology.url, options);
    // The URL's user, password, database and TLS apply to the primary; its
    // host and port are not used.
    return new Redis(topology.url, {
      ...options,
      sentinels: topology.sentinels,
      name: topology.name,
      role: "master",
      // A primary demoted to a replica refuses writes: find the new one.
      reconnectOnError: (error: Error) => error.message.startsWith("READONLY"),
      sentinelRetryStrategy: client.retryStrategy,
      sentinelCommandTimeout: client.commandTimeout,
      enableTLSForSentinelMode: topology.url.startsWith("rediss:"),
    });
  };
  const commands = make("parley");
  const subscriber = make("parley-sub");
  return {
    topology,
    commands,
    subscriber,
    sharded: false,
    async subscribe(channels) {
      await subscriber.subscribe(...channels);
    },
    async unsubscribe(channel) {
      await subscriber.unsubscribe(channel);
    },
    publish: (channel, payload) => commands.publish(channel, payload),
    onMessage(listener) {
      subscriber.on("messageBuffer", listener);
    },
    onShards() {},
    async ping() {
      return await commands.ping() === "PONG";
    },
  };
}

function clusterConnections(
  topology: Extract<RedisTopology, { kind: "cluster" }>,
  client: ClientOptions,
  common: Omit<RedisOptions, "enableOfflineQueue" | "retryStrategy">,
): Connections {
  const make = (connectionName: string, shardedSubscribers: boolean) =>
    new Cluster(topology.nodes, {
      lazyConnect: true,
      enableOfflineQueue: false,
      scaleReads: "master",
      shardedSubscribers,
      clusterRetryStrategy: client.retryStrategy,
      // A node that went away comes back without waiting for a MOVED.
      clusterNodeRetryStrategy: client.retryStrategy,
      slotsRefreshTimeout: client.commandTimeout,
      retryDelayOnFailover: 100,
      retryDelayOnClusterDown: 100,
      redisOptions: { ...common, ...urlOptions(topology.url), connectionName },
    });
  const commands = make("parley", false);
  const subscriber = make("parley-sub", true);
  return {
    topology,
    commands,
    subscriber,
    sharded: true,
    async subscribe(channels) {
      // One call per channel: the channels of one call must share a slot.
      await Promise.all(channels.map((channel) => subscriber.ssubscribe(channel)));
    },
    async unsubscribe(channel) {
      await subscriber.sunsubscribe(channel);
    },
    publish: (channel, payload) => commands.spublish(channel, payload),
    onMessage(listener) {
      subscriber.on("smessageBuffer", listener);
    },
    onShards(lost, regained) {
      subscriber.on("-subscriber", lost);
      subscriber.on("subscribersReady", regained);
    },
    async ping() {
      const primaries = commands.nodes("master");
      if (primaries.length === 0) return false;
      const answers = await Promise.all(primaries.map((node) => node.ping()));
      return answers.every((answer) => answer === "PONG");
    },
  };
}

/** Closes a connection for good and waits until its sockets and timers are gone. */
export async function shut(client: Client): Promise<void> {
  await end(client);
  // A cluster's shard subscribers close apart from it, each socket with a
  // timer that destroys it if it lingers.
  if (client instanceof Cluster) {
    await new Promise((resolve) => setTimeout(resolve, DISCONNECT_MS + 10));
  }
}

async function end(client: Client): Promise<void> {
  const ended = () =>
    new Promise<void>((resolve) => {
      if (client.status === "end") resolve();
      else client.once("end", () => resolve());
    });
  if (client.status === "ready") {
    const done = ended();
    try {
      await client.quit();
      await done;
      return;
    } catch {
      // Not answered: disconnect below.
    }
  }
  if (client.status === "end") return;
  const live = client.status === "connecting" || client.status === "connect" ||
    client.status === "ready";
  // Between attempts there is no socket to wait for, only the client's timer
  // that destroys the previous one.
  const done = live || client instanceof Cluster
    ? ended()
    : new Promise((resolve) => setTimeout(resolve, DISCONNECT_MS + 10));
  client.disconnect();
  await done;
}
