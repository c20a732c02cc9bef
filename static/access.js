// @ts-check
/**
 * Who the person is and what the server lets them do, without the DOM: the
 * invite token in the address, the nickname rules, the refusals that end a
 * connection (said in band as an `error` envelope, then close codes 4401 and
 * 4403) in plain words, and moderation as the conversation tells it.
 *
 * @module
 */

/** @typedef {import("./wire.js").Member} Member */
/**
 * A member removed from the room. `by` is null when the server API did it;
 * `until` is the end of a ban, in ms since 1970.
 * @typedef {{ member: Member, by: Member | null, reason: string, until?: number }} Kick
 */
/**
 * How a connection ended, as far as refusals go. `detail` is the message of
 * the `error` envelope that said the refusal in band, if one did; it says
 * more than the close `reason`, which holds at most 123 bytes.
 * @typedef {{ code: number, reason: string, detail?: string | null,
 *   hadToken: boolean, accepted: boolean }} Ending
 */

/** No token, a bad one, or one that expired: the server will not let us in as we are. */
export const CLOSE_UNAUTHORIZED = 4401;
/** Not allowed in this room, removed or banned: reconnecting on our own cannot help. */
export const CLOSE_FORBIDDEN = 4403;
/** Longest token the server takes, in characters. */
export const MAX_TOKEN_LENGTH = 8192;
/** Longest nickname, in characters after trimming. */
export const MAX_NICK_LENGTH = 32;
/** Longest reason of a removal, in characters. */
export const MAX_REASON_LENGTH = 200;
/** What a ban may last, in minutes, as the remove form offers it (0: none). */
export const BAN_MINUTES = [0, 10, 60, 1440];

