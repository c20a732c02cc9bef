/**
 * Static assets: a fixed table built once at start-up from `static/`, so no
 * request path can reach outside it.
 *
 * @module
 */

/** One file of the table. */
export interface Asset {
  body: Uint8Array;
  type: string;
  etag: string;
}

/** Public path (`/app.js`) to asset. */
export type Assets = ReadonlyMap<string, Asset>;

const TYPES: Record<string, string> = {
  html: "text/html; charset=utf-8",
  js: "text/javascript; charset=utf-8",
  mjs: "text/javascript; charset=utf-8",
  css: "text/css; charset=utf-8",
  json: "application/json",
  svg: "image/svg+xml",
  png: "image/png",
  jpg: "image/jpeg",
  jpeg: "image/jpeg",
  gif: "image/gif",
  webp: "image/webp",
  ico: "image/x-icon",
  txt: "text/plain; charset=utf-8",
  webmanifest: "application/manifest+json",
};

/** The content type of a file name, by extension. */
export function contentType(name: string): string {
  const ext = name.slice(name.lastIndexOf(".") + 1).toLowerCase();
  return TYPES[ext] ?? "application/octet-stream";
}

async function etagOf(body: Uint8Array): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", body as Uint8Array<ArrayBuffer>);
  const hex = Array.from(
    new Uint8Array(digest).slice(0, 12),
    (b) => b.toString(16).padStart(2, "0"),
  )
    .join("");
  return `"${hex}"`;
}

/** Builds an asset from bytes. */
export async function makeAsset(name: string, body: Uint8Array): Promise<Asset> {
  return { body, type: contentType(name), etag: await etagOf(body) };
}

/**
 * Reads every regular file directly in `dir` (no subfolders, no dot files)
 * into the table.
 */
export async function loadAssets(dir: URL | string): Promise<Assets> {
  const table = new Map<string, Asset>();
  for await (const entry of Deno.readDir(dir)) {
    if (!entry.isFile || entry.name.startsWith(".")) continue;
    const body = await Deno.readFile(new URL(entry.name, dir));
    table.set(`/${entry.name}`, await makeAsset(entry.name, body));
  }
  return table;
}

function matches(ifNoneMatch: string | null, etag: string): boolean {
  if (!ifNoneMatch) return false;
  if (ifNoneMatch.trim() === "*") return true;
  return ifNoneMatch.split(",").some((tag) => tag.trim().replace(/^W\//, "") === etag);
}

/**
 * Answers a GET or HEAD for an asset: 200 with the body, or 304 when
 * `If-None-Match` names its ETag.
 */
export function serveAsset(req: Request, asset: Asset, headers?: HeadersInit): Response {
  const h = new Headers(headers);
  h.set("etag", asset.etag);
  h.set("cache-control", "no-cache");
  if (matches(req.headers.get("if-none-match"), asset.etag)) {
    return new Response(null, { status: 304, headers: h });
  }
  h.set("content-type", asset.type);
  h.set("content-length", String(asset.body.byteLength));
  const body = req.method === "HEAD" ? null : (asset.body as Uint8Array<ArrayBuffer>);
  return new Response(body, { status: 200, headers: h });
}
