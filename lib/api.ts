/**
 * The server API for backends and bots: post, delete and read the messages
 * of a room, list its members, kick and ban, and mint tokens. JSON in and
 * out, every request authorized by `Authorization: Bearer <API_KEY>`. The
 * handler mounts it under `/api/` when `API_KEY` is set.
 *
 * Errors are `{"error": {"code", "message"}}` with the matching status. The
 * API key is never logged or echoed; a minted token appears only in the
 * answer to `POST /api/tokens`.
 *
 * @module
 */

import { nickProblem } from "./auth/nick.ts";
import { safeEqual } from "./auth/secret.ts";
import type { Signal } from "./engine.ts";
import type { Hub } from "./hub.ts";
import { encodeRoom, exportRoom, parseRoom, readLines, summarize } from "./migrate.ts";
import {
  codePoints,
  DEFAULT_PAGE,
  MAX_NICK_LENGTH,
  MAX_PAGE,
  MAX_REASON_LENGTH,
  messageObject,
  ProtocolError,
  ROOM_PATTERN,
} from "./protocol.ts";

/** Options of {@linkcode createApi}. */
export interface ApiOptions {
  /** The hub whose rooms the API acts on. */
  hub: Hub;
  /** The key every request must present as `Authorization: Bearer <key>`; compared in constant time. */
  apiKey: string;
  /**
   * Signs a token with AUTH_SECRET; absent when AUTH_SECRET is not set (then
   * `POST /api/tokens` answers 409). Throws `RangeError` or `TypeError` for
   * claims it refuses, with a message that says why.
   */
  mint?: (claims: {
    sub: string;
    name?: string;
    rooms?: string[];
    read?: string[];
    mod?: string[];
    ttlSeconds: number;
  }) => Promise<string>;
  /**
   * Largest body of `POST /api/rooms/:room/import`, in bytes: a room's
   * history as JSONL, file bytes in base64.
   *
   * @default {64 MiB}
   */
  maxImportBytes?: number;
}

/** Largest request body, in bytes. */
const MAX_BODY_BYTES = 64 * 1024;
/** Longest token lifetime, in seconds (366 days). */
const MAX_TTL_SECONDS = 31_622_400;
/** Longest ban, in minutes (a year). */
const MAX_BAN_MINUTES = 525_600;
/** Member ids as the protocol's `kick` accepts them. */
const MEMBER_PATTERN = /^[A-Za-z0-9_:-]{1,64}$/;
// deno-lint-ignore no-control-regex
const CONTROL = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/;

type ApiErrorCode =
  | "unauthorized"
  | "bad_json"
  | "bad_request"
  | "bad_room"
  | "not_found"
  | "forbidden"
  | "method_not_allowed"
  | "too_large"
  | "no_secret"
  | "conflict"
  | "not_supported"
  | "unavailable";

/** A refused request: its status, code and what was wrong. */
class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: ApiErrorCode,
    message: string,
    readonly headers?: Record<string, string>,
  ) {
    super(message);
    this.name = "ApiError";
  }
}

function json(status: number, body: unknown, headers?: Record<string, string>): Response {
  const h = new Headers(headers);
  h.set("cache-control", "no-store");
  if (body === null) return new Response(null, { status, headers: h });
  h.set("content-type", "application/json; charset=utf-8");
  return new Response(JSON.stringify(body), { status, headers: h });
}

function errorResponse(error: ApiError): Response {
  return json(error.status, { error: { code: error.code, message: error.message } }, error.headers);
}

/** A value from the request, quoted and cut short for an error message. */
function quote(value: string): string {
  return JSON.stringify(value.length > 64 ? `${value.slice(0, 64)}...` : value);
}

function badRequest(message: string): ApiError {
  return new ApiError(400, "bad_request", message);
}

function tooLarge(size: string): ApiError {
  return new ApiError(
    413,
    "too_large",
    `the body is ${size} bytes; the limit is ${MAX_BODY_BYTES} bytes`,
  );
}

/**
 * Reads the body as one JSON object, refusing it past {@linkcode MAX_BODY_BYTES}
 * without reading further, whatever `content-length` claims.
 */
async function readObject(req: Request): Promise<Record<string, unknown>> {
  const declared = Number(req.headers.get("content-length") ?? NaN);
  if (declared > MAX_BODY_BYTES) throw tooLarge(String(declared));
  const chunks: Uint8Array[] = [];
  let size = 0;
  if (req.body) {
    const reader = req.body.getReader();
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        size += value.byteLength;
        if (size > MAX_BODY_BYTES) {
          reader.cancel().catch(() => {});
          throw tooLarge(`over ${MAX_BODY_BYTES}`);
        }
        chunks.push(value);
      }
    } catch (error) {
      if (error instanceof ApiError) throw error;
      throw badRequest("the body could not be read to its end");
    }
  }
  const bytes = new Uint8Array(size);
  let offset = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, offset);
    offset += chunk.byteLength;
  }
  let value: unknown;
  try {
    value = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch {
    throw new ApiError(
      400,
      "bad_json",
      size === 0 ? "the body is empty; send a JSON object" : "the body is not valid UTF-8 JSON",
    );
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new ApiError(400, "bad_json", "the body must be a JSON object");
  }
  return value as Record<string, unknown>;
}

