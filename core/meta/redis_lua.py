"""The Lua script that makes every multi-key metadata change one atomic step.

Redis runs a script alone, so each change is a transaction of one round
trip. A script is not rolled back when it fails half way, so every op checks
everything first and writes only after the last check.

Keys, all below the store's prefix ``P`` (``KEYS[1]``):

==================  =====  ====================================================
``P:i:<ino>``       hash   one inode: ``rec`` (signed JSON record), ``sig``, and
                           the plain fields the script needs: ``p`` parent,
                           ``n`` name, ``k`` kind (d/f/l), ``a`` artifact id,
                           ``ix`` index tags, ``uk`` usage key, ``sz``, ``ex``
``P:d:<ino>``       hash   one directory: name -> child ino
``P:ino``           str    the inode counter; numbers are never handed out twice
``P:art``           hash   artifact id -> ino
``P:x:<tag>``       set    search indexes: ``sb:<sandbox>``, ``sc:<sandbox>/<scope>``,
                           ``se:<sandbox>/<session>``, ``us:<sandbox>/<user>``
``P:exp``           zset   ino by expires_at (ns)
``P:ub`` ``P:uf``   hash   usage key -> bytes, files
``P:tot``           hash   ``bytes``, ``files``: the totals of all usage keys
``P:events``        chan   change notices (when the store is made with notify)
==================  =====  ====================================================

``ARGV[1]`` names the op, ``ARGV[2]`` is ``1`` to publish a change notice
(``1<origin>`` to stamp it with the store instance that asked), ``0`` not to,
and a node travels as 11 values: ino, then the fields in ``FIELDS`` order.

Ops that may replace an entry (insert with replace, rename) take the ino the
caller expects there, whose record the caller has verified; if another is
there they change nothing and answer ``CONFLICT`` with its record, so no
record is ever acted on unverified. Ops are idempotent, so a retry after a
lost reply does no harm. A change notice is the op name, then entries
``e<parent>/<name>`` and inodes ``i<ino>``, then the origin ``o<origin>`` if
one was given, joined by NUL (:mod:`core.meta.redis_events` reads them).
"""

FIELDS = ("rec", "sig", "p", "n", "k", "a", "ix", "uk", "sz", "ex")
NODE_ARGS = 1 + len(FIELDS)

