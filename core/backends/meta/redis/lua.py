"""The Lua script that makes every multi-key metadata change one atomic step.

Redis runs a script alone, so each change is a transaction of one round
trip. A script is not rolled back when it fails half way, so every op checks
everything first and writes only after the last check.

Every key lies in a shard (:mod:`core.shards`): a scope's, or the upper
tree's (0). A script runs in one shard, whose keys' common start ``P`` =
``<prefix>:{<shard>}`` it gets as ``KEYS[1]`` (``{<shard>}`` is the Redis
Cluster hash tag: one slot), and touches no key of another. An inode's
number names its shard (``shard * 2**40 + n``); a record a script may not
read, it answers empty, for the client to read in its shard. The only
entries that name an inode of another shard are the upper tree's entries of
scope roots, made and taken away in steps (``make``/``enter``,
``seal``/``unenter``/``discard``, below).

Keys of a shard ``P`` (an inode's keys name it by ``<n>``, its number in the
shard: ``ikey``):

==================  =====  ====================================================
``P:i:<n>``         str    one inode: its fields (``INODE_SLOTS``) joined by NUL:
                           ``p`` parent (``+<n>`` where it is in the same shard: its
                           number there), ``n`` name, ``k`` kind (d, or f/l/p/c/b/s),
                           ``a`` artifact id (its last 19 digits where it names this
                           inode, as every id this store makes does), ``ix`` index tags, ``uk`` usage key
                           ('' for none, ``=`` for the space of ``ix``'s ``sp:`` line:
                           ``account``), ``sz``, ``ex``, ``v`` a file's version, ``r``
                           the record's revision ('' for 0), ``ln`` (below), ``mi`` a
                           file's MIME type ('' for the default), ``bk`` its blob key
                           (from the ``.`` that follows its grid key where it starts
                           with it: ``blob_key``), ``ro`` the node's role ('' for an
                           entry), ``rec`` (last: the rest of the string) the record's
                           signature (its first 128 bits, raw), then the signed JSON
                           record, packed (:mod:`core.backends.meta.redis.packing`:
                           a file's SHA-256 raw, the rest deflated); on a
                           directory whose entries changed after its record was
                           written, ``mt`` its new mtime/ctime and ``mts`` that
                           value's own signature (see *Directory times* below);
                           on a directory, ``sd`` how
                           many of its entries are directories (unsigned: it only
                           makes st_nlink); ``sl`` on a scope root being removed
                           (sealed: nothing enters it any more). ``ln``: a file's
                           further names (hard links), each ``<parent>/<name>``,
                           joined by ``/`` (the record lists them too)
``P:o:<n>``         zset   one directory's entries (every name of a hard-linked
                           inode is an entry of its directory), member
                           ``<name>\\0<child>`` (the child's number here, or the
                           whole ino of a scope root in another shard:
                           ``entry_member``), score 0, in name order (``page``,
                           ZRANGEBYLEX; a name by ``entry_of``); cut in buckets
                           like a space's order (below): this set holds the
                           heads, ``P:ob:<n>\\n<head>`` each bucket's members
                           (``P:ob:<n>\\n`` alone for one bucket)
``P:ino``           str    the shard's inode counter; numbers are never handed out twice
``P:gc``            zset   the deletion queue: blob key by the time (us) gc may
                           delete it from (``defer_delete``); the scripts that
                           drop an inode queue its blob here in the same step
``P:y:<space>``     zset   a space's artifacts (``<sandbox>/<scope>/<session>/<user>``,
                           '' where absent) in (stored_at, artifact id) order, member
                           ``<stored_at ns: 11 bytes of base 64 in byte order><id, 16 bytes raw>``
                           (the ``=`` line of ``ix``: ``order_time``),
                           score 0, cut in buckets (``order_add``): this set holds the
                           heads of the buckets, ``P:yb:<space>\\n<head>`` each bucket's
                           members; an order of one bucket has no heads, its bucket
                           is ``P:yb:<space>\\n``; ``spage`` (ZRANGEBYLEX) merges the
                           orders a search asks for
``P:tags``          hash   the spaces that have an ordered set here (value 1): what a
                           search wider than one space picks from
``P:x:bo:<id>``     set    the holders of artifact ``<id>``'s blob (checkpoint copies)
``P:layout``        str    (shard 0 only) the layout's version, ``LAYOUT``: a store
                           written in another is refused at open
``P:exp``           zset   ino by expires_at (ns)
``P:ub`` ``P:uf``   hash   usage key -> bytes, files
``P:ug``            hash   usage key -> generation: moved by every change of
                           the account's counters (a repair's condition)
``P:tot``           hash   ``bytes``, ``files``: the totals of the shard's usage keys
``P:shards``        set    (shard 0 only) every shard a scope was ever made in:
                           what a store-wide read (search, gc, expiry) walks
``P:seq``           str    the shard's count of change notices (each carries it)
``P:events``        chan   the shard's change notices (sharded pub/sub)
``P:quiet``         str    counts changes made without a notice (a store made
                           without notify); expires ``QUIET_TTL`` s after the last
==================  =====  ====================================================

Change notices go on each shard's ``P:events`` channel, counted in ``P:seq``
(when the store is made with notify; see below).

``ARGV[1]`` names the op, ``ARGV[2]`` is ``1`` to publish a change notice
(``1<origin>`` to stamp it with the store instance that asked), ``0`` not to,
and a node travels as ``NODE_ARGS`` values: ino, then the fields in ``FIELDS`` order.
A record travels back as ino, then the fields in ``READ_SLOTS`` order.

Reads that answer many records do it in pages, so no script holds the
server for long, and every record still travels whole, to be verified by
the client: ``page`` answers up to a page of a directory's entries after a
name, in name order (a listing through the mount, O(log n) per page);
``list`` (a directory) and ``search`` (an index set) answer up
to a page of records inline, else the inos alone; ``subtree`` walks a
directory's tree breadth first, a page of entries per call, handing back
the directories it has not walked yet (a directory larger than the page is
read a page of its name order at a time, never with a scan of the
keyspace); ``lineage`` answers nodes and the directories above each up
to the first that is not an entry (a scope root, told by its record's
role); ``resolve`` answers the nodes along a path. A path is never stored:
clients make it from the records, so a rename of a directory (one record)
changes every path below it at once.

Ops that may replace an entry (insert with replace, rename) take the ino the
caller expects there, whose record the caller has verified; if another is
there they change nothing and answer ``CONFLICT`` with its record, so no
record is ever acted on unverified.

No record is written blind. A record carries its revision (``r``), and an
op that rewrites one (update, rename, exchange, an insert's cover) takes
the revision its caller read: if the record changed meanwhile (any change,
by any host, bumps it) the op changes nothing and answers with the record
as it is now (``CONFLICT`` from an update, ``STALE`` from the others), for
the caller to re-apply its change to. An update may also name the version
it replaces (a commit of new content). An insert may carry the session
root rewritten to expire no sooner than the new node (its *cover*), with
the revision of the root the caller read: if the root changed and no
longer covers the node, the answer is ``STALE`` with the root's record. A
remove names the entry (parent, name) the caller read, removes nothing if
the inode is no longer there, and answers the record it removed. Ops are
idempotent, so a retry after a lost reply does no harm (a rewrite whose
very record is already stored is answered ``OK``).

Hard links. An inode with more than one name loses one without going: a
remove, or a replace by insert or rename, of one of its names rewrites its
record without that name. The script cannot sign that record, so the caller
sends it (the *successor*: the revision it read, then the record), and the
script takes it only if the inode is still at that revision; else it
answers ``STALE`` (remove) or ``CONFLICT`` (replace) with the record as it
is, for the caller to make the successor again. ``link`` adds a name to a
record, conditional on its revision like a rename.

Directory times. A new, removed or renamed entry sets its directory's mtime
and ctime in the same script. The script cannot re-sign the directory's
record (only clients hold the key), so the caller sends the new time with
its own signature (over the directory's ino and the time, see
:meth:`core.backends.meta.redis.store.RedisMetaStore.touch_payload`) as ``touch``: the
directory ino, ``mt``, ``mts``, or three empty values for none. The script
stores them beside the record; a reader applies a verified ``mt`` over the
record's times, and the next rewrite of the record (which carries them)
drops it. So a touch needs neither a read of the directory first nor a
rewrite that could undo a concurrent change to it. The script applies a
touch only to the directory the entry is really in (a remove or rename of
an entry that moved meanwhile touches nothing).

A change notice goes on its shard's channel ``P:events`` (``SPUBLISH``: on a
cluster only the nodes of that slot carry it, and a follower subscribes only
to the shards it holds copies of). It is the op name, then entries
``e<parent>/<name>`` and inodes ``i<ino>``, then the origin ``o<origin>`` if
one was given, then ``s<seq>``, the shard's count of notices (``P:seq``),
joined by NUL (:mod:`core.backends.meta.redis.events` reads them).
"""

