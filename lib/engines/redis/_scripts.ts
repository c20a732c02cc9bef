/**
 * The Lua scripts of the Redis engine. Each runs atomically, so a room's
 * order, dedup, patches and presence never see a half-done change.
 *
 * Keys of one room (all `<prefix>{<room>}:<name>`, one hash slot):
 *
 * - `meta` (hash): `epoch`, `seq` (last id), `bytes` (history size).
 * - `log` (stream): one entry per id, `<id>-0`, with fields `h` (header
 *   JSON), `sz` (bytes counted), `m` (what it is: `t` text, `f` file with its
 *   bytes, `F` file without, `e` edit, `x` delete; absent on entries stored
 *   before edits existed, which are all plain messages), `k` (dedup field),
 *   `d` (file bytes).
 * - `dedup` (hash): dedup field -> id.
 * - `patches` (hash): id -> what edits and deletes did to that live entry:
 *   `D` (a tombstone) or `E<size> <JSON {text, edited}>`. Stream entries cannot
 *   change, so readers apply these; trimmed with the stream.
 * - `edits` (hash): id -> the ids of the edit entries that target it (`"4 9 "`),
 *   so that a delete can make them tombstones too; trimmed with the stream.
 * - Presence: `expiry` (zset conn -> expiry), `conns` (hash conn -> member
 *   id), `members` (hash member id -> nick), `counts` (hash member id ->
 *   entries), `presence` (hash: `inc`, a random name of this incarnation of
 *   the presence keys, and `ver`, bumped by every published presence event),
 *   `traits` (hash member id -> JSON `{verified, bot}`, absent when the
 *   member has neither; kept apart so `members` stays id -> nick).
 * - `ban:<member id>` (string): the end of the member's ban, in ms since
 *   1970, with a TTL that ends with it.
 *
 * @module
 */

/** A Lua script and the SHA-1 that `EVALSHA` names it by. */
export interface Script {
  lua: string;
  sha: string;
}

/** Bytes a tombstone counts for, as `sizeOf` of a message without text or bytes. */
const TOMBSTONE_BYTES = 128;

/** Arguments per entry of {@linkcode APPEND_LUA}. */
export const APPEND_FIELDS = 3;

/**
 * Appends entries, in order, each as if appended alone: dedup (against what
 * is stored and the entries before it), next id, trimming, and the effect
 * of an edit or delete, which may target an entry appended just before it.
 * Then publishes every new entry in one channel message. KEYS: meta, log,
 * dedup, patches, edits. ARGV: new epoch, history size, history bytes,
 * channel, then {@linkcode APPEND_FIELDS} per entry: `<kind> <size>
 * <target>\n<patch>\n<field>` (kind `t`, `f`, `F`, `e` or `x`, see above;
 * size for the byte budget; target id of an edit or delete, else empty; the
 * patch JSON of an edit, else empty, never with a newline; the dedup field,
 * else empty, last since it may hold anything), header JSON, file bytes.
 * Returns `{epoch, first, dups}`: the id of the first new entry (empty when
 * none; the others follow it, one by one), and for each duplicate its index
 * among the entries (from 0), the entry stored earlier and that entry's
 * patch. (A reply of many small arrays
 * would cost the client more to read than the appends cost Redis.)
 *
 * One new entry is published as `M<id> <epoch>\n<header>\n<bytes>`; several
 * as `N<first id> <epoch> <length>\n`, a JSON array of their headers that
 * takes `length` bytes, then the bytes of each file among them, in order
 * (each as long as its header's `size`): one parse for the whole batch.
 */
