"""Four hosts, one store, nothing lost: the multi-host torture test of issue #16.

Two mounts (A, B: ``artifactfs mount`` processes) and two library processes
(C, D: ``ArtifactStore()`` built from the environment, as an application
builds it) share one redis-server and one moto bucket. Every host is a
process of its own (:mod:`torturehost`) and reaches Redis through a proxy of
its own (:mod:`redisproxy`). They work on a few shared names in
``users/alice``: create, write-close, overwrite, rename, unlink, chmod,
metadata updates and reads.

**Each round forces one race** instead of hoping for it. Host X starts a
step; X's proxy holds X's metadata write (the first call of the store's
script whose op writes what X means to write: ``rename``, ``update``,
``remove``, ``insert``), after X has read what it decides on. Host Y then
does a conflicting step to its end; then X's write is let go. So X always
acts on what it read before Y's change, which is what loses data when a
write is blind. The kinds of race are in :data:`KINDS`; each runs with every
pair of hosts it admits, in turn. Nothing waits for time to pass: a step
is waited for until it answers, a hold until it catches its call, a mount's
view until it agrees with the store (each with a bound that only a hang
reaches).

What a correct store gives, and what is counted when it does not:

- **lost**: a name that holds other than what the completed steps left
  there (a completed rename undone, a completed write or chmod missing, a
  removed file back), through any view.
- **EIO**: each step or read answered EIO (the library's ``ProviderError``
  and ``ArtifactCorruptedError`` are its EIO).
- **leaked**: objects in the bucket under the store's prefix that no
  record names and that are not in the deletion queue (incomplete multipart
  uploads included). A superseded or removed blob waits out its grace
  period in the queue, and a blob being uploaded is queued as an intent
  before its bytes go out (issue #16), so after a round the bucket holds
  the named blobs and the queued ones, nothing else; after a final gc run
  past every grace period and intent, the named ones only.
- **wrong errnos**: a step answered other than POSIX says (rename of a
  source another host moved: ENOENT; ``open(O_CREAT)`` without ``O_EXCL``:
  never EEXIST), or succeeded where POSIX fails it. An EIO where an errno
  was due counts here and as EIO; an EIO where success was due, as EIO.
- **torn**: a read whose bytes are not one whole version that was written.
  A descriptor opened before another host replaced or removed its file
  must read the version it opened, or fail with ESTALE.

Then every surviving file is read whole through every view (both mounts,
both libraries), and the bucket is compared with the records.

``TORTURE_ROUNDS`` sets the rounds (default: two of each kind, about ten
seconds here); ``TORTURE_KINDS=a,b`` plays only those kinds; with
``TORTURE_REPORT=FILE`` the figures (by kind and by view) and the notes on
every failure are written there.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import hashlib
import json
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from mounting import Mount, start_mount, stop_mounts, wait_for
from redisproxy import RedisProxy, ScriptCall
from servers import BUCKET, MotoServer, RedisServer
from storeprobe import redis_inode
from torturehost import USER, HostProcess, Outcome, _b64, _unb64
from worlds import StoreWorld, WorldKind


NAMES = ("f0", "f1", "f2", "f3")  # the shared names every host works on
HOST_BOUND = 120.0  # seconds a host may take to answer one step: only a hang takes this long
HOLD_BOUND = 60.0  # seconds a held step may take to reach its metadata write
SETTLE_BOUND = 30.0  # seconds a mount may take to show the store's state (its kernel caches entries for 1 s)
MODES = (0o600, 0o640, 0o604, 0o660)
SUMMARY_XATTR = "user.artifact.summary"
BROKEN = "?"  # in the model: a name that exists but whose content no read could identify
METRICS = ("lost", "eio", "leaked", "wrong_errno", "torn", "unforced", "stale_view")


# -- versions: contents that say who wrote them, and that show when they are not whole


@dataclass(frozen=True)
class Version:
    tag: str
    data: bytes


class Ledger:
    """Every version a host was asked to write. Each has a size of its own and a header naming it;
    its body follows from the header, so a read is whole exactly when it equals a version."""

    def __init__(self) -> None:
        self._versions: dict[str, Version] = {}
        self._cuts: dict[tuple[str, int], Version] = {}

    def new(self, writer: str, round_no: int) -> Version:
        serial = len(self._versions) + 1
        tag = f"{writer}{round_no}.{serial}"
        header = f"torture {tag} by host {writer} in round {round_no}\n".encode()
        size = 700 + 37 * serial  # never two versions of one size: a hold can tell a commit by it
        body = hashlib.shake_256(header).digest(size - len(header))
        version = self._versions[tag] = Version(tag, header + body)
        return version

    def cut(self, tag: str, size: int) -> Version:
        """Version ``tag`` truncated to ``size`` bytes (what a truncate makes of it), known from now on."""
        cut = Version(f"{tag}[:{size}]", self._versions[tag].data[:size])
        self._cuts[tag, size] = cut
        return cut

    def identify(self, data: bytes) -> str | None:
        """The tag of the version ``data`` is, whole; None for anything else (torn, unknown)."""
        head = data.split(b"\n", 1)[0].split()
        if len(head) < 2 or head[0] != b"torture":
            return None
        tag = head[1].decode(errors="replace")
        whole = self._versions.get(tag)
        version = whole if whole is not None and len(whole.data) == len(data) else self._cuts.get((tag, len(data)))
        return version.tag if version is not None and version.data == data else None

    def get(self, tag: str) -> Version:
        return self._versions[tag]

    @staticmethod
    def is_cut(tag: str) -> bool:
        return "[:" in tag  # only a cut's tag says where it was cut


# -- what was seen


@dataclass
class Tally:
    rounds: int = 0
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)  # (metric, view) -> n
    by_kind: dict[str, Counter[str]] = field(default_factory=dict)
    outcomes: Counter[str] = field(default_factory=Counter)  # accepted outcomes of note (ESTALE reads, ...)
    notes: list[str] = field(default_factory=list)

    def add(self, metric: str, view: str, kind: str, note: str, n: int = 1) -> None:
        self.counts[metric, view] += n
        self.by_kind.setdefault(kind, Counter())[metric] += n
        if len(self.notes) < 200:
            self.notes.append(f"[{kind}] {metric} ({view}): {note}")

    def total(self, metric: str) -> int:
        return sum(n for (m, _), n in self.counts.items() if m == metric)

    def figures(self) -> dict[str, Any]:
        return {
            "rounds": self.rounds,
            **{m: self.total(m) for m in METRICS},
            "by_view": {f"{m}/{v}": n for (m, v), n in sorted(self.counts.items())},
            "by_kind": {k: dict(c) for k, c in sorted(self.by_kind.items()) if c},
            "outcomes": dict(self.outcomes),
        }


# -- the bucket against the records


class Audit:
    """Objects under the store's prefix, and the blobs its records name (all of them, as gc would read them)."""

    def __init__(self, redis: RedisServer, moto: MotoServer, prefix: str) -> None:
        self.redis, self.s3, self.prefix = redis.client(), moto.client(), prefix

    def objects(self) -> set[str]:
        found = set()
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=self.prefix + "/"):
            found |= {o["Key"] for o in page.get("Contents", [])}
        uploads = self.s3.list_multipart_uploads(Bucket=BUCKET, Prefix=self.prefix + "/").get("Uploads", [])
        return found | {f"(incomplete upload) {u['Key']}" for u in uploads}

    def named(self) -> set[str]:
        named = set()
        for key in self.redis.scan_iter(match=f"{self.prefix}:{{*}}:i:*", count=1000):  # every shard's
            record = redis_inode(self.redis, key).get("rec")
            artifact = json.loads(record).get("artifact") if record else None
            if artifact and artifact.get("blob_key"):
                named.add(f"{self.prefix}/{artifact['blob_key']}")
        return named

    def queued(self) -> set[str]:
        """Blobs in the deletion queue: waiting out their grace period, or upload intents."""
        queues = self.redis.scan_iter(match=f"{self.prefix}:{{*}}:gc", count=1000)  # one per shard
        return {f"{self.prefix}/{k.decode()}" for queue in queues for k in self.redis.zrange(queue, 0, -1)}

    def leaked_and_missing(self) -> tuple[set[str], set[str]]:
        objects, named = self.objects(), self.named()
        return objects - named - self.queued(), named - objects

    def close(self) -> None:
        self.redis.close()


