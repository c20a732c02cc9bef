// @ts-check
/**
 * Reading what the server sends, without the DOM: small guards that turn
 * untrusted JSON values into typed ones, or null.
 *
 * @module
 */

/**
 * A member as the server names it. `verified` is true when a signed token (or
 * the server API) vouches for the name; `bot` marks the server API's messages.
 * @typedef {{ id: string, nick: string, verified?: boolean, bot?: boolean }} Member
 */

/**
 * @param {unknown} value
 * @returns {value is Record<string, unknown>}
 */
export function isObject(value) {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/**
 * Whether a value is a message id: a safe integer from 1.
 *
 * @param {unknown} value
 * @returns {value is number}
 */
export function isId(value) {
  return typeof value === "number" && Number.isSafeInteger(value) && value >= 1;
}

/**
 * @param {unknown} value
 * @returns {Member | null}
 */
export function readMember(value) {
  if (!isObject(value) || typeof value.id !== "string" || typeof value.nick !== "string") {
    return null;
  }
  /** @type {Member} */
  const member = { id: value.id, nick: value.nick };
  if (typeof value.verified === "boolean") member.verified = value.verified;
  if (value.bot === true) member.bot = true;
  return member;
}

/**
 * Length of a text in Unicode code points, as the server counts its text limit.
 *
 * @param {string} text
 * @returns {number}
 */
export function codePoints(text) {
  let count = 0;
  for (const _ of text) count++;
  return count;
}
