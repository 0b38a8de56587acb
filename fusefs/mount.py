"""The life of a mount: claim the data dir, mount, serve, unmount cleanly.

``mount()`` returns only once the filesystem answers (in daemon mode the
parent waits for the child to say so), so ``artifactfs mount X && ls X``
works, and a failure is an exit status and a sentence, not a hang.

One mount per data dir: the mount holds an ``flock`` on ``mount.lock`` for
its whole life. The library never takes that lock, so applications keep
using the same store (SQLite in WAL mode, blobs by key) next to the mount.

SIGTERM or SIGINT stop the request loop and unmount within a bound, even
with a request stuck in a backend or a file held open by a stopped process:
requests still running are answered ``EIO`` (:mod:`fusefs.watchdog`), and
the clean-up has ``SHUTDOWN_BOUND`` seconds. Writes that were published are
in the store; writes still staged in a file nobody closed are discarded (the
old version stays, as after a crash), never half-applied, and the log says so.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import os
import secrets
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pyfuse3
import trio

from core.backends.meta import changes
from core.config import backends_of, build_backends, build_change_feed, build_transfers, checked
from core.errors import ArtifactStoreError, ConfigurationError
from core.infra.clock import Clock, SystemClock
from core.infra.fdlimit import raise_fd_limit
from core.infra.private import new_private_dir, private_dir, private_file
from core.nodes import ROOT_INO
from core.settings import Settings
from core.transfers import monitor
from core.transfers.service import listen as listen_presigned
from core.transfers.service import serve as serve_presigned
from core.tree.namespace import Namespace
from fusefs import heap
from fusefs.attrs import CACHE_SECONDS
from fusefs.callers import Callers
from fusefs.datadir import FS_TYPE, LOG_FILE, SPOOL_DIR, DataDirLock, MountError
from fusefs.errnos import trace
from fusefs.handed import Handed
from fusefs.invalidation import FOLLOWED_CACHE_SECONDS, SHORT_CACHE_SECONDS, ChangeFollower
from fusefs.operations import Operations
from fusefs.options import MountOptions

log = logging.getLogger("artifactfs.mount")

READY_TIMEOUT = 30.0
READ_AHEAD_KB = 1024


def settings_for(options: MountOptions, settings: Settings) -> Settings:
    """The store a mount of ``options`` serves: ``settings`` (from the environment) on its data dir and sandbox."""
    update: dict[str, object] = {"fs_root": options.data_dir}
    if options.sandbox is not None:
        update["sandbox_id"] = options.sandbox
    return checked(settings.model_copy(update=update))


def _check_mountpoint(path: Path) -> None:
    try:
        os.stat(path)
        os.statvfs(path)  # a dead FUSE mount may still answer stat from the kernel's cache; statfs asks it
    except FileNotFoundError:
        raise MountError(f"the mountpoint {path} does not exist (mkdir -p {path})") from None
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            raise MountError(f"{path} is a dead mount; clear it with: artifactfs umount {path}") from None
        raise MountError(f"cannot use {path} as mountpoint: {exc.strerror}") from None
    if not os.path.isdir(path):
        raise MountError(f"the mountpoint {path} is not a directory")
    if os.path.ismount(path):
        raise MountError(f"{path} is already a mount point; unmount it first (artifactfs umount {path})")


def _fuse_options(options: MountOptions) -> set[str]:
    # default_permissions: the kernel checks mode bits and ownership for every caller (fast,
    # exact POSIX semantics); fusefs.callers adds the scope rules on top.
    fuse = set(pyfuse3.default_options) | {f"subtype={FS_TYPE}"}
    data_dir = str(options.data_dir)
    safe = not any(c in data_dir for c in ",\\ \t\n")
    fuse.add(f"fsname={FS_TYPE}:{data_dir}" if safe else f"fsname={FS_TYPE}")  # lets `umount` find the data dir
    if options.allow_other:
        fuse.add("allow_other")
    return fuse


def _setup_logging(data_dir: Path, *, foreground: bool, debug: bool) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    fmt = logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
    file_handler = logging.FileHandler(private_file(data_dir / LOG_FILE))  # names and paths: owner-only
    file_handler.setFormatter(fmt)
    root.addHandler(file_handler)
    if foreground:
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(fmt)
        root.addHandler(console)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    logging.getLogger("pyfuse3").addFilter(_reply_to_no_one)
    trace.enabled = debug


def _reply_to_no_one(record: logging.LogRecord) -> bool:
    """pyfuse3 logs a refused reply as an error; refused with ENOENT, the kernel no longer waited
    for it (the request was interrupted, or a lazily unmounted mount's last file closed): not ours
    to alarm anyone with."""
    if record.levelno >= logging.ERROR and "fuse_reply_* failed with No such file or directory" in record.getMessage():
        record.levelno, record.levelname = logging.INFO, "INFO"
    return True


# -- serving


class _Notify:
    """How the serving process reports ready or failed: to a waiting parent, or to no one."""

    def __init__(self, pipe_fd: int | None = None) -> None:
        self._fd = pipe_fd

    def _send(self, message: str) -> None:
        if self._fd is not None:
            try:
                os.write(self._fd, message.encode())
            finally:
                os.close(self._fd)
                self._fd = None

    def ready(self) -> None:
        self._send("ok\n")

    def failed(self, message: str) -> None:
        self._send(f"error: {message}\n")


async def _serve(options: MountOptions, settings: Settings, notify: _Notify, clock: Clock) -> None:
    blobs, meta = build_backends(settings)
    await blobs.open()
    await meta.open()
    feed = build_change_feed(settings, meta)  # other hosts' changes, on a shared store (fusefs.invalidation)
    try:
        if feed is not None:
            await feed.open()  # before the mount answers: nothing committed after that is missed
        ns = Namespace(meta, blobs, clock, settings.limits)
        # Stamped on what FUSE requests change (the kernel learns of it in the reply) and on what is
        # made before the mount answers (no kernel holds any of it): the follower skips only that.
        replying = secrets.token_hex(6)
        with changes.replying(replying):
            box = await ns.sandbox(settings.sandbox_id)
        spool_dir = options.data_dir / SPOOL_DIR
        shutil.rmtree(spool_dir, ignore_errors=True)  # staged writes of a mount that died; we hold the lock
        new_private_dir(spool_dir)
        callers = Callers(
            ns, enforce=options.allow_other, mount_uid=os.getuid(), admin_uids=options.admin_uids,
            user_uids=options.user_uids,
        )
        transfers = build_transfers(ns, settings)  # user.artifact.presign: served by --serve or `artifactfs serve`
        ops = Operations(
            ns, root_ino=box.ino if options.sandbox else ROOT_INO, sandbox_id=settings.sandbox_id,
            callers=callers, data_dir=options.data_dir, spool_dir=spool_dir,
            presigner=transfers, request_timeout=options.request_timeout, per_uid=settings.mount_uid_requests,
            blobs_on_disk=backends_of(settings)[0].uses_data_dir,
        )
        # A followed store drops the kernel's copies on notice, so they may live long (fusefs.handed).
        cache_seconds = options.cache_timeout
        if cache_seconds is None:
            cache_seconds = CACHE_SECONDS if feed is None else FOLLOWED_CACHE_SECONDS
        ops.attrs.cache_seconds = cache_seconds
        follower = None
        if feed is not None:
            handed = Handed(ops.inodes.root_ino, cache_seconds, min(cache_seconds, SHORT_CACHE_SECONDS))
            ops.attrs.handed = handed
            follower = ChangeFollower(feed, ops.inodes, handed, callers.changed_elsewhere, ops.listings, replying)
            handed.followed = follower.followed
            await follower.check_quiet()  # before the mount answers: a writer without notices is known
        # Addresses are taken before mounting: a port in use must not leave a dead mount.
        listener = monitor_listener = None
        try:
            if options.serve is not None:
                listener = listen_presigned(transfers.settings, *options.serve_address)
            if options.metrics is not None:
                monitor_listener = monitor.listen(options.metrics)
            pyfuse3.init(ops, str(options.mountpoint_abs), _fuse_options(options))
        except (ConfigurationError, RuntimeError) as exc:
            for sock in (listener, monitor_listener):
                if sock is not None:
                    sock.close()
            if isinstance(exc, ConfigurationError):
                raise MountError(str(exc)) from None
            raise MountError(f"the kernel refused the mount at {options.mountpoint_abs} ({exc})") from None
        stopped_by_us = False
        ready = False
        try:
            async with trio.open_nursery() as nursery:
                ops.start(nursery)
                if follower is not None:
                    nursery.start_soon(follower.run)

                async def serve_requests() -> None:
                    # Enough workers that one uid's queue (fusefs.fairness) leaves room for the others' requests.
                    with changes.replying(replying):  # request tasks inherit it; --serve and sweeps do not
                        await pyfuse3.main(max_tasks=settings.mount_max_tasks)
                    if follower is not None:
                        follower.stop()  # no kernel call may reach a session that is ending
                    nursery.cancel_scope.cancel()  # unmounted: stop the signal watcher and background work

                async def watch_signals() -> None:
                    nonlocal stopped_by_us
                    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
                        async for signum in signals:
                            log.info("%s: unmounting", signal.Signals(signum).name)
                            stopped_by_us = True
                            pyfuse3.terminate()
                            ops.watchdog.stop()  # requests still running are answered now, not awaited
                            return

                nursery.start_soon(serve_requests)
                nursery.start_soon(watch_signals)
                if listener is not None:
                    url = await nursery.start(functools.partial(serve_presigned, transfers, sock=listener))
                    log.info("presigned URLs served at %s", url)
                if monitor_listener is not None:
                    await nursery.start(monitor.serve, ns.health, monitor_listener)
                device = await _wait_answering(options.mountpoint_abs)
                _widen_readahead(device)
                log.info("mounted %s at %s (the kernel caches entries and attributes for %g s)",
                         options.data_dir, options.mountpoint_abs, cache_seconds)
                ready = True
                log.debug("the collector leaves the %d objects of start-up alone", heap.settle())
                notify.ready()
        finally:
            with trio.CancelScope(shield=True):
                await ops.shutdown()
                if follower is not None:
                    await follower.join()
            # A mount that never became ready is taken down with us: a failed start leaves no dead mount.
            pyfuse3.close(unmount=stopped_by_us or not ready)
            log.info("unmounted %s", options.mountpoint_abs)
    finally:
        if feed is not None:
            await feed.close()
        await meta.close()
        await blobs.close()


async def _wait_answering(mountpoint: Path) -> int:
    """Return the mount's device number once it answers a stat: the kernel mount is there and we serve it.

    The stat runs in a thread, as must any look at the mountpoint from this process: on the
    event loop it waits for an answer only the event loop can give.
    """
    with trio.move_on_after(READY_TIMEOUT) as waited:
        answer = await trio.to_thread.run_sync(os.stat, mountpoint, abandon_on_cancel=True)
    if waited.cancelled_caught:
        raise MountError(f"the mount at {mountpoint} did not answer within {READY_TIMEOUT:.0f} s")
    return answer.st_dev


def _widen_readahead(device: int) -> None:
    """Let the kernel read ahead ``READ_AHEAD_KB`` at a time from this mount (best effort, root only).

    The kernel gives a new FUSE mount 128 KiB of readahead, so a sequential
    reader costs one request per 128-256 KiB; with 1 MiB it is one per MiB,
    the largest a request can be, and the per-request cost of a Python
    filesystem is paid a quarter as often.
    """
    knob = Path(f"/sys/class/bdi/{os.major(device)}:{os.minor(device)}/read_ahead_kb")
    try:
        knob.write_text(f"{READ_AHEAD_KB}\n")
    except OSError as exc:
        log.info("kernel readahead left at its default (%s: %s)", knob, exc.strerror)


_M_ARENA_MAX = -8  # glibc mallopt parameter
MALLOC_ARENAS = 1


def _cap_malloc_arenas(malloc_arena_max: str | None) -> None:
    """Keep the allocator from growing one arena per busy worker thread.

    Blob reads land in 1 MiB buffers that worker threads allocate. glibc gives
    busy threads arenas of their own and keeps freed buffers in each, so the
    mount's resident memory grew by some 25 MiB per file being read instead of
    the ~12 MiB its readahead holds. One arena keeps it near that
    (tests/fuse/test_fuse_large.py); Python's small objects do not use it, so
    threads hardly contend for its lock. An explicit ``MALLOC_ARENA_MAX`` wins
    (glibc applied it at start-up; ``malloc_arena_max`` says it was set).
    """
    if malloc_arena_max:
        return
    try:
        ctypes.CDLL(None).mallopt(_M_ARENA_MAX, MALLOC_ARENAS)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


def _serve_until_unmounted(options: MountOptions, settings: Settings, notify: _Notify, clock: Clock) -> int:
    _cap_malloc_arenas(settings.malloc_arena_max)  # before any worker thread exists
    raise_fd_limit()  # the soft default (1,024) is for select(); users' files and --serve's sockets share it
    try:
        trio.run(_serve, options, settings_for(options, settings), notify, clock)
    except (MountError, ArtifactStoreError) as exc:
        log.error("mount failed: %s", exc)
        notify.failed(str(exc))
        return 1
    except BaseException:
        log.exception("the mount failed")
        notify.failed(f"unexpected error; see {options.data_dir / LOG_FILE}")
        return 1
    return 0


# -- the commands


def mount(
    options: MountOptions, settings: Settings, *, say: Callable[[str], None], clock: Clock | None = None
) -> int:
    """Mount; returns the exit status. ``say`` prints a line for the user.

    ``settings`` name the store (:meth:`Settings.from_env` with
    :data:`fusefs.defaults.COMMAND_DEFAULTS`); the mount puts it on ``options.data_dir``.
    ``clock`` is the time the store's TTLs run on (default: the system's).
    """
    clock = clock or SystemClock()
    try:
        settings = checked(settings)  # an unknown provider is one line here, not a failed daemon
    except ArtifactStoreError as exc:
        say(f"artifactfs: {exc}")
        return 1
    mountpoint = options.mountpoint_abs
    options = options.model_copy(update={"mountpoint": mountpoint, "data_dir": options.data_dir.absolute()})
    try:
        _check_mountpoint(mountpoint)
        private_dir(options.data_dir)
        lock = DataDirLock(options.data_dir)
        lock.acquire(mountpoint)
    except MountError as exc:
        say(f"artifactfs: {exc}")
        return 1
    except OSError as exc:
        say(f"artifactfs: cannot use the data dir {options.data_dir}: {exc.strerror}")
        return 1
    _setup_logging(options.data_dir, foreground=options.foreground, debug=options.debug)
    if options.foreground:
        try:
            return _serve_until_unmounted(options, settings, _Notify(), clock)
        finally:
            lock.release()
    return _daemonize(options, settings, clock, lock, say)


def _daemonize(
    options: MountOptions, settings: Settings, clock: Clock, lock: DataDirLock, say: Callable[[str], None]
) -> int:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid > 0:  # the parent: wait for the child's word
        os.close(write_end)
        lock.forget()
        with os.fdopen(read_end, "rb") as pipe:
            answer = pipe.read().decode(errors="replace").strip()
        if answer == "ok":
            return 0
        if answer.startswith("error: "):
            say(f"artifactfs: {answer[len('error: '):]}")
        else:
            say(f"artifactfs: the mount process died while mounting; see {options.data_dir / LOG_FILE}")
        os.waitpid(pid, 0)
        return 1
    # the child: a session of its own, no terminal, a log file for stderr once running
    os.close(read_end)
    code = 1
    try:
        os.setsid()
        os.chdir("/")
        lock.record_pid()
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        os.close(devnull)
        notify = _Notify(write_end)
        original_ready = notify.ready

        def ready() -> None:  # stderr goes to the log once the parent is gone
            original_ready()
            logfile = os.open(options.data_dir / LOG_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            os.dup2(logfile, 2)
            os.close(logfile)

        notify.ready = ready  # type: ignore[method-assign]
        code = _serve_until_unmounted(options, settings, notify, clock)
    finally:
        lock.release()
        os._exit(code)
