/**
 * Signed tokens (JWT, through jose): verifying them into an
 * {@linkcode Identity}, and minting them with a shared secret.
 *
 * This is the only module that loads jose. Load it with `import()` and only
 * in token mode (or to mint), so an open-mode server never downloads it.
 *
 * @module
 */

import { importSPKI, jwtVerify, SignJWT } from "jose";
import { type Config, ConfigError, hiddenValue } from "../config.ts";
import { checkName, checkPatterns, checkSub } from "./claims.ts";
import { AuthError, type Identity } from "./identity.ts";

/** Options of {@linkcode createVerifier}: exactly one of `secret` and `publicKeyPem`. */
export interface VerifierOptions {
  /** Shared secret (`AUTH_SECRET`), at least 32 bytes of UTF-8: tokens are HS256. */
  secret?: string;
  /**
   * Public key (the text of `AUTH_PUBLIC_KEY_FILE`), PEM `PUBLIC KEY` (SPKI):
   * EC P-256 (tokens are ES256) or RSA of 2048 bits or more (RS256).
   */
  publicKeyPem?: string;
  /**
   * Clock difference tolerated for `exp`, `nbf` and `iat`, in seconds (0 to 300).
   * @default 30
   */
  skewSeconds?: number;
  /**
   * The clock, in milliseconds.
   * @default Date.now
   */
  now?: () => number;
}

/** Checks tokens. */
export interface Verifier {
  /** The one algorithm tokens must use: `HS256`, `ES256` or `RS256`. */
  readonly algorithm: Algorithm;
  /**
   * Verifies a token and reads its claims.
   *
   * @throws {AuthError} `unauthorized`, with a message that never holds the
   *   token, when it is malformed, forged, expired, not valid yet or has a
   *   claim that breaks the rules.
   */
  verify(token: string): Promise<Identity>;
}

/** The algorithms a verifier may be set up with. */
export type Algorithm = "HS256" | "ES256" | "RS256";

/** Shortest shared secret, in bytes: as long as the HS256 hash. */
export const MIN_SECRET_BYTES = 32;
/** Longest token read, in characters; longer ones are refused before parsing. */
export const MAX_TOKEN_LENGTH = 8192;
/** Longest lifetime of a minted token, in seconds: 366 days. */
export const MAX_TTL_SECONDS = 366 * 86400;
/** Largest tolerated clock difference, in seconds. */
export const MAX_SKEW_SECONDS = 300;

type Key = CryptoKey | Uint8Array;

/**
 * The bytes of a shared secret.
 *
 * @throws {RangeError} When it is shorter than 32 bytes; the message tells its length.
 */
function secretKey(secret: unknown): Uint8Array {
  if (typeof secret !== "string") throw new TypeError("Cannot use the secret: it is not a string");
  const bytes = new TextEncoder().encode(secret);
  if (bytes.length < MIN_SECRET_BYTES) {
    throw new RangeError(
      `Cannot use the secret: it is ${bytes.length} bytes, at least ${MIN_SECRET_BYTES} are needed`,
    );
  }
  return bytes;
}

/** Imports a PEM public key as the one algorithm it can verify. */
async function publicKey(pem: string): Promise<{ key: CryptoKey; algorithm: Algorithm }> {
  const text = pem.trim();
  if (/^-----BEGIN [A-Z ]*PRIVATE KEY-----/.test(text)) {
    throw new TypeError(
      "Cannot use the public key: this is a private key; give its public key " +
        "(openssl pkey -in key.pem -pubout)",
    );
  }
  for (const algorithm of ["ES256", "RS256"] as const) {
    let key: CryptoKey;
    try {
      key = await importSPKI(text, algorithm);
    } catch {
      continue;
    }
    const bits = (key.algorithm as Partial<RsaHashedKeyAlgorithm>).modulusLength;
    if (bits !== undefined && bits < 2048) {
      throw new RangeError(`Cannot use the public key: it is RSA of ${bits} bits, 2048 are needed`);
    }
    return { key, algorithm };
  }
  throw new TypeError(
    "Cannot use the public key: expected a PEM PUBLIC KEY (SPKI), EC P-256 or RSA",
  );
}

function skew(value: number | undefined): number {
  const seconds = value ?? 30;
  if (!Number.isInteger(seconds) || seconds < 0 || seconds > MAX_SKEW_SECONDS) {
    throw new RangeError(
      `Cannot use a clock skew of ${seconds} seconds: expected 0 to ${MAX_SKEW_SECONDS}`,
    );
  }
  return seconds;
}