export const APPEND_LUA = `
local meta, log, dedup, patches, edits = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local TOMBSTONE = ${TOMBSTONE_BYTES}
redis.call('HSETNX', meta, 'epoch', ARGV[1])
local epoch = redis.call('HGET', meta, 'epoch')
local maxLen, maxBytes, channel = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local function entry_at(sid)
  return redis.call('XRANGE', log, sid .. '-0', sid .. '-0')[1]
end
-- What a live entry counts for now: its patch's size once patched.
local function size_of(sid, fields)
  local patch = redis.call('HGET', patches, sid)
  if patch == 'D' then return TOMBSTONE end
  if patch then return tonumber(string.match(patch, '^E(%d+)')) end
  for i = 1, #fields, 2 do
    if fields[i] == 'sz' then return tonumber(fields[i + 1]) end
  end
  return 0
end
local function append(field, header, data, kind, size, target_id, patch)
  if field ~= '' then
    local old = redis.call('HGET', dedup, field)
    if old then
      local found = entry_at(old)
      if found then return {'dup', found, redis.call('HGET', patches, old) or ''} end
      redis.call('HDEL', dedup, field)
    end
  end
  local id = redis.call('HINCRBY', meta, 'seq', 1)
  local sid = string.format('%d', id)
  local entry = {'h', header, 'sz', size, 'm', kind}
  if field ~= '' then
    entry[#entry + 1] = 'k'
    entry[#entry + 1] = field
    redis.call('HSET', dedup, field, sid)
  end
  if kind == 'f' then
    entry[#entry + 1] = 'd'
    entry[#entry + 1] = data
  end
  redis.call('XADD', log, sid .. '-0', unpack(entry))
  local bytes = redis.call('HINCRBY', meta, 'bytes', tonumber(size))
  local counted = bytes
  local len = redis.call('XLEN', log)
  local cut = nil
  while len > maxLen or (bytes > maxBytes and len > 1) do
    local start = '-'
    if cut then start = string.format('%d', cut + 1) .. '-0' end
    local oldest = redis.call('XRANGE', log, start, '+', 'COUNT', 1)[1]
    local oid = string.match(oldest[1], '^%d+')
    local fields = oldest[2]
    bytes = bytes - size_of(oid, fields)
    for i = 1, #fields, 2 do
      if fields[i] == 'k' and redis.call('HGET', dedup, fields[i + 1]) == oid then
        redis.call('HDEL', dedup, fields[i + 1])
      end
    end
    redis.call('HDEL', patches, oid)
    redis.call('HDEL', edits, oid)
    len = len - 1
    cut = tonumber(oid)
  end
  if cut then
    redis.call('XTRIM', log, 'MINID', string.format('%d', cut + 1) .. '-0')
  end
  -- An edit or delete acts on its target while the target is in history.
  local target = nil
  if (kind == 'e' or kind == 'x') and target_id ~= '' then target = entry_at(target_id) end
  if target then
    local tid, fields = target_id, target[2]
    local tkind, theader = nil, nil
    for i = 1, #fields, 2 do
      if fields[i] == 'm' then tkind = fields[i + 1] elseif fields[i] == 'h' then theader = fields[i + 1] end
    end
    if not tkind then
      if cjson.decode(theader).text then tkind = 't' else tkind = 'F' end
    end
    -- Edits and deletes of edits and deletes, and anything on a tombstone, do nothing.
    if tkind ~= 'e' and tkind ~= 'x' and redis.call('HGET', patches, tid) ~= 'D' then
      if kind == 'e' then
        redis.call('HSET', edits, tid, (redis.call('HGET', edits, tid) or '') .. sid .. ' ')
        if tkind == 't' then
          bytes = bytes - size_of(tid, fields) + tonumber(size)
          redis.call('HSET', patches, tid, 'E' .. size .. ' ' .. patch)
        end
      else
        bytes = bytes - size_of(tid, fields) + TOMBSTONE
        redis.call('HSET', patches, tid, 'D')
        for eid in string.gmatch(redis.call('HGET', edits, tid) or '', '%d+') do
          local edit = entry_at(eid)
          if edit and redis.call('HGET', patches, eid) ~= 'D' then
            bytes = bytes - size_of(eid, edit[2]) + TOMBSTONE
            redis.call('HSET', patches, eid, 'D')
          end
        end
        redis.call('HDEL', edits, tid)
      end
    end
  end
  if bytes ~= counted then redis.call('HSET', meta, 'bytes', bytes) end
  return {'new', sid}
end
-- A short reply: new ids are consecutive, so the first says them all.
local first, dups, stored = '', {}, {}
for i = 5, #ARGV, ${APPEND_FIELDS} do
  local header, data = ARGV[i + 1], ARGV[i + 2]
  local kind, size, target, rest = string.match(ARGV[i], '^(%a) (%d+) (%d*)\\n(.*)$')
  local newline = string.find(rest, '\\n', 1, true)
  local patch, field = string.sub(rest, 1, newline - 1), string.sub(rest, newline + 1)
  local reply = append(field, header, data, kind, size, target, patch)
  if reply[1] == 'new' then
    if first == '' then first = reply[2] end
    stored[#stored + 1] = {reply[2], header, data}
  else
    dups[#dups + 1] = string.format('%d', (i - 5) / ${APPEND_FIELDS})
    dups[#dups + 1] = reply[2]
    dups[#dups + 1] = reply[3]
  end
end
if #stored == 1 then
  local one = stored[1]
  local head = 'M' .. one[1] .. ' ' .. epoch .. '\\n'
  redis.call('PUBLISH', channel, head .. one[2] .. '\\n' .. one[3])
elseif #stored > 1 then
  local headers, bytes = {}, {}
  for i, one in ipairs(stored) do
    headers[i] = one[2]
    bytes[i] = one[3]
  end
  local json = '[' .. table.concat(headers, ',') .. ']'
  local head = 'N' .. first .. ' ' .. epoch .. ' ' .. #json .. '\\n'
  redis.call('PUBLISH', channel, head .. json .. table.concat(bytes))
end
return {epoch, first, dups}
`;

