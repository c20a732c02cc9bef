/**
 * Members and signals as every engine stores and sends them: copies that
 * keep exactly the fields of {@linkcode Member} and {@linkcode Signal}, and
 * parsers that check the shape of what comes back from a store or a channel.
 *
 * @module
 */

import type { Signal } from "../engine.ts";
import type { Member } from "../protocol.ts";

/**
 * A copy of a member with its known fields only: `id`, `nick`, and `verified`
 * and `bot` when set. Extra properties a caller's object carries are left
 * out, so every engine gives back the same shape.
 */
export function copyMember(member: Member): Member {
  const copy: Member = { id: member.id, nick: member.nick };
  if (member.verified !== undefined) copy.verified = member.verified;
  if (member.bot !== undefined) copy.bot = member.bot;
  return copy;
}

/** A copy of a signal with its known fields only, its members copied too. */
export function copySignal(signal: Signal): Signal {
  if (signal.type === "typing") return { type: "typing", member: copyMember(signal.member) };
  const kick: Signal = {
    type: "kick",
    member: copyMember(signal.member),
    reason: signal.reason,
    by: signal.by === null ? null : copyMember(signal.by),
  };
  if (signal.until !== undefined) kick.until = signal.until;
  return kick;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function describe(value: unknown): string {
  return (JSON.stringify(value) ?? String(value)).slice(0, 80);
}

/**
 * Checks a member read from a store or a channel.
 *
 * @throws {TypeError} When `id` or `nick` is not a string, or `verified` or
 *   `bot` is set and not a boolean.
 */
export function parseMember(raw: unknown): Member {
  if (!isObject(raw) || typeof raw.id !== "string" || typeof raw.nick !== "string") {
    throw new TypeError(`Cannot read member ${describe(raw)}: id and nick must be strings`);
  }
  for (const flag of ["verified", "bot"] as const) {
    if (raw[flag] !== undefined && typeof raw[flag] !== "boolean") {
      throw new TypeError(`Cannot read member ${describe(raw)}: ${flag} must be a boolean`);
    }
  }
  return copyMember(raw as unknown as Member);
}

/**
 * Checks a signal read from a store or a channel.
 *
 * @throws {TypeError} When its type is unknown or a field has the wrong shape.
 */
export function parseSignal(raw: unknown): Signal {
  if (!isObject(raw)) throw new TypeError(`Cannot read signal ${describe(raw)}: not an object`);
  if (raw.type === "typing") return { type: "typing", member: parseMember(raw.member) };
  if (raw.type !== "kick") {
    throw new TypeError(`Cannot read signal: unknown type ${describe(raw.type)}`);
  }
  if (typeof raw.reason !== "string") {
    throw new TypeError(`Cannot read kick signal: reason is ${describe(raw.reason)}, not a string`);
  }
  if (raw.until !== undefined && !Number.isFinite(raw.until)) {
    throw new TypeError(`Cannot read kick signal: until is ${describe(raw.until)}, not a time`);
  }
  const kick: Signal = {
    type: "kick",
    member: parseMember(raw.member),
    reason: raw.reason,
    by: raw.by === null ? null : parseMember(raw.by),
  };
  if (raw.until !== undefined) kick.until = raw.until as number;
  return kick;
}

/**
 * Checks the end of a ban before an engine stores it.
 *
 * @throws {RangeError} When `until` is not a finite time in ms since 1970.
 */
export function checkBanEnd(until: number): void {
  if (!Number.isFinite(until)) {
    throw new RangeError(`Cannot ban: until is ${until}, expected a time in ms since 1970`);
  }
}
