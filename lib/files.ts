/**
 * Stored files over HTTP: `GET /<room>/files/<epoch>/<id>` answers the bytes
 * of the file message `id` of the room's history `epoch`, under the room's
 * access rules. A page that reloaded no longer holds the bytes it was sent
 * over its socket; it points its pictures here instead.
 *
 * An `(epoch, id)` pair names one message forever and a file is never
 * edited, so the answer is cached as immutable, with a strong ETag. A
 * deleted message answers 410, one that left history (or another epoch's)
 * 404.
 *
 * @module
 */

import { identify, memberIdOfSub, type Verifier } from "./admission.ts";
import type { AuthFailures } from "./auth/failures.ts";
import type { Engine } from "./engine.ts";
import { parsePosition, ProtocolError, ROOM_PATTERN, type StoredMessage } from "./protocol.ts";

/** Options of {@linkcode createFileRoute}. */
export interface FileRouteOptions {
  /** Where the files are stored. */
  engine: Engine;
  /**
   * Token mode: every request presents a token that may read the room, in
   * `Authorization: Bearer` or `?token=`. Open mode when absent.
   * @default undefined
   */
  verifier?: Verifier;
  /**
   * Failed authentications per client address; past the limit, 429.
   * @default undefined (not counted)
   */
  failures?: AuthFailures;
  /**
   * Counts refused requests by reason (as the upgrade path does).
   * @default undefined
   */
  countRejection?: (reason: string) => void;
  /**
   * Seconds a browser may keep a file without asking again.
   * @default 31536000 (a year)
   */
  maxAge?: number;
}

/** Answers one file request; `path` is the request's path, `ip` the client's address. */
export type FileRoute = (req: Request, path: string, ip: string) => Promise<Response>;

const FILES_PREFIX = /^\/[^/]+\/files(?:\/|$)/;
const FILE_PATH = /^\/([^/]+)\/files\/([^/]+)\/([^/]+)$/;
const ID_PATTERN = /^\d{1,15}$/;
/** Picture types served as themselves; anything else is a download. */
const INLINE_TYPES: ReadonlySet<string> = new Set([
  "image/png",
  "image/jpeg",
  "image/gif",
  "image/webp",
  "image/avif",
]);

/**
 * Whether a path is one of the file routes (`/<room>/files...`), right or
 * malformed: such a path is never a room page.
 */
export function isFilePath(path: string): boolean {
  return FILES_PREFIX.test(path);
}

/**
 * The URL path of a stored file, as {@linkcode createFileRoute} serves it.
 *
 * @example
 * ```ts
 * filePath("team", "m5x2a9", 58); // "/team/files/m5x2a9/58"
 * ```
 */
export function filePath(room: string, epoch: string, id: number): string {
  return `/${room}/files/${epoch}/${id}`;
}

function text(status: number, body: string, headers?: HeadersInit): Response {
  const h = new Headers(headers);
  h.set("content-type", "text/plain; charset=utf-8");
  h.set("x-content-type-options", "nosniff");
  // A refusal may depend on the token or change (a ban ends): never cached.
  h.set("cache-control", "no-store");
  return new Response(body + "\n", { status, headers: h });
}

/** The parts of a file path, or a 400/404 answer that says what is wrong. */
function parsePath(path: string): { room: string; epoch: string; id: number } | Response {
  const match = FILE_PATH.exec(path);
  if (!match) return text(404, "not found: a file is at /<room>/files/<epoch>/<id>");
  const [, room, epoch, id] = match;
  if (!ROOM_PATTERN.test(room)) {
    return text(400, "bad room name: use 1 to 64 characters from A-Z a-z 0-9 _ -");
  }
  if (!ID_PATTERN.test(id)) {
    return text(400, `bad file id: ${JSON.stringify(id)} is not a message id (an integer)`);
  }
  try {
    parsePosition(epoch, id);
  } catch (error) {
    if (!(error instanceof ProtocolError)) throw error;
    return text(400, `bad epoch: ${JSON.stringify(epoch)} is not an epoch from the server`);
  }
  return { room, epoch, id: Number(id) };
}

/** The token of a request: `Authorization: Bearer`, else `?token=`. */
function tokenOf(req: Request, url: URL): string | undefined {
  const header = req.headers.get("authorization");
  const bearer = header === null ? null : /^Bearer\s+(\S+)\s*$/i.exec(header);
  return bearer?.[1] ?? url.searchParams.get("token") ?? undefined;
}