/** Lua: the patches of `entries`, `''` for none, in their order. Needs `patches`. */
const PATCHES_OF = `
local function patches_of(entries)
  local out = {}
  if #entries == 0 or redis.call('HLEN', patches) == 0 then
    for i = 1, #entries do out[i] = '' end
    return out
  end
  -- HMGET in slices: unpack() has a limit on how many values it spreads.
  for from = 1, #entries, 500 do
    local ids = {}
    for i = from, math.min(from + 499, #entries) do
      ids[#ids + 1] = string.match(entries[i][1], '^%d+')
    end
    local found = redis.call('HMGET', patches, unpack(ids))
    for i = 1, #found do out[from + i - 1] = found[i] or '' end
  end
  return out
end
`;

/**
 * Reads history by the in-memory engine's rules. KEYS: meta, log, patches.
 * ARGV: new epoch, asked epoch (empty: none), asked id, limit. Returns
 * `{epoch, head, recovered ("1", "0" or "" for none), entries, patches}`.
 */
export const READ_LUA = `
local meta, log, patches = KEYS[1], KEYS[2], KEYS[3]
${PATCHES_OF}
redis.call('HSETNX', meta, 'epoch', ARGV[1])
local epoch = redis.call('HGET', meta, 'epoch')
local head = tonumber(redis.call('HGET', meta, 'seq') or '0')
local oldest = head + 1
local first = redis.call('XRANGE', log, '-', '+', 'COUNT', 1)
if #first > 0 then oldest = tonumber(string.match(first[1][1], '^%d+')) end
local recovered = ''
if ARGV[2] ~= '' then
  local after = tonumber(ARGV[3])
  if ARGV[2] == epoch and after <= head and after >= oldest - 1 then
    local rest = redis.call('XRANGE', log, string.format('%d', after + 1) .. '-0', '+')
    return {epoch, string.format('%d', head), '1', rest, patches_of(rest)}
  end
  recovered = '0'
end
local limit = tonumber(ARGV[4])
local recent = {}
if limit > 0 then recent = redis.call('XREVRANGE', log, '+', '-', 'COUNT', limit) end
return {epoch, string.format('%d', head), recovered, recent, patches_of(recent)}
`;

/**
 * A page of scroll-back: ordinary messages (no edits or deletes) older than
 * an id. KEYS: meta, log, patches. ARGV: new epoch, before, limit. Returns
 * `{epoch, more ("1" or "0"), entries newest first, patches}`.
 */
export const HISTORY_LUA = `
local meta, log, patches = KEYS[1], KEYS[2], KEYS[3]
${PATCHES_OF}
redis.call('HSETNX', meta, 'epoch', ARGV[1])
local epoch = redis.call('HGET', meta, 'epoch')
local head = tonumber(redis.call('HGET', meta, 'seq') or '0')
local limit = tonumber(ARGV[3])
local hi = math.min(tonumber(ARGV[2]) - 1, head)
local page, more = {}, '0'
local batch = math.max(limit + 1, 32)
while hi >= 1 and more == '0' do
  local chunk = redis.call('XREVRANGE', log, string.format('%d', hi) .. '-0', '-', 'COUNT', batch)
  for _, entry in ipairs(chunk) do
    local ordinary = true
    for i = 1, #entry[2], 2 do
      if entry[2][i] == 'm' then
        local m = entry[2][i + 1]
        ordinary = m ~= 'e' and m ~= 'x'
        break
      end
    end
    if ordinary then
      if #page < limit then
        page[#page + 1] = entry
      else
        more = '1'
        break
      end
    end
  end
  if #chunk < batch then break end
  hi = tonumber(string.match(chunk[#chunk][1], '^%d+')) - 1
end
return {epoch, more, page, patches_of(page)}
`;

/**
 * Presence. KEYS: expiry, conns, members, counts, presence, traits (see
 * above). ARGV: operation, channel, now, a new incarnation name (used when
 * the keys are new), then per operation: join (conn, member id, nick, ttl,
 * "1" to return the members, traits JSON or empty), refresh (conn, member id,
 * nick, ttl, traits JSON or empty), leave (conn), rename (member id, nick),
 * sweep, members.
 *
 * Every published event carries `i` (incarnation) and `v` (version), so a
 * feed knows when it missed one, and its member has the member's traits.
 * Join, sweep and members return `{inc, ver}` (members, and join when asked,
 * also the members as a flat id, nick list and the traits as a flat id,
 * JSON list); `inc` is empty while the keys do not exist. A member's traits
 * are those of the connection that made it join.
 */
