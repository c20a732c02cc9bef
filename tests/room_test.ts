/**
 * One room's fan-out on its own: every peer gets each event once and in
 * order, a peer over the watermark keeps a cursor and catches up from the
 * room's single buffer, and batch peers at one position share one frame.
 *
 * @module
 */
import assert from "node:assert/strict";
import { Connection } from "../lib/connection.ts";
import type { EngineEvent } from "../lib/engine.ts";
import { Room } from "../lib/room.ts";
import { FakeSocket, makeHub, until } from "./fakes.ts";

function message(id: number): EngineEvent {
  return {
    type: "message",
    message: { room: "r", epoch: "e", id, ts: 0, from: null, text: `m${id}` },
  };
}

Deno.test("Room.fanOut() sends each event once, in order, to every peer", () => {
  const hub = makeHub();
  const room = new Room("r", hub);
  const sockets = [new FakeSocket(), new FakeSocket()];
  for (const socket of sockets) room.add(new Connection(hub, socket, { room: "r", rich: false }));
  for (let id = 1; id <= 5; id++) room.fanOut(message(id));
  for (const socket of sockets) assert.deepEqual(socket.sent, ["m1", "m2", "m3", "m4", "m5"]);
  room.stop();
});

Deno.test("Room keeps a lagging peer's place and catches it up in order from one buffer", async () => {
  const hub = makeHub({ lowWatermark: 10 });
  const room = new Room("r", hub);
  const fast = new FakeSocket();
  const slow = new FakeSocket();
  room.add(new Connection(hub, fast, { room: "r", rich: false }));
  const slowConn = new Connection(hub, slow, { room: "r", rich: false });
  room.add(slowConn);
  slow.stalled = true;
  slow.bufferedAmount = 1000;
  for (let id = 1; id <= 20; id++) room.fanOut(message(id));
  assert.equal(fast.sent.length, 20);
  assert.ok(slow.sent.length < 20, "the stalled peer was not written to");
  assert.ok(room.lagging.has(slowConn));
  assert.ok(room.entries.length - room.head <= 20, "one copy per event");
  slow.drain();
  await until(() => slow.sent.length === 20, "the catch-up");
  assert.deepEqual(slow.sent, fast.sent);
  assert.equal(room.lagging.size, 0);
  assert.equal(room.entries.length, 0, "the buffer empties once nobody lags");
  room.stop();
});

Deno.test("Room.delete() forgets a peer and its place; stop() leaves no timer", () => {
  const hub = makeHub({ lowWatermark: 10 });
  const room = new Room("r", hub);
  const socket = new FakeSocket();
  const conn = new Connection(hub, socket, { room: "r", rich: false });
  room.add(conn);
  socket.bufferedAmount = 1000;
  room.fanOut(message(1));
  room.fanOut(message(2));
  assert.ok(room.lagging.has(conn));
  assert.equal(room.delete(conn), true);
  assert.equal(room.delete(conn), false);
  assert.equal(room.lagging.size, 0);
  room.stop();
});
