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
 * Builds the table from `dir`. A local folder (a path or a `file:` URL) gives
 * every regular file directly in it (no subfolders, no dot files). A remote
 * folder (`https:`, where Parley was installed from JSR) cannot be listed, so
 * the table holds `index.html` and what it references, followed through
 * module imports and stylesheets.
 */
export async function loadAssets(dir: URL | string): Promise<Assets> {
  if (dir instanceof URL && dir.protocol !== "file:") return await fetchAssets(dir);
  const table = new Map<string, Asset>();
  for await (const entry of Deno.readDir(dir)) {
    if (!entry.isFile || entry.name.startsWith(".")) continue;
    const body = await Deno.readFile(
      dir instanceof URL ? new URL(entry.name, dir) : `${dir}/${entry.name}`,
    );
    table.set(`/${entry.name}`, await makeAsset(entry.name, body));
  }
  return table;
}

const REFERENCES: Record<string, RegExp[]> = {
  html: [/\b(?:src|href)="([^"]+)"/g],
  css: [/\burl\(\s*["']?([^"')]+)["']?\s*\)/g],
  js: [
    /\b(?:from|import)\s*\(?\s*["']([^"']+)["']/g,
    /\bnew URL\(\s*["']([^"']+)["']\s*,\s*import\.meta\.url/g,
  ],
};

/**
 * The files of the same folder that a page file refers to: `src`/`href` in
 * HTML, `url()` in CSS, imports and `new URL(..., import.meta.url)` in
 * JavaScript. Anything outside the folder, absolute or with a scheme is left out.
 */
export function referencesOf(name: string, text: string): string[] {
  const ext = name.slice(name.lastIndexOf(".") + 1).toLowerCase();
  const names = new Set<string>();
  for (const pattern of REFERENCES[ext === "mjs" ? "js" : ext] ?? []) {
    for (const match of text.matchAll(pattern)) {
      const ref = match[1].replace(/^\.\//, "").split(/[?#]/)[0];
      if (/^[A-Za-z0-9_-][A-Za-z0-9_.-]*$/.test(ref)) names.add(ref);
    }
  }
  return [...names];
}

/** The table from a folder that can only be fetched, file by file. */
async function fetchAssets(dir: URL): Promise<Assets> {
  const table = new Map<string, Asset>();
  const queue = ["index.html"];
  for (let name = queue.shift(); name !== undefined; name = queue.shift()) {
    if (table.has(`/${name}`)) continue;
    const url = new URL(name, dir);
    const response = await fetch(url);
    if (!response.ok) {
      await response.body?.cancel();
      // A dangling reference is a 404 at serving time, as from a folder.
      if (name !== "index.html") continue;
      throw new Error(`Cannot load the chat page from ${url}: status ${response.status}`);
    }
    const body = new Uint8Array(await response.arrayBuffer());
    table.set(`/${name}`, await makeAsset(name, body));
    queue.push(...referencesOf(name, new TextDecoder().decode(body)));
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
