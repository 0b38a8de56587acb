"""Requests the mount once never answered, through a real mount and real tools.

Each command runs with a bound (``Mount.run_bounded``): a process stuck on a
FUSE request cannot be killed, so past the bound the connection is aborted
and the test fails instead of the suite hanging.

- ``tail -c 20`` of a 1-2 MiB file, cold: the first read is in the last
  chunk and reaches the end, and the whole-file check waited for chunk 0,
  which nobody fetched (``git clone`` hung on its pack's trailer the same way).
- fsx's ``bigfile`` run, seed 4: a ``mapread`` across a new end of file right
  after the ``msync`` that published it — the same wait.
- Another process (a library on the same data dir) holding SQLite's write
  lock: the loop used to sleep inside SQLite's busy handler, every request
  waiting up to 10 s behind one write.
- A backend that stops answering: the kernel gets EIO within the request
  timeout, and SIGTERM unmounts within a bound, discarding (and saying so)
  what a stopped writer never closed.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from mounting import REPO, Mount, artifactfs, scrape, wait_for
from servers import MotoServer, RedisServer
from worlds import StoreWorld, WorldKind

MiB = 1 << 20
COMMAND_BOUND = 120.0  # seconds; each command here takes a few seconds at most on a loaded machine
FSX_BOUND = 900.0
UNMOUNT_BOUND = 60.0  # SIGTERM to exit, with a request stuck: request grace + clean-up bound, and room


def drop_caches() -> None:
    subprocess.run("sync; echo 3 > /proc/sys/vm/drop_caches", shell=True, check=True)


@pytest.fixture(scope="session")
def fsx_bin() -> Path:
    """fsx, built from ../shared/tools (as scripts/conformance builds it)."""
    out = REPO / ".venv" / "conformance"
    done = subprocess.run(
        ["bash", str(REPO.parent / "shared" / "tools" / "build.sh"), str(out)],
        capture_output=True, text=True, check=False, timeout=1800,
    )
    assert done.returncode == 0, f"building the conformance tools failed:\n{done.stderr[-4000:]}"
    found = re.search(r"^FSX_BIN=(.+)$", done.stdout, re.MULTILINE)
    assert found, done.stdout
    return Path(found.group(1))


@pytest.mark.parametrize("size", [1_061_166, 1_500_000, 2 * MiB + 1])
def test_tail_of_a_cold_file_of_a_few_chunks(mount: Mount, alice: Path, size: int) -> None:
    data = os.urandom(size)
    (alice / "f").write_bytes(data)
    drop_caches()
    done = mount.run_bounded(["tail", "-c", "20", str(alice / "f")], COMMAND_BOUND)
    assert done.returncode == 0, done.stderr
    assert done.stdout == data[-20:]
    assert (alice / "f").read_bytes() == data  # and a whole read after it, checked


@pytest.mark.semantics("S-posix-model")
@pytest.mark.heavy
def test_fsx_bigfile_seed_4(mount: Mount, fsx_bin: Path) -> None:
    """The issue's reproduction, as given: it stopped at op 2506 for good."""
    work = mount.user_dir("root") / "fsx"
    work.mkdir()
    done = mount.run_bounded(
        [fsx_bin, "-d", "-S", "4", "-N", "5000", "-l", "8388608", "-o", "1048576", work / "f"],
        FSX_BOUND, cwd=work,
    )
    assert done.returncode == 0, (done.stdout[-3000:] + done.stderr[-3000:]).decode(errors="replace")


