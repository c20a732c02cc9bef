import assert from "node:assert/strict";
import { nickKey, nickProblem } from "../lib/auth/nick.ts";

const hex = (code: number) => code.toString(16).toUpperCase().padStart(4, "0");

Deno.test("nickProblem() accepts ordinary nicknames in any script", () => {
  const nicks = [
    "Ann",
    "ann_lee-2",
    "Ann Lee",
    "Zoë",
    "Zoe\u0308", // e + combining diaeresis
    "José",
    "李小龍",
    "Łukasz",
    "Ἀθηνᾶ",
    "علي", // right-to-left letters are fine; only the controls are not
    "שלום",
    "हिन्दी", // virama and vowel signs are combining marks, after letters
    "ann (away)",
    "🦊",
    "Ann ❤️", // U+FE0F, which phone keyboards add after many emoji
    "x".repeat(100), // length is not this function's business
  ];
  for (const nick of nicks) assert.equal(nickProblem(nick), undefined, nick);
});

Deno.test("nickProblem() refuses every bidirectional control, naming it", () => {
  const codes = [0x061c, 0x200e, 0x200f, 0x202a, 0x202b, 0x202c, 0x202d, 0x202e];
  codes.push(0x2066, 0x2067, 0x2068, 0x2069);
  for (const code of codes) {
    const nick = `ann${String.fromCodePoint(code)}gnp.exe`;
    assert.equal(
      nickProblem(nick),
      `must not contain bidirectional control characters (U+${hex(code)})`,
    );
  }
});

Deno.test("nickProblem() refuses zero-width, invisible and format characters", () => {
  const codes = [
    0x200b, // zero width space
    0x200c, // zero width non-joiner
    0x200d, // zero width joiner
    0x2060, // word joiner
    0x2061,
    0x2062,
    0x2063,
    0x2064, // invisible plus
    0xfeff, // byte order mark
    0x00ad, // soft hyphen
    0x180e, // Mongolian vowel separator
    0x3164, // Hangul filler
    0x115f, // Hangul choseong filler
    0x1160, // Hangul jungseong filler
    0xffa0, // halfwidth Hangul filler
    0x034f, // combining grapheme joiner
    0x17b4, // Khmer vowel inherent aq
    0xfe00, // variation selector 1
    0xe0041, // tag latin capital letter A
    0x1d173, // musical symbol begin beam
    0x0600, // Arabic number sign (Cf)
    0xfff9, // interlinear annotation anchor (Cf)
  ];
  for (const code of codes) {
    for (const nick of [`a${String.fromCodePoint(code)}nn`, `ann${String.fromCodePoint(code)}`]) {
      assert.equal(
        nickProblem(nick),
        `must not contain invisible characters (U+${hex(code)})`,
        `U+${hex(code)}`,
      );
    }
  }
  // An emoji joined with U+200D is refused too: the joiner is what impostors use.
  assert.match(nickProblem("👩\u200D💻")!, /U\+200D/);
});

Deno.test("nickProblem() refuses control characters, separators and lone surrogates", () => {
  const cases: [string, string][] = [
    ["ann\u0000", "must not contain control characters (U+0000)"],
    ["ann\u001b[31m", "must not contain control characters (U+001B)"],
    ["ann\u007f", "must not contain control characters (U+007F)"],
    ["ann\u0085", "must not contain control characters (U+0085)"],
    ["ann\nbob", "must not contain control characters (U+000A)"],
    ["ann\u2028", "must not contain control characters (U+2028)"],
    ["ann\u2029", "must not contain control characters (U+2029)"],
    ["ann\ud800", "must not contain unpaired surrogates (U+D800)"],
    ["\udc00ann", "must not contain unpaired surrogates (U+DC00)"],
  ];
  for (const [nick, message] of cases) {
    assert.equal(nickProblem(nick), message, JSON.stringify(nick));
  }
});

Deno.test("nickProblem() refuses names of nothing but blanks and combining marks", () => {
  const blank = "must contain a visible character";
  for (const nick of ["", " ", "\u3000", "\u00a0\u2003", "\u2800", "\u2800\u2800"]) {
    assert.equal(nickProblem(nick), blank, JSON.stringify(nick));
  }
  for (const nick of ["\u0301", "\u0301\u0301\u0301", "\u20dd", "\u0301ann", "\ufe0f"]) {
    assert.equal(nickProblem(nick), "must not start with a combining mark", JSON.stringify(nick));
  }
  assert.equal(nickProblem("a\u2800"), undefined, "a blank beside a visible character is fine");
});

Deno.test("nickKey() makes case and width variants of a name collide", () => {
  const ann = nickKey("ann");
  const variants = [
    "Ann",
    "ANN",
    "aNn",
    "Ａｎｎ", // fullwidth
    "ＡＮＮ",
    "𝐀𝐧𝐧", // mathematical bold
    "𝔞𝔫𝔫", // fraktur
    "ⓐⓝⓝ", // circled
    "ᴬⁿⁿ", // modifier letters
    "Ann\ufe0f",
  ];
  for (const variant of variants) assert.equal(nickKey(variant), ann, variant);
});

Deno.test("nickKey() folds compatibility forms, ligatures and special cases", () => {
  const pairs: [string, string][] = [
    ["\u212aelvin", "kelvin"], // Kelvin sign
    ["\ufb01sh", "fish"], // ﬁ ligature
    ["Stra\u00dfe", "STRASSE"], // ß folds to ss
    ["Zoe\u0308", "ZOË"], // decomposed and composed
    ["ΑΣ", "ας"], // final sigma
    ["ΑΣ", "ασ"],
    ["\u2163", "iv"], // Roman numeral four
    ["ann  lee", "Ann Lee"], // blank runs
    ["ann\u3000lee", "ann lee"], // ideographic space
    ["ann\u00a0lee", "ann lee"], // no-break space
    ["x\u00b2", "x2"], // superscript
    ["ﾊﾟｰﾃｨ", "パーティ"], // halfwidth katakana
  ];
  for (const [a, b] of pairs) assert.equal(nickKey(a), nickKey(b), `${a} ~ ${b}`);
});

Deno.test("nickKey() keeps different names apart", () => {
  const pairs: [string, string][] = [
    ["ann", "anne"],
    ["ann", "an"],
    ["ann", "ann2"],
    ["ann lee", "annlee"],
    ["jose", "josé"],
    ["ann", "bob"],
    // Look-alikes across scripts (Cyrillic а) are not folded: that would need
    // a confusables table, which Parley does not carry.
    ["ann", "\u0430nn"],
  ];
  for (const [a, b] of pairs) assert.notEqual(nickKey(a), nickKey(b), `${a} vs ${b}`);
});

Deno.test("nickKey() is stable: the key of a key is the key", () => {
  for (const nick of ["Ann", "Ｓｔｒａßｅ", "ΑΣ", "\u212a", "ﬁ", "İstanbul", "ǅemal"]) {
    const key = nickKey(nick);
    assert.equal(nickKey(key), key, nick);
    assert.equal(key, key.normalize("NFKC"), nick);
  }
});