/** Refuses fields a route does not know, so a typo is not silently ignored. */
function onlyFields(body: Record<string, unknown>, known: readonly string[]): void {
  for (const name of Object.keys(body)) {
    if (!known.includes(name)) {
      throw badRequest(`${quote(name)}: unknown field; expected ${known.join(", ")}`);
    }
  }
}

function stringList(body: Record<string, unknown>, name: string): string[] | undefined {
  const value = body[name];
  if (value === undefined || value === null) return undefined;
  if (!Array.isArray(value) || !value.every((v) => typeof v === "string")) {
    throw badRequest(`${name}: must be an array of room patterns (strings)`);
  }
  return value;
}

/** An integer query parameter, or `fallback` when absent or empty. */
function intParam(url: URL, name: string, fallback: number, min: number, max: number): number {
  const raw = url.searchParams.get(name);
  if (raw === null || raw === "") return fallback;
  const value = /^\d{1,16}$/.test(raw) ? Number(raw) : NaN;
  if (!(value >= min && value <= max)) {
    throw badRequest(`${name}: must be an integer from ${min} to ${max}, not ${quote(raw)}`);
  }
  return value;
}

/** Checks the bearer key; throws a 401 that never repeats what was sent. */
function authorize(req: Request, apiKey: string): void {
  const header = req.headers.get("authorization") ?? "";
  const match = /^bearer[ \t]+(.*)$/is.exec(header.trim());
  const given = match?.[1].trim() ?? "";
  if (given === "") {
    throw new ApiError(
      401,
      "unauthorized",
      "missing Authorization: Bearer <API_KEY>",
      { "www-authenticate": "Bearer" },
    );
  }
  if (!safeEqual(given, apiKey)) {
    throw new ApiError(401, "unauthorized", "the API key is not valid", {
      "www-authenticate": 'Bearer error="invalid_token"',
    });
  }
}

/** The bytes of `body`, refused with a 413 past `limit`. */
function capped(body: ReadableStream<Uint8Array>, limit: number): ReadableStream<Uint8Array> {
  let size = 0;
  return body.pipeThrough(
    new TransformStream<Uint8Array, Uint8Array>({
      transform(chunk, controller) {
        size += chunk.byteLength;
        if (size > limit) {
          throw new ApiError(413, "too_large", `the body is over ${limit} bytes, the import limit`);
        }
        controller.enqueue(chunk);
      },
    }),
  );
}

type Route = (req: Request, url: URL, params: { room: string; id: string }) => Promise<Response>;

/**
 * Makes the server API: a function from a request under `/api/` (and its
 * parsed URL) to a response. It never throws: a failure of the engine is a
 * 503 `unavailable`, logged without the key.
 *
 * Routes:
 * - `POST /api/rooms/:room/messages` `{text, name}` → 201 `{id, epoch}`
 * - `GET /api/rooms/:room/messages?before=&limit=` → 200 `{epoch, messages, more}`
 * - `DELETE /api/rooms/:room/messages/:id` → 204
 * - `GET /api/rooms/:room/members` → 200 `{members}`
 * - `POST /api/rooms/:room/kick` `{member, minutes?, reason?}` → 200 `{kicked, until?}`
 * - `POST /api/tokens` `{sub, name?, rooms?, read?, mod?, ttl}` → 201 `{token}`
 * - `GET /api/rooms/:room/export` → 200, the room's history as JSONL (`migrate.ts`)
 * - `POST /api/rooms/:room/import` (JSONL body) → 201 `{room, messages, dedup, bytes}`;
 *   409 when the room has messages or the export does not fit the history limits
 *
 * @example
 * ```ts
 * const api = createApi({ hub, apiKey: config.apiKey });
 * if (url.pathname.startsWith("/api/")) return api(req, url);
 * ```
 */
