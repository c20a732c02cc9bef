/**
 * The baseline the benchmark suite measures Parley against: the smallest Deno
 * relay that does the same raw-mode job. Every text or binary frame goes to
 * every open socket, the sender included; no rooms, limits or history.
 *
 * `PORT` (0: a free one) and `HOSTNAME` as for Parley; it prints its address
 * the way Parley does, so `bench/run.ts` starts both the same way.
 *
 * @module
 */

const sockets = new Set<WebSocket>();

function relay(data: string | ArrayBuffer): void {
  for (const socket of sockets) if (socket.readyState === WebSocket.OPEN) socket.send(data);
}

Deno.serve({
  hostname: Deno.env.get("HOSTNAME") || "127.0.0.1",
  port: Number(Deno.env.get("PORT") || 0),
  onListen: ({ hostname, port }) =>
    console.log(`Baseline listening on http://${hostname}:${port}/`),
}, (req) => {
  if (req.headers.get("upgrade")?.toLowerCase() !== "websocket") return new Response("baseline\n");
  const { socket, response } = Deno.upgradeWebSocket(req);
  socket.binaryType = "arraybuffer";
  socket.onopen = () => sockets.add(socket);
  socket.onclose = () => sockets.delete(socket);
  socket.onmessage = (event) => relay(event.data);
  return response;
});
