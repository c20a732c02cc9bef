import assert from "node:assert/strict";
import {
  type ErrorCode,
  messageEnvelope,
  parseClientEnvelope,
  ProtocolError,
  rawText,
  type StoredMessage,
} from "../lib/protocol.ts";

const limits = { maxTextLength: 10, maxMessageBytes: 1000 };

const good: [string, unknown, unknown][] = [
  ["hello, minimal", { type: "hello", nick: "ann" }, {
    type: "hello",
    nick: "ann",
    client: undefined,
    last: undefined,
  }],
  ["hello, nick trimmed", { type: "hello", nick: "  ann " }, {
    type: "hello",
    nick: "ann",
    client: undefined,
    last: undefined,
  }],
  [
    "hello, full",
    { type: "hello", nick: "ann", client: "abcdefgh", last: { epoch: "e1", id: 4 } },
    { type: "hello", nick: "ann", client: "abcdefgh", last: { epoch: "e1", id: 4 } },
  ],
  ["hello, last null (a fresh join)", { type: "hello", nick: "ann", last: null }, {
    type: "hello",
    nick: "ann",
    client: undefined,
    last: null,
  }],
  ["message", { type: "message", cid: "c-1", text: "hi", extra: 1 }, {
    type: "message",
    cid: "c-1",
    text: "hi",
  }],
  ["message, longest text", { type: "message", cid: "c", text: "x".repeat(10) }, {
    type: "message",
    cid: "c",
    text: "x".repeat(10),
  }],
  [
    "file",
    { type: "file", cid: "f:1", name: "cat.png", mime: "image/png", size: 12 },
    { type: "file", cid: "f:1", name: "cat.png", mime: "image/png", size: 12 },
  ],
  ["nick", { type: "nick", nick: "bob" }, { type: "nick", nick: "bob" }],
  ["nick, 32 characters", { type: "nick", nick: "é".repeat(32) }, {
    type: "nick",
    nick: "é".repeat(32),
  }],
  ["ping", { type: "ping" }, { type: "ping" }],
  ["message, text counted in code points", { type: "message", cid: "c", text: "😀".repeat(10) }, {
    type: "message",
    cid: "c",
    text: "😀".repeat(10),
  }],
  ["message with reply_to", { type: "message", cid: "c", text: "yes", reply_to: 4 }, {
    type: "message",
    cid: "c",
    text: "yes",
    replyTo: 4,
  }],
  ["edit", { type: "edit", cid: "e", id: 3, text: "fixed" }, {
    type: "edit",
    cid: "e",
    id: 3,
    text: "fixed",
  }],
  ["delete", { type: "delete", cid: "d", id: 3 }, { type: "delete", cid: "d", id: 3 }],
  ["history, default limit", { type: "history", before: 9 }, {
    type: "history",
    before: 9,
    limit: 50,
  }],
  ["history, largest page", { type: "history", before: 9, limit: 200 }, {
    type: "history",
    before: 9,
    limit: 200,
  }],
  ["typing", { type: "typing" }, { type: "typing" }],
];

for (const [name, input, expected] of good) {
  Deno.test(`protocol accepts ${name}`, () => {
    assert.deepEqual(parseClientEnvelope(JSON.stringify(input), limits), expected);
  });
}

const bad: [string, string, ErrorCode, RegExp, string?][] = [
  ["not JSON", "{nope", "bad_json", /not valid JSON/],
  ["a JSON array", "[1]", "bad_json", /JSON object/],
  ["a JSON string", '"hi"', "bad_json", /JSON object/],
  ["null", "null", "bad_json", /JSON object/],
  ["no type", "{}", "unknown_type", /type: missing/],
  ["unknown type", '{"type":"shout"}', "unknown_type", /"shout" is not one of/],
  ["unknown type keeps cid", '{"type":"x","cid":"c9"}', "unknown_type", /not one of/, "c9"],
  ["hello, nick not a string", '{"type":"hello","nick":5}', "bad_nick", /must be a string/],
  ["hello, empty nick", '{"type":"hello","nick":"   "}', "bad_nick", /empty/],
  [
    "hello, long nick",
    JSON.stringify({ type: "hello", nick: "x".repeat(33) }),
    "bad_nick",
    /at most 32/,
  ],
  [
    "hello, control char",
    JSON.stringify({ type: "hello", nick: "a\u0007b" }),
    "bad_nick",
    /control/,
  ],
  ["hello, short client", '{"type":"hello","nick":"a","client":"abc"}', "bad_envelope", /client/],
  ["hello, last not object", '{"type":"hello","nick":"a","last":5}', "bad_last", /last/],
  [
    "hello, negative id",
    '{"type":"hello","nick":"a","last":{"epoch":"e","id":-1}}',
    "bad_last",
    /last.id/,
  ],
  [
    "hello, fractional id",
    '{"type":"hello","nick":"a","last":{"epoch":"e","id":1.5}}',
    "bad_last",
    /last.id/,
  ],
  [
    "hello, bad epoch",
    '{"type":"hello","nick":"a","last":{"epoch":"e e","id":1}}',
    "bad_last",
    /last.epoch/,
  ],
  ["message without cid", '{"type":"message","text":"hi"}', "bad_envelope", /cid/],
  ["message, bad cid", '{"type":"message","cid":"a b","text":"hi"}', "bad_envelope", /cid/],
  ["message, empty text", '{"type":"message","cid":"c1","text":""}', "bad_envelope", /text/, "c1"],
  [
    "message, long text",
    JSON.stringify({ type: "message", cid: "c1", text: "x".repeat(11) }),
    "bad_envelope",
    /1 to 10/,
    "c1",
  ],
  [
    "message, text not string",
    '{"type":"message","cid":"c1","text":5}',
    "bad_envelope",
    /text/,
    "c1",
  ],
  [
    "file, bad mime",
    '{"type":"file","cid":"c","name":"a","mime":"png","size":1}',
    "bad_envelope",
    /mime/,
    "c",
  ],
  [
    "file, too big",
    '{"type":"file","cid":"c","name":"a","mime":"a/b","size":1001}',
    "bad_envelope",
    /size/,
    "c",
  ],
  ["file, no name", '{"type":"file","cid":"c","mime":"a/b","size":1}', "bad_envelope", /name/, "c"],
  ["nick, empty", '{"type":"nick","nick":""}', "bad_nick", /empty/],
  [
    "message, 11 code points",
    JSON.stringify({ type: "message", cid: "c1", text: "😀".repeat(11) }),
    "bad_envelope",
    /1 to 10 characters/,
    "c1",
  ],
  [
    "message, reply_to not an id",
    '{"type":"message","cid":"c1","text":"a","reply_to":"4"}',
    "bad_envelope",
    /reply_to/,
    "c1",
  ],
  ["edit without id", '{"type":"edit","cid":"e1","text":"a"}', "bad_envelope", /id/, "e1"],
  ["edit, empty text", '{"type":"edit","cid":"e1","id":2,"text":""}', "bad_envelope", /text/, "e1"],
  ["delete without cid", '{"type":"delete","id":2}', "bad_envelope", /cid/],
  ["delete, id 0", '{"type":"delete","cid":"d","id":0}', "bad_envelope", /id/, "d"],
  ["history without before", '{"type":"history"}', "bad_envelope", /before/],
  ["history, limit 0", '{"type":"history","before":3,"limit":0}', "bad_envelope", /limit/],
  ["history, limit 201", '{"type":"history","before":3,"limit":201}', "bad_envelope", /limit/],
];

