import assert from "node:assert/strict";
import {
  accessTo,
  AuthError,
  type Identity,
  isRoomPattern,
  matchRoom,
} from "../lib/auth/identity.ts";

const identity = (lists: Partial<Pick<Identity, "rooms" | "read" | "mod">>): Identity => ({
  sub: "ann",
  name: "Ann",
  rooms: [],
  read: [],
  mod: [],
  exp: 0,
  ...lists,
});

Deno.test("matchRoom() matches a plain pattern exactly", () => {
  assert.equal(matchRoom("team", "team"), true);
  assert.equal(matchRoom("team", "team-a"), false);
  assert.equal(matchRoom("team", "tea"), false);
  assert.equal(matchRoom("team", "Team"), false, "room names are case-sensitive");
  assert.equal(matchRoom("team-a", "team"), false);
});

Deno.test("matchRoom() treats a trailing * as a prefix wildcard", () => {
  assert.equal(matchRoom("team-*", "team-a"), true);
  assert.equal(matchRoom("team-*", "team-"), true);
  assert.equal(matchRoom("team-*", "team-a-b"), true);
  assert.equal(matchRoom("team-*", "team"), false);
  assert.equal(matchRoom("team-*", "teams"), false);
  assert.equal(matchRoom("team*", "teams"), true);
  assert.equal(matchRoom("team*", "team"), true);
  assert.equal(matchRoom("*", "lobby"), true);
  assert.equal(matchRoom("*", "x"), true);
});

Deno.test("isRoomPattern() accepts room names with an optional trailing *, or * alone", () => {
  for (
    const pattern of ["team", "team-*", "*", "a", "A_b-9*", "x".repeat(64), "x".repeat(64) + "*"]
  ) {
    assert.equal(isRoomPattern(pattern), true, pattern);
  }
  const bad = ["", "**", "*team", "te*am", "team **", "team a", "x".repeat(65), "é", "a/b", "a.b"];
  for (const pattern of [...bad, 42, null, undefined, ["team"]]) {
    assert.equal(isRoomPattern(pattern), false, String(pattern));
  }
});

Deno.test("accessTo() gives write where a rooms pattern matches", () => {
  const ann = identity({ rooms: ["team", "proj-*"] });
  assert.deepEqual(accessTo(ann, "team"), { access: "write", moderator: false });
  assert.deepEqual(accessTo(ann, "proj-x"), { access: "write", moderator: false });
  assert.deepEqual(accessTo(ann, "other"), { access: "none", moderator: false });
});

Deno.test("accessTo() gives read where only a read pattern matches", () => {
  const ann = identity({ rooms: ["team"], read: ["news", "team", "*"] });
  assert.deepEqual(accessTo(ann, "news"), { access: "read", moderator: false });
  assert.deepEqual(accessTo(ann, "anything"), { access: "read", moderator: false });
  assert.deepEqual(accessTo(ann, "team"), { access: "write", moderator: false }, "write wins");
});

Deno.test("accessTo() makes a moderator able to read and write the room", () => {
  const ann = identity({ read: ["team"], mod: ["team", "ops-*"] });
  assert.deepEqual(accessTo(ann, "team"), { access: "write", moderator: true });
  assert.deepEqual(accessTo(ann, "ops-1"), { access: "write", moderator: true });
  assert.deepEqual(accessTo(ann, "lobby"), { access: "none", moderator: false });
  const writer = identity({ rooms: ["*"], mod: ["team"] });
  assert.deepEqual(accessTo(writer, "lobby"), { access: "write", moderator: false });
  assert.deepEqual(accessTo(writer, "team"), { access: "write", moderator: true });
});

Deno.test("accessTo() gives nothing to an identity without patterns", () => {
  assert.deepEqual(accessTo(identity({}), "lobby"), { access: "none", moderator: false });
});

Deno.test("AuthError carries its code and message", () => {
  const error = new AuthError("forbidden", "not a member of team");
  assert.ok(error instanceof Error);
  assert.equal(error.name, "AuthError");
  assert.equal(error.code, "forbidden");
  assert.equal(error.message, "not a member of team");
  assert.equal(new AuthError("unauthorized", "token expired").code, "unauthorized");
});