function matches(ifNoneMatch: string | null, etag: string): boolean {
  if (!ifNoneMatch) return false;
  if (ifNoneMatch.trim() === "*") return true;
  return ifNoneMatch.split(",").some((tag) => tag.trim().replace(/^W\//, "") === etag);
}

/** A `Content-Disposition` value that names the file safely in any header parser. */
export function contentDisposition(kind: "inline" | "attachment", name: string): string {
  const ascii = name.replace(/[^\x20-\x7e]|["\\%;]/g, "_");
  const encoded = encodeURIComponent(name).replace(
    /['()*]/g,
    (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`,
  );
  return `${kind}; filename="${ascii}"; filename*=UTF-8''${encoded}`;
}

/** Creates the route that serves stored files. */
export function createFileRoute(options: FileRouteOptions): FileRoute {
  const { engine, verifier, failures } = options;
  const maxAge = options.maxAge ?? 31_536_000;
  const reject = options.countRejection ?? (() => {});

  /** Null when the request may read the room, else the refusal. */
  async function refusal(req: Request, url: URL, room: string, ip: string) {
    if (!verifier) return null;
    const retryAfter = failures?.retryAfter(ip) ?? 0;
    if (retryAfter > 0) {
      reject("auth_failures");
      return text(429, "too many failed authentications from your address; try again later", {
        "retry-after": String(retryAfter),
      });
    }
    try {
      const { identity } = await identify(verifier, tokenOf(req, url), room);
      const until = await engine.bannedUntil(room, await memberIdOfSub(identity.sub));
      if (until === undefined) return null;
      reject("forbidden");
      return text(403, `forbidden: banned from this room until ${new Date(until).toISOString()}`);
    } catch (error) {
      if (!(error instanceof ProtocolError)) throw error;
      reject(error.code);
      if (error.code !== "unauthorized") return text(403, `forbidden: ${error.message}`);
      failures?.fail(ip);
      const message = error.message.replace(
        "send it in hello (token) or the URL (?token=)",
        "send it in the Authorization header (Bearer) or the URL (?token=)",
      );
      return text(401, `unauthorized: ${message}`, { "www-authenticate": "Bearer" });
    }
  }

  /** The file message `id` of the room's `epoch` with its bytes, or why not. */
  async function find(room: string, epoch: string, id: number): Promise<StoredMessage | Response> {
    // A page of one is cheap, and says whether `id` is a file still in history.
    const page = await engine.history(room, id + 1, 1);
    const found = page.messages[0];
    if (page.epoch !== epoch) {
      return text(404, `not found: room ${room} has no history ${epoch} any more`);
    }
    if (found?.id !== id) return text(404, `not found: room ${room} has no message ${id}`);
    if (found.deleted) return text(410, `gone: message ${id} was deleted`);
    if (found.name === undefined || found.text !== undefined) {
      return text(404, `not found: message ${id} is not a file`);
    }
    return found;
  }

  /** The bytes of a file found by `find`: some engines leave them out of history pages. */
  async function bytesOf(found: StoredMessage): Promise<Uint8Array | undefined> {
    if (found.data) return found.data;
    const read = await engine.read(found.room, { epoch: found.epoch, id: found.id - 1 }, 1);
    const again = read.recovered ? read.messages.find((m) => m.id === found.id) : undefined;
    return again && !again.deleted && read.epoch === found.epoch ? again.data : undefined;
  }

  return async (req, path, ip) => {
    if (req.method !== "GET" && req.method !== "HEAD") {
      return text(405, "method not allowed: use GET or HEAD", { allow: "GET, HEAD" });
    }
    const url = new URL(req.url);
    const parts = parsePath(path);
    if (parts instanceof Response) return parts;
    const { room, epoch, id } = parts;
    const refused = await refusal(req, url, room, ip);
    if (refused) return refused;
    const found = await find(room, epoch, id);
    if (found instanceof Response) return found;

    const headers = new Headers({
      etag: `"${epoch}.${id}"`,
      // Private: in token mode the answer depends on who asks.
      "cache-control": `private, max-age=${maxAge}, immutable`,
      vary: "authorization",
      "x-content-type-options": "nosniff",
      // Opened on its own, a file runs nothing and loads nothing.
      "content-security-policy": "default-src 'none'; sandbox",
      "referrer-policy": "no-referrer",
    });
    if (matches(req.headers.get("if-none-match"), headers.get("etag")!)) {
      return new Response(null, { status: 304, headers });
    }
    const data = await bytesOf(found);
    if (data === undefined) {
      return text(
        404,
        `not found: file ${id} (${found.size ?? 0} bytes) was too large to keep in history`,
      );
    }
    const mime = found.mime ?? "application/octet-stream";
    const inline = INLINE_TYPES.has(mime);
    headers.set("content-type", inline ? mime : "application/octet-stream");
    headers.set(
      "content-disposition",
      contentDisposition(inline ? "inline" : "attachment", found.name ?? "file"),
    );
    headers.set("content-length", String(data.byteLength));
    const body = req.method === "HEAD" ? null : (data as Uint8Array<ArrayBuffer>);
    return new Response(body, { status: 200, headers });
  };
}