# -- the test's driver


@dataclass(frozen=True)
class Round:
    no: int
    kind: str
    n: int  # how many rounds of this kind came before: which pair of hosts plays it
    names: tuple[str, ...]


def record_with(**fields: Any) -> Callable[[ScriptCall], bool]:
    """A hold's test: the call writes a record with these fields (``summary`` is the artifact's)."""

    def test(call: ScriptCall) -> bool:
        for record in call.records():
            values = {**record, "summary": (record.get("artifact") or {}).get("summary")}
            if all(values.get(k) == v for k, v in fields.items()):
                return True
        return False

    return test


class Torture:
    def __init__(
        self, hosts: list[HostProcess], observer: HostProcess, proxies: dict[str, RedisProxy], audit: Audit
    ) -> None:
        self.hosts, self.observer, self.proxies, self.audit = hosts, observer, proxies, audit
        self.mounts = [h for h in hosts if h.is_mount]
        self.libraries = [h for h in hosts if not h.is_mount]
        self.ledger = Ledger()
        self.model: dict[str, str] = {}  # name -> the tag of its version (BROKEN: unknown); absent: no file
        self.tally = Tally()
        self.truth: dict[str, dict[str, Any]] = {}  # the observer's last look: name -> record
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="held-step")
        self._setups = 0
        self._reads = 0
        self._leaked = 0
        self.kind = "setup"

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- judging one outcome

    def expect(self, host: HostProcess, step: str, out: Outcome, *wanted: str) -> bool:
        """Count ``out`` of ``step`` on ``host`` against what POSIX (or the API) answers: ``wanted`` labels."""
        view = host.kind
        if out.errno == errno.EIO:
            self.tally.add("eio", view, self.kind, f"{step} on {host.name}: {out.error}")
        if out.label in wanted:
            return True
        if out.errno != errno.EIO or wanted != ("ok",):  # an EIO where success was due is counted as EIO alone
            self.tally.add("wrong_errno", view, self.kind, f"{step} on {host.name}: {out.label} ({out.error}), "
                                                           f"expected {'/'.join(wanted)}")
        return False

    # -- steps, the same on either kind of host

    def write(self, host: HostProcess, name: str, version: Version, *, new: bool = False) -> Outcome:
        """Overwrite (a new version of the same file) or, with ``new``, store a new file."""
        data = _b64(version.data)
        if host.is_mount:
            return host.call("write", name=name, data=data)
        return host.call("store" if new else "update_file", name=name, data=data)

    def write_step(self, host: HostProcess, name: str, version: Version) -> tuple[str, dict[str, Any]]:
        return ("write", {"name": name, "data": _b64(version.data)}) if host.is_mount else (
            "update_file", {"name": name, "data": _b64(version.data)})

    def rename(self, host: HostProcess, src: str, dst: str) -> Outcome:
        return host.call("rename", src=src, dst=dst) if host.is_mount else host.call("move", name=src, new_name=dst)

    def unlink(self, host: HostProcess, name: str) -> Outcome:
        return host.call("unlink", name=name) if host.is_mount else host.call("delete", name=name)

    def unlink_step(self, host: HostProcess, name: str) -> tuple[str, dict[str, Any]]:
        return ("unlink", {"name": name}) if host.is_mount else ("delete", {"name": name})

    def set_summary(self, host: HostProcess, name: str, summary: str) -> Outcome:
        if host.is_mount:
            return host.call("setxattr", name=name, key=SUMMARY_XATTR, value=summary)
        return host.call("update_metadata", name=name, summary=summary)

    def read(self, host: HostProcess, name: str) -> Outcome:
        return host.call("read", name=name)

    # -- the model: what the completed steps left

    def move(self, src: str, dst: str) -> None:
        if src in self.model:
            self.model[dst] = self.model.pop(src)

    def put(self, name: str, version: Version) -> None:
        self.model[name] = version.tag

    # -- forcing a race

    def race(
        self, x: HostProcess, step: tuple[str, dict[str, Any]], ops: tuple[str, ...],
        where: Callable[[ScriptCall], bool] | None, y_step: Callable[[], Outcome],
    ) -> tuple[Outcome, Outcome, bool]:
        """X's ``step`` held at its metadata write (``ops``), Y's step done meanwhile, X let go.

        Returns X's outcome, Y's, and whether the hold caught X (if it did not, X ended
        first and Y ran after it: the order was not forced, which the test counts).
        """
        proxy = self.proxies[x.name]
        hold = proxy.hold(ops, where)
        op, args = step
        x_future = self._pool.submit(x.call, op, **args)
        deadline = time.monotonic() + HOLD_BOUND
        while not hold.wait_caught(0.02):
            if x_future.done() or time.monotonic() > deadline:
                break
        if not hold.caught:
            proxy.disarm(hold)
            x_out = x_future.result(timeout=HOST_BOUND)
            self.tally.add("unforced", x.kind, self.kind, f"{op} on {x.name} made no {'/'.join(ops)} call "
                                                          f"({x_out.label} {x_out.error})")
            return x_out, y_step(), False
        self.tally.outcomes[f"held {hold.call.op if hold.call else '?'}, then let go"] += 1
        try:
            y_out = y_step()
        finally:
            hold.release()
        return x_future.result(timeout=HOST_BOUND), y_out, True

    # -- setting up a round's names

    def _setup_host(self) -> HostProcess:
        self._setups += 1
        return self.hosts[self._setups % len(self.hosts)]

    def ensure(self, name: str, round_no: int) -> None:
        """``name`` is a file holding a whole version that was written (known, and not a truncate's cut)."""
        tag = self.model.get(name)
        if tag is not None and tag != BROKEN and not self.ledger.is_cut(tag):
            return
        host = self._setup_host()
        version = self.ledger.new(host.name, round_no)
        if self.expect(host, f"set up {name}", self.write(host, name, version, new=tag is None), "ok"):
            self.put(name, version)

    def ensure_absent(self, name: str) -> None:
        if name not in self.model:
            return
        host = self._setup_host()
        if self.expect(host, f"set up: remove {name}", self.unlink(host, name), "ok"):
            del self.model[name]

    def look(self) -> dict[str, dict[str, Any]]:
        """The store's records of alice's directory, as the observer (no proxy, no cache) reads them."""
        out = self.observer.call("tree")
        assert out.ok, f"the observer cannot list: {out.error}"
        self.truth = {entry["name"]: entry for entry in out.value}
        return self.truth

    def settle(self, names: tuple[str, ...] | list[str]) -> None:
        """Wait until both mounts show ``names`` as the store has them (inode and size, or no entry).

        Each mount drops what its kernel cached of another host's change when the change's notice
        comes, and trusts its caches for at most a second anyway (fusefs/invalidation.py): a
        mount that does not agree within the bound is a stale view, counted.
        """
        truth = self.look()

        def agrees(mount: HostProcess) -> bool:
            for name in names:
                seen = mount.call("stat", name=name)
                record = truth.get(name)
                if record is None:
                    if seen.errno != errno.ENOENT:
                        return False
                elif not seen.ok or (seen.value["ino"], seen.value["size"]) != (record["ino"], record["size"]):
                    return False
            return True

        for mount in self.mounts:
            try:
                wait_for(lambda m=mount: agrees(m), SETTLE_BOUND, f"mount {mount.name} to show {names}")
            except TimeoutError as exc:
                self.tally.add("stale_view", "mount", self.kind, str(exc))

    # -- judging a round

    def check(self, names: list[str], *, mode: dict[str, int] | None = None, summary: dict[str, str] | None = None,
              judge: bool = True) -> None:
        """The store against the model for ``names`` (read by the observer), then one read through
        a host; the model then takes what the store holds, so one loss is counted once."""
        truth = self.look()
        for name in dict.fromkeys(names):
            record, want = truth.get(name), self.model.get(name)
            seen: str | None = None
            if record is not None:
                out = self.observer.call("read", name=name)
                if out.ok:
                    seen = self.ledger.identify(_unb64(out.value))
                    if seen is None and judge:
                        self.tally.add("torn", "library", self.kind, f"{name} reads as no whole version")
                elif judge:
                    self.expect(self.observer, f"read {name}", out, "ok")
            if judge:
                self._judge(name, record, want, seen, mode, summary)
            if record is None:
                self.model.pop(name, None)
            else:
                self.model[name] = seen or BROKEN
        present = [n for n in dict.fromkeys(names) if n in self.model]
        if judge and present:
            self.settle(present)
            for name in present:
                self.read_through(self.hosts[self._reads % len(self.hosts)], name)
                self._reads += 1

    def _judge(self, name: str, record: dict[str, Any] | None, want: str | None, seen: str | None,
               mode: dict[str, int] | None, summary: dict[str, str] | None) -> None:
        if record is None and want is not None:
            self.tally.add("lost", "library", self.kind, f"{name} is gone; it should hold {want}")
        elif record is not None and want is None:
            self.tally.add("lost", "library", self.kind, f"{name} is back (holding {seen}); it was removed or moved")
        elif record is not None and want not in (None, BROKEN) and seen is not None and seen != want:
            self.tally.add("lost", "library", self.kind, f"{name} holds {seen}; the last completed write was {want}")
        if record is not None and mode and name in mode and record["mode"] != mode[name]:
            self.tally.add("lost", "library", self.kind, f"{name} has mode {record['mode']:o}, chmod set {mode[name]:o}")
        if record is not None and summary and name in summary and record["summary"] != summary[name]:
            self.tally.add("lost", "library", self.kind, f"{name}: summary {record['summary']!r}, set {summary[name]!r}")

    def read_through(self, host: HostProcess, name: str) -> None:
        """Read ``name`` whole through ``host``: it must be the version the model says."""
        out = self.read(host, name)
        if not self.expect(host, f"read {name}", out, "ok"):
            return
        seen = self.ledger.identify(_unb64(out.value))
        want = self.model.get(name)
        if seen is None:
            self.tally.add("torn", host.kind, self.kind, f"{name} through {host.name} is no whole version")
        elif want not in (None, BROKEN) and seen != want:
            self.tally.add("lost", host.kind, self.kind, f"{name} through {host.name} holds {seen}, not {want}")

    def count_leaks(self) -> None:
        leaked, _ = self.audit.leaked_and_missing()
        if len(leaked) > self._leaked:
            self.tally.add("leaked", "bucket", self.kind, f"{len(leaked) - self._leaked} more: {sorted(leaked)[-3:]}",
                           len(leaked) - self._leaked)
        self._leaked = len(leaked)

    # -- the whole run

    def run_round(self, no: int, kind: str, play: Callable[[Torture, Round], None], n: int) -> None:
        self.kind = kind
        start = no % len(NAMES)
        names = tuple(NAMES[(start + i) % len(NAMES)] for i in range(3))
        play(self, Round(no, kind, n, names))
        self.count_leaks()
        self.tally.rounds += 1

    def verify_all(self) -> None:
        """Every surviving file, whole, through every view; every view lists the same names."""
        self.kind = "final"
        truth = self.look()
        names = sorted(truth)
        self.settle(names)
        for host in self.hosts:
            listed = host.call("listdir") if host.is_mount else host.call("listing")
            if not self.expect(host, "list", listed, "ok"):
                continue
            shown = set(listed.value) if host.is_mount else {m["name"] for m in listed.value}
            for name in sorted(shown ^ set(names)):
                self.tally.add("lost", host.kind, "final", f"{host.name} lists {sorted(shown)}, the store {names}")
            for name in names:
                self.read_through(host, name)
        self.tally.outcomes["queued for deletion before the final gc"] = len(self.audit.queued())
        collected = self.observer.call("gc")
        if not collected.ok:
            self.tally.add("eio", "library", "final", f"gc answered {collected}")
        else:
            self.tally.outcomes["blobs the final gc deleted"] = collected.value
        leaked, missing = self.audit.leaked_and_missing()
        self.tally.outcomes["queued for deletion after the final gc"] = len(self.audit.queued())
        leaked |= self.audit.objects() - self.audit.named()  # past every grace period: named or gone
        if len(leaked) != self._leaked:
            self.tally.add("leaked", "bucket", "final", f"{len(leaked)} in all", len(leaked) - self._leaked)
        self.tally.outcomes["records naming a missing blob"] = len(missing)
        self.tally.outcomes["objects in the bucket"] = len(self.audit.objects())


