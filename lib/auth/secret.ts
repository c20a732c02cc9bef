/**
 * Comparing secrets (the API key) without telling an attacker, through the
 * time a comparison takes, how much of a guess was right.
 *
 * @module
 */

import { createHash, timingSafeEqual } from "node:crypto";

/** SHA-256 of the UTF-16 code units: unlike UTF-8, lossless for lone surrogates too. */
function digest(text: string): Uint8Array {
  const units = new Uint16Array(text.length);
  for (let i = 0; i < text.length; i++) units[i] = text.charCodeAt(i);
  return createHash("sha256").update(new Uint8Array(units.buffer)).digest();
}

/**
 * Whether two strings are equal, in a time that depends on neither where
 * they differ nor their lengths: both are hashed with SHA-256 and the
 * digests, always 32 bytes, are compared with `timingSafeEqual`.
 *
 * @example
 * ```ts
 * safeEqual(request.headers.get("x-api-key") ?? "", config.apiKey);
 * ```
 */
export function safeEqual(a: string, b: string): boolean {
  return timingSafeEqual(digest(a), digest(b));
}
