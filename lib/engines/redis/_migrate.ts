/**
 * Importing a room's history into the Redis engine (see `migrate.ts`): one
 * Lua script that refuses a room with messages and otherwise writes the
 * room's `meta`, stream entries, dedup fields, patches (what edits and
 * deletes did) and edit index, all at once (see `_scripts.ts` for the keys).
 *
 * @module
 */

import type { Buffer } from "node:buffer";
import type { Redis } from "ioredis";
import type { RoomSnapshot } from "../../engine.ts";
import { checkImport, editIndex, entryBytes, type ImportLimits } from "../../migrate.ts";
import type { StoredMessage } from "../../protocol.ts";
import { type Header, toBuffer } from "./_codec.ts";

/** Arguments per entry of {@linkcode IMPORT_LUA}. */
const IMPORT_FIELDS = 8;

/**
 * KEYS: meta, log, dedup, patches, edits. ARGV: epoch, head, bytes, then
 * per entry: id, header JSON, size, kind (`t`, `f`, `F`, `e`, `x`), dedup
 * field (or empty), file bytes (or empty), patch (or empty), edit index (or
 * empty). Returns `{"ok"}`, or `{"taken", head}` when the room has messages.
 */
const IMPORT_LUA = `
local meta, log, dedup, patches, edits = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local seq = redis.call('HGET', meta, 'seq') or '0'
if tonumber(seq) > 0 or redis.call('XLEN', log) > 0 then return {'taken', seq} end
redis.call('DEL', dedup, patches, edits)
redis.call('HSET', meta, 'epoch', ARGV[1], 'seq', ARGV[2], 'bytes', ARGV[3])
for i = 4, #ARGV, ${IMPORT_FIELDS} do
  local sid, kind, field = ARGV[i], ARGV[i + 3], ARGV[i + 4]
  local entry = {'h', ARGV[i + 1], 'sz', ARGV[i + 2], 'm', kind}
  if field ~= '' then
    entry[#entry + 1] = 'k'
    entry[#entry + 1] = field
    redis.call('HSET', dedup, field, sid)
  end
  if kind == 'f' then
    entry[#entry + 1] = 'd'
    entry[#entry + 1] = ARGV[i + 5]
  end
  redis.call('XADD', log, sid .. '-0', unpack(entry))
  if ARGV[i + 6] ~= '' then redis.call('HSET', patches, sid, ARGV[i + 6]) end
  if ARGV[i + 7] ~= '' then redis.call('HSET', edits, sid, ARGV[i + 7]) end
end
return {'ok'}
`;

/** What the import needs of a Redis engine. */
export interface RedisImportContext {
  /** The commands connection (a Cluster client has the same commands). */
  redis: Pick<Redis, "hget" | "xlen" | "call">;
  /** The full name of a room's key. */
  key(room: string, name: string): string;
  limits: ImportLimits;
}

/** The stream entry of an imported message: header, stored kind and patch. */
function entryOf(m: StoredMessage, size: number): { header: Header; kind: string; patch: string } {
  const header: Header = { ts: m.ts, from: m.from, sender: m.sender, cid: m.cid };
  if (m.replyTo !== undefined) header.replyTo = m.replyTo;
  if (m.kind !== undefined) {
    header.kind = m.kind;
    header.target = m.target;
    if (m.text !== undefined) header.text = m.text;
    return { header, kind: m.kind === "edit" ? "e" : "x", patch: m.deleted ? "D" : "" };
  }
  if (m.deleted) return { header, kind: "t", patch: "D" };
  if (m.text !== undefined) {
    header.text = m.text;
    // Stream entries keep what was sent; an edit's result is a patch.
    const patch = m.edited === undefined
      ? ""
      : `E${size} ${JSON.stringify({ text: m.text, edited: m.edited })}`;
    return { header, kind: "t", patch };
  }
  header.name = m.name;
  header.mime = m.mime;
  header.size = m.size;
  return { header, kind: m.data === undefined ? "F" : "f", patch: "" };
}

/** Writes a snapshot into a room without messages (see `Engine.importRoom`). */
export async function importRoom(
  context: RedisImportContext,
  room: string,
  snapshot: RoomSnapshot,
): Promise<void> {
  const { redis, key, limits } = context;
  const meta = key(room, "meta");
  const log = key(room, "log");
  const [seq, length] = await Promise.all([redis.hget(meta, "seq"), redis.xlen(log)]);
  checkImport(room, snapshot, limits, Math.max(Number(seq ?? 0), length > 0 ? 1 : 0));
  const index = editIndex(snapshot.messages);
  const args: (string | Buffer)[] = [snapshot.epoch, String(snapshot.head)];
  let bytes = 0;
  const entries: (string | Buffer)[] = [];
  for (const m of snapshot.messages) {
    const size = entryBytes(m);
    bytes += size;
    const { header, kind, patch } = entryOf(m, size);
    const field = m.sender !== undefined && m.cid !== undefined ? `${m.sender}\0${m.cid}` : "";
    const edits = index.get(m.id)?.map((id) => `${id} `).join("") ?? "";
    entries.push(
      String(m.id),
      JSON.stringify(header),
      String(size),
      kind,
      field,
      kind === "f" ? toBuffer(m.data!) : "",
      patch,
      edits,
    );
  }
  args.push(String(bytes), ...entries);
  const keys = [meta, log, key(room, "dedup"), key(room, "patches"), key(room, "edits")];
  const reply = await redis.call("EVAL", IMPORT_LUA, keys.length, ...keys, ...args) as string[];
  if (reply[0] === "taken") checkImport(room, snapshot, limits, Math.max(1, Number(reply[1])));
}