/**
 * Builds a verifier for one key and one algorithm: HS256 with `secret`, or
 * ES256 or RS256 with `publicKeyPem`, whichever the key is. Tokens signed
 * with any other algorithm (`none`, or HS256 against a public key) are refused.
 *
 * @throws {TypeError} When neither or both keys are given, or the PEM is not
 *   an EC P-256 or RSA public key.
 * @throws {RangeError} When the secret is shorter than 32 bytes, the RSA key
 *   shorter than 2048 bits, or the skew out of 0 to 300.
 *
 * @example
 * ```ts
 * const verifier = await createVerifier({ secret: Deno.env.get("AUTH_SECRET") });
 * const identity = await verifier.verify(token); // or throws AuthError
 * ```
 */
export async function createVerifier(options: VerifierOptions): Promise<Verifier> {
  const { secret, publicKeyPem, now = Date.now } = options;
  const skewSeconds = skew(options.skewSeconds);
  if ((secret === undefined) === (publicKeyPem === undefined)) {
    throw new TypeError("Cannot create a verifier: give exactly one of secret and publicKeyPem");
  }
  let key: Key;
  let algorithm: Algorithm;
  if (secret !== undefined) {
    key = secretKey(secret);
    algorithm = "HS256";
  } else {
    ({ key, algorithm } = await publicKey(publicKeyPem!));
  }
  return {
    algorithm,
    async verify(token: string): Promise<Identity> {
      if (typeof token !== "string" || token === "") {
        throw new AuthError("unauthorized", "token is missing");
      }
      if (token.length > MAX_TOKEN_LENGTH) {
        throw new AuthError(
          "unauthorized",
          `token is too long: ${token.length} characters, the limit is ${MAX_TOKEN_LENGTH}`,
        );
      }
      const at = now();
      let payload: Record<string, unknown>;
      try {
        ({ payload } = await jwtVerify(token, key, {
          algorithms: [algorithm],
          clockTolerance: skewSeconds,
          currentDate: new Date(at),
          requiredClaims: ["exp"],
        }));
      } catch (error) {
        throw refusal(error, algorithm);
      }
      // jose checks `iat` only against a maximum age; a token from the future is refused here.
      if (typeof payload.iat === "number" && payload.iat > Math.floor(at / 1000) + skewSeconds) {
        throw new AuthError("unauthorized", "token was issued in the future");
      }
      return identityOf(payload);
    },
  };
}

/** The {@linkcode AuthError} for a failure of jose. */
function refusal(error: unknown, algorithm: Algorithm): AuthError {
  const { code, claim, reason } = error as { code?: string; claim?: string; reason?: string };
  switch (code) {
    case "ERR_JWT_EXPIRED":
      return new AuthError("unauthorized", "token expired");
    case "ERR_JWS_SIGNATURE_VERIFICATION_FAILED":
      return new AuthError("unauthorized", "token signature is invalid");
    case "ERR_JOSE_ALG_NOT_ALLOWED":
      return new AuthError("unauthorized", `token algorithm is not allowed: expected ${algorithm}`);
    case "ERR_JWT_CLAIM_VALIDATION_FAILED":
      if (claim === "exp" && reason === "missing") {
        return new AuthError("unauthorized", "token has no exp");
      }
      if (claim === "nbf" && reason === "check_failed") {
        return new AuthError("unauthorized", "token is not valid yet");
      }
      if (reason === "invalid" && (claim === "exp" || claim === "nbf" || claim === "iat")) {
        return new AuthError("unauthorized", `token ${claim} must be a number`);
      }
      return new AuthError("unauthorized", "token claims are invalid");
    case "ERR_JOSE_NOT_SUPPORTED":
      return new AuthError("unauthorized", "token uses an unsupported header");
    case "ERR_JWS_INVALID":
    case "ERR_JWT_INVALID":
      return new AuthError("unauthorized", "token is malformed");
    default: {
      const refused = new AuthError("unauthorized", "token could not be verified");
      refused.cause = error;
      return refused;
    }
  }
}

/** Reads Parley's claims from a verified payload. */
function identityOf(payload: Record<string, unknown>): Identity {
  try {
    const sub = checkSub(payload.sub);
    return {
      sub,
      name: checkName(payload.name, sub),
      rooms: checkPatterns("rooms", payload.rooms),
      read: checkPatterns("read", payload.read),
      mod: checkPatterns("mod", payload.mod),
      exp: (payload.exp as number) * 1000,
    };
  } catch (error) {
    throw new AuthError("unauthorized", `token ${(error as Error).message}`);
  }
}

/** What {@linkcode mintToken} puts in a token. */
export interface MintClaims {
  /** Account id, 1 to 64 characters. */
  sub: string;
  /** Display name, 1 to 32 characters; absent, clients show the `sub`. */
  name?: string;
  /** Room patterns to read and write. */
  rooms?: string[];
  /** Room patterns to read only. */
  read?: string[];
  /** Room patterns to moderate. */
  mod?: string[];
  /** Lifetime, in whole seconds from 1 to 366 days. */
  ttlSeconds: number;
}

