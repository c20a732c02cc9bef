import assert from "node:assert/strict";
import { checkName, checkPatterns, checkSub } from "../lib/auth/claims.ts";

Deno.test("checkSub() takes 1 to 64 characters without control characters", () => {
  assert.equal(checkSub("ann"), "ann");
  assert.equal(checkSub(" ann "), " ann ", "a sub is an id: kept as it is");
  assert.equal(checkSub("é".repeat(64)), "é".repeat(64));
  assert.throws(() => checkSub(undefined), TypeError);
  assert.throws(() => checkSub(12), /^TypeError: sub must be a string$/);
  assert.throws(() => checkSub(""), /^RangeError: sub must be 1 to 64 characters, not 0$/);
  assert.throws(() => checkSub("é".repeat(65)), /not 65$/);
  assert.throws(() => checkSub("a\tb"), /^RangeError: sub must not contain control characters$/);
});

Deno.test("checkName() trims, bounds and applies the nickname rules", () => {
  assert.equal(checkName("  Ann  "), "Ann");
  assert.equal(checkName("🦊".repeat(32)), "🦊".repeat(32));
  assert.throws(() => checkName(undefined), /^TypeError: name must be a string$/);
  assert.throws(() => checkName(" "), /^RangeError: name must be 1 to 32 characters, not 0$/);
  assert.throws(() => checkName("x".repeat(33)), /not 33$/);
  assert.throws(() => checkName("a\u2067b"), /^RangeError: name must not contain bidirectional/);
  assert.throws(() => checkName("a\ufeffb"), /^RangeError: name must not contain invisible/);
});

Deno.test("checkName() falls back to the sub, cut to 32 characters", () => {
  assert.equal(checkName(undefined, "ann"), "ann");
  assert.equal(checkName(undefined, "x".repeat(40)), "x".repeat(32));
  assert.equal(
    checkName(undefined, `${"x".repeat(31)} y`),
    "x".repeat(31),
    "trimmed after the cut",
  );
  assert.equal(checkName("Ann", "ann-id"), "Ann", "a name wins");
  assert.throws(
    () => checkName(undefined, "a\u200bb"),
    /invisible .* \(there is no name, so it comes from sub\)$/,
  );
  assert.throws(() => checkName(null, "ann"), TypeError, "null is not absent");
});

Deno.test("checkPatterns() takes an array of room patterns, [] when absent", () => {
  assert.deepEqual(checkPatterns("rooms", undefined), []);
  assert.deepEqual(checkPatterns("rooms", ["a", "b-*", "*"]), ["a", "b-*", "*"]);
  const input = ["a"];
  assert.notEqual(checkPatterns("rooms", input), input, "a copy");
  assert.throws(
    () => checkPatterns("read", "a"),
    /^TypeError: read must be an array of room patterns$/,
  );
  assert.throws(
    () => checkPatterns("mod", ["a", "b c"]),
    /^RangeError: mod\[1\] is not a room pattern/,
  );
  assert.throws(
    () => checkPatterns("rooms", Array(257).fill("a")),
    /257 patterns, the limit is 256/,
  );
  assert.equal(checkPatterns("rooms", Array(256).fill("a")).length, 256);
});
