// @ts-check
/**
 * A message's text in the DOM: web addresses become links and `@name`
 * mentions are marked, with nothing but text nodes and `<a>`/`<mark>`
 * elements built here: no markup from a message ever reaches the page.
 *
 * @module
 */

/** http(s) addresses and `@name` mentions, found in one pass. */
const PATTERN = /\bhttps?:\/\/[^\s<>"']+|@[\p{L}\p{N}_.-]+/gu;
/** Punctuation that ends a sentence rather than an address. */
const TRAILING = /[.,;:!?)\]}'"]+$/;

/**
 * The pieces of a text: plain runs, links and mentions.
 *
 * @param {string} text
 * @returns {({ kind: "text", text: string } | { kind: "link", text: string, href: string } |
 *   { kind: "mention", text: string, name: string })[]}
 */
export function pieces(text) {
  /** @type {ReturnType<typeof pieces>} */
  const out = [];
  let at = 0;
  for (const match of text.matchAll(PATTERN)) {
    let found = match[0];
    const start = match.index ?? 0;
    if (found.startsWith("@")) {
      // An e-mail address is no mention.
      if (start > 0 && /[\p{L}\p{N}_.-]/u.test(text[start - 1])) continue;
      found = found.replace(/[.-]+$/, "");
    } else {
      found = found.replace(TRAILING, "");
      let url;
      try {
        url = new URL(found);
      } catch {
        continue;
      }
      if (url.protocol !== "http:" && url.protocol !== "https:") continue;
    }
    if (start > at) out.push({ kind: "text", text: text.slice(at, start) });
    if (found.startsWith("@")) out.push({ kind: "mention", text: found, name: found.slice(1) });
    else out.push({ kind: "link", text: found, href: found });
    at = start + found.length;
  }
  if (at < text.length) out.push({ kind: "text", text: text.slice(at) });
  return out;
}

/**
 * Fills an element with a message's text: links open in a new tab without
 * telling the target where they came from; mentions of `me` stand out.
 *
 * @param {HTMLElement} element
 * @param {string} text
 * @param {string | null} me Our own nickname.
 */
export function fillText(element, text, me) {
  const own = me?.toLowerCase();
  for (const piece of pieces(text)) {
    if (piece.kind === "text") {
      element.append(piece.text);
    } else if (piece.kind === "link") {
      const link = document.createElement("a");
      link.href = piece.href;
      link.target = "_blank";
      link.rel = "noopener noreferrer";
      link.textContent = piece.text;
      element.append(link);
    } else {
      const mark = document.createElement("mark");
      mark.className = piece.name.toLowerCase() === own ? "mention me" : "mention";
      mark.textContent = piece.text;
      element.append(mark);
    }
  }
}