export function createApi(options: ApiOptions): (req: Request, url: URL) => Promise<Response> {
  const { hub, apiKey, mint } = options;
  // A header value loses white space at its ends, so such a key could never match.
  if (typeof apiKey !== "string" || apiKey === "" || apiKey.trim() !== apiKey) {
    throw new TypeError(
      "Cannot create the API: apiKey must be non-empty, without white space at either end",
    );
  }
  const engine = hub.options.engine;
  const maxImportBytes = options.maxImportBytes ?? 64 << 20;

  const postMessage: Route = async (req, _url, { room }) => {
    const body = await readObject(req);
    onlyFields(body, ["text", "name"]);
    const max = hub.options.maxTextLength;
    const { text } = body;
    if (typeof text !== "string" || text.length === 0 || codePoints(text) > max) {
      const got = typeof text === "string" ? `, not ${codePoints(text)}` : "";
      throw badRequest(`text: must be a string of 1 to ${max} characters${got}`);
    }
    if (typeof body.name !== "string") {
      throw badRequest(`name: required, the sender's name of 1 to ${MAX_NICK_LENGTH} characters`);
    }
    const name = body.name.trim();
    const length = codePoints(name);
    if (length === 0 || length > MAX_NICK_LENGTH) {
      throw badRequest(`name: must be 1 to ${MAX_NICK_LENGTH} characters, not ${length}`);
    }
    const problem = CONTROL.test(name) ? "must not contain control characters" : nickProblem(name);
    if (problem !== undefined) throw badRequest(`name: ${problem}`);
    const message = await hub.post(room, { text, name });
    return json(201, { id: message.id, epoch: message.epoch });
  };

  const listMessages: Route = async (_req, url, { room }) => {
    const before = intParam(url, "before", Number.MAX_SAFE_INTEGER, 1, Number.MAX_SAFE_INTEGER);
    const limit = intParam(url, "limit", DEFAULT_PAGE, 1, MAX_PAGE);
    const page = await engine.history(room, before, limit);
    return json(200, {
      epoch: page.epoch,
      // Pages carry no file bytes: a file's object says `omitted`.
      messages: page.messages.map((m) => messageObject({ ...m, data: undefined })),
      more: page.more,
    });
  };

  const deleteMessage: Route = async (_req, _url, { room, id }) => {
    const target = /^\d{1,16}$/.test(id) ? Number(id) : NaN;
    if (!(target >= 1 && target <= Number.MAX_SAFE_INTEGER)) {
      throw badRequest(`id: must be a message id (a positive integer), not ${quote(id)}`);
    }
    await hub.deleteMessage(room, target);
    return json(204, null);
  };

  const listMembers: Route = async (_req, _url, { room }) => {
    return json(200, { members: await engine.members(room) });
  };

  const kick: Route = async (req, _url, { room }) => {
    const body = await readObject(req);
    onlyFields(body, ["member", "minutes", "reason"]);
    const { member } = body;
    if (typeof member !== "string" || !MEMBER_PATTERN.test(member)) {
      throw badRequest("member: must be the id of a member of the room (as /members lists it)");
    }
    const minutes = body.minutes ?? 0;
    if (
      typeof minutes !== "number" || !Number.isInteger(minutes) || minutes < 0 ||
      minutes > MAX_BAN_MINUTES
    ) {
      throw badRequest(
        `minutes: must be whole minutes of ban from 0 (kick only) to ${MAX_BAN_MINUTES} (a year)`,
      );
    }
    const reason = body.reason ?? "";
    if (
      typeof reason !== "string" || codePoints(reason) > MAX_REASON_LENGTH || CONTROL.test(reason)
    ) {
      throw badRequest(
        `reason: must be a string of at most ${MAX_REASON_LENGTH} characters without control characters`,
      );
    }
    const event = await hub.kick(room, member, { minutes, reason: reason.trim(), by: null });
    const { member: kicked, until } = event as Extract<Signal, { type: "kick" }>;
    return json(200, { kicked, until });
  };

  const exportHistory: Route = async (_req, _url, { room }) => {
    const snapshot = await exportRoom(engine, room);
    if (snapshot.head === 0) {
      throw new ApiError(404, "not_found", `room ${quote(room)} has no messages to export`);
    }
    const lines = encodeRoom(snapshot);
    const encoder = new TextEncoder();
    const body = new ReadableStream<Uint8Array>({
      pull(controller) {
        const next = lines.next();
        if (next.done) controller.close();
        else controller.enqueue(encoder.encode(`${next.value}\n`));
      },
    });
    const { messages, dedup, bytes } = summarize(snapshot);
    hub.log.info("api_export", { room, messages, dedup, bytes });
    return new Response(body, {
      headers: {
        "content-type": "application/x-ndjson; charset=utf-8",
        "content-disposition": `attachment; filename="${room}.jsonl"`,
        "cache-control": "no-store",
      },
    });
  };

  const importHistory: Route = async (req, _url, { room }) => {
    if (!engine.importRoom) {
      throw new ApiError(501, "not_supported", "this server's engine cannot import rooms");
    }
    const declared = Number(req.headers.get("content-length") ?? NaN);
    if (declared > maxImportBytes) {
      throw new ApiError(
        413,
        "too_large",
        `the body is ${declared} bytes; the limit is ${maxImportBytes} bytes`,
      );
    }
    if (!req.body) throw badRequest("the body is empty; send a room export (JSONL)");
    let snapshot;
    try {
      snapshot = await parseRoom(readLines(capped(req.body, maxImportBytes)));
    } catch (error) {
      if (error instanceof SyntaxError) throw badRequest(error.message);
      throw error;
    }
    try {
      await engine.importRoom(room, snapshot);
    } catch (error) {
      if (error instanceof RangeError) throw new ApiError(409, "conflict", error.message);
      throw error;
    }
    const summary = summarize(snapshot);
    hub.log.info("api_import", { room, from: snapshot.room, ...summary });
    return json(201, { room, ...summary });
  };

  const tokens: Route = async (req) => {
    if (!mint) throw new ApiError(409, "no_secret", "set AUTH_SECRET to mint tokens");
    const body = await readObject(req);
    onlyFields(body, ["sub", "name", "rooms", "read", "mod", "ttl"]);
    const { sub, name, ttl } = body;
    if (typeof sub !== "string") throw badRequest("sub: required, the account id (a string)");
    if (name !== undefined && name !== null && typeof name !== "string") {
      throw badRequest("name: must be a string, the display name");
    }
    if (
      typeof ttl !== "number" || !Number.isInteger(ttl) || ttl < 1 || ttl > MAX_TTL_SECONDS
    ) {
      throw badRequest(
        `ttl: must be a number of seconds from 1 to ${MAX_TTL_SECONDS} (366 days), ` +
          `such as 3600; strings such as "7d" are not accepted`,
      );
    }
    const claims: Parameters<NonNullable<ApiOptions["mint"]>>[0] = { sub, ttlSeconds: ttl };
    if (typeof name === "string") claims.name = name;
    for (const list of ["rooms", "read", "mod"] as const) {
      const patterns = stringList(body, list);
      if (patterns !== undefined) claims[list] = patterns;
    }
    let token: string;
    try {
      token = await mint(claims);
    } catch (error) {
      if (error instanceof RangeError || error instanceof TypeError) {
        throw badRequest(error.message);
      }
      throw error;
    }
    hub.log.info("api_token", { sub, ttl });
    return json(201, { token });
  };

  /** The route table: path shape to the handler of each method. */
  function match(path: string): { methods: Record<string, Route>; room?: string; id?: string } {
    const parts = path.startsWith("/api/") ? path.slice(5).split("/") : [];
    if (parts.length === 1 && parts[0] === "tokens") return { methods: { POST: tokens } };
    if (parts[0] !== "rooms" || parts.length < 3) return { methods: {} };
    const [, room, what, id] = parts;
    if (what === "messages" && parts.length === 3) {
      return { methods: { GET: listMessages, POST: postMessage }, room };
    }
    if (what === "messages" && parts.length === 4) {
      return { methods: { DELETE: deleteMessage }, room, id };
    }
    if (what === "members" && parts.length === 3) return { methods: { GET: listMembers }, room };
    if (what === "kick" && parts.length === 3) return { methods: { POST: kick }, room };
    if (what === "export" && parts.length === 3) return { methods: { GET: exportHistory }, room };
    if (what === "import" && parts.length === 3) return { methods: { POST: importHistory }, room };
    return { methods: {} };
  }

  return async (req, url) => {
    try {
      authorize(req, apiKey);
      const { methods, room, id } = match(url.pathname);
      const allowed = Object.keys(methods);
      if (allowed.length === 0) {
        throw new ApiError(404, "not_found", `no API route ${quote(url.pathname)}`);
      }
      const route = methods[req.method];
      if (!route) {
        throw new ApiError(
          405,
          "method_not_allowed",
          `${req.method} is not allowed here; use ${allowed.join(" or ")}`,
          { allow: allowed.join(", ") },
        );
      }
      if (room !== undefined && !ROOM_PATTERN.test(room)) {
        throw new ApiError(
          400,
          "bad_room",
          `room: ${quote(room)} must be 1 to 64 characters from A-Z a-z 0-9 _ -`,
        );
      }
      return await route(req, url, { room: room ?? "", id: id ?? "" });
    } catch (error) {
      if (error instanceof ApiError) return errorResponse(error);
      if (error instanceof ProtocolError) {
        const status = error.code === "not_found" ? 404 : error.code === "forbidden" ? 403 : 400;
        const code = status === 400 ? "bad_request" : error.code as ApiErrorCode;
        return errorResponse(new ApiError(status, code, error.message));
      }
      hub.log.error("api_failed", {
        method: req.method,
        path: url.pathname,
        error: String(error),
      });
      return errorResponse(
        new ApiError(503, "unavailable", "the server could not do it now; try again"),
      );
    }
  };
}
