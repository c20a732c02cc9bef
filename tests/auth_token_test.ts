import assert from "node:assert/strict";
import { exportSPKI, generateKeyPair, SignJWT } from "jose";
import { ConfigError } from "../lib/config.ts";
import { AuthError } from "../lib/auth/identity.ts";
import {
  createVerifier,
  MAX_TTL_SECONDS,
  mintToken,
  parseDuration,
  type Verifier,
  verifierFromConfig,
} from "../lib/auth/token.ts";

const SECRET = "parley-test-secret-of-32-bytes!!";
const KEY = new TextEncoder().encode(SECRET);
// 2030-01-01T00:00:00Z, in seconds and in milliseconds.
const NOW_S = 1_893_456_000;
const NOW = NOW_S * 1000;
const now = () => NOW;

type Payload = Record<string, unknown>;

const base = (extra: Payload = {}): Payload => ({
  sub: "ann",
  iat: NOW_S,
  exp: NOW_S + 3600,
  ...extra,
});

async function sign(
  payload: Payload,
  key: CryptoKey | Uint8Array = KEY,
  alg = "HS256",
): Promise<string> {
  return await new SignJWT(payload).setProtectedHeader({ alg, typ: "JWT" }).sign(key);
}

function base64url(text: string): string {
  return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** An unsigned token, built by hand: jose will not make one for a verifier. */
function unsigned(payload: Payload): string {
  return `${base64url(JSON.stringify({ alg: "none", typ: "JWT" }))}.${
    base64url(JSON.stringify(payload))
  }.`;
}

async function hsVerifier(skewSeconds?: number): Promise<Verifier> {
  return await createVerifier({ secret: SECRET, skewSeconds, now });
}

/** Asserts that `verifier` refuses `token` as unauthorized, with `message`, never echoing it. */
async function refuses(verifier: Verifier, token: string, message: string | RegExp) {
  await assert.rejects(verifier.verify(token), (error: unknown) => {
    assert.ok(error instanceof AuthError, String(error));
    assert.equal(error.code, "unauthorized");
    if (typeof message === "string") assert.equal(error.message, message);
    else assert.match(error.message, message);
    for (const part of String(token ?? "").split(".").filter((part) => part.length >= 8)) {
      assert.ok(!error.message.includes(part), "the message does not hold the token");
    }
    return true;
  });
}

const rsa = await generateKeyPair("RS256", { extractable: true });
const rsaPem = await exportSPKI(rsa.publicKey);
const ec = await generateKeyPair("ES256", { extractable: true });
const ecPem = await exportSPKI(ec.publicKey);

Deno.test("createVerifier() with a secret accepts an HS256 token and reads its claims", async () => {
  const verifier = await hsVerifier();
  assert.equal(verifier.algorithm, "HS256");
  const token = await sign(base({
    name: "  Ann Lee ",
    rooms: ["team", "team-*"],
    read: ["announcements"],
    mod: ["team"],
  }));
  assert.deepEqual(await verifier.verify(token), {
    sub: "ann",
    name: "Ann Lee",
    rooms: ["team", "team-*"],
    read: ["announcements"],
    mod: ["team"],
    exp: (NOW_S + 3600) * 1000,
  });
});

Deno.test("Verifier.verify() defaults name to the sub and the room lists to none", async () => {
  const verifier = await hsVerifier();
  assert.deepEqual(await verifier.verify(await sign(base())), {
    sub: "ann",
    name: "ann",
    rooms: [],
    read: [],
    mod: [],
    exp: (NOW_S + 3600) * 1000,
  });
  // A sub too long for a name gives its first 32 characters.
  const sub = "user-" + "x".repeat(59);
  const identity = await verifier.verify(await sign(base({ sub })));
  assert.equal(identity.sub, sub);
  assert.equal(identity.name, sub.slice(0, 32));
});

Deno.test("Verifier.verify() refuses a token signed with another secret", async () => {
  const verifier = await hsVerifier();
  const other = new TextEncoder().encode("another-secret-of-at-least-32-bytes");
  await refuses(verifier, await sign(base(), other), "token signature is invalid");
});

Deno.test("Verifier.verify() refuses a token whose claims were changed after signing", async () => {
  const verifier = await hsVerifier();
  const [header, , signature] = (await sign(base({ rooms: ["team"] }))).split(".");
  const forged = `${header}.${base64url(JSON.stringify(base({ rooms: ["*"] })))}.${signature}`;
  await refuses(verifier, forged, "token signature is invalid");
});

Deno.test("Verifier.verify() refuses an unsigned token (alg none)", async () => {
  const token = unsigned(base({ rooms: ["*"] }));
  assert.ok(token.endsWith("."), "the signature is empty");
  await refuses(await hsVerifier(), token, "token algorithm is not allowed: expected HS256");
  const ecVerifier = await createVerifier({ publicKeyPem: ecPem, now });
  await refuses(ecVerifier, token, "token algorithm is not allowed: expected ES256");
  const rsaVerifier = await createVerifier({ publicKeyPem: rsaPem, now });
  await refuses(rsaVerifier, token, "token algorithm is not allowed: expected RS256");
});

Deno.test("Verifier.verify() refuses HS256 signed with the public key's PEM as the secret", async () => {
  for (const pem of [rsaPem, ecPem]) {
    const verifier = await createVerifier({ publicKeyPem: pem, now });
    for (const text of [pem, pem.trim(), `${pem.trim()}\n`]) {
      const forged = await sign(base({ rooms: ["*"] }), new TextEncoder().encode(text));
      await refuses(verifier, forged, /^token algorithm is not allowed: expected (RS|ES)256$/);
    }
  }
});

Deno.test("Verifier.verify() refuses other HMAC algorithms with the right secret", async () => {
  const verifier = await hsVerifier();
  for (const alg of ["HS384", "HS512"]) {
    await refuses(verifier, await sign(base(), KEY, alg), /algorithm is not allowed/);
  }
});

Deno.test("createVerifier() with an EC P-256 public key accepts ES256 tokens only", async () => {
  const verifier = await createVerifier({ publicKeyPem: ecPem, now });
  assert.equal(verifier.algorithm, "ES256");
  const identity = await verifier.verify(
    await sign(base({ rooms: ["team"] }), ec.privateKey, "ES256"),
  );
  assert.deepEqual(identity.rooms, ["team"]);
  const stranger = await generateKeyPair("ES256");
  await refuses(
    verifier,
    await sign(base(), stranger.privateKey, "ES256"),
    "token signature is invalid",
  );
  await refuses(verifier, await sign(base(), rsa.privateKey, "RS256"), /not allowed/);
});

Deno.test("createVerifier() with an RSA public key accepts RS256 tokens only", async () => {
  const verifier = await createVerifier({ publicKeyPem: `\n${rsaPem}\n`, now });
  assert.equal(verifier.algorithm, "RS256");
  const identity = await verifier.verify(
    await sign(base({ read: ["news"] }), rsa.privateKey, "RS256"),
  );
  assert.deepEqual(identity.read, ["news"]);
  const stranger = await generateKeyPair("RS256");
  await refuses(
    verifier,
    await sign(base(), stranger.privateKey, "RS256"),
    "token signature is invalid",
  );
  const pss = await generateKeyPair("PS256");
  await refuses(verifier, await sign(base(), pss.privateKey, "PS256"), /not allowed/);
  await refuses(verifier, await sign(base(), ec.privateKey, "ES256"), /not allowed/);
});

Deno.test('Verifier.verify() says exactly "token expired", allowing the clock skew', async () => {
  const verifier = await hsVerifier();
  await refuses(verifier, await sign(base({ exp: NOW_S - 3600 })), "token expired");
  await refuses(verifier, await sign(base({ exp: NOW_S - 30 })), "token expired");
  const late = await verifier.verify(await sign(base({ exp: NOW_S - 29 })));
  assert.equal(late.exp, (NOW_S - 29) * 1000);
  const strict = await hsVerifier(0);
  await refuses(strict, await sign(base({ exp: NOW_S })), "token expired");
  assert.equal((await strict.verify(await sign(base({ exp: NOW_S + 1 })))).sub, "ann");
});

Deno.test("Verifier.verify() refuses a token before its nbf, allowing the clock skew", async () => {
  const verifier = await hsVerifier();
  await refuses(verifier, await sign(base({ nbf: NOW_S + 31 })), "token is not valid yet");
  assert.equal((await verifier.verify(await sign(base({ nbf: NOW_S + 30 })))).sub, "ann");
  await refuses(
    await hsVerifier(0),
    await sign(base({ nbf: NOW_S + 1 })),
    "token is not valid yet",
  );
});

Deno.test("Verifier.verify() refuses a token issued in the future, allowing the clock skew", async () => {
  const verifier = await hsVerifier();
  await refuses(
    verifier,
    await sign(base({ iat: NOW_S + 31 })),
    "token was issued in the future",
  );
  assert.equal((await verifier.verify(await sign(base({ iat: NOW_S + 30 })))).sub, "ann");
  assert.equal((await verifier.verify(await sign(base({ iat: undefined })))).sub, "ann");
  await refuses(verifier, await sign(base({ iat: "yesterday" })), "token iat must be a number");
});

Deno.test("Verifier.verify() follows its clock", async () => {
  let time = NOW;
  const verifier = await createVerifier({ secret: SECRET, skewSeconds: 0, now: () => time });
  const token = await sign(base({ exp: NOW_S + 60 }));
  assert.equal((await verifier.verify(token)).sub, "ann");
  time += 60_000;
  await refuses(verifier, token, "token expired");
});

Deno.test("Verifier.verify() refuses a token without exp, or with exp not a number", async () => {
  const verifier = await hsVerifier();
  await refuses(verifier, await sign(base({ exp: undefined })), "token has no exp");
  await refuses(verifier, await sign(base({ exp: "tomorrow" })), "token exp must be a number");
  await refuses(verifier, await sign(base({ nbf: "now" })), "token nbf must be a number");
});

Deno.test("Verifier.verify() refuses a sub that is not a string of 1 to 64 characters", async () => {
  const verifier = await hsVerifier();
  const cases: [unknown, RegExp][] = [
    [undefined, /^token sub must be a string$/],
    [42, /^token sub must be a string$/],
    [["ann"], /^token sub must be a string$/],
    ["", /^token sub must be 1 to 64 characters, not 0$/],
    ["x".repeat(65), /^token sub must be 1 to 64 characters, not 65$/],
    ["ann\nadmin", /^token sub must not contain control characters$/],
  ];
  for (const [sub, message] of cases) {
    await refuses(verifier, await sign(base({ sub })), message);
  }
  // 64 characters, counted as code points: 64 emoji are 128 UTF-16 units.
  for (const sub of ["x".repeat(64), "🦊".repeat(64), "auth0|5f7c8ec7c33c6c004bbafe82"]) {
    assert.equal((await verifier.verify(await sign(base({ sub, name: "A" })))).sub, sub);
  }
});

Deno.test("Verifier.verify() refuses a name that breaks the nickname rules", async () => {
  const verifier = await hsVerifier();
  const cases: [unknown, RegExp][] = [
    [7, /^token name must be a string$/],
    [null, /^token name must be a string$/],
    ["   ", /^token name must be 1 to 32 characters, not 0$/],
    ["x".repeat(33), /^token name must be 1 to 32 characters, not 33$/],
    ["Ann\u202Egnp", /^token name must not contain bidirectional control characters \(U\+202E\)$/],
    ["An\u200Bn", /^token name must not contain invisible characters \(U\+200B\)$/],
    ["Ann\u0007", /^token name must not contain control characters \(U\+0007\)$/],
    ["\u3164", /^token name must not contain invisible characters \(U\+3164\)$/],
  ];
  for (const [name, message] of cases) {
    await refuses(verifier, await sign(base({ name })), message);
  }
  // Without a name, the sub must make a good one.
  await refuses(verifier, await sign(base({ sub: "ann\u200F" })), /comes from sub/);
  assert.equal(
    (await verifier.verify(await sign(base({ name: "😀".repeat(32) })))).name.length,
    64,
  );
});

Deno.test("Verifier.verify() refuses malformed room patterns", async () => {
  const verifier = await hsVerifier();
  const cases: [Payload, RegExp][] = [
    [{ rooms: "team" }, /^token rooms must be an array of room patterns$/],
    [{ read: { team: true } }, /^token read must be an array/],
    [{ mod: null }, /^token mod must be an array/],
    [{ rooms: ["team", "team a"] }, /^token rooms\[1\] is not a room pattern/],
    [{ rooms: ["te*am"] }, /rooms\[0\] is not a room pattern/],
    [{ rooms: ["**"] }, /rooms\[0\]/],
    [{ rooms: ["*team"] }, /rooms\[0\]/],
    [{ rooms: [""] }, /rooms\[0\]/],
    [{ rooms: [42] }, /rooms\[0\]/],
    [{ rooms: ["x".repeat(65)] }, /rooms\[0\]/],
    [{ read: ["ok", "../admin"] }, /^token read\[1\]/],
    [{ mod: ["team-é"] }, /^token mod\[0\]/],
    [{ rooms: Array(257).fill("team") }, /^token rooms has 257 patterns, the limit is 256$/],
  ];
  for (const [claims, message] of cases) {
    await refuses(verifier, await sign(base(claims)), message);
  }
  const rooms = ["*", "team-*", "x".repeat(64), `${"x".repeat(64)}*`, "A_b-9"];
  assert.deepEqual((await verifier.verify(await sign(base({ rooms })))).rooms, rooms);
});

Deno.test("Verifier.verify() refuses malformed and oversized tokens", async () => {
  const verifier = await hsVerifier();
  await refuses(verifier, "", "token is missing");
  await refuses(verifier, undefined as unknown as string, "token is missing");
  await refuses(verifier, "not-a-token", "token is malformed");
  await refuses(verifier, "a.b.c", "token is malformed");
  await refuses(verifier, "x".repeat(8193), /^token is too long: 8193 characters/);
  const valid = await sign(base());
  await refuses(verifier, `${valid}.extra`, "token is malformed");
  const notJson = `${valid.split(".")[0]}.${base64url("[1,2]")}.${valid.split(".")[2]}`;
  await refuses(verifier, notJson, /^token (is malformed|signature is invalid)$/);
});

Deno.test("createVerifier() refuses a secret shorter than 32 bytes, naming its length", async () => {
  await assert.rejects(createVerifier({ secret: "x".repeat(31) }), (error: unknown) => {
    assert.ok(error instanceof RangeError);
    assert.match(error.message, /31 bytes, at least 32/);
    assert.ok(!error.message.includes("xxx"), "the message does not hold the secret");
    return true;
  });
  // Bytes of UTF-8, not characters: 16 "é" are 32 bytes.
  assert.equal((await createVerifier({ secret: "é".repeat(16) })).algorithm, "HS256");
  await assert.rejects(createVerifier({ secret: "é".repeat(15) + "a" }), /31 bytes/);
});

Deno.test("createVerifier() wants exactly one key, a usable one, and a skew from 0 to 300", async () => {
  await assert.rejects(createVerifier({}), TypeError);
  await assert.rejects(createVerifier({ secret: SECRET, publicKeyPem: ecPem }), TypeError);
  await assert.rejects(createVerifier({ publicKeyPem: "hello" }), /PEM PUBLIC KEY/);
  const ecPrivate = await generateKeyPair("ES256", { extractable: true });
  const { exportPKCS8 } = await import("jose");
  await assert.rejects(
    createVerifier({ publicKeyPem: await exportPKCS8(ecPrivate.privateKey) }),
    /this is a private key/,
  );
  const p384 = await generateKeyPair("ES384", { extractable: true });
  await assert.rejects(
    createVerifier({ publicKeyPem: await exportSPKI(p384.publicKey) }),
    TypeError,
  );
  const weak = await crypto.subtle.generateKey(
    {
      name: "RSASSA-PKCS1-v1_5",
      modulusLength: 1024,
      publicExponent: new Uint8Array([1, 0, 1]),
      hash: "SHA-256",
    },
    true,
    ["sign", "verify"],
  );
  await assert.rejects(
    createVerifier({ publicKeyPem: await exportSPKI(weak.publicKey) }),
    /RSA of 1024 bits, 2048 are needed/,
  );
  for (const skewSeconds of [-1, 301, 1.5, NaN]) {
    await assert.rejects(createVerifier({ secret: SECRET, skewSeconds }), RangeError);
  }
  assert.ok(await createVerifier({ secret: SECRET, skewSeconds: 300 }));
});

Deno.test("mintToken() makes an HS256 token with iat now and exp ttl later", async () => {
  const token = await mintToken(SECRET, {
    sub: "ann",
    name: "Ann",
    rooms: ["team"],
    mod: ["team"],
    ttlSeconds: 7200,
  }, now);
  const [header, payload] = token.split(".").slice(0, 2).map((part) =>
    JSON.parse(atob(part.replace(/-/g, "+").replace(/_/g, "/")))
  );
  assert.deepEqual(header, { alg: "HS256", typ: "JWT" });
  assert.deepEqual(payload, {
    sub: "ann",
    name: "Ann",
    rooms: ["team"],
    mod: ["team"],
    iat: NOW_S,
    exp: NOW_S + 7200,
  });
  const identity = await (await hsVerifier()).verify(token);
  assert.deepEqual(identity, {
    sub: "ann",
    name: "Ann",
    rooms: ["team"],
    read: [],
    mod: ["team"],
    exp: (NOW_S + 7200) * 1000,
  });
});

Deno.test("mintToken() checks its secret, lifetime and claims", async () => {
  const claims = { sub: "ann", ttlSeconds: 60 };
  const cases: [Parameters<typeof mintToken>, ErrorConstructor, RegExp][] = [
    [["short", claims], RangeError, /5 bytes, at least 32/],
    [[SECRET, { ...claims, ttlSeconds: 0 }], RangeError, /ttlSeconds is 0, expected/],
    [[SECRET, { ...claims, ttlSeconds: MAX_TTL_SECONDS + 1 }], RangeError, /366 days/],
    [[SECRET, { ...claims, ttlSeconds: 1.5 }], RangeError, /ttlSeconds is 1.5/],
    [[SECRET, { ...claims, ttlSeconds: NaN }], RangeError, /ttlSeconds is NaN/],
    [[SECRET, { ...claims, sub: "" }], RangeError, /^Cannot mint a token: sub must be 1 to 64/],
    [[SECRET, { ...claims, sub: 7 as unknown as string }], TypeError, /sub must be a string/],
    [[SECRET, { ...claims, name: "A\u2066" }], RangeError, /name must not contain bidi/],
    [[SECRET, { ...claims, rooms: ["a b"] }], RangeError, /rooms\[0\] is not a room pattern/],
    [[SECRET, { ...claims, read: "x" as unknown as string[] }], TypeError, /read must be an array/],
    [[SECRET, null as unknown as typeof claims], TypeError, /claims must be an object/],
  ];
  for (const [args, type, message] of cases) {
    await assert.rejects(mintToken(...args), (error: unknown) => {
      assert.ok(error instanceof type, `${error} is a ${type.name}`);
      assert.match((error as Error).message, message);
      return true;
    });
  }
  const token = await mintToken(SECRET, { ...claims, ttlSeconds: MAX_TTL_SECONDS }, now);
  assert.equal((await (await hsVerifier()).verify(token)).exp, (NOW_S + MAX_TTL_SECONDS) * 1000);
});

Deno.test("parseDuration() reads seconds, minutes, hours and days", () => {
  const cases: [string, number][] = [
    ["90", 90],
    ["90s", 90],
    ["15m", 900],
    ["12h", 43200],
    ["7d", 604800],
    [" 1d ", 86400],
    ["0", 0],
  ];
  for (const [text, seconds] of cases) assert.equal(parseDuration(text), seconds, text);
  for (const text of ["", "7x", "1.5h", "-5", "h", "7 d", "7D", "1w", "9999999999999"]) {
    assert.throws(() => parseDuration(text), SyntaxError, text);
  }
  assert.throws(() => parseDuration("7x"), /^SyntaxError: Cannot parse duration "7x": expected/);
});

Deno.test("verifierFromConfig() reads the key file, and names the variable when it cannot", async () => {
  const files: Record<string, string> = { "ec.pem": ecPem, "bad.pem": "nonsense" };
  const read = (path: string) =>
    path in files ? Promise.resolve(files[path]) : Promise.reject(new Deno.errors.NotFound(path));
  const ecVerifier = await verifierFromConfig(
    { authPublicKeyFile: "ec.pem", authSkew: 30 },
    read,
  );
  assert.equal(ecVerifier.algorithm, "ES256");
  for (const file of ["missing.pem", "bad.pem"]) {
    await assert.rejects(
      verifierFromConfig({ authPublicKeyFile: file, authSkew: 30 }, read),
      (error: unknown) => {
        assert.ok(error instanceof ConfigError);
        assert.equal(error.variable, "AUTH_PUBLIC_KEY_FILE");
        assert.match(error.message, new RegExp(`^AUTH_PUBLIC_KEY_FILE="${file}": expected`));
        return true;
      },
    );
  }
  assert.equal((await verifierFromConfig({ authSecret: SECRET, authSkew: 0 })).algorithm, "HS256");
  await assert.rejects(
    verifierFromConfig({ authSecret: "hunter2", authSkew: 30 }),
    (error: unknown) => {
      assert.ok(error instanceof ConfigError);
      assert.equal(error.variable, "AUTH_SECRET");
      assert.ok(!error.message.includes("hunter2"), error.message);
      assert.match(error.message, /7 bytes/);
      return true;
    },
  );
});
