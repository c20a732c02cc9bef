/**
 * A peer the benchmark suite measures Parley against: Bun's own WebSocket
 * server with its native pub/sub. Every socket subscribes to one topic and
 * each frame is published to it; `ws.publish` skips the sender, so the sender
 * gets its copy with `ws.send`, as in `bench/baseline.ts`. The backpressure
 * limit is raised so that Bun queues like the other relays instead of
 * dropping copies for a slow reader. Bun comes from `bench/.peers`
 * (`bash bench/install_peers.sh`).
 *
 * @module
 */

import process from "node:process";

declare const Bun: {
  serve(options: unknown): { hostname: string; port: number };
};
type Socket = {
  subscribe(t: string): void;
  send(m: unknown): void;
  publish(t: string, m: unknown): void;
};

const server = Bun.serve({
  hostname: process.env.HOSTNAME || "127.0.0.1",
  port: Number(process.env.PORT || 0),
  fetch: (req: Request, srv: { upgrade(r: Request): boolean }) =>
    srv.upgrade(req) ? undefined : new Response("bun\n"),
  websocket: {
    backpressureLimit: 2 ** 31 - 1,
    open: (ws: Socket) => ws.subscribe("room"),
    message(ws: Socket, message: string | Uint8Array) {
      ws.send(message);
      ws.publish("room", message);
    },
  },
});
console.log(`Bun listening on http://${server.hostname}:${server.port}/`);
