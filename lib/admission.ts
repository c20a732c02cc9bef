/**
 * Who may join a room, and as whom: the `hello` of a rich client checked
 * against the room's mode (open, or signed tokens), its bans and the
 * nicknames already present.
 *
 * @module
 */

import { createHash } from "node:crypto";
import type { Access, Identity } from "./auth/identity.ts";
import { accessTo, AuthError } from "./auth/identity.ts";
import { nickKey } from "./auth/nick.ts";
import type { Engine } from "./engine.ts";
import type { MemberIndex } from "./members.ts";
import type { ClientEnvelope, Member } from "./protocol.ts";
import { ProtocolError } from "./protocol.ts";

/** Checks a signed token (see `lib/auth/token.ts`). */
export interface Verifier {
  verify(token: string): Promise<Identity>;
}

/** Who a connection is once admitted. */
export interface Admission {
  member: Member;
  /** The private client identity, for dedup (open mode: the client's own). */
  client?: string;
  access: "write" | "read";
  moderator: boolean;
  /** When the token expires (ms since 1970), in token mode. */
  expires?: number;
}

/** What admission needs to know. */
export interface AdmitOptions {
  engine: Engine;
  room: string;
  hello: Extract<ClientEnvelope, { type: "hello" }>;
  /** Token mode: checks tokens. Open mode when absent. */
  verifier?: Verifier;
  /** A token from the URL (`?token=`), used when `hello` has none. */
  urlToken?: string;
  /** The room's members as this instance follows them, when it does. */
  members?: MemberIndex;
  now?: () => number;
}

/**
 * Makes the public member id of a private identity: the first 8 bytes of its
 * SHA-256, in hex. Node's synchronous hash costs a few microseconds where
 * `crypto.subtle.digest` took over 100 per join (a round trip to a thread).
 */
export function memberId(secret: string): Promise<string> {
  return Promise.resolve(createHash("sha256").update(secret).digest("hex").slice(0, 16));
}

/** The member id of a token's `sub`: the same on every device. */
export function memberIdOfSub(sub: string): Promise<string> {
  return memberId(`sub\0${sub}`);
}

/**
 * Checks a token and what it allows in `room`.
 *
 * @throws {ProtocolError} `unauthorized` (no token, or a bad one) or `forbidden`.
 */
export async function identify(
  verifier: Verifier,
  token: string | undefined,
  room: string,
): Promise<{ identity: Identity } & Access> {
  if (token === undefined) {
    throw new ProtocolError(
      "unauthorized",
      "a token is required here: send it in hello (token) or the URL (?token=)",
    );
  }
  let identity: Identity;
  try {
    identity = await verifier.verify(token);
  } catch (error) {
    if (error instanceof AuthError) throw new ProtocolError("unauthorized", error.message);
    throw error;
  }
  const access = accessTo(identity, room);
  if (access.access === "none") {
    throw new ProtocolError("forbidden", `your token does not allow the room ${room}`);
  }
  return { identity, ...access };
}

/**
 * Refuses a nickname that another present member of the room holds, compared
 * after Unicode NFKC and case folding. With the room's member index (a room
 * this instance follows) that is one lookup; without, the engine's list.
 *
 * @throws {ProtocolError} `nick_taken`.
 */
export async function checkNickFree(
  engine: Engine,
  room: string,
  nick: string,
  self: string,
  members?: MemberIndex,
): Promise<void> {
  let holder: Member | undefined;
  if (members) {
    holder = members.holderOf(nick, self);
  } else {
    const key = nickKey(nick);
    holder = (await engine.members(room)).find((m) => m.id !== self && nickKey(m.nick) === key);
  }
  if (holder) {
    throw new ProtocolError(
      "nick_taken",
      `nick: ${JSON.stringify(holder.nick)} is taken in this room; choose another`,
    );
  }
}

/** Refuses a banned member. */
async function checkBan(engine: Engine, room: string, id: string): Promise<void> {
  const until = await engine.bannedUntil(room, id);
  if (until !== undefined) {
    throw new ProtocolError(
      "forbidden",
      `you are banned from this room until ${new Date(until).toISOString()}`,
    );
  }
}

/**
 * Admits a rich client's `hello`, or says why not.
 *
 * @throws {ProtocolError} `unauthorized`, `forbidden`, `nick_taken` or `bad_nick`.
 */
export async function admit(options: AdmitOptions): Promise<Admission> {
  const { engine, room, hello, verifier } = options;
  if (!verifier) {
    if (hello.nick === undefined) throw new ProtocolError("bad_nick", "nick: must be a string");
    const id = await memberId(hello.client ?? crypto.randomUUID());
    await checkBan(engine, room, id);
    await checkNickFree(engine, room, hello.nick, id, options.members);
    return {
      member: { id, nick: hello.nick, verified: false },
      client: hello.client,
      access: "write",
      moderator: false,
    };
  }
  const { identity, access, moderator } = await identify(
    verifier,
    hello.token ?? options.urlToken,
    room,
  );
  const id = await memberIdOfSub(identity.sub);
  await checkBan(engine, room, id);
  return {
    member: { id, nick: identity.name, verified: true },
    // Dedup per device (cids are the client's own), and only when it names one.
    client: hello.client === undefined ? undefined : `sub:${identity.sub}:${hello.client}`,
    access: access === "read" ? "read" : "write",
    moderator,
    expires: identity.exp,
  };
}
