/**
 * IDLE_TIMEOUT: a peer that stops answering pings (a dead network, a frozen
 * client) leaves its room within the timeout.
 */
import assert from "node:assert/strict";
import { connect, startServer, waitFor } from "./helpers.ts";
import { RawSocket } from "./raw_socket.ts";

Deno.test("a peer that never answers pings leaves its room within IDLE_TIMEOUT", async () => {
  const server = await startServer({ idleTimeout: 1 });
  // Reads nothing and so answers no ping: as dead as a peer can be.
  const dead = await RawSocket.open(server.port, "/idle");
  const alive = await connect(`${server.ws}/idle`);
  try {
    await waitFor(() => server.app.hub.roomSize("idle") === 2, 5000, "both joined");
    const start = Date.now();
    await waitFor(() => server.app.hub.roomSize("idle") === 1, 10_000, "the dead peer to leave");
    const waited = Date.now() - start;
    // Deno pings after IDLE_TIMEOUT and drops the peer when the next one passes
    // without a pong: within two timeouts, plus slack for a loaded machine.
    assert.ok(waited < 5000, `left after ${waited} ms`);
    // The browser-like client answers pings and stays.
    alive.send("still here");
    assert.equal(await alive.text(), "still here");
  } finally {
    await alive.close();
    await dead.close();
    await server.close();
  }
});
