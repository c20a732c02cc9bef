import assert from "node:assert/strict";
import { safeEqual } from "../lib/auth/secret.ts";

Deno.test("safeEqual() is true for equal strings only", () => {
  const key = "k3y-0f-at-least-16-characters";
  assert.equal(safeEqual(key, key), true);
  assert.equal(safeEqual(key, `${key}`.slice(0)), true);
  assert.equal(safeEqual("", ""), true);
  assert.equal(safeEqual("ünïcødé 🔑", "ünïcødé 🔑"), true);
  assert.equal(safeEqual(key, key.slice(0, -1) + "X"), false, "last character differs");
  assert.equal(safeEqual(key, "X" + key.slice(1)), false, "first character differs");
  assert.equal(safeEqual(key, key.toUpperCase()), false);
});

Deno.test("safeEqual() compares strings of different lengths without throwing", () => {
  assert.equal(safeEqual("short", "a much longer string than that"), false);
  assert.equal(safeEqual("", "x"), false);
  assert.equal(safeEqual("abc", "abc\u0000"), false);
  assert.equal(safeEqual("x".repeat(100_000), "x".repeat(100_001)), false);
});

Deno.test("safeEqual() compares characters, not a lossy encoding of them", () => {
  // Two different lone surrogates both encode to U+FFFD in UTF-8.
  assert.equal(safeEqual("\ud800", "\ud801"), false);
  assert.equal(safeEqual("e\u0301", "\u00e9"), false, "no normalisation");
});