// The server starts the message of an error about one envelope with its type
// ("nick: your name comes from your token...", "typing: this room is read-only").
const ABOUT_ONE_ENVELOPE = /^[a-z_]+:/;
const TOKEN_SHAPE = /^[A-Za-z0-9_.~+/=-]+$/;
// As the server's rules (lib/auth/nick.ts): bidirectional controls reorder
// text, format and other default-ignorable characters draw as nothing.
const BIDI = /[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/u;
const INVISIBLE = /[\p{Cf}\p{Default_Ignorable_Code_Point}]/u;
const PRESENTATION = /^[\ufe0e\ufe0f]$/u;
const BLANK_OR_MARK = /[\s\p{Z}\p{M}\u2800\ufe0e\ufe0f]/gu;

/**
 * Takes an invite token out of a URL fragment such as `#token=eyJ...`.
 *
 * @param {string} hash `location.hash`, with or without its `#`.
 * @returns {{ token: string | null, hash: string }} The token, or null when
 *   the fragment holds none that could be one, and the fragment without it
 *   ("" when nothing else was in it).
 */
export function tokenFromHash(hash) {
  const params = new URLSearchParams(hash.replace(/^#/, ""));
  if (!params.has("token")) return { token: null, hash };
  const value = params.get("token") ?? "";
  params.delete("token");
  const rest = params.toString();
  const token = value.length <= MAX_TOKEN_LENGTH && TOKEN_SHAPE.test(value) ? value : null;
  return { token, hash: rest === "" ? "" : `#${rest}` };
}

/**
 * Whether a text holds control characters (line and paragraph separators too).
 *
 * @param {string} value
 * @returns {boolean}
 */
export function hasControl(value) {
  for (const ch of value) {
    const c = ch.codePointAt(0) ?? 0;
    if (c < 0x20 || (c >= 0x7f && c <= 0x9f) || c === 0x2028 || c === 0x2029) return true;
  }
  return false;
}

/**
 * The server's nickname rules, said as a person would: 1 to 32 characters
 * after trimming, nothing invisible and nothing that reorders text.
 *
 * @param {string} raw
 * @returns {string | null} What is wrong, or null when the nickname is fine.
 */
export function nickProblem(raw) {
  const nick = raw.trim();
  if (nick.length === 0) return "Enter a nickname.";
  if ([...nick].length > MAX_NICK_LENGTH) {
    return `A nickname has at most ${MAX_NICK_LENGTH} characters.`;
  }
  if (hasControl(nick)) return "A nickname cannot contain control characters.";
  for (const ch of nick) {
    if (BIDI.test(ch) || (INVISIBLE.test(ch) && !PRESENTATION.test(ch))) {
      return "A nickname cannot contain invisible characters or text-direction marks.";
    }
  }
  if (nick.replace(BLANK_OR_MARK, "") === "") return "A nickname needs a visible character.";
  return null;
}

/**
 * Says why the server refused a nickname, from its `error` envelope.
 *
 * @param {string} code `bad_nick` or `nick_taken`.
 * @param {string} message The envelope's message, such as
 *   `nick: must not contain invisible characters (U+200B)`.
 * @returns {string}
 */
export function nickRefusal(code, message) {
  if (code === "nick_taken") return "That name is taken in this room; choose another.";
  const why = message.replace(/^nick:\s*/, "").trim();
  return why ? `That name cannot be used: it ${why}.` : "That name cannot be used.";
}

/**
 * Says a time of day, with the date when it is not today.
 *
 * @param {number} ms
 * @param {number} [now]
 * @returns {string}
 */
export function formatWhen(ms, now = Date.now()) {
  const when = new Date(ms);
  const time = when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  if (when.toDateString() === new Date(now).toDateString()) return time;
  const day = when.toLocaleDateString([], { weekday: "short", day: "numeric", month: "short" });
  return `${day} ${time}`;
}

/**
 * Whether an `error` envelope without a cid refuses the connection itself:
 * the server says so in band before it closes with 4401 or 4403, because some
 * runtimes (Deno 2.5) lose that close on its way and the page then sees 1006.
 * `unauthorized` always ends it; a `forbidden` about one envelope (a rename in
 * token mode, a write to a read-only room) names that envelope first and ends
 * nothing.
 *
 * @param {string} code The envelope's code.
 * @param {string} message The envelope's message.
 * @returns {number | null} The close code the refusal stands for, or null
 *   when the error does not end the connection.
 */
export function refusalCloseCode(code, message) {
  if (code === "unauthorized") return CLOSE_UNAUTHORIZED;
  if (code === "forbidden" && !ABOUT_ONE_ENVELOPE.test(message)) return CLOSE_FORBIDDEN;
  return null;
}

/**
 * Says why the server ended the connection for good, or null when the close
 * is not a refusal (the page may then reconnect on its own).
 *
 * @param {Ending} ending
 * @param {(ms: number) => string} [when] How a ban's end is said.
 * @returns {string | null}
 */
export function describeRefusal(ending, when = (ms) => formatWhen(ms)) {
  const { code, reason, detail, hadToken, accepted } = ending;
  // A removal is said in band as "you were removed from this room: kicked: spam",
  // and in the close reason as "kicked: spam".
  const text = (detail || reason || "").trim().replace(/^you were removed from this room:\s*/, "");
  if (code === CLOSE_UNAUTHORIZED) {
    if (text === "token expired" && accepted) {
      return "Your access expired. Open a fresh invite link to continue.";
    }
    if (!hadToken) return "This room needs an invite link. Ask for one to join.";
    return "Your invite link has expired or is not valid. Ask for a new link.";
  }
  if (code !== CLOSE_FORBIDDEN) return null;
  const kicked = /^kicked: ([\s\S]+)$/.exec(text);
  if (kicked) return `You were removed from this room by a moderator: ${kicked[1]}`;
  if (text.startsWith("kicked")) return "You were removed from this room by a moderator.";
  const banned = /\buntil (\S+)$/.exec(text);
  const until = banned ? Date.parse(banned[1]) : NaN;
  if (Number.isFinite(until)) return `You can't join this room until ${when(until)}.`;
  if (/banned/.test(text)) return "You can't join this room for now.";
  if (/does not allow the room/.test(text)) return "Your invite does not include this room.";
  return "You are not allowed in this room.";
}

/**
 * Says a removal as the conversation shows it: "ann was removed by Mo until
 * 14:05 (spam)", or "... by the server" when the server API did it.
 *
 * @param {Kick} kick
 * @param {(ms: number) => string} [when] How a ban's end is said.
 * @returns {string}
 */
export function describeKick(kick, when = (ms) => formatWhen(ms)) {
  const by = kick.by ? kick.by.nick : "the server";
  const until = kick.until === undefined ? "" : ` until ${when(kick.until)}`;
  const reason = kick.reason ? ` (${kick.reason})` : "";
  return `${kick.member.nick} was removed by ${by}${until}${reason}`;
}
