/**
 * The rules for the claims Parley reads from a token: `sub`, `name`, `rooms`,
 * `read` and `mod`. Shared by verifying and minting, and usable without jose
 * (an API route can check a mint request before loading `token.ts`).
 *
 * Each check throws a `TypeError` (wrong type) or `RangeError` (wrong value)
 * whose message starts with the claim's name and never holds its value, since
 * that comes from the token.
 *
 * @module
 */

import { codePoints, MAX_NICK_LENGTH } from "../protocol.ts";
import { isRoomPattern, MAX_PATTERNS } from "./identity.ts";
import { nickProblem } from "./nick.ts";

/** Longest `sub`, in characters. */
export const MAX_SUB_LENGTH = 64;

// deno-lint-ignore no-control-regex
const CONTROL = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/;

/**
 * Checks a `sub` claim: a string of 1 to 64 characters without control characters.
 *
 * @returns The `sub`, unchanged.
 */
export function checkSub(value: unknown): string {
  if (typeof value !== "string") throw new TypeError("sub must be a string");
  const length = codePoints(value);
  if (length === 0 || length > MAX_SUB_LENGTH) {
    throw new RangeError(`sub must be 1 to ${MAX_SUB_LENGTH} characters, not ${length}`);
  }
  if (CONTROL.test(value)) throw new RangeError("sub must not contain control characters");
  return value;
}

/**
 * Checks a `name` claim with the nickname rules: trimmed, 1 to 32
 * characters, no control, bidirectional or invisible characters.
 *
 * @param fallback Used when `value` is `undefined`: the `sub`, cut to 32 characters.
 * @returns The trimmed name.
 */
export function checkName(value: unknown, fallback?: string): string {
  if (value === undefined && fallback !== undefined) {
    try {
      return checkName([...fallback.trim()].slice(0, MAX_NICK_LENGTH).join(""));
    } catch (error) {
      throw new RangeError(`${(error as Error).message} (there is no name, so it comes from sub)`);
    }
  }
  if (typeof value !== "string") throw new TypeError("name must be a string");
  const name = value.trim();
  const length = codePoints(name);
  if (length === 0 || length > MAX_NICK_LENGTH) {
    throw new RangeError(`name must be 1 to ${MAX_NICK_LENGTH} characters, not ${length}`);
  }
  const problem = nickProblem(name);
  if (problem) throw new RangeError(`name ${problem}`);
  return name;
}

/**
 * Checks a list of room patterns (`rooms`, `read` or `mod`).
 *
 * @param claim The claim's name, for messages.
 * @returns The patterns; `[]` when `value` is `undefined`.
 */
export function checkPatterns(claim: string, value: unknown): string[] {
  if (value === undefined) return [];
  if (!Array.isArray(value)) throw new TypeError(`${claim} must be an array of room patterns`);
  if (value.length > MAX_PATTERNS) {
    throw new RangeError(`${claim} has ${value.length} patterns, the limit is ${MAX_PATTERNS}`);
  }
  const wrong = value.findIndex((pattern) => !isRoomPattern(pattern));
  if (wrong !== -1) {
    throw new RangeError(
      `${claim}[${wrong}] is not a room pattern (1 to 64 characters from A-Z a-z 0-9 _ -, ` +
        "optionally followed by *, or * alone)",
    );
  }
  return [...value];
}
