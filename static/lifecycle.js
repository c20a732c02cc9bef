// @ts-check
/**
 * What happens to a message after it is sent, without the DOM: applying the
 * room's edit and delete entries to the messages the page
 * holds, quoting the message a reply answers, and saying the server's
 * refusals in plain words.
 *
 * @module
 */

/** @typedef {import("./wire.js").Member} Member */
/**
 * An edit or delete entry of a room. `deleted` is set on an edit whose target
 * was deleted later (it then has no text).
 * @typedef {{ kind: "edit" | "delete", id: number, epoch: string, ts: number,
 *   from: Member | null, cid?: string, target: number, text?: string,
 *   deleted?: boolean }} Change
 */
/**
 * The parts of a message that a change touches. `moderated` marks a message
 * deleted by someone other than its author (a moderator, the server).
 * @typedef {{ from?: Member | null, text?: string, file?: unknown, edited?: number,
 *   deleted?: boolean, moderated?: boolean }} Changeable
 */

/** Longest quote of a replied-to message, in characters. */
export const QUOTE_LENGTH = 80;
/**
 * Whether a delete was made by someone other than the message's author. An
 * unknown deleter (no `from`) counts as the author.
 *
 * @param {Changeable} message
 * @param {Change} change
 * @returns {boolean}
 */
export function deletedByOther(message, change) {
  if (change.kind !== "delete" || change.from === null || message.from === undefined) return false;
  return message.from === null || message.from.id !== change.from.id;
}

/**
 * Applies a change to the message it targets. A delete always wins; an edit
 * older than the text shown (a replay repeats edits already applied) is
 * skipped. The caller frees what a deleted message owned (a file's blob: URL).
 *
 * @param {Changeable} message
 * @param {Change} change
 * @returns {boolean} Whether the message changed.
 */
export function applyChange(message, change) {
  if (message.deleted) {
    // A replay brings a message already deleted, then the delete: it says who.
    if (message.moderated || !deletedByOther(message, change)) return false;
    message.moderated = true;
    return true;
  }
  if (change.kind === "delete" || change.deleted) {
    if (deletedByOther(message, change)) message.moderated = true;
    message.deleted = true;
    delete message.text;
    delete message.file;
    delete message.edited;
    return true;
  }
  if (message.text === undefined || change.text === undefined) return false;
  if (message.edited !== undefined && change.ts < message.edited) return false;
  if (message.text === change.text && message.edited === change.ts) return false;
  message.text = change.text;
  message.edited = change.ts;
  return true;
}

/**
 * What a reply shows of the message it answers.
 *
 * @param {{ from: Member | null, text?: string, file?: { name: string },
 *   deleted?: boolean, moderated?: boolean } | undefined} original Undefined when the
 *   page does not have it.
 * @returns {{ from: string | null, text: string }}
 */
export function quoteOf(original) {
  if (!original) return { from: null, text: "an earlier message" };
  const from = original.from?.nick ?? "raw client";
  if (original.deleted) {
    return {
      from,
      text: original.moderated ? "message removed by a moderator" : "message deleted",
    };
  }
  if (original.text !== undefined) return { from, text: shorten(original.text, QUOTE_LENGTH) };
  if (original.file) return { from, text: original.file.name };
  return { from, text: "a message" };
}

/**
 * Collapses white space and cuts a text to `max` characters with an ellipsis.
 *
 * @param {string} text
 * @param {number} max
 * @returns {string}
 */
export function shorten(text, max) {
  const chars = [...text.replace(/\s+/g, " ").trim()];
  return chars.length <= max ? chars.join("") : `${chars.slice(0, max - 1).join("")}…`;
}

/**
 * Says a refusal of an edit, delete or history request in plain words.
 *
 * @param {string} code The `error` envelope's code.
 * @param {"edit" | "delete"} [kind] What was refused, when the page knows.
 * @returns {string | null} Null for codes without a plain sentence here.
 */
export function refusal(code, kind) {
  if (code === "forbidden") {
    if (kind === "edit") return "You can only edit your own messages.";
    if (kind === "delete") return "You can only delete your own messages.";
    return "You can only change your own messages.";
  }
  if (code === "not_found") {
    if (kind === "edit") {
      return "Cannot edit: that message was deleted or is no longer in the room's history.";
    }
    if (kind === "delete") {
      return "Cannot delete: that message is no longer in the room's history.";
    }
    return "That message was deleted or is no longer in the room's history.";
  }
  return null;
}
