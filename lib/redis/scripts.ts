/*
 * The Redis store's Lua scripts. Each runs atomically on the server: a record and every
 * index that names it change together, or not at all.
 *
 * Keys, under the store's prefix P (which carries a {hash tag}, so that on Redis Cluster
 * every key lands in one slot and a script may touch them all):
 *   P:id                a counter: each record's creation number (its list cursor)
 *   P:r:<uuid>          a hash: the record's fields, each JSON-encoded, and `id`
 *   P:m:<uuid>          a list: the record's kept messages, oldest first
 *   P:l:<o>:<s>:<t>     sorted sets (score: creation number, member: uuid), one per
 *                       combination of owner, status and task, each either the field's
 *                       JSON encoding or `*` (any): `P:l:*:*:*` holds every record
 *   P:live              sorted set of the pending and running records (score: creation number)
 *   P:x:<status>        sorted set of the finished records of a final status (score: finished, ms):
 *                       what retention expires and the statistics read
 *
 * JSON encodings keep the index keys unambiguous: an owner's quotes and colons are escaped
 * or inside the quotes. Outputs and inputs are stored as their JSON text and never decoded
 * here (Lua's cjson cannot tell an empty array from an empty object).
 */

/** Shared by the scripts: index maintenance. */
const common = `
local p = ARGV[1]
local live = { ['"pending"'] = true, ['"running"'] = true }

local function indexKeys (o, s, t)
  local keys = {}
  for mask = 0, 7 do
    local a = (mask % 2 == 1) and o or '*'
    local b = (math.floor(mask / 2) % 2 == 1) and s or '*'
    local c = (math.floor(mask / 4) % 2 == 1) and t or '*'
    keys[#keys + 1] = p .. ':l:' .. a .. ':' .. b .. ':' .. c
  end
  return keys
end

local function unindex (uuid, o, s, t)
  for _, key in ipairs(indexKeys(o, s, t)) do redis.call('ZREM', key, uuid) end
  redis.call('ZREM', p .. ':live', uuid)
  redis.call('ZREM', p .. ':x:' .. s, uuid)
end

local function index (uuid, id, o, s, t, finished)
  for _, key in ipairs(indexKeys(o, s, t)) do redis.call('ZADD', key, id, uuid) end
  if live[s] then
    redis.call('ZADD', p .. ':live', id, uuid)
  elseif finished ~= '' then
    redis.call('ZADD', p .. ':x:' .. s, finished, uuid)
  end
end

-- The four index keys whose status part is s: a status change touches only those.
local function statusKeys (o, s, t)
  local keys = {}
  for mask = 0, 3 do
    local a = (mask % 2 == 1) and o or '*'
    local c = (math.floor(mask / 2) % 2 == 1) and t or '*'
    keys[#keys + 1] = p .. ':l:' .. a .. ':' .. s .. ':' .. c
  end
  return keys
end

-- A record's status goes from one value to another (or stays, with a new finished time):
-- the keys that name neither status are left alone.
local function reindex (uuid, id, o, from, to, t, finished)
  if from ~= to then
    for _, key in ipairs(statusKeys(o, from, t)) do redis.call('ZREM', key, uuid) end
    for _, key in ipairs(statusKeys(o, to, t)) do redis.call('ZADD', key, id, uuid) end
  end
  if live[from] and not live[to] then
    redis.call('ZREM', p .. ':live', uuid)
  elseif live[to] and not live[from] then
    redis.call('ZADD', p .. ':live', id, uuid)
  end
  if not live[from] then redis.call('ZREM', p .. ':x:' .. from, uuid) end
  if not live[to] and finished ~= '' then redis.call('ZADD', p .. ':x:' .. to, finished, uuid) end
end

local function remove (uuid)
  local key = p .. ':r:' .. uuid
  local f = redis.call('HMGET', key, 'owner', 'status', 'task')
  if not f[2] then return 0 end
  unindex(uuid, f[1], f[2], f[3])
  redis.call('DEL', key, p .. ':m:' .. uuid)
  return 1
end

local function read (uuid)
  local fields = redis.call('HGETALL', p .. ':r:' .. uuid)
  if #fields == 0 then return false end
  return { fields, redis.call('LRANGE', p .. ':m:' .. uuid, 0, -1) }
end
`

/**
 * create: ARGV = prefix, uuid, finished (ms, or ''), field count n, n field/value pairs,
 * then the messages. A record with the same uuid is replaced.
 */
export const createScript = `${common}
local uuid = ARGV[2]
remove(uuid)
local id = redis.call('INCR', p .. ':id')
local n = tonumber(ARGV[4])
local key = p .. ':r:' .. uuid
local fields = { 'id', id }
local o, s, t
for i = 5, 4 + 2 * n, 2 do
  fields[#fields + 1] = ARGV[i]
  fields[#fields + 1] = ARGV[i + 1]
  if ARGV[i] == 'owner' then o = ARGV[i + 1] elseif ARGV[i] == 'status' then s = ARGV[i + 1] elseif ARGV[i] == 'task' then t = ARGV[i + 1] end
end
redis.call('HSET', key, unpack(fields))
if #ARGV > 4 + 2 * n then
  redis.call('RPUSH', p .. ':m:' .. uuid, unpack(ARGV, 5 + 2 * n))
end
index(uuid, id, o, s, t, ARGV[3])
return id
`

