"""Everyday tools against a real mount: the bytes, names, modes and times must survive."""

from __future__ import annotations

import hashlib
import os
import socket
import stat
import subprocess
from pathlib import Path

import pytest
from mounting import Mount


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree_digest(root: Path) -> dict[str, tuple]:
    """What a copy must keep: per path, kind, content digest or link target, and mode."""
    seen: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            info = path.lstat()
            if path.is_symlink():
                seen[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                seen[rel] = ("dir", oct(info.st_mode & 0o7777))
            else:
                seen[rel] = ("file", sha(path), oct(info.st_mode & 0o7777))
    return seen


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    """A local tree with the shapes that break copies: empty, tiny, multi-MiB, deep, odd modes, a symlink."""
    src = tmp_path / "sample"
    (src / "docs" / "q4").mkdir(parents=True)
    (src / "empty").mkdir()
    (src / "zero.bin").write_bytes(b"")
    (src / "one.txt").write_bytes(b"x")
    (src / "docs" / "report.txt").write_text("quarterly report\n" * 100)
    (src / "docs" / "q4" / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    (src / "script.sh").write_text("#!/bin/sh\necho hi\n")
    (src / "script.sh").chmod(0o750)
    (src / "secret.key").write_text("k")
    (src / "secret.key").chmod(0o600)
    (src / "link").symlink_to("docs/report.txt")
    old = 1_500_000_000_123_456_789
    for path in src.rglob("*"):
        os.utime(path, ns=(old, old), follow_symlinks=False)
    return src


@pytest.mark.semantics("S-perm-attrs", "S-symlink")
def test_cp_a_keeps_bytes_modes_times_and_links(mount: Mount, alice: Path, sample: Path, tmp_path: Path) -> None:
    subprocess.run(["cp", "-a", str(sample), str(alice / "copy")], check=True)
    assert tree_digest(alice / "copy") == tree_digest(sample)
    for rel in ("one.txt", "docs/q4/big.bin", "script.sh", "docs"):
        assert (alice / "copy" / rel).stat().st_mtime_ns == (sample / rel).stat().st_mtime_ns, rel
    assert os.readlink(alice / "copy" / "link") == "docs/report.txt"
    back = tmp_path / "back"
    subprocess.run(["cp", "-a", str(alice / "copy"), str(back)], check=True)
    assert tree_digest(back) == tree_digest(sample)


def test_cat_and_dd_read_what_was_written(mount: Mount, alice: Path, tmp_path: Path) -> None:
    local = tmp_path / "random.bin"
    local.write_bytes(os.urandom(5 * 1024 * 1024 + 4321))
    mount.sh(f"dd if={local} of=users/alice/dd.bin bs=1M status=none")
    assert mount.sh("cat users/alice/dd.bin | sha256sum").stdout.split()[0] == sha(local)
    # ranged reads and an in-place overwrite with dd, compared with the same on a local file
    part = mount.sh("dd if=users/alice/dd.bin bs=4k skip=300 count=7 status=none | sha256sum").stdout.split()[0]
    assert part == hashlib.sha256(local.read_bytes()[300 * 4096 : 307 * 4096]).hexdigest()
    patch = tmp_path / "patch.bin"
    patch.write_bytes(os.urandom(10000))
    for target in (local, alice / "dd.bin"):
        subprocess.run(["dd", f"if={patch}", f"of={target}", "bs=1000", "seek=77", "conv=notrunc", "status=none"],
                       check=True)
    assert sha(alice / "dd.bin") == sha(local)


def test_tar_round_trip_keeps_checksums(mount: Mount, alice: Path, sample: Path, tmp_path: Path) -> None:
    subprocess.run(["tar", "-C", str(sample), "-cf", str(tmp_path / "in.tar"), "."], check=True)
    (alice / "untarred").mkdir()
    subprocess.run(["tar", "-C", str(alice / "untarred"), "-xf", str(tmp_path / "in.tar")], check=True)
    assert tree_digest(alice / "untarred") == tree_digest(sample)
    subprocess.run(["tar", "-C", str(alice / "untarred"), "-cf", str(tmp_path / "out.tar"), "."], check=True)
    (tmp_path / "out").mkdir()
    subprocess.run(["tar", "-C", str(tmp_path / "out"), "-xf", str(tmp_path / "out.tar")], check=True)
    assert tree_digest(tmp_path / "out") == tree_digest(sample)


def test_rsync_twice_transfers_nothing_the_second_time(mount: Mount, alice: Path, sample: Path) -> None:
    first = subprocess.run(["rsync", "-a", "--stats", f"{sample}/", f"{alice}/synced/"],
                           check=True, capture_output=True, text=True)
    assert "Number of regular files transferred: 6" in first.stdout, first.stdout
    assert tree_digest(alice / "synced") == tree_digest(sample)
    second = subprocess.run(["rsync", "-a", "-i", "--stats", f"{sample}/", f"{alice}/synced/"],
                            check=True, capture_output=True, text=True)
    assert "Number of regular files transferred: 0" in second.stdout, second.stdout
    changed = [line for line in second.stdout.splitlines() if line[:2] in (">f", "cL", "cd", ">d")]
    assert not changed, second.stdout


def test_find_xargs_parallel_sha256sum(mount: Mount, alice: Path, sample: Path) -> None:
    subprocess.run(["cp", "-a", str(sample), str(alice / "tree")], check=True)
    for i in range(40):
        (alice / "tree" / f"n{i:02}.dat").write_bytes(os.urandom(i * 1000))
    expected = {str(p.relative_to(alice / "tree")): sha(p) for p in (alice / "tree").rglob("*")
                if p.is_file() and not p.is_symlink()}
    done = mount.sh("cd users/alice/tree && find . -type f -print0 | xargs -0 -P4 -n3 sha256sum")
    got = {line.split(maxsplit=1)[1][2:]: line.split()[0] for line in done.stdout.splitlines()}
    assert got == expected


@pytest.mark.semantics("S-rename-atomic")
def test_mv_within_a_scope_keeps_the_artifact(mount: Mount, alice: Path) -> None:
    (alice / "dir" / "sub").mkdir(parents=True)
    (alice / "dir" / "sub" / "f.txt").write_text("moving")
    before = os.getxattr(alice / "dir" / "sub" / "f.txt", "user.artifact.id")
    mount.sh("mv users/alice/dir/sub/f.txt users/alice/dir/g.txt && mv users/alice/dir users/alice/renamed")
    moved = alice / "renamed" / "g.txt"
    assert moved.read_text() == "moving"
    assert os.getxattr(moved, "user.artifact.id") == before  # a rename is metadata only
    assert not (alice / "dir").exists()
    assert sorted(p.name for p in (alice / "renamed").iterdir()) == ["g.txt", "sub"]


@pytest.mark.semantics("S-rename-exdev")
def test_mv_across_scopes_copies_and_deletes(mount: Mount, alice: Path) -> None:
    mount.user_dir("bob")
    (alice / "f.bin").write_bytes(os.urandom(200_000))
    digest = sha(alice / "f.bin")
    with pytest.raises(OSError) as refused:
        os.rename(alice / "f.bin", mount / "users/bob/f.bin")
    assert refused.value.errno == 18  # EXDEV: mv falls back to copy + delete
    mount.sh("mv users/alice/f.bin users/bob/f.bin && mv users/bob/f.bin shared/f.bin")
    assert sha(mount / "shared/f.bin") == digest
    assert not (alice / "f.bin").exists() and not (mount / "users/bob/f.bin").exists()


def test_appends_with_shell_redirection(mount: Mount, alice: Path, tmp_path: Path) -> None:
    mount.sh("for i in 1 2 3; do echo line $i >> users/alice/log.txt; done")
    assert (alice / "log.txt").read_text() == "line 1\nline 2\nline 3\n"
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(3 * 1024 * 1024 + 5))
    mount.sh(f"cat {big} > users/alice/big.bin && echo tail >> users/alice/big.bin")
    assert sha(alice / "big.bin") == hashlib.sha256(big.read_bytes() + b"tail\n").hexdigest()


@pytest.mark.semantics("S-truncate")
@pytest.mark.parametrize("size", [0, 100, 5 * 1024 * 1024 + 3])
def test_truncate_shrinks_and_grows(mount: Mount, alice: Path, size: int) -> None:
    data = os.urandom(1024 * 1024)
    (alice / "t.bin").write_bytes(data)
    mount.sh(f"truncate -s {size} users/alice/t.bin")
    expected = data[:size] + b"\0" * max(0, size - len(data))
    assert (alice / "t.bin").stat().st_size == size
    assert sha(alice / "t.bin") == hashlib.sha256(expected).hexdigest()
    assert os.getxattr(alice / "t.bin", "user.artifact.sha256").decode() == hashlib.sha256(expected).hexdigest()


def test_grep_r_and_sort(mount: Mount, alice: Path, tmp_path: Path) -> None:
    words = [f"{w}\n" for w in ("pear", "apple", "fig", "apple pie", "kiwi", "banana")] * 50
    (alice / "fruit").mkdir()
    for i in range(5):
        (alice / "fruit" / f"f{i}.txt").write_text("".join(words[i::5]))
    found = mount.sh("grep -r -c apple users/alice/fruit | sort").stdout
    assert found == "".join(f"users/alice/fruit/f{i}.txt:{''.join(words[i::5]).count('apple')}\n" for i in range(5))
    mount.sh("cat users/alice/fruit/*.txt | sort > users/alice/sorted.txt")
    assert (alice / "sorted.txt").read_text() == "".join(sorted(words))
    mount.sh("sort -o users/alice/fruit/f0.txt users/alice/fruit/f0.txt")  # in place, as sort -o allows
    assert (alice / "fruit" / "f0.txt").read_text() == "".join(sorted(words[0::5]))


def test_mkdir_p_twenty_levels_then_rm_rf(mount: Mount, alice: Path) -> None:
    deep = "/".join(f"d{i}" for i in range(20))
    mount.sh(f"mkdir -p users/alice/{deep} && echo bottom > users/alice/{deep}/leaf.txt")
    assert (alice / deep / "leaf.txt").read_text() == "bottom\n"
    assert mount.sh("find users/alice/d0 -type d | wc -l").stdout.strip() == "20"
    mount.sh("rm -rf users/alice/d0")
    assert list(alice.iterdir()) == []


def test_rm_rf_of_a_populated_tree(mount: Mount, alice: Path, sample: Path) -> None:
    subprocess.run(["cp", "-a", str(sample), str(alice / "tree")], check=True)
    mount.sh("rm -rf users/alice/tree")
    assert not (alice / "tree").exists()
    assert os.listdir(alice) == []


@pytest.mark.semantics("S-symlink")
def test_ln_s_links_resolve(mount: Mount, alice: Path) -> None:
    (alice / "target.txt").write_text("pointed at")
    mount.sh("cd users/alice && ln -s target.txt link && ln -s missing dangling && mkdir d && ln -s ../target.txt d/up")
    assert os.readlink(alice / "link") == "target.txt"
    assert (alice / "link").read_text() == "pointed at"
    assert (alice / "d" / "up").read_text() == "pointed at"
    assert (alice / "dangling").is_symlink() and not (alice / "dangling").exists()
    assert mount.sh("ls -l users/alice/link").stdout.rstrip().endswith("link -> target.txt")
    mount.sh("rm users/alice/link")
    assert (alice / "target.txt").read_text() == "pointed at"


@pytest.mark.semantics("S-special")
def test_fifos_devices_and_sockets_are_made_listed_archived_and_removed(mount: Mount, alice: Path, tmp_path: Path) -> None:
    """Regression (issue #13): mkfifo, mknod and bind(2) of a unix socket answered EPERM."""
    os.mkfifo(alice / "pipe", 0o640)
    os.mknod(alice / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(alice / "disk", 0o600 | stat.S_IFBLK, os.makedev(7, 0))
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(alice / "sock"))
    kinds = {name: stat.S_IFMT(os.lstat(alice / name).st_mode) for name in ("pipe", "null", "disk", "sock")}
    assert kinds == {"pipe": stat.S_IFIFO, "null": stat.S_IFCHR, "disk": stat.S_IFBLK, "sock": stat.S_IFSOCK}
    assert os.lstat(alice / "null").st_rdev == os.makedev(1, 3)
    with pytest.raises(PermissionError):  # the mount is nodev: a device node found in the store opens nothing
        os.open(alice / "null", os.O_RDONLY)
    assert mount.sh("find users/alice -type p").stdout.split() == ["users/alice/pipe"]
    # A FIFO in the mount is a pipe between processes of this host, kept by the kernel.
    writer = subprocess.Popen(["bash", "-c", f"echo through the pipe > {alice / 'pipe'}"])
    assert (alice / "pipe").read_text() == "through the pipe\n"
    assert writer.wait(timeout=60) == 0
    mount.sh(f"tar -cf {tmp_path / 'specials.tar'} -C users/alice pipe null disk")
    listed = subprocess.run(["tar", "-tvf", tmp_path / "specials.tar"], capture_output=True, text=True, check=True).stdout
    assert [line[0] for line in listed.splitlines()] == ["p", "c", "b"]
    os.rename(alice / "pipe", alice / "pipe2")
    assert stat.S_ISFIFO(os.lstat(alice / "pipe2").st_mode)
    mount.sh("rm users/alice/pipe2 users/alice/null users/alice/disk users/alice/sock")
    assert os.listdir(alice) == []


def link_groups(root: Path) -> list[tuple[str, ...]]:
    """The paths below ``root`` that are one inode, as groups of two or more."""
    by_inode: dict[int, list[str]] = {}
    for path in sorted(root.rglob("*")):
        if not path.is_dir() or path.is_symlink():
            by_inode.setdefault(path.lstat().st_ino, []).append(str(path.relative_to(root)))
    return sorted(tuple(paths) for paths in by_inode.values() if len(paths) > 1)


@pytest.mark.semantics("S-hardlink")
def test_cp_al_rsync_h_link_dest_and_tar_keep_hard_links(mount: Mount, alice: Path, sample: Path, tmp_path: Path) -> None:
    """Regression (issue #13): link(2) was EPERM, so cp -al failed and rsync -H and tar copied bytes twice."""
    os.link(sample / "docs" / "q4" / "big.bin", sample / "big-again.bin")
    expected = [("big-again.bin", "docs/q4/big.bin")]
    # cp -al: a tree of links into a tree in the mount
    subprocess.run(["cp", "-a", str(sample), str(alice / "orig")], check=True)
    assert link_groups(alice / "orig") == expected
    subprocess.run(["cp", "-al", str(alice / "orig"), str(alice / "snap")], check=True)
    assert (alice / "snap" / "one.txt").stat().st_ino == (alice / "orig" / "one.txt").stat().st_ino
    assert (alice / "orig" / "docs" / "q4" / "big.bin").stat().st_nlink == 4
    assert tree_digest(alice / "snap") == tree_digest(sample)
    # rsync -H keeps the pair a pair; --link-dest links what did not change to the previous copy
    subprocess.run(["rsync", "-aH", f"{sample}/", f"{alice}/synced/"], check=True)
    assert link_groups(alice / "synced") == expected
    subprocess.run(["rsync", "-a", f"--link-dest={alice}/synced", f"{sample}/", f"{alice}/next/"], check=True)
    assert (alice / "next" / "one.txt").stat().st_ino == (alice / "synced" / "one.txt").stat().st_ino
    # tar stores the second name as a link, and makes it one again
    subprocess.run(["tar", "-C", str(alice / "orig"), "-cf", str(tmp_path / "l.tar"), "."], check=True)
    (alice / "untarred").mkdir()
    subprocess.run(["tar", "-C", str(alice / "untarred"), "-xf", str(tmp_path / "l.tar")], check=True)
    assert link_groups(alice / "untarred") == expected
    # removing names one by one keeps the bytes until the last
    digest = sha(sample / "big-again.bin")
    for copy in ("orig", "snap", "synced"):
        (alice / copy / "docs" / "q4" / "big.bin").unlink()
    assert sha(alice / "orig" / "big-again.bin") == digest
    assert (alice / "orig" / "big-again.bin").stat().st_nlink == 2  # orig's and snap's


@pytest.mark.semantics("S-hardlink")
def test_git_clone_of_a_local_repository_links_its_objects(mount: Mount, alice: Path) -> None:
    repo = alice / "repo"
    repo.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", "-c", "init.defaultBranch=main"]
    subprocess.run([*git, "init", "-q", str(repo)], check=True)
    (repo / "a.txt").write_text("hello\n")
    subprocess.run([*git, "-C", str(repo), "add", "a.txt"], check=True)
    subprocess.run([*git, "-C", str(repo), "commit", "-q", "-m", "one"], check=True)
    subprocess.run([*git, "clone", "-q", "--local", str(repo), str(alice / "clone")], check=True)
    objects = [p for p in (alice / "clone" / ".git" / "objects").rglob("*") if p.is_file() and len(p.parent.name) == 2]
    assert objects and all(p.stat().st_nlink == 2 for p in objects)  # linked, not copied
    assert (alice / "clone" / "a.txt").read_text() == "hello\n"
    subprocess.run([*git, "-C", str(alice / "clone"), "fsck"], check=True, capture_output=True)
