/**
 * Backpressure under a burst: a peer that reads slowly (or not at all for a
 * while) against one that reads as fast as it can. The slow one is written to
 * only while its queue is short; it either catches up with every message in
 * order or is evicted with 4001 and resumes without loss. No timing is
 * asserted, only order and completeness.
 */
import assert from "node:assert/strict";
import { connect, startServer, type TestServer, waitFor } from "./helpers.ts";
import { encodeFrame, OP_CLOSE, OP_TEXT, RawSocket } from "./raw_socket.ts";

const decoder = new TextDecoder();
const BURST = 3000;
const LINE = "x".repeat(2000);

function hello(socket: RawSocket, nick: string) {
  return socket.write(
    encodeFrame({ opcode: OP_TEXT, payload: JSON.stringify({ type: "hello", nick }) }),
  );
}

/** A speaker sends the burst; resolves once a fast reader has every message. */
async function burst(server: TestServer, room: string) {
  const fast = await connect(`${server.ws}/${room}`);
  const speaker = await connect(`${server.ws}/${room}`);
  let got = 0;
  fast.socket.onmessage = () => got++;
  for (let i = 0; i < BURST; i++) speaker.send(`${i} ${LINE}`);
  await waitFor(() => got === BURST, 30_000, "the fast reader's burst");
  return { fast, speaker };
}

Deno.test("a paused reader catches up with every message in order; the fast reader is not held back", async () => {
  const server = await startServer({
    rateLimit: 1e6,
    rateBurst: 1e6,
    slowConsumerBytes: 64 * 1024 * 1024,
  });
  const slow = await RawSocket.open(server.port, "/bp");
  try {
    await waitFor(() => server.app.hub.roomSize("bp") === 1, 5000, "the slow reader joined");
    // The slow reader reads nothing until the fast one has the whole burst.
    const { fast, speaker } = await burst(server, "bp");
    const seen: number[] = [];
    while (seen.length < BURST) {
      const frame = await slow.frame(10_000);
      assert.ok(frame, "the connection stayed open");
      assert.equal(frame.opcode, OP_TEXT);
      seen.push(Number(decoder.decode(frame.payload.subarray(0, 8)).split(" ")[0]));
    }
    assert.deepEqual(seen, Array.from({ length: BURST }, (_, i) => i));
    assert.equal(server.app.hub.metrics.get("parley_slow_consumer_evictions_total"), 0);
    await fast.close();
    await speaker.close();
  } finally {
    await slow.close();
    await server.close();
  }
});

Deno.test("a reader that falls too far behind is evicted with 4001 and resumes without loss", async () => {
  const server = await startServer({
    rateLimit: 1e6,
    rateBurst: 1e6,
    slowConsumerBytes: 1024 * 1024,
    historySize: BURST + 100,
    historyBytes: 64 * 1024 * 1024,
  });
  const slow = await RawSocket.open(server.port, "/evict", {
    "Sec-WebSocket-Protocol": "parley.v1",
  });
  try {
    await hello(slow, "slow");
    const welcome = await slow.frame();
    const { epoch } = JSON.parse(decoder.decode(welcome!.payload));
    const { fast, speaker } = await burst(server, "evict");
    // It still reads nothing, so its queue stalls and it is evicted.
    const evictions = () => server.app.hub.metrics.get("parley_slow_consumer_evictions_total");
    await waitFor(() => evictions() === 1, 10_000, "the eviction");
    assert.equal(server.app.hub.roomSize("evict"), 2, "it left the room at once");
    // Now read what was sent before the eviction, up to the close.
    const ids: number[] = [];
    let code = 0;
    while (true) {
      const frame = await slow.frame(10_000);
      assert.ok(frame, "a close frame comes before the end");
      if (frame.opcode === OP_CLOSE) {
        code = (frame.payload[0] << 8) | frame.payload[1];
        await slow.write(encodeFrame({ opcode: OP_CLOSE, payload: frame.payload.slice(0, 2) }));
        break;
      }
      const envelope = JSON.parse(decoder.decode(frame.payload));
      if (envelope.type === "message") ids.push(envelope.id);
    }
    assert.equal(code, 4001);
    assert.ok(ids.length < BURST, "it was evicted before the end of the burst");
    const last = ids.at(-1) ?? 0;
    const resumed = await connect(`${server.ws}/evict`, "parley.v1");
    resumed.send({ type: "hello", nick: "slow", last: { epoch, id: last } });
    const back = await resumed.until<{ recovered: boolean; replay: number }>("welcome");
    assert.equal(back.recovered, true);
    for (let i = 0; i < back.replay; i++) {
      const envelope = await resumed.until<{ id: number }>("message");
      ids.push(envelope.id);
    }
    // Raw peers' messages are ids 1..BURST in this room: all, once, in order.
    assert.deepEqual(ids, Array.from({ length: BURST }, (_, i) => i + 1));
    await resumed.close();
    await fast.close();
    await speaker.close();
  } finally {
    await slow.close();
    await server.close();
  }
});
