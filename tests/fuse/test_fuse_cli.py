"""The command line: daemon and foreground mounts, refusals with clear messages, clean stops."""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
from pathlib import Path

import pytest
from mounting import EXIT_TIMEOUT, Mount, artifactfs, is_mounted, start_mount, wait_for


def test_daemon_mount_is_ready_when_the_command_returns(tmp_path: Path) -> None:
    mnt, data = tmp_path / "mnt", tmp_path / "data"
    mnt.mkdir()
    done = artifactfs("mount", mnt, "--data-dir", data, "--sandbox", "app")
    try:
        assert done.returncode == 0, done.stderr
        assert sorted(os.listdir(mnt)) == ["sessions", "shared", "users"]  # no wait needed
        (mnt / "shared" / "f.txt").write_text("daemon")
        assert (data / "mount.log").exists()
    finally:
        stopped = artifactfs("umount", mnt)
    assert stopped.returncode == 0, stopped.stderr
    assert not is_mounted(mnt)
    again = start_mount(mnt, data)  # umount returned only after the data dir was free
    try:
        assert (mnt / "shared" / "f.txt").read_text() == "daemon"
    finally:
        again.stop()


@pytest.mark.semantics("S-multimount-one-per-datadir")
def test_a_second_mount_of_one_data_dir_is_refused(mount: Mount, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    for extra in ([], ["--foreground"]):
        done = artifactfs("mount", other, "--data-dir", mount.data_dir, *extra)
        assert done.returncode == 1
        assert "already mounted" in done.stderr and str(mount.mountpoint) in done.stderr, done.stderr
    assert not is_mounted(other)
    (mount / "shared" / "still.txt").write_text("fine")  # the first mount is unharmed
    assert (mount / "shared" / "still.txt").read_text() == "fine"


def test_mount_errors_are_sentences_and_exit_statuses(tmp_path: Path) -> None:
    done = artifactfs("mount", tmp_path / "missing", "--data-dir", tmp_path / "data")
    assert done.returncode == 1 and "does not exist" in done.stderr
    done = artifactfs("umount", tmp_path)
    assert done.returncode == 1 and "is not mounted" in done.stderr
    done = artifactfs("mount", tmp_path, "-o", "writeback_cache")
    assert done.returncode == 2 and "unsupported mount option" in done.stderr
    done = artifactfs("mount", tmp_path, "--map-user", "alice")
    assert done.returncode == 2 and "NAME=UID" in done.stderr
    done = artifactfs("mount", tmp_path, "--sandbox", "no/such")
    assert done.returncode == 2 and "sandbox id" in done.stderr
    done = artifactfs("mount", tmp_path, "--cache-timeout", "-1")
    assert done.returncode == 2 and "--cache-timeout" in done.stderr


@pytest.mark.parametrize(("variable", "accepted"), [
    ("ARTIFACT_PROVIDER", "filesystem, memory, s3"), ("SESSION_PROVIDER", "memory, redis, sqlite"),
])
def test_an_unknown_provider_is_one_line_naming_the_variable(tmp_path: Path, variable: str, accepted: str) -> None:
    for extra in ([], ["--foreground"]):
        done = artifactfs("mount", tmp_path, "--data-dir", tmp_path / "data", *extra,
                          env={**os.environ, variable: "floppy-disk"})
        assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
        assert done.stderr.startswith(f"artifactfs: {variable}='floppy-disk' names no ") and accepted in done.stderr
    assert not is_mounted(tmp_path)


@pytest.mark.parametrize("mount", [{"args": ["--cache-timeout", "7.5"]}], indirect=True)
def test_the_kernel_cache_time_is_a_mount_option(mount: Mount) -> None:
    line = "the kernel caches entries and attributes for 7.5 s"  # logged once the mount answers
    wait_for(lambda: line in mount.log_text(), 10, "the mount's ready line")


@pytest.mark.semantics("S-metrics")
@pytest.mark.parametrize(("option", "served"), [
    ("--serve", "presigned URLs served at http://127.0.0.1:{port}"),
    ("--metrics", "metrics at http://127.0.0.1:{port}/metrics"),
], ids=["serve", "metrics"])
def test_a_port_in_use_is_one_line_and_leaves_no_dead_mount(tmp_path: Path, option: str, served: str) -> None:
    """Regression (issue #11): with the presign port taken, the mount answered "unexpected error" and
    left a dead mount (Transport endpoint is not connected) at its mountpoint. The metrics port too."""
    mnt, data = tmp_path / "mnt", tmp_path / "data"
    mnt.mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for extra in ([], ["--foreground"]):
            done = artifactfs("mount", mnt, "--data-dir", data, option, f"127.0.0.1:{port}", *extra)
            assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
            assert f"cannot listen on 127.0.0.1:{port}" in done.stderr and "in use" in done.stderr, done.stderr
            assert not is_mounted(mnt)
            assert os.listdir(mnt) == []  # a plain empty directory, not a dead mount
    done = artifactfs("mount", mnt, "--data-dir", data, option, f"127.0.0.1:{port}")  # free now
    try:
        assert done.returncode == 0, done.stderr
        assert served.format(port=port) in (data / "mount.log").read_text()
    finally:
        assert artifactfs("umount", mnt).returncode == 0


@pytest.mark.semantics("S-unmount-signal", "S-unmount-staged")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_a_signal_unmounts_and_discards_unpublished_writes(mount: Mount, alice: Path, signum: int) -> None:
    (alice / "kept.txt").write_text("published")
    (alice / "open.txt").write_text("old version")
    writer = open(alice / "open.txt", "r+b")  # noqa: ASYNC230, SIM115 - kept open across the unmount
    writer.write(b"half-written new version")
    writer.flush()  # reached the mount, never closed
    mount.process.send_signal(signum)
    assert mount.process.wait(timeout=EXIT_TIMEOUT) == 0, mount.log_text()
    mount.stopped = True
    assert not is_mounted(mount.mountpoint)
    with pytest.raises(OSError):
        writer.close()  # the mount is gone
    assert "were discarded" in mount.log_text()
    async with mount.store() as store:
        files = {m.filename: m for m in await store.search(user_id="alice")}
        assert await store.read_file(files["kept.txt"].artifact_id) == b"published"
        assert await store.read_file(files["open.txt"].artifact_id) == b"old version"
    assert os.listdir(mount.data_dir / "spool") == []


REPO = Path(__file__).resolve().parents[2]


@pytest.mark.semantics("S-operations")
def test_an_fstab_line_mounts_the_store(tmp_path: Path) -> None:
    """mount(8) runs mount.fuse.artifactfs (linked by scripts/setup) for a fuse.artifactfs line."""
    mnt, data, fstab = tmp_path / "mnt", tmp_path / "data", tmp_path / "fstab"
    mnt.mkdir()
    fstab.write_text(f"{data} {mnt} fuse.artifactfs sandbox=app,noauto,_netdev,nofail,x-systemd.automount 0 0\n")
    done = subprocess.run(["mount", "--fstab", str(fstab), str(mnt)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    try:
        assert is_mounted(mnt) and sorted(os.listdir(mnt)) == ["sessions", "shared", "users"]
        (mnt / "users" / "alice").mkdir()
        (mnt / "users" / "alice" / "f.txt").write_text("through fstab")
    finally:
        assert artifactfs("umount", mnt).returncode == 0
    fstab.write_text(f"{data} {mnt} fuse.artifactfs sandbox=app,bogus=1 0 0\n")
    refused = subprocess.run(["mount", "--fstab", str(fstab), str(mnt)], capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "unsupported option 'bogus=1'" in refused.stderr, refused.stderr
    assert not is_mounted(mnt)


@pytest.mark.semantics("S-operations")
def test_the_systemd_unit_s_commands_mount_and_unmount(tmp_path: Path) -> None:
    """No systemd here: the unit's ExecStart and ExecStop are run as systemd would run them."""
    unit = (REPO / "docs" / "artifactfs.service").read_text()
    commands = {key: value for key, _, value in (line.partition("=") for line in unit.splitlines()) if key.startswith("Exec")}
    mnt, data = tmp_path / "mnt", tmp_path / "data"

    def here(command: str) -> list[str]:
        command = command.replace("/mnt/artifacts", str(mnt)).replace("/var/lib/artifactfs", str(data))
        return shlex.split(command.replace("127.0.0.1:9470", "127.0.0.1:0"))

    subprocess.run(here(commands["ExecStartPre"]), check=True, timeout=60)
    service = subprocess.Popen(here(commands["ExecStart"]), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: is_mounted(mnt), 60, "the service's mount")
        (mnt / "default" / "users" / "alice").mkdir()  # no --sandbox: one directory per sandbox at the root
        assert (mnt / "default" / "users" / "alice").is_dir()
        stop = subprocess.run(here(commands["ExecStop"]), capture_output=True, text=True, timeout=120)
        assert stop.returncode == 0, stop.stderr
        assert service.wait(timeout=60) == 0  # the foreground process ends with its mount
    finally:
        if service.poll() is None:
            service.kill()
            service.wait(timeout=60)
        if is_mounted(mnt):  # killed: nothing unmounted it
            subprocess.run(["fusermount3", "-uz", str(mnt)], check=False, timeout=60)
    assert not is_mounted(mnt)