SCRIPT = r"""
local P = KEYS[1]
local notify = string.sub(ARGV[2], 1, 1) == '1'
local origin = string.sub(ARGV[2], 2)
local FIELDS = {'rec', 'sig', 'p', 'n', 'k', 'a', 'ix', 'uk', 'sz', 'ex'}
local NODE_ARGS = 11

local function ikey(ino) return P .. ':i:' .. ino end
local function dkey(ino) return P .. ':d:' .. ino end

local function argnode(at)
  local n = {ino = ARGV[at]}
  for j, f in ipairs(FIELDS) do n[f] = ARGV[at + j] end
  return n
end

local function load(ino)
  local v = redis.call('HMGET', ikey(ino), unpack(FIELDS))
  if not v[1] and not v[3] then return nil end
  local n = {ino = ino}
  for j, f in ipairs(FIELDS) do n[f] = v[j] or '' end
  return n
end

local function charge(n, sign)
  if n.uk == '' then return end
  local files = sign > 0 and '1' or '-1'
  redis.call('HINCRBY', P .. ':uf', n.uk, files)
  redis.call('HINCRBY', P .. ':tot', 'files', files)
  if n.sz ~= '0' and n.sz ~= '' then
    local bytes = sign > 0 and n.sz or ('-' .. n.sz)
    redis.call('HINCRBY', P .. ':ub', n.uk, bytes)
    redis.call('HINCRBY', P .. ':tot', 'bytes', bytes)
  end
end

local function index(n)
  if n.a ~= '' then redis.call('HSET', P .. ':art', n.a, n.ino) end
  for tag in string.gmatch(n.ix, '[^\n]+') do redis.call('SADD', P .. ':x:' .. tag, n.ino) end
  if n.ex ~= '' then redis.call('ZADD', P .. ':exp', n.ex, n.ino) end
  charge(n, 1)
end

local function unindex(n)
  if n.a ~= '' and redis.call('HGET', P .. ':art', n.a) == n.ino then redis.call('HDEL', P .. ':art', n.a) end
  for tag in string.gmatch(n.ix, '[^\n]+') do redis.call('SREM', P .. ':x:' .. tag, n.ino) end
  if n.ex ~= '' then redis.call('ZREM', P .. ':exp', n.ino) end
  charge(n, -1)
end

local function unlink(n)
  if redis.call('HGET', dkey(n.p), n.n) == n.ino then redis.call('HDEL', dkey(n.p), n.n) end
end

local function store(n)
  redis.call('HSET', ikey(n.ino), 'rec', n.rec, 'sig', n.sig, 'p', n.p, 'n', n.n, 'k', n.k, 'a', n.a,
             'ix', n.ix, 'uk', n.uk, 'sz', n.sz, 'ex', n.ex)
  if n.p ~= '0' then redis.call('HSET', dkey(n.p), n.n, n.ino) end
  index(n)
end

local function drop(n)
  unlink(n)
  unindex(n)
  redis.call('DEL', ikey(n.ino), dkey(n.ino))
end

-- another holder of the artifact id, other than the node itself and the one it replaces
local function id_taken(n, replaced)
  if n.a == '' then return false end
  local holder = redis.call('HGET', P .. ':art', n.a)
  return holder and holder ~= n.ino and holder ~= replaced
end

local notice = {ARGV[1]}
local function entry(n) notice[#notice + 1] = 'e' .. n.p .. '/' .. n.n end
local function inode(ino) notice[#notice + 1] = 'i' .. ino end
local function publish()
  if not notify then return end
  if origin ~= '' then notice[#notice + 1] = 'o' .. origin end
  redis.call('PUBLISH', P .. ':events', table.concat(notice, '\0'))
end

local function replaced_reply(ino, old)
  if old then return {'OK', ino, old.rec, old.sig} end
  return {'OK'}
end

local ops = {}

function ops.init()
  local n = argnode(3)
  redis.call('SET', P .. ':ino', n.ino, 'NX')
  if not load(n.ino) then store(n) end
  return {'OK'}
end

function ops.lookup()
  local ino = redis.call('HGET', dkey(ARGV[3]), ARGV[4])
  if not ino then return {} end
  local v = redis.call('HMGET', ikey(ino), 'rec', 'sig')
  return {ino, v[1], v[2]}
end

function ops.find()
  local ino = redis.call('HGET', P .. ':art', ARGV[3])
  if not ino then return {} end
  local v = redis.call('HMGET', ikey(ino), 'rec', 'sig')
  return {ino, v[1], v[2]}
end

function ops.insert()
  local replace, expect, n = ARGV[3] == '1', ARGV[4], argnode(5)
  local parent = redis.call('HGET', ikey(n.p), 'k')
  if not parent then return {'ERR', 'noparent'} end
  if parent ~= 'd' then return {'ERR', 'notdir'} end
  local cur = redis.call('HGET', dkey(n.p), n.n)
  if cur == n.ino then return {'OK'} end
  local old = cur and load(cur)
  if old then
    if not replace then return {'ERR', 'exists'} end
    if old.k == 'd' then return {'ERR', 'isdir'} end
    if cur ~= expect then return {'CONFLICT', cur, old.rec, old.sig} end
  end
  if id_taken(n, old and cur) then return {'ERR', 'dupid'} end
  if old then drop(old); inode(cur) end
  store(n)
  entry(n); inode(n.p)
  publish()
  return replaced_reply(cur, old)
end

function ops.update()
  local n = argnode(3)
  local old = load(n.ino)
  if not old then return {'ERR', 'vanished'} end
  local moved = old.p ~= n.p or old.n ~= n.n
  if moved then
    local slot = redis.call('HGET', dkey(n.p), n.n)
    if slot and slot ~= n.ino then return {'ERR', 'taken'} end
  end
  if id_taken(n, false) then return {'ERR', 'dupid'} end
  if moved then unlink(old); entry(old); entry(n) end
  unindex(old)
  store(n)
  inode(n.ino)
  publish()
  return {'OK'}
end

function ops.rename()
  local replace, expect, n = ARGV[3] == '1', ARGV[4], argnode(5)
  local cur = load(n.ino)
  if not cur then return {'ERR', 'vanished'} end
  local dst = redis.call('HGET', dkey(n.p), n.n)
  local old = dst and dst ~= n.ino and load(dst)
  if old then
    if not replace then return {'ERR', 'exists'} end
    if old.k == 'd' and n.k ~= 'd' then return {'ERR', 'isdir'} end
    if n.k == 'd' and old.k ~= 'd' then return {'ERR', 'notdir'} end
    if old.k == 'd' and redis.call('HLEN', dkey(dst)) > 0 then return {'ERR', 'notempty'} end
    if dst ~= expect then return {'CONFLICT', dst, old.rec, old.sig} end
    drop(old)
    inode(dst)
  end
  unlink(cur)
  unindex(cur)
  store(n)
  entry(cur); entry(n); inode(n.ino)
  publish()
  return replaced_reply(dst, old)
end

function ops.exchange()
  local a, b = argnode(3), argnode(3 + NODE_ARGS)
  local ca, cb = load(a.ino), load(b.ino)
  if not ca or not cb then return {'ERR', 'vanished'} end
  for _, n in ipairs({a, b}) do
    local slot = redis.call('HGET', dkey(n.p), n.n)
    if slot and slot ~= a.ino and slot ~= b.ino then return {'ERR', 'taken'} end
  end
  unlink(ca); unlink(cb)
  unindex(ca); unindex(cb)
  store(a); store(b)
  entry(a); entry(b); inode(a.ino); inode(b.ino)
  publish()
  return {'OK'}
end

function ops.remove()
  local cur = load(ARGV[3])
  if not cur then return {'OK'} end
  if cur.k == 'd' and redis.call('HLEN', dkey(cur.ino)) > 0 then return {'ERR', 'notempty'} end
  drop(cur)
  entry(cur); inode(cur.ino)
  publish()
  return {'OK'}
end

local op = ops[ARGV[1]]
if not op then return {'ERR', 'badop'} end
return op()
"""