from core.backends.meta.redis.stamps import WIDTH as STAMP_WIDTH
from core.nodes import DEFAULT_MIME
from core.shards import ID_TAIL, INO_BITS

FIELDS = ("rec", "p", "n", "k", "a", "ix", "uk", "sz", "ex", "v", "r", "ln", "mi", "bk", "ro")
NODE_ARGS = 1 + len(FIELDS)
NO_TOUCH = ("", "", "")
NO_SUCCESSOR = ("",) * (1 + NODE_ARGS)  # a replace or remove of an inode's last name

# Changes to the deletion queue ``gc``, from ARGV[at] on: how many entries to forget, each a key
# and the score it must still have (else another writer queued it since, and it stays), then the
# score and the keys to queue. A commit makes them in its own step (``update``); the store's
# ``defer_delete`` runs them alone.
SETTLE = r"""
local function settle(gc, at)
  local n = tonumber(ARGV[at])
  for i = at + 1, at + 2 * n, 2 do
    local score = redis.call('ZSCORE', gc, ARGV[i])
    if score and tonumber(score) == tonumber(ARGV[i + 1]) then redis.call('ZREM', gc, ARGV[i]) end
  end
  local score = ARGV[at + 2 * n + 1]
  for i = at + 2 * n + 2, #ARGV do redis.call('ZADD', gc, score, ARGV[i]) end
end
"""

# The fields of an inode's string ``P:i:<n>``, in order (see the table above).
INODE_SLOTS = (
    "p", "n", "k", "a", "ix", "uk", "sz", "ex", "v", "r", "ln", "mi", "bk", "ro", "mt", "mts", "sd", "sl", "rec",
)  # ``rec`` last: a packed record may hold NUL, so it is the rest of the string
# What a reader takes of an inode: a record as the scripts answer it is its ino, then these.
READ_SLOTS = ("rec", "mt", "mts", "sd", "mi", "bk", "ro", "ix", "uk", "n", "a", "p")

# The version of the layout of keys above (``P:layout`` in shard 0), and of the packing of records
# (:mod:`core.backends.meta.redis.packing`): 4 since records are stored deflated, 5 since search orders
# are cut in buckets, 6 since parents, blob keys, usage keys, signatures and stored_at times are kept
# short, 7 since directories' name orders are cut in buckets too, 8 since signatures keep 128 bits and a
# record's SHA-256 is kept raw, 9 since an inode's keys name it by its number in its shard, 10 since an
# artifact id names its inode and no map is kept, 11 since search members keep ids raw, 12 since a
# directory's entries are its name order's members, with no hash, and an inode keeps its id's tail
# (issue #17).
LAYOUT = "12"

# Members a bucket of a space's search order holds, fewer than: Redis keeps an ordered set of up to
# ``zset-max-listpack-entries`` (128 unless configured lower) in its compact encoding.
ORDER_BUCKET = 128

# Seconds ``P:quiet`` outlives the last change made without a notice: while it exists, mounts
# keep their kernel caches short (fusefs.handed), as notices alone cannot tell them everything.
QUIET_TTL = 3600