/**
 * Mints an HS256 token with `iat` now and `exp` `ttlSeconds` later.
 *
 * @throws {RangeError} When the secret is shorter than 32 bytes, the lifetime
 *   out of bounds, or a claim breaks the rules ({@linkcode checkSub} and co.).
 * @throws {TypeError} When a claim has the wrong type.
 *
 * @example
 * ```ts
 * const token = await mintToken(secret, { sub: "ann", rooms: ["team-*"], ttlSeconds: 3600 });
 * ```
 */
export async function mintToken(
  secret: string,
  claims: MintClaims,
  now: () => number = Date.now,
): Promise<string> {
  const key = secretKey(secret);
  if (claims === null || typeof claims !== "object") {
    throw new TypeError("Cannot mint a token: claims must be an object");
  }
  const { ttlSeconds } = claims;
  if (!Number.isInteger(ttlSeconds) || ttlSeconds < 1 || ttlSeconds > MAX_TTL_SECONDS) {
    throw new RangeError(
      `Cannot mint a token: ttlSeconds is ${ttlSeconds}, expected whole seconds from 1 to ` +
        `${MAX_TTL_SECONDS} (366 days)`,
    );
  }
  const payload: Record<string, unknown> = {};
  let sub: string;
  try {
    sub = checkSub(claims.sub);
    if (claims.name !== undefined) payload.name = checkName(claims.name);
    for (const claim of ["rooms", "read", "mod"] as const) {
      if (claims[claim] !== undefined) payload[claim] = checkPatterns(claim, claims[claim]);
    }
  } catch (error) {
    const Type = error instanceof TypeError ? TypeError : RangeError;
    throw new Type(`Cannot mint a token: ${(error as Error).message}`);
  }
  const iat = Math.floor(now() / 1000);
  return await new SignJWT(payload)
    .setProtectedHeader({ alg: "HS256", typ: "JWT" })
    .setSubject(sub)
    .setIssuedAt(iat)
    .setExpirationTime(iat + ttlSeconds)
    .sign(key);
}

/**
 * Parses a duration into seconds: `90` or `90s`, `15m`, `12h`, `7d`.
 *
 * @throws {SyntaxError} For anything else.
 */
export function parseDuration(text: string): number {
  const match = /^(\d{1,12})([smhd]?)$/.exec(String(text).trim());
  if (!match) {
    throw new SyntaxError(
      `Cannot parse duration ${JSON.stringify(text)}: expected a number of seconds, ` +
        "optionally followed by s, m, h or d, such as 90s, 15m, 12h or 7d",
    );
  }
  const unit = { "": 1, s: 1, m: 60, h: 3600, d: 86400 }[match[2] as "" | "s" | "m" | "h" | "d"];
  return Number(match[1]) * unit;
}

/**
 * Builds the verifier the configuration asks for, reading
 * `AUTH_PUBLIC_KEY_FILE` when it is set.
 *
 * @param readTextFile How to read the key file.
 * @throws {ConfigError} Naming `AUTH_SECRET` (without its value) or
 *   `AUTH_PUBLIC_KEY_FILE` when the key cannot be used.
 */
export async function verifierFromConfig(
  config: Pick<Config, "authSecret" | "authPublicKeyFile" | "authSkew">,
  readTextFile: (path: string) => Promise<string> = Deno.readTextFile,
): Promise<Verifier> {
  const { authSecret, authPublicKeyFile, authSkew } = config;
  if (authPublicKeyFile !== undefined) {
    let pem: string;
    try {
      pem = await readTextFile(authPublicKeyFile);
    } catch (cause) {
      throw new ConfigError("AUTH_PUBLIC_KEY_FILE", authPublicKeyFile, "a readable PEM file", {
        cause,
      });
    }
    try {
      return await createVerifier({ publicKeyPem: pem, skewSeconds: authSkew });
    } catch (cause) {
      throw new ConfigError(
        "AUTH_PUBLIC_KEY_FILE",
        authPublicKeyFile,
        "an EC P-256 or RSA (2048 bits or more) public key in PEM",
        { cause },
      );
    }
  }
  const secret = authSecret ?? "";
  if (new TextEncoder().encode(secret).length < MIN_SECRET_BYTES) {
    throw new ConfigError(
      "AUTH_SECRET",
      hiddenValue(secret),
      `a secret of at least ${MIN_SECRET_BYTES} bytes`,
    );
  }
  return await createVerifier({ secret, skewSeconds: authSkew });
}