/**
 * update: ARGV = prefix, uuid, finished (ms, or ''), trim count, fence (the status and
 * attempt the record must have, `<status JSON>:<attempt JSON>` as stored, or ''), write id
 * (or ''), field count n, n field/value pairs, then the messages to append. Answers the
 * record (fields, messages), or false when there is none or the fence holds it back. A
 * write id the record already took (its field `w`) answers the record unchanged: the
 * same write sent again after its answer was lost.
 */
export const updateScript = `${common}
local uuid = ARGV[2]
local key = p .. ':r:' .. uuid
local before = redis.call('HMGET', key, 'owner', 'status', 'task', 'id', 'attempt', 'w')
if not before[2] then return false end
if ARGV[6] ~= '' and before[6] == ARGV[6] then return read(uuid) end
if ARGV[5] ~= '' and ARGV[5] ~= before[2] .. ':' .. tostring(before[5]) then return false end
if ARGV[6] ~= '' then redis.call('HSET', key, 'w', ARGV[6]) end
local n = tonumber(ARGV[7])
local status = before[2]
if n > 0 then
  local fields = {}
  for i = 8, 7 + 2 * n, 2 do
    fields[#fields + 1] = ARGV[i]
    fields[#fields + 1] = ARGV[i + 1]
    if ARGV[i] == 'status' then status = ARGV[i + 1] end
  end
  redis.call('HSET', key, unpack(fields))
end
local mkey = p .. ':m:' .. uuid
if #ARGV > 7 + 2 * n then redis.call('RPUSH', mkey, unpack(ARGV, 8 + 2 * n)) end
local trim = tonumber(ARGV[4])
if trim > 0 then redis.call('LTRIM', mkey, trim, -1) end
if status ~= before[2] or ARGV[3] ~= '' then
  local finished = ARGV[3]
  if finished == '' then finished = redis.call('HGET', key, 'finishedMs') or '' end
  reindex(uuid, before[4], before[1], before[2], status, before[3], finished)
end
if ARGV[3] ~= '' then redis.call('HSET', key, 'finishedMs', ARGV[3]) end
return read(uuid)
`

/** get: ARGV = prefix, uuid. The record (fields, messages), or false. */
export const getScript = `${common}
return read(ARGV[2])
`

/** delete: ARGV = prefix, uuid. 1 when there was a record, else 0. */
export const deleteScript = `${common}
return remove(ARGV[2])
`

/**
 * list: ARGV = prefix, index key, before (exclusive creation number), count. The records,
 * newest first: for each, { id, fields, messages }.
 */
export const listScript = `${common}
local uuids = redis.call('ZREVRANGEBYSCORE', ARGV[2], '(' .. ARGV[3], '-inf', 'LIMIT', 0, tonumber(ARGV[4]))
local out = {}
for _, uuid in ipairs(uuids) do
  local record = read(uuid)
  if record then out[#out + 1] = record end
end
return out
`

/** live: ARGV = prefix. The pending and running records, oldest first. */
export const liveScript = `${common}
local out = {}
for _, uuid in ipairs(redis.call('ZRANGE', p .. ':live', 0, -1)) do
  local record = read(uuid)
  if record then out[#out + 1] = record end
end
return out
`

/**
 * finishedSince, one page: ARGV = prefix, status (JSON), since (ms, inclusive), max (ms,
 * inclusive, or '+inf'), skip, count. Reads up to count members of that status's finished
 * index, newest finished first, from max down to since, after the first skip of those at
 * max (the ones the previous page ended with). Answers { records (each { fields, messages },
 * a uuid whose record is gone skipped), members read, the last one's score (or ''), how
 * many read have that score }: where the next page starts.
 */
export const finishedSinceScript = `${common}
local leanFields = { 'uuid', 'task', 'status', 'owner', 'progress', 'target', 'error', 'attempt', 'created', 'started', 'finished', 'seq', 'messagesDropped' }
local function lean (uuid)
  local values = redis.call('HMGET', p .. ':r:' .. uuid, unpack(leanFields))
  if not values[1] then return false end
  local flat = {}
  for i, name in ipairs(leanFields) do
    if values[i] then
      flat[#flat + 1] = name
      flat[#flat + 1] = values[i]
    end
  end
  return { flat, {} }
end
local found = redis.call('ZREVRANGEBYSCORE', p .. ':x:' .. ARGV[2], ARGV[4], ARGV[3], 'WITHSCORES', 'LIMIT', tonumber(ARGV[5]), tonumber(ARGV[6]))
local out = {}
local last, same = '', 0
for i = 1, #found, 2 do
  local record = lean(found[i])
  if record then out[#out + 1] = record end
  if found[i + 1] == last then same = same + 1 else last, same = found[i + 1], 1 end
end
return { out, #found / 2, last, same }
`

/**
 * expire: ARGV = prefix, status (JSON), before (ms, exclusive), limit. Removes the oldest
 * finished records of that status; answers their uuids.
 */
export const expireScript = `${common}
local uuids = redis.call('ZRANGEBYSCORE', p .. ':x:' .. ARGV[2], '-inf', '(' .. ARGV[3], 'LIMIT', 0, tonumber(ARGV[4]))
for _, uuid in ipairs(uuids) do remove(uuid) end
return uuids
`