# -- the kinds of race: each sets up its names, forces one interleaving, then says what must hold


KINDS: list[tuple[str, Callable[[Torture, Round], None]]] = []


def kind(fn: Callable[[Torture, Round], None]) -> Callable[[Torture, Round], None]:
    KINDS.append((fn.__name__.replace("_", "-"), fn))
    return fn


def pair(xs: list[HostProcess], ys: list[HostProcess], n: int) -> tuple[HostProcess, HostProcess]:
    """The ``n``-th pair (X, Y) of two different hosts, X from ``xs`` and Y from ``ys``.

    Every pair comes once in each run of ``len(pairs)`` rounds, in a stride that makes
    neighbouring rounds differ in both hosts (so even a short run mixes mounts and libraries).
    """
    pairs = [(x, y) for x in xs for y in ys if y is not x]
    stride = next(k for k in range(len(pairs) // 2 + 1, len(pairs) + 2) if math.gcd(k, len(pairs)) == 1)
    return pairs[n * stride % len(pairs)]


def new_mode(t: Torture, name: str) -> int:
    current = t.truth.get(name, {}).get("mode")
    return next(m for m in MODES if m != current)


@kind
def rename_vs_commit(t: Torture, r: Round) -> None:
    """X renames f to g, having read f; Y writes a new version of f. g must be Y's version."""
    f, g, _ = r.names
    t.ensure(f, r.no)
    t.ensure_absent(g)
    t.settle([f, g])
    x, y = pair(t.mounts, t.hosts, r.n)
    v = t.ledger.new(y.name, r.no)
    x_out, y_out, forced = t.race(x, ("rename", {"src": f, "dst": g}), ("rename",), None, lambda: t.write(y, f, v))
    if t.expect(y, f"write {f}", y_out, "ok"):
        t.put(f, v)
    if t.expect(x, f"rename {f} {g}", x_out, "ok"):
        t.move(f, g)
    t.check([f, g], judge=forced)


@kind
def commit_vs_rename(t: Torture, r: Round) -> None:
    """X writes f, its commit held; Y renames f to g. The version lands on g; f does not come back."""
    f, g, _ = r.names
    t.ensure(f, r.no)
    t.ensure_absent(g)
    t.settle([f, g])
    x, y = pair(t.hosts, t.hosts, r.n)
    v = t.ledger.new(x.name, r.no)
    x_out, y_out, forced = t.race(x, t.write_step(x, f, v), ("update",), record_with(size=len(v.data)),
                                  lambda: t.rename(y, f, g))
    moved = t.expect(y, f"rename {f} {g}", y_out, "ok")
    if moved:
        t.move(f, g)
    if t.expect(x, f"write {f}", x_out, "ok"):
        t.put(g if moved else f, v)
    t.check([f, g], judge=forced)


@kind
def chmod_vs_commit(t: Torture, r: Round) -> None:
    """X chmods f, having read it; Y writes a new version. f has Y's bytes and X's mode."""
    f = r.names[0]
    t.ensure(f, r.no)
    t.settle([f])
    x, y = pair(t.mounts, t.hosts, r.n)
    mode, v = new_mode(t, f), t.ledger.new(y.name, r.no)
    x_out, y_out, forced = t.race(x, ("chmod", {"name": f, "mode": mode}), ("update",), record_with(mode=mode),
                                  lambda: t.write(y, f, v))
    if t.expect(y, f"write {f}", y_out, "ok"):
        t.put(f, v)
    chmodded = t.expect(x, f"chmod {f}", x_out, "ok")
    t.check([f], mode={f: mode} if chmodded else None, judge=forced)


@kind
def commit_vs_chmod(t: Torture, r: Round) -> None:
    """X writes f, its commit held; Y chmods f. f has X's bytes and Y's mode."""
    f = r.names[0]
    t.ensure(f, r.no)
    t.settle([f])
    x, y = pair(t.hosts, t.mounts, r.n)
    mode, v = new_mode(t, f), t.ledger.new(x.name, r.no)
    x_out, y_out, forced = t.race(x, t.write_step(x, f, v), ("update",), record_with(size=len(v.data)),
                                  lambda: y.call("chmod", name=f, mode=mode))
    chmodded = t.expect(y, f"chmod {f}", y_out, "ok")
    if t.expect(x, f"write {f}", x_out, "ok"):
        t.put(f, v)
    t.check([f], mode={f: mode} if chmodded else None, judge=forced)


@kind
def unlink_vs_commit(t: Torture, r: Round) -> None:
    """X removes f, having read it; Y writes a new version. f is gone, and so is Y's blob."""
    f = r.names[0]
    t.ensure(f, r.no)
    t.settle([f])
    x, y = pair(t.hosts, t.hosts, r.n)
    v = t.ledger.new(y.name, r.no)
    x_out, y_out, forced = t.race(x, t.unlink_step(x, f), ("remove",), None, lambda: t.write(y, f, v))
    if t.expect(y, f"write {f}", y_out, "ok"):
        t.put(f, v)
    if t.expect(x, f"remove {f}", x_out, "ok"):
        t.model.pop(f, None)
    t.check([f], judge=forced)


@kind
def commit_vs_unlink(t: Torture, r: Round) -> None:
    """X writes f, its commit held; Y removes f. f stays gone (a mount's close succeeds, as for a file
    unlinked while open; the library's update is ENOENT), and X's new blob goes."""
    f = r.names[0]
    t.ensure(f, r.no)
    t.settle([f])
    x, y = pair(t.hosts, t.hosts, r.n)
    v = t.ledger.new(x.name, r.no)
    x_out, y_out, forced = t.race(x, t.write_step(x, f, v), ("update",), record_with(size=len(v.data)),
                                  lambda: t.unlink(y, f))
    if t.expect(y, f"remove {f}", y_out, "ok"):
        t.model.pop(f, None)
    t.expect(x, f"write {f}", x_out, "ok" if x.is_mount else "ENOENT")
    t.check([f], judge=forced)


@kind
def rename_vs_rename(t: Torture, r: Round) -> None:
    """X renames f to g, having read f; Y renames f to h first. X's source is gone: ENOENT, and h stays."""
    f, g, h = r.names
    t.ensure(f, r.no)
    t.ensure_absent(g)
    t.ensure_absent(h)
    t.settle([f, g, h])
    x, y = pair(t.mounts, t.hosts, r.n)
    x_out, y_out, forced = t.race(x, ("rename", {"src": f, "dst": g}), ("rename",), None, lambda: t.rename(y, f, h))
    if t.expect(y, f"rename {f} {h}", y_out, "ok"):
        t.move(f, h)
    if not t.expect(x, f"rename {f} {g}", x_out, "ENOENT") and x_out.ok:
        t.move(f, g)
    t.check([f, g, h], judge=forced)


@kind
def create_vs_create(t: Torture, r: Round) -> None:
    """X creates f (O_CREAT|O_TRUNC, no O_EXCL), its insert held; Y creates f first. X opens Y's file
    (never EEXIST), and its write is the last."""
    f = r.names[0]
    t.ensure_absent(f)
    t.settle([f])
    x, y = pair(t.mounts, t.hosts, r.n)
    vx, vy = t.ledger.new(x.name, r.no), t.ledger.new(y.name, r.no)
    x_out, y_out, forced = t.race(x, t.write_step(x, f, vx), ("insert",), None, lambda: t.write(y, f, vy, new=True))
    if t.expect(y, f"create {f}", y_out, "ok"):
        t.put(f, vy)
    if t.expect(x, f"create {f}", x_out, "ok"):
        t.put(f, vx)
    t.check([f], judge=forced)


def _read_while(t: Torture, r: Round, *, overwrite: bool) -> None:
    """X opens f (and reads its start, every other round); Y overwrites or removes f; X reads on to
    the end. X must read the version it opened, whole, or get ESTALE: never EIO, never a mix."""
    f = r.names[0]
    t.ensure(f, r.no)
    t.settle([f])
    x, y = pair(t.mounts, t.hosts, r.n // 2)
    opened = t.ledger.get(t.model[f])
    fd = x.call("open", name=f)
    if not t.expect(x, f"open {f}", fd, "ok"):
        return
    first = b""
    if r.n % 2:
        head = x.call("pread", fd=fd.value, offset=0, size=100)
        if t.expect(x, f"read {f}", head, "ok"):
            first = _unb64(head.value)
    if overwrite:
        v = t.ledger.new(y.name, r.no)
        if t.expect(y, f"write {f}", t.write(y, f, v), "ok"):
            t.put(f, v)
    elif t.expect(y, f"remove {f}", t.unlink(y, f), "ok"):
        t.model.pop(f, None)
    rest = x.call("read_rest", fd=fd.value, offset=len(first))
    t.expect(x, f"close {f}", x.call("close", fd=fd.value), "ok")
    if rest.ok:
        whole = first + _unb64(rest.value)
        if whole != opened.data:
            seen = t.ledger.identify(whole)
            what = f"the newer {seen}" if seen else "no whole version"
            t.tally.add("torn", "mount", t.kind, f"{f} opened at {opened.tag} read through the descriptor as {what}")
        t.tally.outcomes["descriptor read the version it opened"] += 1
    elif t.expect(x, f"read {f} through a descriptor", rest, "ESTALE"):
        if not opened.data.startswith(first):
            t.tally.add("torn", "mount", t.kind, f"{f}: the start read before ESTALE is not {opened.tag}'s")
        t.tally.outcomes["descriptor read ESTALE"] += 1
    t.check([f])


@kind
def read_vs_overwrite(t: Torture, r: Round) -> None:
    _read_while(t, r, overwrite=True)


@kind
def read_vs_unlink(t: Torture, r: Round) -> None:
    _read_while(t, r, overwrite=False)


@kind
def library_metadata_vs_commit(t: Torture, r: Round) -> None:
    """Library X updates f's summary, having read it; Y writes a new version. Both hold."""
    f = r.names[0]
    t.ensure(f, r.no)
    t.settle([f])
    x, y = pair(t.libraries, t.hosts, r.n)
    summary, v = f"summary of round {r.no}", t.ledger.new(y.name, r.no)
    x_out, y_out, forced = t.race(x, ("update_metadata", {"name": f, "summary": summary}), ("update",),
                                  record_with(summary=summary), lambda: t.write(y, f, v))
    if t.expect(y, f"write {f}", y_out, "ok"):
        t.put(f, v)
    done = t.expect(x, f"update_metadata {f}", x_out, "ok")
    t.check([f], summary={f: summary} if done else None, judge=forced)


@kind
def commit_vs_library_metadata(t: Torture, r: Round) -> None:
    """X writes f, its commit held; library Y updates f's summary. Both hold."""
    f = r.names[0]
    t.ensure(f, r.no)
    t.settle([f])
    x, y = pair(t.hosts, t.libraries, r.n)
    summary, v = f"summary of round {r.no}", t.ledger.new(x.name, r.no)
    x_out, y_out, forced = t.race(x, t.write_step(x, f, v), ("update",), record_with(size=len(v.data)),
                                  lambda: t.set_summary(y, f, summary))
    done = t.expect(y, f"update_metadata {f}", y_out, "ok")
    if t.expect(x, f"write {f}", x_out, "ok"):
        t.put(f, v)
    t.check([f], summary={f: summary} if done else None, judge=forced)


@kind
def library_delete_vs_commit(t: Torture, r: Round) -> None:
    """Library X deletes f, having read it; Y writes a new version. f is gone, Y's blob with it."""
    f = r.names[0]
    t.ensure(f, r.no)
    t.settle([f])
    x, y = pair(t.libraries, t.hosts, r.n)
    v = t.ledger.new(y.name, r.no)
    x_out, y_out, forced = t.race(x, ("delete", {"name": f}), ("remove",), None, lambda: t.write(y, f, v))
    if t.expect(y, f"write {f}", y_out, "ok"):
        t.put(f, v)
    if t.expect(x, f"delete {f}", x_out, "ok"):
        t.model.pop(f, None)
    t.check([f], judge=forced)


@kind
def commit_vs_library_delete(t: Torture, r: Round) -> None:
    """A mount writes f, its commit held; library Y deletes f. f stays gone; the new blob goes."""
    f = r.names[0]
    t.ensure(f, r.no)
    t.settle([f])
    x, y = pair(t.mounts, t.libraries, r.n)
    v = t.ledger.new(x.name, r.no)
    x_out, y_out, forced = t.race(x, t.write_step(x, f, v), ("update",), record_with(size=len(v.data)),
                                  lambda: t.unlink(y, f))
    if t.expect(y, f"delete {f}", y_out, "ok"):
        t.model.pop(f, None)
    t.expect(x, f"write {f}", x_out, "ok")
    t.check([f], judge=forced)


@kind
def xattr_vs_commit(t: Torture, r: Round) -> None:
    """A mount sets f's summary (setxattr), having read f; Y writes a new version. Both hold."""
    f = r.names[0]
    t.ensure(f, r.no)
    t.settle([f])
    x, y = pair(t.mounts, t.hosts, r.n)
    summary, v = f"xattr of round {r.no}", t.ledger.new(y.name, r.no)
    x_out, y_out, forced = t.race(x, ("setxattr", {"name": f, "key": SUMMARY_XATTR, "value": summary}), ("update",),
                                  record_with(summary=summary), lambda: t.write(y, f, v))
    if t.expect(y, f"write {f}", y_out, "ok"):
        t.put(f, v)
    done = t.expect(x, f"setxattr {f}", x_out, "ok")
    t.check([f], summary={f: summary} if done else None, judge=forced)


@kind
def rename_over_vs_commit(t: Torture, r: Round) -> None:
    """X renames f over g, having read both; Y writes a new version of g. g is f now, and the version
    Y wrote goes with the g it replaced (nothing leaks)."""
    f, g, _ = r.names
    t.ensure(f, r.no)
    t.ensure(g, r.no)
    t.settle([f, g])
    x, y = pair(t.mounts, t.hosts, r.n)
    v = t.ledger.new(y.name, r.no)
    x_out, y_out, forced = t.race(x, ("rename", {"src": f, "dst": g}), ("rename",), None, lambda: t.write(y, g, v))
    if t.expect(y, f"write {g}", y_out, "ok"):
        t.put(g, v)
    if t.expect(x, f"rename {f} {g}", x_out, "ok"):
        t.move(f, g)
    t.check([f, g], judge=forced)


@kind
def exchange_vs_commit(t: Torture, r: Round) -> None:
    """X swaps f and g (RENAME_EXCHANGE), having read both; Y writes a new version of f. g is Y's
    version now, f holds what g held, and nothing leaks."""
    f, g, _ = r.names
    t.ensure(f, r.no)
    t.ensure(g, r.no)
    t.settle([f, g])
    x, y = pair(t.mounts, t.hosts, r.n)
    v = t.ledger.new(y.name, r.no)
    x_out, y_out, forced = t.race(x, ("exchange", {"src": f, "dst": g}), ("exchange",), None,
                                  lambda: t.write(y, f, v))
    if t.expect(y, f"write {f}", y_out, "ok"):
        t.put(f, v)
    if t.expect(x, f"exchange {f} {g}", x_out, "ok"):
        t.model[f], t.model[g] = t.model[g], t.model[f]
    t.check([f, g], judge=forced)


@kind
def truncate_vs_commit(t: Torture, r: Round) -> None:
    """X truncates f by path (published at once), having read f; Y writes a new version. The
    truncate comes after Y's write: f is Y's version, cut (never the older one's bytes)."""
    f = r.names[0]
    t.ensure(f, r.no)
    t.settle([f])
    x, y = pair(t.mounts, t.hosts, r.n)
    v = t.ledger.new(y.name, r.no)
    size = 300 + r.no % 300  # shorter than any version (700 bytes and more), longer than its header
    t.ledger.cut(t.model[f], size)  # what a truncate of the version X read would leave: known, not torn
    x_out, y_out, forced = t.race(x, ("truncate", {"name": f, "size": size}), ("update",), record_with(size=size),
                                  lambda: t.write(y, f, v))
    if t.expect(y, f"write {f}", y_out, "ok"):
        t.put(f, v)
    if t.expect(x, f"truncate {f}", x_out, "ok") and f in t.model:
        t.model[f] = t.ledger.cut(t.model[f], size).tag
    t.check([f], judge=forced)


@kind
def rename_vs_unlink(t: Torture, r: Round) -> None:
    """X renames f to g, having read f; Y removes f. X's source is gone: ENOENT; g never appears."""
    f, g, _ = r.names
    t.ensure(f, r.no)
    t.ensure_absent(g)
    t.settle([f, g])
    x, y = pair(t.mounts, t.hosts, r.n)
    x_out, y_out, forced = t.race(x, ("rename", {"src": f, "dst": g}), ("rename",), None, lambda: t.unlink(y, f))
    if t.expect(y, f"remove {f}", y_out, "ok"):
        t.model.pop(f, None)
    if not t.expect(x, f"rename {f} {g}", x_out, "ENOENT") and x_out.ok:
        t.move(f, g)
    t.check([f, g], judge=forced)


@kind
def unlink_vs_rename(t: Torture, r: Round) -> None:
    """X removes f, having read it; Y renames f to g. X's name is gone: ENOENT, and g stays."""
    f, g, _ = r.names
    t.ensure(f, r.no)
    t.ensure_absent(g)
    t.settle([f, g])
    x, y = pair(t.mounts, t.hosts, r.n)
    x_out, y_out, forced = t.race(x, ("unlink", {"name": f}), ("remove",), None, lambda: t.rename(y, f, g))
    if t.expect(y, f"rename {f} {g}", y_out, "ok"):
        t.move(f, g)
    if not t.expect(x, f"unlink {f}", x_out, "ENOENT") and x_out.ok:
        t.model.pop(f, None)
    t.check([f, g], judge=forced)


@kind
def library_store_vs_commit(t: Torture, r: Round) -> None:
    """Library X stores a new file over f (store() to a filename replaces it), having looked at f;
    Y writes a new version of the f that was there. f is X's file, and Y's version goes with the
    file it replaced (nothing leaks)."""
    f = r.names[0]
    t.ensure(f, r.no)
    t.settle([f])
    x, y = pair(t.libraries, t.hosts, r.n)
    vx, vy = t.ledger.new(x.name, r.no), t.ledger.new(y.name, r.no)
    x_out, y_out, forced = t.race(x, ("store", {"name": f, "data": _b64(vx.data)}), ("insert",), None,
                                  lambda: t.write(y, f, vy))
    if t.expect(y, f"write {f}", y_out, "ok"):
        t.put(f, vy)
    if t.expect(x, f"store {f}", x_out, "ok"):
        t.put(f, vx)
    t.check([f], judge=forced)


def _replace(t: Torture, y: HostProcess, f: str, v: Version, spare: str) -> Outcome:
    """Y puts a new file at ``f`` in one step: the library stores over the name, a mount renames a
    fresh file over it (how editors and rsync save)."""
    if not y.is_mount:
        return t.write(y, f, v, new=True)
    made = t.write(y, spare, v)
    return t.rename(y, spare, f) if made.ok else made


@kind
def rename_vs_replace(t: Torture, r: Round) -> None:
    """X renames f to g, having read f; Y replaces f by a new file. f never stopped existing, so the
    rename succeeds (never ENOENT) and g is Y's file."""
    f, g, spare = r.names
    t.ensure(f, r.no)
    t.ensure_absent(g)
    t.ensure_absent(spare)
    t.settle([f, g, spare])
    x, y = pair(t.mounts, t.hosts, r.n)
    v = t.ledger.new(y.name, r.no)
    x_out, y_out, forced = t.race(x, ("rename", {"src": f, "dst": g}), ("rename",), None,
                                  lambda: _replace(t, y, f, v, spare))
    if t.expect(y, f"replace {f}", y_out, "ok"):
        t.put(f, v)
    if t.expect(x, f"rename {f} {g}", x_out, "ok"):
        t.move(f, g)
    t.check([f, g, spare], judge=forced)


@kind
def unlink_vs_replace(t: Torture, r: Round) -> None:
    """X removes f, having read it; Y replaces f by a new file. f never stopped existing, so the unlink
    succeeds (never ENOENT) and removes Y's file."""
    f, spare, _ = r.names
    t.ensure(f, r.no)
    t.ensure_absent(spare)
    t.settle([f, spare])
    x, y = pair(t.mounts, t.hosts, r.n)
    v = t.ledger.new(y.name, r.no)
    x_out, y_out, forced = t.race(x, ("unlink", {"name": f}), ("remove",), None, lambda: _replace(t, y, f, v, spare))
    if t.expect(y, f"replace {f}", y_out, "ok"):
        t.put(f, v)
    if t.expect(x, f"unlink {f}", x_out, "ok"):
        t.model.pop(f, None)
    t.check([f, spare], judge=forced)


# -- the test


def kinds_wanted() -> list[tuple[str, Callable[[Torture, Round], None]]]:
    """Every kind, or those ``TORTURE_KINDS`` names (comma-separated): one race, to work on it."""
    names = [n.strip() for n in os.environ.get("TORTURE_KINDS", "").split(",") if n.strip()]
    unknown = set(names) - {name for name, _ in KINDS}
    if unknown:
        raise ValueError(f"TORTURE_KINDS: no kind {sorted(unknown)}; the kinds are {[name for name, _ in KINDS]}")
    return [k for k in KINDS if k[0] in names] if names else KINDS


def rounds_wanted(kinds: int) -> int:
    return int(os.environ.get("TORTURE_ROUNDS") or 2 * kinds)


@contextlib.contextmanager
def four_hosts(root: Path, redis: RedisServer, moto: MotoServer) -> Iterator[Torture]:
    """Mounts A and B, library processes C and D, each behind its own Redis proxy, on one store; and an
    observer process that reads the store directly."""
    world = StoreWorld(WorldKind.REDIS_S3, redis=redis, moto=moto).shared(root / "store")
    with contextlib.ExitStack() as stack:
        stack.callback(world.cleanup)
        proxies = {name: stack.enter_context(RedisProxy(redis.port, name)) for name in "ABCD"}
        mounts: list[Mount] = []
        stack.callback(stop_mounts, mounts)
        for name in "AB":
            mounts.append(start_mount(root / name, root / f"{name}-data", world=world.via_redis(proxies[name].url)))
        hosts: list[HostProcess] = []

        def host(name: str, kind: str, argv: list[str], env: dict[str, str]) -> HostProcess:
            made = HostProcess(name, kind, argv, env, root / f"host-{name}.log", HOST_BOUND)
            stack.callback(made.close)
            return made

        for name, mount in zip("AB", mounts):
            hosts.append(host(name, "mount", ["mount", str(mount.user_dir(USER))], dict(os.environ)))
        for name in "CD":
            env = world.via_redis(proxies[name].url).mount_env(
                root / f"{name}-data", ARTIFACT_SANDBOX_ID="app", ARTIFACT_FS_ROOT=str(root / f"{name}-data"))
            hosts.append(host(name, "library", ["library"], env))
        observer_env = world.mount_env(root / "O-data", ARTIFACT_SANDBOX_ID="app", ARTIFACT_FS_ROOT=str(root / "O-data"))
        observer = host("O", "library", ["library"], observer_env)
        audit = Audit(redis, moto, world.prefix(root / "store"))
        stack.callback(audit.close)
        torture = Torture(hosts, observer, proxies, audit)
        stack.callback(torture.close)
        yield torture


@pytest.mark.semantics("S-grace-intent")
def test_four_hosts_on_one_store_lose_nothing(
    redis_server: RedisServer, moto_server: MotoServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kinds = kinds_wanted()
    rounds = rounds_wanted(len(kinds))
    started = time.monotonic()
    with four_hosts(tmp_path, redis_server, moto_server) as torture:
        seen: Counter[str] = Counter()
        for no in range(rounds):
            name, play = kinds[no % len(kinds)]
            torture.run_round(no, name, play, seen[name])
            seen[name] += 1
        torture.verify_all()
        tally = torture.tally
        figures = tally.figures()
        figures["seconds"] = round(time.monotonic() - started, 1)
        figures["redis_commands"] = {name: sum(p.counts[c] for c in p.counts if ":" not in c)
                                     for name, p in torture.proxies.items()}
        if os.environ.get("TORTURE_REPORT"):
            text = json.dumps(figures, indent=1) + "\n" + "\n".join(tally.notes) + "\n"
            Path(os.environ["TORTURE_REPORT"]).write_text(text)
        held = sum(n for what, n in tally.outcomes.items() if what.startswith("held "))
        with capsys.disabled():
            print(f"\ntorture: {rounds} rounds ({held} held at a metadata write), "
                  + ", ".join(f"{m} {tally.total(m)}" for m in METRICS) + f"; {figures['seconds']} s")
        failures = {m: tally.total(m) for m in METRICS if tally.total(m)}
        assert not failures, (f"{failures} in {rounds} rounds; by kind {figures['by_kind']}:\n"
                              + "\n".join(tally.notes[:60]))