@pytest.fixture(scope="module")
def git_source(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """Local repositories whose single pack is about 1 and 16 MiB (random bytes do not compress)."""
    repos = {}
    for mib in (1, 16):
        repo = tmp_path_factory.mktemp(f"git{mib}") / "src"
        repo.mkdir()
        git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", "-C", str(repo)]
        subprocess.run([*git, "init", "-q"], check=True)
        for index in range(4):
            (repo / f"blob{index}").write_bytes(os.urandom(mib * MiB // 4))
            (repo / "notes.txt").write_text(f"step {index}\n")
            subprocess.run([*git, "add", "-A"], check=True)
            subprocess.run([*git, "commit", "-q", "-m", f"step {index}"], check=True)
        subprocess.run([*git, "gc", "-q"], check=True)
        packs = list((repo / ".git" / "objects" / "pack").glob("*.pack"))
        assert len(packs) == 1 and packs[0].stat().st_size > mib * MiB * 0.9
        repos[mib] = repo
    return repos


@pytest.mark.parametrize("mib", [1, 16])
def test_git_clone_fsck_gc_in_the_mount(mount: Mount, alice: Path, git_source: dict[int, Path], mib: int) -> None:
    clone = alice / "clone"

    def git(*args: str | Path) -> None:
        done = mount.run_bounded(["git", *args], COMMAND_BOUND)
        assert done.returncode == 0, done.stderr.decode(errors="replace")

    git("clone", "-q", git_source[mib], clone)
    drop_caches()
    git("-C", clone, "fsck", "--full", "--strict")
    git("-C", clone, "-c", "gc.auto=0", "gc", "-q", "--prune=now")
    drop_caches()
    git("-C", clone, "fsck", "--full", "--strict")
    for name in ("blob0", "blob3", "notes.txt"):
        assert (clone / name).read_bytes() == (git_source[mib] / name).read_bytes()
    again = alice / "again"  # and out of the mount, from the packs gc wrote there
    git("clone", "-q", clone, again)
    assert (again / "blob2").read_bytes() == (git_source[mib] / "blob2").read_bytes()


# -- a backend that stops answering


def _frozen_s3_world(redis_server: RedisServer, own_moto: MotoServer) -> StoreWorld:
    return StoreWorld(WorldKind.REDIS_S3, redis=redis_server, moto=own_moto)


@pytest.mark.semantics("S-timeout-eio")
@pytest.mark.embedded_only("its own Redis + S3 world, with an S3 endpoint that stops answering")
def test_a_read_from_an_endpoint_that_never_answers_gets_eio_in_time(
    redis_server: RedisServer, own_moto: MotoServer, mount_factory, tmp_path: Path,
) -> None:
    world = _frozen_s3_world(redis_server, own_moto)
    try:
        mount = mount_factory(world=world, args=["--request-timeout", "3"], check_log=False)
        path = mount.user_dir("alice") / "f"
        path.write_bytes(os.urandom(3 * MiB))
        drop_caches()
        own_moto.freeze()  # accepts connections, answers nothing
        started = time.monotonic()
        done = mount.run_bounded(["cat", str(path)], COMMAND_BOUND)
        waited = time.monotonic() - started
        assert done.returncode != 0 and b"Input/output error" in done.stderr, done
        assert waited >= 3
        assert re.search(r"read\(\d+, 0, \d+\): no answer after \d+\.\d s; answered EIO", mount.log_text())
        own_moto.thaw()
        assert mount.run_bounded(["stat", str(path)], COMMAND_BOUND).returncode == 0  # the mount goes on
    finally:
        own_moto.thaw()
    world.cleanup()


STOPS = ["sigterm", "umount --force"]
STOPPED_WRITER = (  # writes without closing, then stops itself: its bytes are never published
    "import os, signal, sys; f = open(sys.argv[1], 'r+b'); f.write(b'NEW' * 1000); f.flush(); "
    "os.kill(os.getpid(), signal.SIGSTOP)"
)


def _stop_in_time(mount: Mount, how: str) -> str:
    """Stop ``mount`` as ``how`` says; it must be gone within ``UNMOUNT_BOUND``. Returns its log."""
    started = time.monotonic()
    if how == "sigterm":
        mount.process.send_signal(signal.SIGTERM)
    else:
        done = artifactfs("umount", "--force", mount.mountpoint, timeout=UNMOUNT_BOUND)
        assert done.returncode == 0, done.stderr
    try:
        code = mount.process.wait(timeout=max(1.0, UNMOUNT_BOUND - (time.monotonic() - started)))
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the mount did not exit within {UNMOUNT_BOUND:.0f} s of {how}\n{mount.log_text()}") from None
    mount.stopped = True
    assert code == 0, mount.log_text()
    wait_for(lambda: not os.path.ismount(mount.mountpoint), 10, "the mountpoint to be free")
    return mount.log_text()


@pytest.mark.semantics("S-unmount-signal", "S-umount-force")
@pytest.mark.embedded_only("its own Redis + S3 world, with an S3 endpoint that stops answering")
@pytest.mark.parametrize("how", STOPS)
def test_unmount_in_time_with_a_request_stuck(
    redis_server: RedisServer, own_moto: MotoServer, mount_factory, how: str,
) -> None:
    world = _frozen_s3_world(redis_server, own_moto)
    try:
        # The default request timeout: SIGTERM must not wait it out. --debug logs each request as it
        # starts, so the test knows the read is in the mount's hands (not just queued in the kernel).
        mount = mount_factory(world=world, check_log=False, args=["--debug"])
        path = mount.user_dir("alice") / "f"
        path.write_bytes(os.urandom(3 * MiB))
        drop_caches()
        requests_before = len(re.findall(r"\bread\(", mount.log_text()))
        own_moto.freeze()
        reader = subprocess.Popen(["cat", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # Stuck in read(2) itself, not passing through the open or a lookup (a D state that ends).
        wait_for(lambda: _in_d_state(reader.pid) and _in_syscall(reader.pid, READ_SYSCALL), 60,
                 "cat to wait on the mount in read(2)")
        wait_for(lambda: len(re.findall(r"\bread\(", mount.log_text())) > requests_before, 60,
                 "the mount to take the read")
        log = _stop_in_time(mount, how)
        assert reader.wait(timeout=30) != 0
        assert re.search(r"read\(.*\): called off at unmount after .*answered EIO", log)
    finally:
        own_moto.thaw()
    world.cleanup()


READ_SYSCALL = {"x86_64": 0, "aarch64": 63}.get(os.uname().machine, 0)


def _in_syscall(pid: int, number: int) -> bool:
    try:
        return Path(f"/proc/{pid}/syscall").read_text().split()[0] == str(number)
    except (FileNotFoundError, IndexError):
        return False


def _in_d_state(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "D"
    except (FileNotFoundError, IndexError):
        return False


@pytest.mark.semantics("S-unmount-staged", "S-umount-force")
@pytest.mark.parametrize("how", STOPS)
def test_unmount_in_time_with_a_writer_stopped(mount_factory, how: str) -> None:
    """A process holding unpublished writes that cannot run: its writes are discarded, and said so."""
    mount = mount_factory()
    alice = mount.user_dir("alice")
    (alice / "f").write_bytes(b"old version\n")
    writer = subprocess.Popen(
        ["python3", "-c", STOPPED_WRITER, str(alice / "f")],
    )
    try:
        wait_for(lambda: Path(f"/proc/{writer.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T", 30,
                 "the writer to stop")
        log = _stop_in_time(mount, how)
        assert "1 file(s) still open with unpublished writes; those writes were discarded" in log
    finally:
        writer.kill()
        writer.wait()
    again = mount_factory("again", data_dir=mount.data_dir)
    assert (again.user_dir("alice") / "f").read_bytes() == b"old version\n"


@pytest.mark.semantics("S-umount-force")
def test_umount_force_of_an_idle_mount_exits_cleanly(mount: Mount, alice: Path) -> None:
    """Was: the SIGTERM came after the detach had ended the request loop, and killed the process mid-clean-up."""
    (alice / "f").write_bytes(b"kept")
    log = _stop_in_time(mount, "umount --force")
    assert "unmounted" in log


@pytest.mark.semantics("S-multimount-library-lock")
@pytest.mark.embedded_only("SQLite's write lock: the embedded store's metadata")
def test_another_process_s_write_lock_holds_up_only_the_writes_that_need_it(mount_factory) -> None:
    mount = mount_factory(args=["--metrics", "127.0.0.1:0"])
    url, alice, bob = mount.metrics_url(), mount.user_dir("alice"), mount.user_dir("bob")
    (bob / "old").write_bytes(b"kept")
    waits = ("artifactfs_metadata_lock_waits_total", ())
    before = scrape(url).get(waits, 0)
    holder = sqlite3.connect(mount.data_dir / "meta.sqlite3", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # what a library process's store() holds while it commits
    try:
        writer = subprocess.Popen(["sh", "-c", f"echo new > {alice / 'new'}"])
        wait_for(lambda: scrape(url).get(waits, 0) > before, COMMAND_BOUND, "the create to wait for the lock")
        # The create is waiting: everything that writes no metadata is answered meanwhile (in another
        # directory: the kernel holds the directory of a pending create locked against listings).
        for argv in (["getfattr", "-n", "user.artifact.sha256", "--only-values", str(bob / "old")],
                     ["cat", str(bob / "old")], ["ls", "-l", str(bob)], ["stat", str(mount.mountpoint / "users")]):
            done = mount.run_bounded(argv, COMMAND_BOUND)
            assert done.returncode == 0, done.stderr
        assert writer.poll() is None, "the create did not wait for the lock"
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert writer.wait(timeout=COMMAND_BOUND) == 0
    assert (alice / "new").read_text() == "new\n"