export const PRESENCE_LUA = `
local expiry, conns, members, counts, presence = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local traits = KEYS[6]
local op, channel, now, fresh = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local inc = redis.call('HGET', presence, 'inc')
local function incarnation()
  if not inc then
    inc = fresh
    redis.call('HSET', presence, 'inc', inc)
  end
  return inc
end
local function member(id, nick)
  local m = {id = id, nick = nick}
  local raw = redis.call('HGET', traits, id)
  if not raw then return m end
  local ok, flags = pcall(cjson.decode, raw)
  if ok and type(flags) == 'table' then
    if type(flags.verified) == 'boolean' then m.verified = flags.verified end
    if type(flags.bot) == 'boolean' then m.bot = flags.bot end
  end
  return m
end
local function publish(kind, id, nick, old)
  local event = {type = kind, member = member(id, nick), i = incarnation()}
  event.v = redis.call('HINCRBY', presence, 'ver', 1)
  if old then event.old = old end
  redis.call('PUBLISH', channel, 'P' .. cjson.encode(event))
end
local function state()
  return {inc or '', redis.call('HGET', presence, 'ver') or '0'}
end
local function remove(conn)
  redis.call('ZREM', expiry, conn)
  local id = redis.call('HGET', conns, conn)
  if not id then return end
  redis.call('HDEL', conns, conn)
  if redis.call('HINCRBY', counts, id, -1) <= 0 then
    redis.call('HDEL', counts, id)
    local nick = redis.call('HGET', members, id)
    redis.call('HDEL', members, id)
    if nick then publish('leave', id, nick) end
    redis.call('HDEL', traits, id)
  end
end
local function sweep()
  for _, conn in ipairs(redis.call('ZRANGEBYSCORE', expiry, '-inf', now)) do remove(conn) end
end
-- Should every instance die, the keys go by themselves.
local function keep(ttl)
  incarnation()
  local ms = ttl * 2 + 10000
  for _, key in ipairs(KEYS) do
    if redis.call('PTTL', key) < ms then redis.call('PEXPIRE', key, ms) end
  end
end
local function add(conn, id, nick, flags, ttl, renames)
  local prev = redis.call('HGET', conns, conn)
  if prev and prev ~= id then
    remove(conn)
    prev = nil
  end
  redis.call('ZADD', expiry, now + ttl, conn)
  if not prev then
    redis.call('HSET', conns, conn, id)
    redis.call('HINCRBY', counts, id, 1)
  end
  local known = redis.call('HGET', members, id)
  if not known then
    redis.call('HSET', members, id, nick)
    if flags and flags ~= '' then
      redis.call('HSET', traits, id, flags)
    else
      redis.call('HDEL', traits, id)
    end
    publish('join', id, nick)
  elseif renames and known ~= nick then
    redis.call('HSET', members, id, nick)
    publish('rename', id, nick, known)
  end
  keep(ttl)
end
if op == 'join' then
  sweep()
  add(ARGV[5], ARGV[6], ARGV[7], ARGV[10], tonumber(ARGV[8]), true)
  local reply = state()
  if ARGV[9] == '1' then
    reply[3] = redis.call('HGETALL', members)
    reply[4] = redis.call('HGETALL', traits)
  end
  return reply
elseif op == 'refresh' then
  -- No sweep and no member list: constant cost whatever the room's size.
  local conn, id, ttl = ARGV[5], ARGV[6], tonumber(ARGV[8])
  if redis.call('HGET', conns, conn) == id then
    redis.call('ZADD', expiry, now + ttl, conn)
    keep(ttl)
  else
    add(conn, id, ARGV[7], ARGV[9], ttl, false)
  end
  return {}
elseif op == 'leave' then
  remove(ARGV[5])
  return {}
elseif op == 'rename' then
  local id, nick = ARGV[5], ARGV[6]
  local old = redis.call('HGET', members, id)
  if old and old ~= nick then
    redis.call('HSET', members, id, nick)
    publish('rename', id, nick, old)
  end
  return {}
elseif op == 'sweep' then
  sweep()
  return state()
end
sweep()
local reply = state()
reply[3] = redis.call('HGETALL', members)
reply[4] = redis.call('HGETALL', traits)
return reply
`;

/** Names a script by its SHA-1. */
export async function script(lua: string): Promise<Script> {
  const digest = await crypto.subtle.digest("SHA-1", new TextEncoder().encode(lua));
  const sha = Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
  return { lua, sha };
}

/**
 * The same script publishing with `SPUBLISH`, for a Redis Cluster: a shard
 * channel lives on the shard of its slot, and a room's channel has the
 * room's hash tag, so it is published where the script runs.
 */
export function sharded(lua: string): string {
  return lua.replaceAll("redis.call('PUBLISH',", "redis.call('SPUBLISH',");
}
