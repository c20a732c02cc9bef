/**
 * Nickname rules beyond length: characters that hide or reorder text, and the
 * key two nicknames are compared by, so that "Ann", "ANN" and "Ａｎｎ" are one
 * name. Used for open-mode nicknames and for the `name` claim of tokens.
 *
 * @module
 */

// Bidirectional controls reorder what follows them: "evil\u202Egnp.exe".
const BIDI = /[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/u;
// C0 and C1 controls, and the line and paragraph separators.
const CONTROL = /[\p{Cc}\p{Zl}\p{Zp}]/u;
// Format characters (zero-width space and joiners, soft hyphen, word joiner,
// byte order mark, tags...) and the other default-ignorable code points
// (Hangul fillers, variation selectors...): drawn as nothing.
const INVISIBLE = /[\p{Cf}\p{Default_Ignorable_Code_Point}]/u;
// The text and emoji presentation selectors are default-ignorable too, but
// phone keyboards put U+FE0F after many emoji ("❤️"): they are allowed, and
// left out of the comparison key.
const PRESENTATION = /[\ufe0e\ufe0f]/gu;
// A surrogate that is not part of a pair: not a character at all.
const SURROGATE = /\p{Cs}/u;
// What draws as blank, or only decorates the character before it.
const BLANK_OR_MARK = /[\s\p{Z}\p{M}\u2800]/gu;
const MARK = /^\p{M}/u;
const PRINTABLE_ASCII = /^[\x20-\x7e]*$/;

function codePoint(char: string): string {
  return `U+${char.codePointAt(0)!.toString(16).toUpperCase().padStart(4, "0")}`;
}

/**
 * Tells what makes a nickname unusable beyond its length: control,
 * bidirectional, zero-width or other invisible characters, an unpaired
 * surrogate, a combining mark at the start, or nothing but blanks and marks.
 *
 * @param nick The nickname, already trimmed.
 * @returns A message such as `must not contain bidirectional control
 *   characters (U+202E)`, to be prefixed by what was checked; `undefined`
 *   when the nickname is fine.
 */
export function nickProblem(nick: string): string | undefined {
  if (!PRINTABLE_ASCII.test(nick)) {
    for (const char of nick) {
      if (SURROGATE.test(char)) return `must not contain unpaired surrogates (${codePoint(char)})`;
      if (CONTROL.test(char)) return `must not contain control characters (${codePoint(char)})`;
      if (BIDI.test(char)) {
        return `must not contain bidirectional control characters (${codePoint(char)})`;
      }
      if (INVISIBLE.test(char) && !/^[\ufe0e\ufe0f]$/.test(char)) {
        return `must not contain invisible characters (${codePoint(char)})`;
      }
    }
    if (MARK.test(nick)) return "must not start with a combining mark";
  }
  if (nick.replace(BLANK_OR_MARK, "").replace(PRESENTATION, "") === "") {
    return "must contain a visible character";
  }
  return undefined;
}

/**
 * The key nicknames are compared by: NFKC normalisation (fullwidth and
 * styled letters become plain ones), then case folding, then NFKC again;
 * presentation selectors are dropped and blank runs become one space.
 * Two nicknames with the same key are the same name.
 *
 * Case folding is `toUpperCase().toLowerCase()`, which also folds what
 * `toLowerCase()` alone keeps apart ("ß" and "ss", "ς" and "σ").
 *
 * @example
 * ```ts
 * nickKey("Ａｎｎ") === nickKey("ann"); // true
 * ```
 */
export function nickKey(nick: string): string {
  // Checking a join against a room compares with every member present:
  // remember keys, so that costs a map lookup per member, not two NFKC passes.
  let key = KEYS.get(nick);
  if (key === undefined) {
    if (KEYS.size >= MAX_KEYS) KEYS.clear();
    key = foldNick(nick);
    KEYS.set(nick, key);
  }
  return key;
}

const KEYS = new Map<string, string>();
const MAX_KEYS = 100_000;

function foldNick(nick: string): string {
  return nick
    .normalize("NFKC")
    .toUpperCase()
    .toLowerCase()
    .normalize("NFKC")
    .replace(PRESENTATION, "")
    .replace(/\s+/gu, " ")
    .trim();
}
