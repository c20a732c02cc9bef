/**
 * A peer the benchmark suite measures Parley against: the smallest Node relay
 * on `ws`, the most used WebSocket server package. Every text or binary frame
 * goes to every open socket, the sender included, as in `bench/baseline.ts`.
 * `ws` comes from `bench/.peers` (`bash bench/install_peers.sh`).
 *
 * @module
 */

import { createServer } from "node:http";
import { createRequire } from "node:module";
import process from "node:process";

const { WebSocket, WebSocketServer } = createRequire(import.meta.url)("./.peers/node_modules/ws");
const sockets = new Set();
const server = createServer((_req, res) => res.end("node ws\n"));
new WebSocketServer({ server }).on("connection", (socket) => {
  sockets.add(socket);
  socket.on("close", () => sockets.delete(socket));
  socket.on("message", (data, isBinary) => {
    for (const s of sockets) {
      if (s.readyState === WebSocket.OPEN) s.send(data, { binary: isBinary });
    }
  });
});
server.listen(Number(process.env.PORT || 0), process.env.HOSTNAME || "127.0.0.1", () => {
  const { address, port } = server.address();
  console.log(`Node ws listening on http://${address}:${port}/`);
});
