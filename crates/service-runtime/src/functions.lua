#!lua name=streams_v1

-- The runtime's server-side steps, one Redis Functions library (Redis 7.0+), called with
-- FCALL: see functions.rs. A changed function gets a new library name (streams_v2), so
-- that replicas of two releases can run side by side during a rolling upgrade.
-- Redis checks every redis.call below against the caller's ACL user, like a command sent
-- directly: a function gives no right its caller does not have.

-- Takes the reading turn if it is free or already the caller's.
-- KEYS: the turn. ARGV: the consumer, the expiry in ms. Returns 1 if taken, else 0.
local function take_turn(keys, args)
  local holder = redis.call('GET', keys[1])
  if holder == false or holder == args[1] then
    redis.call('SET', keys[1], args[1], 'PX', args[2])
    return 1
  end
  return 0
end

-- Passes the turn if the caller still holds it, and wakes one waiting replica; the
-- wake-up list holds at most one token and expires with the turn.
-- KEYS: the turn, its wake-up list. ARGV: the consumer, the expiry in ms.
local function pass_turn(keys, args)
  if redis.call('GET', keys[1]) == args[1] then
    redis.call('DEL', keys[1])
    redis.call('LPUSH', keys[2], 1)
    redis.call('LTRIM', keys[2], 0, 0)
    redis.call('PEXPIRE', keys[2], args[2])
  end
  return 0
end

-- XREADGROUP in chunks of 16 until COUNT entries or the byte budget, so that what comes
-- back is bounded whatever the stream holds (SPEC 4.9): an entry over the limit is
-- replaced by its id and size. KEYS: the stream, its ticks. ARGV: group, consumer, count,
-- '>' or '0', max entry bytes, budget. Returns the last tick's id and the entries, each
-- [id, fields or nil] as XREADGROUP gives them.
local function bounded_read(keys, args)
  local out, total, start = {}, 0, args[4]
  local remaining, max_entry, budget = tonumber(args[3]), tonumber(args[5]), tonumber(args[6])
  while remaining > 0 and total < budget do
    local n = math.min(remaining, 16)
    local reply = redis.call('XREADGROUP', 'GROUP', args[1], args[2], 'COUNT', n, 'STREAMS', keys[1], start)
    if not reply then break end
    local entries = reply[1][2]
    for _, entry in ipairs(entries) do
      local fields = entry[2]
      if fields then
        local size = 0
        for _, part in ipairs(fields) do size = size + #part end
        if size > max_entry then
          entry[2] = {'__oversized__', tostring(size)}
          size = 0
        end
        total = total + size
      end
      out[#out + 1] = entry
      if start ~= '>' then start = entry[1] end
    end
    remaining = remaining - #entries
    if #entries < n then break end
  end
  local tick = redis.call('XREVRANGE', keys[2], '+', '-', 'COUNT', 1)
  local tick_id = '0-0'
  if #tick > 0 then tick_id = tick[1][1] end
  return {tick_id, out}
end

-- Trims a stream below the oldest entry any of its groups still needs (pending, or not
-- yet delivered) and below now - ARGV[1] ms; a stream without a group is left alone (its
-- readers are yet to come). Reading the groups' positions and trimming are one atomic
-- step: no group can read or fall behind in between. KEYS: the stream. Returns how many
-- entries went.
local function trim_stream(keys, args)
  local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', keys[1])
  if not ok or #groups == 0 then return 0 end
  local min_id, min_ms, min_seq
  local function consider(id)
    local ms, seq = string.match(id, '^(%d+)-(%d+)$')
    ms, seq = tonumber(ms), tonumber(seq)
    if min_id == nil or ms < min_ms or (ms == min_ms and seq < min_seq) then
      min_id, min_ms, min_seq = id, ms, seq
    end
  end
  for _, group in ipairs(groups) do
    local info = {}
    for i = 1, #group, 2 do info[group[i]] = group[i + 1] end
    consider(info['last-delivered-id'])
    if info['pending'] > 0 then
      consider(redis.call('XPENDING', keys[1], info['name'])[2])
    end
  end
  local now = redis.call('TIME')
  local cutoff = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - tonumber(args[1])
  if cutoff < 0 then cutoff = 0 end
  consider(string.format('%.0f-0', cutoff))
  return redis.call('XTRIM', keys[1], 'MINID', min_id)
end

-- Removes from group ARGV[1] of KEYS[1] every consumer idle more than ARGV[2] ms with
-- nothing pending, except ARGV[3]; returns how many.
local function delete_idle_consumers(keys, args)
  local ok, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', keys[1], args[1])
  if not ok then return 0 end
  local deleted = 0
  for _, consumer in ipairs(consumers) do
    local info = {}
    for i = 1, #consumer, 2 do info[consumer[i]] = consumer[i + 1] end
    if info['name'] ~= args[3] and info['pending'] == 0 and info['idle'] > tonumber(args[2]) then
      redis.call('XGROUP', 'DELCONSUMER', keys[1], args[1], info['name'])
      deleted = deleted + 1
    end
  end
  return deleted
end

-- The ids of a stream's oldest and newest entries (none if it is empty or gone), without
-- their fields: an entry may be huge (SPEC 4.9). KEYS: the stream.
local function stream_ends(keys, args)
  local first = redis.call('XRANGE', keys[1], '-', '+', 'COUNT', 1)
  if #first == 0 then return {} end
  local last = redis.call('XREVRANGE', keys[1], '+', '-', 'COUNT', 1)
  return {first[1][1], last[1][1]}
end

-- What an observer reads (no group, nothing written): at most ARGV[3] entries after the
-- exclusive start ARGV[2] ('-', or '(' and an id), oldest first, or with ARGV[1] =
-- 'backward' the newest ones before ARGV[2] ('+'), each over ARGV[4] bytes replaced by
-- its id and size, so what comes back is bounded whatever the stream holds (SPEC 4.9).
-- KEYS: the stream.
local function bounded_range(keys, args)
  local reply
  if args[1] == 'backward' then
    reply = redis.call('XREVRANGE', keys[1], args[2], '-', 'COUNT', args[3])
  else
    reply = redis.call('XRANGE', keys[1], args[2], '+', 'COUNT', args[3])
  end
  local max_entry = tonumber(args[4])
  for _, entry in ipairs(reply) do
    local size = 0
    for _, part in ipairs(entry[2]) do size = size + #part end
    if size > max_entry then entry[2] = {'__oversized__', tostring(size)} end
  end
  return reply
end

redis.register_function('streams_v1_take_turn', take_turn)
redis.register_function('streams_v1_pass_turn', pass_turn)
redis.register_function('streams_v1_bounded_read', bounded_read)
redis.register_function('streams_v1_trim_stream', trim_stream)
redis.register_function('streams_v1_delete_idle_consumers', delete_idle_consumers)
redis.register_function{
  function_name = 'streams_v1_stream_ends',
  callback = stream_ends,
  flags = {'no-writes'},
}
redis.register_function{
  function_name = 'streams_v1_bounded_range',
  callback = bounded_range,
  flags = {'no-writes'},
}
