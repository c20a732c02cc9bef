/**
 * The lifecycle of a message after it is sent: who may edit or delete it.
 * The one place that decides, for a member's own change and (later) for a
 * moderator's or the server API's delete.
 *
 * @module
 */

import type { Engine, MessageDraft } from "./engine.ts";
import { type Member, ProtocolError } from "./protocol.ts";

/** A change to an earlier message. */
export interface Change {
  kind: "edit" | "delete";
  /** Id of the message to change. */
  target: number;
  /** The new text (edits only). */
  text?: string;
  cid?: string;
}

/** Who asks for a change. */
export interface Actor {
  /** The member, or null for the server itself. */
  member: Member | null;
  /** Private client identity, for dedup. */
  sender?: string;
  /** May change any message of the room (deletes only). */
  moderator?: boolean;
}

/**
 * Checks that `actor` may make `change` in `room` and builds the draft to
 * append. The target must be an ordinary message still in history; only its
 * author edits it, and its author or a moderator deletes it. Deleting a
 * deleted message is allowed, so a resent delete is acked, not refused.
 *
 * @throws {ProtocolError} `not_found`, `forbidden` or `bad_envelope`, with the `cid`.
 */
export async function authorizeChange(
  engine: Engine,
  room: string,
  change: Change,
  actor: Actor,
): Promise<MessageDraft> {
  const { kind, target, cid } = change;
  const page = await engine.history(room, target + 1, 1);
  const message = page.messages[0];
  if (message?.id !== target) {
    throw new ProtocolError(
      "not_found",
      `${kind}: message ${target} is not in this room's history`,
      cid,
    );
  }
  const own = message.from !== null && message.from.id === actor.member?.id;
  if (!own && !(kind === "delete" && actor.moderator)) {
    throw new ProtocolError(
      "forbidden",
      `${kind}: message ${target} is not yours; you can only ${kind} your own messages`,
      cid,
    );
  }
  if (kind === "edit") {
    if (message.deleted) {
      throw new ProtocolError("not_found", `edit: message ${target} was deleted`, cid);
    }
    if (message.text === undefined) {
      throw new ProtocolError(
        "bad_envelope",
        `edit: message ${target} is a file; only text can be edited`,
        cid,
      );
    }
  }
  return { from: actor.member, sender: actor.sender, cid, kind, target, text: change.text };
}
