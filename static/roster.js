// @ts-check
/**
 * How the conversation says who came, went or took another name. The
 * member list itself is the client SDK's.
 *
 * @module
 */

/** @typedef {import("./wire.js").Member} Member */
/** @typedef {{ member: Member, old: string }} Rename */
/**
 * What a presence update changed, for the conversation to say.
 * @typedef {{ joined: Member[], left: Member[], renamed: Rename[] }} Changes
 */

/** Most renames said one by one in the conversation; more are said as a number. */
const RENAMES_SAID = 3;

/**
 * Names a few people: "ann", "ann and bob", "ann, bob and carol",
 * "ann, bob and 3 others".
 *
 * @param {string[]} nicks
 * @returns {string}
 */
export function listNames(nicks) {
  if (nicks.length <= 1) return nicks[0] ?? "";
  if (nicks.length === 2) return `${nicks[0]} and ${nicks[1]}`;
  if (nicks.length === 3) return `${nicks[0]}, ${nicks[1]} and ${nicks[2]}`;
  return `${nicks[0]}, ${nicks[1]} and ${nicks.length - 2} others`;
}

/**
 * Says a presence update as quiet lines of the conversation: who joined, who
 * left, who took another name.
 *
 * @param {Changes} changes
 * @returns {string[]} No line when nothing is worth saying.
 */
export function describePresence(changes) {
  const lines = [];
  if (changes.joined.length > 0) {
    lines.push(`${listNames(changes.joined.map((m) => m.nick))} joined`);
  }
  if (changes.left.length > 0) {
    lines.push(`${listNames(changes.left.map((m) => m.nick))} left`);
  }
  const renamed = changes.renamed.filter((r) => r.old !== "" && r.old !== r.member.nick);
  if (renamed.length > RENAMES_SAID) {
    lines.push(`${renamed.length} members changed their names`);
  } else {
    for (const { member, old } of renamed) lines.push(`${old} is now ${member.nick}`);
  }
  return lines;
}