for (const [name, input, code, message, cid] of bad) {
  Deno.test(`protocol rejects ${name} with ${code}`, () => {
    assert.throws(() => parseClientEnvelope(input, limits), (error: unknown) => {
      assert.ok(error instanceof ProtocolError);
      assert.equal(error.code, code);
      assert.match(error.message, message);
      assert.equal(error.cid, cid);
      return true;
    });
  });
}

const base: StoredMessage = { room: "r", epoch: "e", id: 7, ts: 1, from: null };

Deno.test("protocol maps raw text to a rich message from nobody, and rich text to raw", () => {
  const fromRaw = { ...base, text: "plain" };
  assert.deepEqual(JSON.parse(messageEnvelope(fromRaw)), {
    type: "message",
    id: 7,
    epoch: "e",
    ts: 1,
    from: null,
    text: "plain",
  });
  assert.equal(rawText(fromRaw), "plain");
  const fromRich = {
    ...base,
    from: { id: "m1", nick: "ann" },
    cid: "c1",
    text: "hi",
    sender: "secret-client",
  };
  assert.equal(rawText(fromRich), "ann: hi");
  const wire = messageEnvelope(fromRich);
  assert.ok(!wire.includes("secret-client"), "the private client id never leaves");
  assert.equal(JSON.parse(wire).cid, "c1");
});

Deno.test("protocol builds file envelopes, marking files kept without bytes", () => {
  const file = { ...base, name: "a.png", mime: "image/png", size: 3, data: new Uint8Array(3) };
  const wire = JSON.parse(messageEnvelope(file));
  assert.deepEqual(wire, {
    type: "file",
    id: 7,
    epoch: "e",
    ts: 1,
    from: null,
    name: "a.png",
    mime: "image/png",
    size: 3,
  });
  assert.equal(JSON.parse(messageEnvelope({ ...file, data: undefined })).omitted, true);
});

Deno.test("protocol builds edit, delete and tombstone envelopes, and their raw lines", () => {
  const ann = { id: "a1", nick: "ann" };
  const edit = { ...base, from: ann, kind: "edit" as const, target: 3, text: "new" };
  assert.deepEqual(JSON.parse(messageEnvelope(edit)), {
    type: "edit",
    id: 7,
    epoch: "e",
    ts: 1,
    from: ann,
    target: 3,
    text: "new",
  });
  assert.equal(rawText(edit), "* ann edited a message: new");
  const del = { ...base, from: ann, kind: "delete" as const, target: 3 };
  assert.equal(JSON.parse(messageEnvelope(del)).type, "delete");
  assert.equal(rawText(del), "* ann deleted a message");
  const gone = { ...base, from: ann, deleted: true };
  assert.deepEqual(JSON.parse(messageEnvelope(gone)), {
    type: "message",
    id: 7,
    epoch: "e",
    ts: 1,
    from: ann,
    deleted: true,
  });
  assert.equal(rawText(gone), undefined);
  assert.equal(rawText({ ...edit, deleted: true, text: undefined }), undefined);
  const edited = { ...base, from: ann, text: "v2", edited: 5, replyTo: 2 };
  const wire = JSON.parse(messageEnvelope(edited));
  assert.equal(wire.edited, 5);
  assert.equal(wire.reply_to, 2);
});