SCRIPT = SETTLE + f"local QUIET_TTL = {QUIET_TTL}\nlocal STAMP_WIDTH = {STAMP_WIDTH}\n" + r"""
local P = KEYS[1]  -- the base of this script's shard: every key it touches starts with it
local S = tonumber(string.match(P, '{(%d+)}$'))
local notify = string.sub(ARGV[2], 1, 1) == '1'
local origin = string.sub(ARGV[2], 2)
local FIELDS = {""" + ", ".join(f"'{name}'" for name in FIELDS) + r"""}
local NODE_ARGS = """ + str(NODE_ARGS) + r"""
local DEFAULT_MIME = '""" + DEFAULT_MIME + r"""'  -- a file's MIME type where ``mi`` is empty
local SUCCESSOR_ARGS = 1 + NODE_ARGS

-- whether inode ino lives in this shard (its number is shard * 2^40 + n): an entry of the upper tree
-- may name a scope root elsewhere, whose keys a script here must not touch
local SHARD_SPAN = 2 ^ """ + str(INO_BITS) + r"""  -- inode numbers a shard holds
local function here(ino) return math.floor(tonumber(ino) / SHARD_SPAN) == S end
local BASE = S * SHARD_SPAN  -- the shard's first inode number

-- Inode ino's number in this shard, nil for an inode of another; and back. Keys, a parent (``+<n>``) and
-- directory entries spell an inode by its number here (issue #17).
local function in_shard(ino)
  local v = (tonumber(ino) or -1) - BASE
  if v >= 0 and v < SHARD_SPAN then return string.format('%d', v) end
end
local function of_number(n) return string.format('%d', BASE + tonumber(n)) end

-- An inode's keys name it by its number in the shard (issue #17: a key of up to ~12 bytes less); one
-- of another shard gets a name no key of this shard has, so it reads as absent, never as another inode.
local function number(ino) return in_shard(ino) or '^' .. ino end
local function ikey(ino) return P .. ':i:' .. number(ino) end
-- The inode an artifact id names: the id is its shard's three hex digits, then the inode's number there
-- in ten (``shards.artifact_id_of``), so no map is kept (issue #17); nil for an id of no inode here.
local function id_ino(id)
  if not id or #id ~= 32 or not string.find(id, '^[0-9a-f]+$') or tonumber(string.sub(id, 1, 3), 16) ~= S then
    return nil
  end
  local n = tonumber(string.sub(id, 4, 13), 16)
  return n and of_number(n)
end

local function argnode(at)
  local n = {ino = ARGV[at]}
  for j, f in ipairs(FIELDS) do n[f] = ARGV[at + j] end
  return n
end

-- a successor in ARGV[at..]: the revision the caller read, then the record; nil if not sent
local function successor(at)
  if ARGV[at] == '' then return nil end
  return {rev = ARGV[at], node = argnode(at + 1)}
end

-- An inode is one string (issue #17): its fields in SLOTS order, joined by NUL (none but the last
-- holds one). A hash of them cost Redis a few hundred bytes more per inode, its record being too long
-- for the compact encoding; a change of one field (a directory's times or count) rewrites the string.
local SLOTS = {""" + ", ".join(f"'{name}'" for name in INODE_SLOTS) + r"""}

-- A parent in the inode's own shard is kept as ``+<n>``, its number there (11 bytes less an inode), and
-- an artifact id that names the inode as its last 19 digits (13 bytes less): the rest is the inode's.
local ID_TAIL = """ + str(ID_TAIL) + r"""
local function packed(n)
  local out = {}
  for j, name in ipairs(SLOTS) do
    local value = n[name] or ''
    if name == 'p' and value ~= '' and here(value) then value = '+' .. in_shard(value) end
    if name == 'a' and value ~= '' and id_ino(value) == n.ino then value = string.sub(value, -ID_TAIL) end
    out[j] = value
  end
  return table.concat(out, '\0')
end

-- the fields of stored inode string s, set in table n ('' where absent); n returned. The last (the
-- packed record, which may hold NUL) is the rest of the string.
local function unpacked(s, n)
  local at = 1
  for j, name in ipairs(SLOTS) do
    local stop = j < #SLOTS and string.find(s, '\0', at, true)
    n[name] = string.sub(s, at, stop and stop - 1 or -1)
    at = stop and stop + 1 or #s + 1
  end
  if string.sub(n.p, 1, 1) == '+' then n.p = of_number(string.sub(n.p, 2)) end
  if #n.a == ID_TAIL then n.a = string.format('%03x%010x', S, tonumber(n.ino) - BASE) .. n.a end
  return n
end

-- the fields of inode ino (a table with ino), nil if it is not there
local function stored(ino)
  local s = redis.call('GET', ikey(ino))
  if not s then return nil end
  return unpacked(s, {ino = ino})
end

local function save(n) redis.call('SET', ikey(n.ino), packed(n)) end

-- a directory's count of subdirectories (``sd``) moved by delta
local function count_subdirs(ino, delta)
  local n = stored(ino)
  if not n then return end
  n.sd = tostring((tonumber(n.sd) or 0) + delta)
  save(n)
end

-- the plain fields of inode ino (a table; p is nil if it is gone)
local function plain(ino) return stored(ino) or {} end

local function load(ino)
  if not here(ino) then return nil end
  return stored(ino)
end

local READ = {""" + ", ".join(f"'{name}'" for name in READ_SLOTS) + r"""}

-- a record as clients read it: ino, then the READ fields
local function record(n)
  local out = {n.ino}
  for j, name in ipairs(READ) do out[j + 1] = n[name] end
  return out
end

-- a record as clients read it (see record): false where absent, or not here (the client reads it there)
local function fetch(ino)
  local n = load(ino)
  if n then return record(n) end
  local out = {ino}
  for j = 1, #READ do out[j + 1] = false end
  return out
end

-- whether stored record n is still at revision rev, as its writer read it (records older than revisions: 0)
local function at_rev(n, rev) return (n.r == '' and '0' or n.r) == rev end

local function answer(word, parts)
  local out = {word}
  for _, part in ipairs(parts) do out[#out + 1] = part end
  return out
end

-- a <= b for decimal integers without leading zeros (ns times exceed a double's exact range)
local function le(a, b) return #a < #b or (#a == #b and a <= b) end

-- The space an artifact's ``sp:`` index line names: its sandbox, scope and owner (the session's or
-- user's id, '' for shared; Space.owner). Its usage key and its blob's grid key are spelled from it
-- (as core.nodes spells them), so an inode keeps neither whole (issue #17).
local function space_of(n)
  local space = string.match('\n' .. n.ix, '\nsp:([^\n]*)')
  local sandbox, scope, session, user = string.match(space, '^([^/]*)/([^/]*)/([^/]*)/([^/]*)$')
  return sandbox, scope, scope == 'session' and session or scope == 'user' and user or ''
end

-- the usage account of inode n ('' for none): its space's (Space.usage_key) where uk is '='
local function account(n)
  if n.uk ~= '=' then return n.uk end
  local sandbox, scope, owner = space_of(n)
  return sandbox .. '/' .. scope .. '/' .. owner
end

-- the blob key of inode n ('' for none): after its grid key (grid_key) where bk starts with '.'
local function blob_key(n)
  if string.sub(n.bk, 1, 1) ~= '.' then return n.bk end
  local sandbox, scope, owner = space_of(n)
  local dir = scope == 'session' and 'sessions/' .. owner or scope == 'user' and 'users/' .. owner or 'shared'
  return 'grid/' .. sandbox .. '/' .. dir .. '/' .. n.a .. n.bk
end

local function charge(n, sign)
  local key = account(n)
  if key == '' then return end
  local files = sign > 0 and '1' or '-1'
  redis.call('HINCRBY', P .. ':ug', key, 1)
  redis.call('HINCRBY', P .. ':uf', key, files)
  redis.call('HINCRBY', P .. ':tot', 'files', files)
  if n.sz ~= '0' and n.sz ~= '' then
    local bytes = sign > 0 and n.sz or ('-' .. n.sz)
    redis.call('HINCRBY', P .. ':ub', key, bytes)
    redis.call('HINCRBY', P .. ':tot', 'bytes', bytes)
  end
end

-- Search indexes (issue #17: one ordered set per artifact, not six sets). An ix line ``sp:<space>``
-- names the artifact's space (``<sandbox>/<scope>/<session>/<user>``, '' where absent; no id holds a
-- '/'): its member (the ``=`` line, its stored_at in 11 bytes, then its id raw: ``order_member``) goes
-- in that space's ordered set, and the space in ``P:tags``, what a search of a wider space (a user's, a
-- scope's, a sandbox's) merges. ``bo:<id>`` puts the ino in the set of the holders of another
-- artifact's blob.
local function order_of(n)
  local stored_at = string.match('\n' .. n.ix, '\n=([^\n]+)')
  return stored_at and #stored_at == STAMP_WIDTH and id_ino(n.a) and
    stored_at .. string.gsub(n.a, '..', function(h) return string.char(tonumber(h, 16)) end)
end

-- An order (a space's artifacts, a directory's names) is cut in buckets of fewer than ORDER_BUCKET
-- members, each a sorted set small enough for Redis's compact encoding (a skiplist costs ~95 B more a
-- member: issue #17). An order ``o`` is two key names: ``o.heads`` holds the buckets' heads, and bucket
-- ``h`` (``o.bucket .. h``) holds the members from h up to the next head. A bucket that fills is split
-- in two; one that empties goes. An order of one bucket (most: a key costs ~100 B) has no heads: its
-- bucket is ''; the heads come with a second bucket and go with the last but one.
local ORDER_BUCKET = """ + str(ORDER_BUCKET) + r"""
local function space_order(space) return {heads = P .. ':y:' .. space, bucket = P .. ':yb:' .. space .. '\n'} end
local function name_order(dir)
  return {heads = P .. ':o:' .. number(dir), bucket = P .. ':ob:' .. number(dir) .. '\n'}
end

-- the head of the bucket that holds (or would hold) member m: the greatest head up to m, else ''
local function head_of(o, m)
  return redis.call('ZREVRANGEBYLEX', o.heads, '[' .. m, '-', 'LIMIT', 0, 1)[1] or ''
end

local function order_add(o, m)
  local head = head_of(o, m)
  local bucket = o.bucket .. head
  if redis.call('EXISTS', bucket) == 0 and redis.call('EXISTS', o.heads) == 1 then
    redis.call('ZADD', o.heads, 0, head)
  end
  redis.call('ZADD', bucket, 0, m)
  local count = redis.call('ZCARD', bucket)
  if count < ORDER_BUCKET then return end
  -- split before Redis converts it: a member added last (stored_at grows, names are often made in
  -- order) starts a bucket of its own, so buckets fill up; one added inside takes the upper half along
  local half = redis.call('ZRANGE', bucket, -1, -1)[1] == m and count - 1 or math.floor(count / 2)
  local upper = redis.call('ZRANGE', bucket, half, -1)
  redis.call('ZREMRANGEBYRANK', bucket, half, -1)
  local pairs_ = {}
  for _, member in ipairs(upper) do pairs_[#pairs_ + 1] = 0; pairs_[#pairs_ + 1] = member end
  redis.call('ZADD', o.bucket .. upper[1], unpack(pairs_))
  redis.call('ZADD', o.heads, 0, head, 0, upper[1])
end

-- false once the order is empty
local function order_remove(o, m)
  local head = head_of(o, m)
  local bucket = o.bucket .. head
  redis.call('ZREM', bucket, m)
  if redis.call('EXISTS', bucket) == 1 then return true end
  redis.call('ZREM', o.heads, head)
  local left = redis.call('ZRANGE', o.heads, 0, 1)
  if #left == 1 then  -- one bucket left: it becomes the first, and the heads go
    if left[1] ~= '' then redis.call('RENAME', o.bucket .. left[1], o.bucket) end
    redis.call('DEL', o.heads)
  end
  return #left > 0
end

-- up to ``most`` members of an order after member ``after`` ('' for the first) and before ``below``
-- (a ZRANGEBYLEX bound), in order: the buckets from after's on, until enough
local function order_range(o, after, below, most)
  local head = after == '' and '' or head_of(o, after)
  local start = after == '' and '-' or '(' .. after
  local out = {}
  while head do
    local want = most - #out
    for _, member in ipairs(redis.call('ZRANGEBYLEX', o.bucket .. head, start, below, 'LIMIT', 0, want)) do
      out[#out + 1] = member
    end
    if #out >= most then break end
    head = redis.call('ZRANGEBYLEX', o.heads, '(' .. head, below, 'LIMIT', 0, 1)[1]
  end
  return out
end

-- the heads of an order's buckets, in order ('' alone for an order of one bucket, or none)
local function heads_of(o)
  local heads = redis.call('ZRANGE', o.heads, 0, -1)
  return #heads > 0 and heads or {''}
end

-- every member of an order, in order
local function order_all(o)
  local out = {}
  for _, head in ipairs(heads_of(o)) do
    for _, member in ipairs(redis.call('ZRANGE', o.bucket .. head, 0, -1)) do out[#out + 1] = member end
  end
  return out
end

-- A directory's entries are its name order's members, ``<name>\0<child>`` (issue #17: no hash of
-- them besides): ``<child>`` is the child's number in this shard, or the whole ino of a scope root of
-- another shard (2^40 or more, which no number here is). Byte order is still name order: NUL sorts
-- first and no name holds one.
local function entry_member(name, ino) return name .. '\0' .. (in_shard(ino) or ino) end

-- what sorts after every entry member of ``name`` and before those of any other name
local function past_name(name) return name .. '\0\255' end

-- the name and child ino of an entry member
local function member_entry(m)
  local at = string.find(m, '\0', 1, true)
  local child = string.sub(m, at + 1)
  return string.sub(m, 1, at - 1), tonumber(child) < SHARD_SPAN and of_number(child) or child
end

-- the member of ``name`` in directory dir, nil if none
local function entry_of(dir, name)
  local o = name_order(dir)
  local low, high = name .. '\0', past_name(name)
  return redis.call('ZRANGEBYLEX', o.bucket .. head_of(o, high), '[' .. low, '[' .. high, 'LIMIT', 0, 1)[1]
end

-- the child ino ``name`` names in directory dir, nil if none
local function entry_ino(dir, name)
  local m = entry_of(dir, name)
  return m and select(2, member_entry(m))
end

local function has_entries(dir)
  local o = name_order(dir)
  return redis.call('EXISTS', o.heads, o.bucket) > 0
end

-- every entry of directory dir in name order: name, ino, name, ino, ...
local function entries(dir)
  local out = {}
  for _, m in ipairs(order_all(name_order(dir))) do
    local name, ino = member_entry(m)
    out[#out + 1] = name; out[#out + 1] = ino
  end
  return out
end

-- an order gone, whatever it held
local function order_drop(o)
  for _, head in ipairs(heads_of(o)) do redis.call('DEL', o.bucket .. head) end
  redis.call('DEL', o.heads)
end

local function index(n)
  local member = order_of(n)
  for tag in string.gmatch(n.ix, '[^\n]+') do
    local kind, space = string.sub(tag, 1, 3), string.sub(tag, 4)
    if kind == 'sp:' and member then
      order_add(space_order(space), member)
      redis.call('HSET', P .. ':tags', space, 1)
    elseif kind == 'bo:' then
      redis.call('SADD', P .. ':x:' .. tag, n.ino)
    end
  end
  if n.ex ~= '' then redis.call('ZADD', P .. ':exp', n.ex, n.ino) end
  charge(n, 1)
end

local function unindex(n)
  local member = order_of(n)
  for tag in string.gmatch(n.ix, '[^\n]+') do
    local kind, space = string.sub(tag, 1, 3), string.sub(tag, 4)
    if kind == 'sp:' and member then
      if not order_remove(space_order(space), member) then redis.call('HDEL', P .. ':tags', space) end
    elseif kind == 'bo:' then
      redis.call('SREM', P .. ':x:' .. tag, n.ino)
    end
  end
  if n.ex ~= '' then redis.call('ZREM', P .. ':exp', n.ino) end
  charge(n, -1)
end

-- The spaces of this shard that a search asks for: ARGV[at..at + 3] are the sandbox, scope, session
-- and user it wants ('' for any), in byte order.
local function spaces(at)
  local want = {ARGV[at], ARGV[at + 1], ARGV[at + 2], ARGV[at + 3]}
  local out = {}
  for _, space in ipairs(redis.call('HKEYS', P .. ':tags')) do
    local j, fits = 1, true
    for part in string.gmatch(space .. '/', '([^/]*)/') do
      if want[j] and want[j] ~= '' and part ~= want[j] then fits = false; break end
      j = j + 1
    end
    if fits then out[#out + 1] = space end
  end
  table.sort(out)
  return out
end

-- the artifact id a search member ends with
local function member_id(member)
  local raw = string.sub(member, STAMP_WIDTH + 1)
  return (string.gsub(raw, '.', function(c) return string.format('%02x', string.byte(c)) end))
end

-- every {parent, name} of n: its primary name, then its hard links
local function names(n)
  local out = {{n.p, n.n}}
  local parts = {}
  for part in string.gmatch(n.ln, '[^/]+') do parts[#parts + 1] = part end
  for j = 1, #parts - 1, 2 do out[#out + 1] = {parts[j], parts[j + 1]} end
  return out
end

local function has_name(n, parent, name)
  for _, at in ipairs(names(n)) do
    if at[1] == parent and at[2] == name then return true end
  end
  return false
end

-- ``sd`` of a directory counts the names in it that are directories (its st_nlink is 2 + sd):
-- moved only by these two, where a name joins or leaves, so every script keeps it right.
-- name in directory parent set to ino, of kind k (a name that was there already is replaced)
local function enter_name(parent, name, ino, k)
  local o, old, m = name_order(parent), entry_of(parent, name), entry_member(name, ino)
  if old == m then return end
  if old then order_remove(o, old) elseif k == 'd' then count_subdirs(parent, 1) end
  order_add(o, m)
end

-- name taken out of directory parent if it still names ino, of kind k; whether it did
local function remove_name(parent, name, ino, k)
  local m = entry_of(parent, name)
  if not m or select(2, member_entry(m)) ~= ino then return false end
  order_remove(name_order(parent), m)
  if k == 'd' then count_subdirs(parent, -1) end
  return true
end

local function unlink(n)
  for _, at in ipairs(names(n)) do
    if here(at[1]) then remove_name(at[1], at[2], n.ino, n.k) end
  end
end

local function store(n)
  n.mt, n.mts = '', ''  -- the record carries the directory's times now
  n.sd, n.sl = '', ''
  if n.k == 'd' then  -- only a directory has a count and a seal, kept over a rewrite of its record
    local old = stored(n.ino)
    if old then n.sd, n.sl = old.sd, old.sl end
  end
  save(n)
  if n.p ~= '0' and here(n.p) then  -- a scope root's entry in the upper tree is made there (``enter``)
    for _, at in ipairs(names(n)) do enter_name(at[1], at[2], n.ino, n.k) end
  end
  index(n)
end

-- the inode n gone; its blob (the record's, as stored) queued for deletion at ``at`` (microseconds,
-- the client's ``defer_delete`` queue) if given, in this same step (issue #16)
local function drop(n, at)
  unlink(n)
  unindex(n)
  redis.call('DEL', ikey(n.ino))
  if n.k == 'd' then order_drop(name_order(n.ino)) end
  if at and at ~= '' and n.bk ~= '' then redis.call('ZADD', P .. ':gc', at, blob_key(n)) end
end

-- n over old (the same inode), its names included: those old had and n has not are unlinked
local function rewrite(n, old)
  if old.p ~= n.p or old.n ~= n.n or old.ln ~= n.ln then unlink(old) end
  unindex(old)
  store(n)
end

-- a name taken from ``old``, an inode that goes with it unless it has others: then ``succ``
-- (its record without that name) is stored, if the inode is still at the revision its sender read
local function unname(old, succ, at)
  if #names(old) == 1 then drop(old, at); return true end
  if not succ or succ.node.ino ~= old.ino or not at_rev(old, succ.rev) then return false end
  rewrite(succ.node, old)
  return true
end

-- the directory times in ARGV[at..at+2], if they are for directory ino (see the module's docs)
local function touch(ino, at)
  local n = ARGV[at] == ino and load(ino)
  if not n then return false end
  n.mt, n.mts = ARGV[at + 1], ARGV[at + 2]
  save(n)
  return true
end

-- why nothing may be entered in directory ino, or nil if it may: gone, not a directory, or sealed (a
-- scope root being removed: ``seal``)
local function closed(ino)
  local n = stored(ino)
  if not n then return 'noparent' end
  if n.k ~= 'd' then return 'notdir' end
  if n.sl ~= '' then return 'sealed' end
  return nil
end

-- why an entry naming an inode of another shard is not replaced: in the upper tree it is a scope root
-- (taken); in a scope, where every inode is of its own shard, it was never written by a script
local function foreign() return S == 0 and 'exists' or 'forged' end

-- whether a node's artifact id names another inode than its own (the client gives a file the inode its
-- id names: ``_ino_for``)
local function id_elsewhere(n) return n.a ~= '' and id_ino(n.a) ~= n.ino end

local notice = {ARGV[1]}
local function entry(n) notice[#notice + 1] = 'e' .. n.p .. '/' .. n.n end
local function inode(ino) notice[#notice + 1] = 'i' .. ino end
local function publish()
  if not notify then  -- no notice: let followers know they cannot rely on notices alone (P:quiet)
    redis.call('INCR', P .. ':quiet')
    redis.call('EXPIRE', P .. ':quiet', QUIET_TTL)
    return
  end
  if origin ~= '' then notice[#notice + 1] = 'o' .. origin end
  notice[#notice + 1] = 's' .. redis.call('INCR', P .. ':seq')  -- a follower that skips a number lost a notice
  redis.call('SPUBLISH', P .. ':events', table.concat(notice, '\0'))
end

local function replaced_reply(old)
  if old then return answer('OK', record(old)) end
  return {'OK'}
end

local ops = {}

function ops.init()
  local n = argnode(3)
  redis.call('SET', P .. ':ino', n.ino, 'NX')
  if not load(n.ino) then store(n) end
  return {'OK'}
end

-- ARGV: parent, name, '1' to answer the parent's record first
function ops.lookup()
  local parent, ino = ARGV[3], entry_ino(ARGV[3], ARGV[4])
  local child = ino and fetch(ino) or {}
  if ARGV[5] ~= '1' then return child end
  local out = fetch(parent)
  for _, part in ipairs(child) do out[#out + 1] = part end
  return out
end

-- The records of ``inos``, or (more than ``most``) the inos alone, for the client to fetch in a
-- pipeline: reading that many records here would hold the server for every other client meanwhile.
-- With ``named``, each ino comes after its name (an entry of a directory), and so do the records.
local function records_or_inos(inos, most, named)
  local step = named and 2 or 1
  if #inos > most * step then return answer('INOS', inos) end
  local out = {'RECORDS'}
  for at = step, #inos, step do
    if named then out[#out + 1] = inos[at - 1] end
    for _, part in ipairs(fetch(inos[at])) do out[#out + 1] = part end
  end
  return out
end

-- ARGV: parent, how many records to answer at most. Its entries, each a name and a record; a larger
-- directory is answered with names and inos alone (see records_or_inos).
function ops.list()
  return records_or_inos(entries(ARGV[3]), tonumber(ARGV[4]), true)
end

-- ARGV: parent, the name to start after ('' for the first), how many names at most. Answers the
-- number of names the page covered, the last of them, then the records of those still entries here.
function ops.page()
  local dir, after, most = ARGV[3], ARGV[4], tonumber(ARGV[5])
  local members = order_range(name_order(dir), after == '' and '' or past_name(after), '+', most)
  local out = {#members, #members > 0 and (member_entry(members[#members])) or ''}
  for _, m in ipairs(members) do
    local name, ino = member_entry(m)
    out[#out + 1] = name
    for _, part in ipairs(fetch(ino)) do out[#out + 1] = part end
  end
  return out
end

-- ARGV: how many records to answer at most, then the space asked for (see spaces): the records of
-- its artifacts, or (more of them) their inos alone, for the client to fetch in a pipeline (see list)
function ops.search()
  local inos = {}
  for _, space in ipairs(spaces(4)) do
    for _, member in ipairs(order_all(space_order(space))) do
      local ino = id_ino(member_id(member))
      if ino then inos[#inos + 1] = ino end
    end
  end
  return records_or_inos(inos, tonumber(ARGV[3]), false)
end

-- ARGV: artifact id, how many records to answer at most: the holders of that artifact's blob (as search)
function ops.holders()
  return records_or_inos(redis.call('SMEMBERS', P .. ':x:bo:' .. ARGV[3]), tonumber(ARGV[4]), false)
end

-- sorted lists a and b merged, cut at ``most`` members
local function merged(a, b, most)
  local out, i, j = {}, 1, 1
  while #out < most and (i <= #a or j <= #b) do
    if j > #b or (i <= #a and a[i] < b[j]) then out[#out + 1] = a[i]; i = i + 1
    else out[#out + 1] = b[j]; j = j + 1 end
  end
  return out
end

-- ARGV: the member to start after ('' for the first), how many members to read at most, how many
-- records to answer at most, the prefix of the MIME type (``mi``) of those answered ('' for any), then
-- the space asked for (see spaces). A page of its artifacts in (stored_at, artifact id) order (issue
-- #12): the last member read, 1 if more may follow it, then the records. The spaces' orders are merged,
-- each read only below the ``most``-th member found so far, so the script holds at most twice ``most``
-- members.
function ops.spage()
  local after, most, want, needle = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
  local members = {}
  for _, space in ipairs(spaces(7)) do
    local below = #members >= most and '(' .. members[most] or '+'
    local found = order_range(space_order(space), after, below, most)
    if #found > 0 then members = merged(members, found, most) end
  end
  local out = {'PAGE', '', #members >= most and 1 or 0}
  local found = 0
  for _, member in ipairs(members) do
    if found >= want then out[3] = 1; break end
    out[2] = member
    local id = member_id(member)
    local ino = id_ino(id)
    local n = ino and stored(ino)
    if n and n.a == id and (needle == '' or string.sub(n.mi == '' and DEFAULT_MIME or n.mi, 1, #needle) == needle) then
      found = found + 1
      for _, part in ipairs(record(n)) do out[#out + 1] = part end
    end
  end
  return out
end

-- ARGV: directory, '1' to answer its own record first, then the names of a path below it. The records
-- along the path, each the entry of the one before; the answer ends at the first name that is missing
-- (or below a file), or with the bare ino of an entry in another shard (a scope root), for the client
-- to go on from there.
function ops.resolve()
  local out, dir = {}, ARGV[3]
  if ARGV[4] == '1' then
    out = fetch(dir)
    if not out[2] and not out[3] then return {} end
  end
  for at = 5, #ARGV do
    local ino = entry_ino(dir, ARGV[at])
    if not ino then break end
    if not here(ino) then out[#out + 1] = ino; break end
    local rec = fetch(ino)
    if not rec[2] and not rec[3] then break end
    for _, part in ipairs(rec) do out[#out + 1] = part end
    dir = ino
  end
  return out
end

-- ARGV: how many records to answer at most (a page), then the directories left to walk (each 'ino',
-- or 'ino:cursor' for one answered in part). Walks breadth first; answers the entries met that live in
-- another shard (their number, then their inos: scope roots, walked there), the number of records, the
-- records, the number of the given directories left unwalked, those, then the directories this page
-- found and did not walk (the client drops any an earlier page found: a walk never goes round twice).
-- A directory larger than what is left of the page is read a page of its name order at a time.
function ops.subtree()
  local budget = tonumber(ARGV[3])
  local queue, head, seen = {}, 1, {}
  for at = 4, #ARGV do
    queue[#queue + 1] = ARGV[at]
    seen[string.match(ARGV[at], '^[^:]*')] = true
  end
  local given = #queue
  local records, count, remote = {}, 0, {}
  local function take(dir, ino)
    if not here(ino) then remote[#remote + 1] = ino; return end  -- a scope root: walked in its shard
    local at = stored(ino)
    if not at or at.p ~= dir then return end  -- gone, or not (any longer) in dir
    for _, part in ipairs(record(at)) do records[#records + 1] = part end
    count = count + 1
    if at.k == 'd' and not seen[ino] then
      seen[ino] = true
      queue[#queue + 1] = ino
    end
  end
  while head <= #queue and count < budget do
    local item = queue[head]
    local dir, cursor = string.match(item, '^([^:]*):?(.*)$')
    local want = budget - count
    local members = order_range(name_order(dir), cursor, '+', want)
    for _, m in ipairs(members) do take(dir, select(2, member_entry(m))) end
    if #members < want then head = head + 1 else queue[head] = dir .. ':' .. members[#members] end
  end
  local out = {#remote}
  for _, ino in ipairs(remote) do out[#out + 1] = ino end
  out[#out + 1] = count
  for _, part in ipairs(records) do out[#out + 1] = part end
  local left = {}
  for at = head, math.min(given, #queue) do left[#left + 1] = queue[at] end
  out[#out + 1] = #left
  for _, item in ipairs(left) do out[#out + 1] = item end
  for at = math.max(head, given + 1), #queue do out[#out + 1] = queue[at] end
  return out
end

-- whether stored inode n is an entry (made below a scope root): its role (``ro``) is '' then
local function is_entry(n) return n.ro == '' end

-- ARGV: inos. Their records and those of the directories above each, up to and including the first
-- that is not an entry (a scope root): what a node's filename is made of. Each record answered once.
function ops.lineage()
  local out, seen = {}, {}
  for at = 3, #ARGV do
    local ino = ARGV[at]
    while ino and ino ~= '0' and here(ino) and not seen[ino] do
      seen[ino] = true
      local n = stored(ino)
      if not n then break end
      for _, part in ipairs(record(n)) do out[#out + 1] = part end
      if not is_entry(n) then break end
      ino = n.p
    end
  end
  return out
end

-- ARGV: replace, expect, when its blob may go, its successor, node, touch (3), then optionally the
-- cover: the root's revision as read, the root
function ops.insert()
  local replace, expect, drop_at, succ = ARGV[3] == '1', ARGV[4], ARGV[5], successor(6)
  local n = argnode(6 + SUCCESSOR_ARGS)
  local at = 6 + SUCCESSOR_ARGS + NODE_ARGS
  local why = closed(n.p)
  if why then return {'ERR', why} end
  local cur = entry_ino(n.p, n.n)
  if cur == n.ino then return {'OK'} end
  if cur and not here(cur) then return {'ERR', foreign()} end
  local old = cur and load(cur)
  if old then
    if not replace then return {'ERR', 'exists'} end
    if old.k == 'd' then return {'ERR', 'isdir'} end
    if cur ~= expect or (#names(old) > 1 and not (succ and at_rev(old, succ.rev))) then
      return answer('CONFLICT', record(old))
    end
  end
  if id_elsewhere(n) or load(n.ino) then return {'ERR', 'dupid'} end  -- its id made into a file twice
  local root, was = nil, nil
  if #ARGV > at + 2 then
    root = argnode(at + 4)
    was = load(root.ino)
    if not was or was.ex == '' or (root.ex ~= '' and le(root.ex, was.ex)) then
      root = nil  -- gone (nothing left to outlive), or it lives long enough as it is
    elseif not at_rev(was, ARGV[at + 3]) then
      return answer('STALE', record(was))  -- it changed since the caller read it: cover it as it is now
    end
  end
  if old then unname(old, succ, drop_at); inode(cur) end
  if root then rewrite(root, was); inode(root.ino) end
  store(n)
  touch(n.p, at)
  entry(n); inode(n.p)
  publish()
  return replaced_reply(old)
end

-- ARGV: node, the revision it replaces, '' or the version it replaces (a commit), then the deletion
-- queue's changes that go with it, if any (see SETTLE)
function ops.update()
  local n = argnode(3)
  local rev, expect = ARGV[3 + NODE_ARGS], ARGV[4 + NODE_ARGS]
  local old = load(n.ino)
  if not old then return {'ERR', 'vanished'} end
  if old.rec == n.rec then return {'OK'} end  -- this very write, retried after a lost reply
  if not at_rev(old, rev) or (expect ~= '' and old.v ~= '' and old.v ~= expect) then
    return answer('CONFLICT', record(old))
  end
  local moved = old.p ~= n.p or old.n ~= n.n or old.ln ~= n.ln
  if moved then
    for _, at in ipairs(names(n)) do
      local slot = entry_ino(at[1], at[2])
      if slot and slot ~= n.ino then return {'ERR', 'taken'} end
    end
  end
  if id_elsewhere(n) then return {'ERR', 'dupid'} end
  if moved then entry(old); entry(n) end
  rewrite(n, old)
  if ARGV[5 + NODE_ARGS] then settle(P .. ':gc', 5 + NODE_ARGS) end
  inode(n.ino)
  publish()
  return {'OK'}
end

-- ARGV: replace, expect, when its blob may go, its successor, node (the name moved is its primary
-- one), the revision it replaces, the old parent, the old name, touch of the old parent (3), touch
-- of the new parent (3)
function ops.rename()
  local replace, expect, drop_at, succ = ARGV[3] == '1', ARGV[4], ARGV[5], successor(6)
  local base = 6 + SUCCESSOR_ARGS
  local n = argnode(base)
  local rev, from, from_name, at = ARGV[base + NODE_ARGS], ARGV[base + NODE_ARGS + 1], ARGV[base + NODE_ARGS + 2], base + NODE_ARGS + 3
  local cur = load(n.ino)
  if not cur then return {'ERR', 'vanished'} end
  if cur.rec == n.rec then return {'OK'} end  -- this very move, retried after a lost reply
  if not at_rev(cur, rev) then return answer('STALE', record(cur)) end
  if n.p ~= from then
    local why = closed(n.p)
    if why then return {'ERR', why} end
  end
  local dst = entry_ino(n.p, n.n)
  if dst and not here(dst) then return {'ERR', foreign()} end
  local old = dst and dst ~= n.ino and load(dst)
  if old then
    if not replace then return {'ERR', 'exists'} end
    if old.k == 'd' and n.k ~= 'd' then return {'ERR', 'isdir'} end
    if n.k == 'd' and old.k ~= 'd' then return {'ERR', 'notdir'} end
    if old.k == 'd' and has_entries(dst) then return {'ERR', 'notempty'} end
    if dst ~= expect or (#names(old) > 1 and not (succ and at_rev(old, succ.rev))) then
      return answer('CONFLICT', record(old))
    end
    unname(old, succ, drop_at)
    inode(dst)
  elseif dst == n.ino and not (from == n.p and from_name == n.n) and has_name(cur, n.p, n.n) then
    return {'OK'}  -- two names of one inode: rename(2) does nothing
  end
  rewrite(n, cur)
  notice[#notice + 1] = 'e' .. from .. '/' .. from_name
  entry(n); inode(n.ino)
  if touch(from, at) then inode(from) end
  if touch(n.p, at + 3) and n.p ~= from then inode(n.p) end
  publish()
  return replaced_reply(old)
end

-- ARGV: a, b (each in the other's place), the revisions of a and b as read,
-- touch of a's old parent (3), touch of b's old parent (3)
function ops.exchange()
  local a, b = argnode(3), argnode(3 + NODE_ARGS)
  local at = 3 + 2 * NODE_ARGS
  local ca, cb = load(a.ino), load(b.ino)
  if not ca or not cb then return {'ERR', 'vanished'} end
  if ca.rec == a.rec and cb.rec == b.rec then return {'OK'} end  -- this very exchange, retried
  if not at_rev(ca, ARGV[at]) then return answer('STALE', record(ca)) end
  if not at_rev(cb, ARGV[at + 1]) then return answer('STALE', record(cb)) end
  at = at + 2
  for _, n in ipairs({a, b}) do
    for _, name in ipairs(names(n)) do
      local slot = entry_ino(name[1], name[2])
      if slot and slot ~= a.ino and slot ~= b.ino then return {'ERR', 'taken'} end
    end
  end
  unlink(ca); unlink(cb)
  unindex(ca); unindex(cb)
  store(a); store(b)
  entry(a); entry(b); inode(a.ino); inode(b.ino)
  if touch(b.p, at) then inode(b.p) end  -- a's old directory: b's now
  if touch(a.p, at + 3) and a.p ~= b.p then inode(a.p) end
  publish()
  return {'OK'}
end

-- ARGV: ino, the parent and name the caller read it at, touch of its parent (3), when its blob may
-- go ('' for not queued), the successor (an inode with other names: its record without this one)
function ops.remove()
  local cur, parent, name = load(ARGV[3]), ARGV[4], ARGV[5]
  if not cur or not has_name(cur, parent, name) then return {'OK'} end  -- gone from there already
  if cur.k == 'd' and has_entries(cur.ino) then return {'ERR', 'notempty'} end
  if not unname(cur, successor(10), ARGV[9]) then return answer('STALE', record(cur)) end
  notice[#notice + 1] = 'e' .. parent .. '/' .. name
  inode(cur.ino)
  if touch(parent, 6) then inode(parent) end
  publish()
  return answer('OK', record(cur))
end

-- ARGV: node (with the new name among its links), the revision it replaces, the new name's
-- directory and the name, touch of that directory (3)
function ops.link()
  local n = argnode(3)
  local at = 3 + NODE_ARGS
  local rev, dir, name = ARGV[at], ARGV[at + 1], ARGV[at + 2]
  local cur = load(n.ino)
  if not cur then return {'ERR', 'vanished'} end
  if cur.rec == n.rec then return {'OK'} end  -- this very link, retried after a lost reply
  if not at_rev(cur, rev) then return answer('STALE', record(cur)) end
  local why = closed(dir)
  if why then return {'ERR', why} end
  if entry_of(dir, name) then return {'ERR', 'exists'} end
  if not has_name(n, dir, name) then return {'ERR', 'badop'} end
  rewrite(n, cur)
  notice[#notice + 1] = 'e' .. dir .. '/' .. name
  inode(n.ino)
  if touch(dir, at + 3) then inode(dir) end
  publish()
  return {'OK'}
end

-- A scope root lives in its scope's shard and is entered in a directory of the upper tree (shard 0):
-- no script may touch both, so one is made in steps, each atomic and safe to repeat, and each
-- harmless if the next never comes (a record no entry names is reached by nothing; fsck finds it):
-- ``make`` here, then ``enter`` in the parent's shard (or ``discard`` here if that fails). It goes
-- by ``seal`` here (empty, and nothing may enter it from then on), ``unenter`` there, ``discard`` here.

-- ARGV: node (its parent in another shard). Stored, not yet entered.
function ops.make()
  local n = argnode(3)
  if load(n.ino) then return {'OK'} end  -- this very make, retried after a lost reply
  if id_elsewhere(n) then return {'ERR', 'dupid'} end
  store(n)
  return {'OK'}
end

-- the notice of a scope root's entry made or taken away (op: what it is to a follower, an insert or a
-- remove of that entry), and the step's answer
local function announce(op, parent, name)
  notice[1] = op
  entry({p = parent, n = name})
  inode(parent)
  publish()
  return {'OK'}
end

-- ARGV: parent, name, ino (in another shard, made there), kind. Names it in parent.
function ops.enter()
  local parent, name, ino, kind = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
  local why = closed(parent)
  if why then return {'ERR', why} end
  local cur = entry_ino(parent, name)
  if cur == ino then return {'OK'} end
  if cur then return {'ERR', 'exists'} end
  enter_name(parent, name, ino, kind)
  return announce('insert', parent, name)
end

-- ARGV: ino, the parent and name the caller read it at. An empty node closed to new entries; answers
-- its record, or nothing if it is not there any longer.
function ops.seal()
  local cur, parent, name = load(ARGV[3]), ARGV[4], ARGV[5]
  if not cur or not has_name(cur, parent, name) then return {'OK'} end
  if cur.k == 'd' and has_entries(cur.ino) then return {'ERR', 'notempty'} end
  cur.sl = '1'
  save(cur)
  return answer('OK', record(cur))
end

-- ARGV: parent, name, ino (in another shard), kind. Its name taken away, if it still names ino.
function ops.unenter()
  local parent, name, ino, kind = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
  if not remove_name(parent, name, ino, kind) then return {'OK'} end
  return announce('remove', parent, name)
end

-- ARGV: ino, '' or the record (``rec``) it must still have (a make whose enter failed), when its blob
-- may go. The node gone; answers its record, or nothing if it was gone already.
function ops.discard()
  local cur, rec = load(ARGV[3]), ARGV[4]
  if not cur or (rec ~= '' and cur.rec ~= rec) then return {'OK'} end
  if cur.k == 'd' and has_entries(cur.ino) then return {'ERR', 'notempty'} end
  drop(cur, ARGV[5])
  inode(cur.ino)
  publish()
  return answer('OK', record(cur))
end

-- ARGV: usage key, the generation the caller counted at, bytes, files (fsck --repair)
function ops.reset_usage()
  local uk, gen = ARGV[3], ARGV[4]
  if (redis.call('HGET', P .. ':ug', uk) or '0') ~= gen then return {'ERR', 'moved'} end
  for at, field in ipairs({'ub', 'uf'}) do  -- a number passed to redis.call as '%d': '%.14g' would round
    local was = tonumber(redis.call('HGET', P .. ':' .. field, uk) or '0')
    local delta = string.format('%d', tonumber(ARGV[4 + at]) - was)
    redis.call('HINCRBY', P .. ':tot', at == 1 and 'bytes' or 'files', delta)
    redis.call('HSET', P .. ':' .. field, uk, ARGV[4 + at])
  end
  redis.call('HINCRBY', P .. ':ug', uk, 1)
  return {'OK'}
end

-- ARGV: inos (a page of fsck's scan). The records of those no entry reaches: the parent gone, or
-- its entry under the name naming another inode; first, those whose parent is in another shard (how
-- many, then ino, parent, name each), for the client to check there. Checked and read in one step, so the revision
-- answered is the one found unreached: a repair conditional on it moves nothing placed meanwhile.
function ops.unreached()
  local out, remote = {}, {}
  for at = 3, #ARGV do
    local ino = ARGV[at]
    local place = plain(ino)
    local p = place.p
    if p and p ~= '0' and not here(p) then
      remote[#remote + 1] = ino; remote[#remote + 1] = p; remote[#remote + 1] = place.n
    elseif p and p ~= '0' and (redis.call('EXISTS', ikey(p)) == 0 or entry_ino(p, place.n) ~= ino) then
      for _, part in ipairs(fetch(ino)) do out[#out + 1] = part end
    end
  end
  local reply = {#remote / 3}
  for _, part in ipairs(remote) do reply[#reply + 1] = part end
  for _, part in ipairs(out) do reply[#reply + 1] = part end
  return reply
end

-- ARGV: pairs of a directory and a name: the child ino each names ('' for none), for a client checking
-- entries of the upper tree it remembers (scope roots) along with their records, in one round trip
function ops.entries()
  local out = {}
  for at = 3, #ARGV - 1, 2 do out[#out + 1] = entry_ino(ARGV[at], ARGV[at + 1]) or '' end
  return out
end

-- ARGV: ino of a directory whose subdirectory count to take again from its entries
function ops.recount_subdirs()
  local ino = ARGV[3]
  local n = stored(ino)
  if not n then return {'OK', '0'} end
  local count = 0
  local list = entries(ino)
  for j = 2, #list, 2 do
    local child = list[j]  -- an entry in another shard is a scope root: a directory
    if child ~= ino and (not here(child) or plain(child).k == 'd') then count = count + 1 end
  end
  local was = tonumber(n.sd) or 0
  n.sd = tostring(count)
  save(n)
  if was ~= count then  -- its st_nlink moved: mounts drop the attributes their kernels cached
    inode(ino)
    publish()
  end
  return {'OK', tostring(count)}
end

local op = ops[ARGV[1]]
if not op then return {'ERR', 'badop'} end
return op()
"""
