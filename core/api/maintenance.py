"""``gc`` and ``fsck`` (issue #11): reclaim what nothing needs any more, and check what is kept."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable

from core.api.base import StoreBase
from core.errors import ArtifactCorruptedError, ArtifactNotFoundError, ArtifactStoreError
from core.models import FsckReport, GcReport, Problem, ProblemKind, Usage
from core.nodes import ROOT_INO, Node, account_of

Progress = Callable[[int, "int | None"], None]  # (done, total if known): a long command's bar


class MaintenanceApi(StoreBase):
    """Garbage collection and checking over the whole store (every sandbox, every scope)."""

    async def gc(self, *, dry_run: bool = False, progress: Progress | None = None) -> GcReport:
        """Remove expired artifacts and sessions, blobs past their grace period that no record
        names, and expired uploads (with the backend's incomplete multipart uploads older than a
        day), and queue orphan blobs (named by nothing, queued nowhere) for the next gc after the
        grace period; ``dry_run`` only counts them. ``progress`` is told the blobs listed so far.

        Never what a live record, an open upload or a reader within the grace period still
        needs: each step is the store's own collection, conditional on the records as they are
        when it acts, so it is safe beside writers and from every host at once.
        """
        ns = await self._ready()
        report = GcReport(dry_run=dry_run)
        if dry_run:
            report.expired = await ns.expired_now()
            report.blobs = await ns.due_blobs()
            report.uploads = await self.transfers.expired_uploads()
            report.orphans = await ns.queue_orphans(dry_run=True, progress=progress)
            return report
        expired = Usage()
        await ns.collect_expired(expired)
        report.expired = expired
        report.uploads = await self.transfers.collect_expired()
        report.blobs = await ns.collect_garbage()  # what the steps above queued may be due already
        report.orphans = await ns.queue_orphans(progress=progress)  # after: a blob gc just deleted is no orphan
        return report

    async def fsck(
        self, *, verify_data: bool = False, repair: bool = False, progress: Progress | None = None
    ) -> FsckReport:
        """Check the whole store; with ``repair``, fix what is safe to fix and say so in each problem.

        Every record's signature (the walk reads each one), records no
        directory reaches (orphans), every file's blob (present in the blob
        store; with ``verify_data`` its bytes against the record's size and
        SHA-256), every usage counter against the records it counts, and
        every directory's subdirectory count. Each problem comes back with
        the node's path (``<sandbox>/<scope>/<owner>/<filename>``).
        ``progress`` is told the files checked so far, of how many.

        ``repair`` moves orphans to ``lost+found`` of their scope and sets
        counters from the records, each step conditional on what it read,
        so it is safe beside writers: what changed meanwhile is left, and
        said. A missing or damaged blob is only reported: no copy exists
        to restore it from, and dropping the record would lose its name.
        """
        ns = await self._ready()
        report = FsckReport()
        try:
            nodes = await ns.meta.subtree(ROOT_INO)
            orphans = await ns.meta.orphans()
            for orphan in orphans:  # what hangs below one is reached through it: counted, checked
                nodes += [orphan, *await ns.meta.subtree(orphan.ino)]
        except ArtifactCorruptedError as exc:
            report.problems.append(Problem(where="/", kind=ProblemKind.UNREADABLE, detail=str(exc)))
            return report
        nodes = list({node.ino: node for node in nodes}.values())
        report.nodes = len(nodes)
        files = [node for node in nodes if node.is_file and node.artifact is not None]
        report.files = len(files)
        paths = dict(zip((node.ino for node in files), await ns.filenames(files)))

        def where(node: Node) -> str:
            space = node.space
            owner = f"{space.sandbox_id}/{space.scope.value}/{space.owner or ''}".rstrip("/") if space else "?"
            return f"{owner}/{paths.get(node.ino, node.name)}"

        for orphan in orphans:
            report.problems.append(Problem(
                where=where(orphan), kind=ProblemKind.ORPHAN, ino=orphan.ino,
                detail=f"inode {orphan.ino}: its directory, inode {orphan.parent}, does not hold it",
            ))
        stored = {key async for key in ns.blobs.keys()}
        counted: dict[str, Usage] = defaultdict(Usage)
        for checked, node in enumerate(files, 1):
            if progress is not None:
                progress(checked, len(files))
            art = node.artifact
            assert art is not None and node.space is not None
            account = account_of(node)  # a copy sharing a blob charged elsewhere counts nowhere
            if account is not None:
                counted[account].add(1, node.size)
            if art.blob_key is not None and art.blob_key not in stored:
                report.problems.append(Problem(where=where(node), kind=ProblemKind.MISSING_BLOB, detail=art.blob_key))
            elif verify_data:
                try:
                    async for _ in ns.read_chunks(node, 1 << 20, verify=True):
                        pass
                    report.verified += 1
                except (ArtifactCorruptedError, ArtifactNotFoundError) as exc:
                    report.problems.append(Problem(where=where(node), kind=ProblemKind.DAMAGED_BLOB, detail=str(exc)))
        for key, usage in sorted({**{k: Usage() for k in counted}, **await ns.meta.usages()}.items()):
            if usage != counted[key]:
                report.problems.append(Problem(
                    where=key, kind=ProblemKind.USAGE,
                    detail=f"counts {usage.files} files, {usage.bytes} bytes; the records hold "
                           f"{counted[key].files} files, {counted[key].bytes} bytes",
                ))
        subdirs = Counter(node.parent for node in nodes if node.is_dir)
        for node in nodes:
            if node.is_dir and node.subdirs != subdirs[node.ino]:
                report.problems.append(Problem(
                    where=f"inode {node.ino} ({node.name})", kind=ProblemKind.SUBDIRS, ino=node.ino,
                    detail=f"counts {node.subdirs} subdirectories, holds {subdirs[node.ino]}",
                ))
        if repair:
            await self._repair(report.problems, {orphan.ino: orphan for orphan in orphans})
        return report

    async def _repair(self, problems: list[Problem], orphans: dict[int, Node]) -> None:
        """Fix orphans first (moving one changes no counter, and a count after it sees it placed)."""
        ns = await self._ready()
        order = {ProblemKind.ORPHAN: 0, ProblemKind.USAGE: 1, ProblemKind.SUBDIRS: 2}
        for problem in sorted((p for p in problems if p.kind in order), key=lambda p: order[p.kind]):
            try:
                if problem.kind is ProblemKind.ORPHAN:
                    assert problem.ino is not None
                    problem.repair = f"moved to {await ns.rehome(orphans[problem.ino])}"
                elif problem.kind is ProblemKind.USAGE:
                    now = await ns.recount_usage(problem.where)
                    if now is None:
                        problem.repair = "left: the account changed while it was counted; run fsck again"
                        continue
                    problem.repair = f"set to {now.files} files, {now.bytes} bytes"
                else:
                    assert problem.ino is not None
                    problem.repair = f"set to {await ns.meta.recount_subdirs(problem.ino)}"
                problem.repaired = True
            except ArtifactStoreError as exc:
                problem.repair = f"left: {exc}"
