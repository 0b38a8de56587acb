"""Listing and searching: which artifacts a session, a user or a sandbox holds."""

from __future__ import annotations

from typing import Any

from core.api import cursors, rules
from core.api.base import StoreBase
from core.api.cursors import CursorKind, FilesCursor, SearchCursor
from core.backends.meta.base import SearchQuery, search_matches
from core.errors import InvalidCursorError, NameTooLongError
from core.models import (
    ArtifactMetadata,
    ArtifactPage,
    GridKey,
    Scope,
)
from core.nodes import Node
from core.tree import grid
from core.tree.pages import Bound


class ListingApi(StoreBase):
    """What is stored where: a session's files, search across scopes, and grid keys.

    Each call costs round trips per page of results, never per result
    (issue #9): a session's files are one walk of its tree, and a search's
    filenames one read of all their directories.
    """

    async def _session_files(self, session_id: str) -> list[ArtifactMetadata]:
        ns = await self._ready()
        grid.validate_id(session_id, "session id")
        root = await ns.session_root(self.sandbox_id, session_id)
        if not ns.visible(root):
            return []
        found = [self._described(node, path) for path, node in await ns.files_below(root)]  # type: ignore[arg-type]
        return sorted(found, key=lambda m: m.filename)

    async def _files_page(
        self, session_id: str, prefix: str, limit: int, after: str | None = None
    ) -> tuple[list[ArtifactMetadata], bool]:
        """Up to ``limit`` of a session's files in filename order, after ``after``; and whether that was all.

        Reads about ``limit`` records whatever the session holds (issue #12),
        where :meth:`_session_files` reads them all.
        """
        ns = await self._ready()
        grid.validate_id(session_id, "session id")
        prefix = rules.path_prefix(prefix)
        root = await ns.session_root(self.sandbox_id, session_id)
        if not ns.visible(root):
            return [], True
        page = await ns.files_page(root, after=Bound(after, False) if after else None,  # type: ignore[arg-type]
                                   prefix=prefix, limit=limit)
        return [self._described(node, path) for path, node in page.files], page.complete

    async def list_by_session(self, session_id: str, limit: int | None = None) -> list[ArtifactMetadata]:
        if limit is None:
            return await self._session_files(session_id)
        return (await self._files_page(session_id, "", rules.a_limit(limit)))[0]

    async def list_files(self, session_id: str, prefix: str = "", limit: int | None = None) -> list[ArtifactMetadata]:
        if limit is None:
            prefix = rules.path_prefix(prefix)
            return [m for m in await self._session_files(session_id) if m.filename.startswith(prefix)]
        return (await self._files_page(session_id, prefix, rules.a_limit(limit)))[0]

    async def list_page(
        self, session_id: str, *, prefix: str = "", limit: int = 100, cursor: str | None = None
    ) -> ArtifactPage:
        """One page of a session's files (those whose filename starts with ``prefix``), in filename
        order; pass ``next_cursor`` back to read the next. Costs what the page holds, not the session."""
        limit = rules.page_size(limit)
        prefix = rules.path_prefix(prefix)
        query = cursors.query_digest(CursorKind.FILES, sandbox=self.sandbox_id, session=session_id, prefix=prefix)
        after = None
        if cursor is not None:
            position = cursors.decode(cursor, query)
            if not isinstance(position, FilesCursor):
                raise InvalidCursorError("the cursor belongs to a search, not a listing")
            after = position.after
        items, complete = await self._files_page(session_id, prefix, limit, after)
        if complete or not items:
            return ArtifactPage(items=items, next_cursor=None)
        # The page ends at its last file a cursor can hold: one nested too deep is answered by a page
        # that starts just before it, with the cursor of the file before it (none: it cannot be paged to).
        for end in range(len(items), 0, -1):
            last = cursors.files_cursor(query, items[end - 1].filename)
            if last is not None:
                return ArtifactPage(items=items[:end], next_cursor=last)
        raise NameTooLongError(f"{items[0].filename[:80]!r}... is nested too deep to page past; list_files answers it")

    async def get_directory_contents(
        self, session_id: str, directory_prefix: str = "", limit: int | None = None
    ) -> list[ArtifactMetadata]:
        """The files directly inside one directory of a session (not below it)."""
        prefix = directory_prefix.rstrip("/")
        prefix = f"{prefix}/" if prefix else ""
        found = [
            m for m in await self._session_files(session_id)
            if m.filename.startswith(prefix) and "/" not in m.filename[len(prefix):]
        ]
        return rules.limited(found, limit)

    async def search(
        self, *, user_id: str | None = None, scope: Scope | str | None = None, mime_prefix: str | None = None,
        meta_filter: dict[str, Any] | None = None, session_id: str | None = None, limit: int | None = None,
    ) -> list[ArtifactMetadata]:
        query = self._search_query(user_id, scope, mime_prefix, meta_filter, session_id)
        if limit is None:
            return await self._search_all(query)
        wanted = rules.a_limit(limit)
        found: list[ArtifactMetadata] = []
        after: tuple[int, str] | None = None
        while len(found) < wanted:  # pages until the limit is met: cost follows the results, not the space
            items, after = await self._search_page(query, after, min(wanted - len(found), rules.MAX_PAGE))
            found += items
            if after is None:
                break
        return found[:wanted]

    async def search_page(
        self, *, user_id: str | None = None, scope: Scope | str | None = None, mime_prefix: str | None = None,
        meta_filter: dict[str, Any] | None = None, session_id: str | None = None, limit: int = 100,
        cursor: str | None = None,
    ) -> ArtifactPage:
        """One page of :meth:`search`'s results, in (stored_at, artifact_id) order; pass ``next_cursor``
        back for the next. A page may hold fewer than ``limit`` (meta fields are tested on a bounded
        stretch of the space per page): only ``next_cursor`` None says the search is done."""
        limit = rules.page_size(limit)
        query = self._search_query(user_id, scope, mime_prefix, meta_filter, session_id)
        digest = cursors.query_digest(CursorKind.SEARCH, **query.model_dump(mode="json"))
        after = None
        if cursor is not None:
            position = cursors.decode(cursor, digest)
            if not isinstance(position, SearchCursor):
                raise InvalidCursorError("the cursor belongs to a listing, not a search")
            after = (position.stored_at_ns, position.artifact_id)
        items, end = await self._search_page(query, after, limit)
        next_cursor = None if end is None else cursors.encode(
            SearchCursor(query=digest, stored_at_ns=end[0], artifact_id=end[1]))
        return ArtifactPage(items=items, next_cursor=next_cursor)

    def _search_query(
        self, user_id: str | None, scope: Scope | str | None, mime_prefix: str | None,
        meta_filter: dict[str, Any] | None, session_id: str | None,
    ) -> SearchQuery:
        scope = rules.scope(scope) if scope is not None else None
        if user_id is not None:
            grid.validate_id(user_id, "user id")
        if session_id is not None:
            grid.validate_id(session_id, "session id")
        return SearchQuery(sandbox_id=self.sandbox_id, scope=scope, session_id=session_id, user_id=user_id,
                           mime_prefix=rules.mime_prefix(mime_prefix), meta=rules.meta(meta_filter, self.ns.limits))

    async def _described_all(self, nodes: list[Node]) -> list[ArtifactMetadata]:
        return [self._described(node, name) for node, name in zip(nodes, await self.ns.filenames(nodes))]

    async def _search_all(self, query: SearchQuery) -> list[ArtifactMetadata]:
        ns = await self._ready()
        now = ns.now()
        nodes = await ns.search(self.sandbox_id, scope=query.scope, session_id=query.session_id,
                                user_id=query.user_id)
        chosen = [node for node in nodes if search_matches(node, query, now)]
        chosen.sort(key=lambda n: (n.crtime_ns, n.artifact.artifact_id))  # type: ignore[union-attr]  # the pages' order
        return await self._described_all(chosen)

    async def _search_page(
        self, query: SearchQuery, after: tuple[int, str] | None, limit: int
    ) -> tuple[list[ArtifactMetadata], tuple[int, str] | None]:
        """A page of matches and the position to continue after (None: the search is done)."""
        ns = await self._ready()
        page = await ns.search_page(query, after=after, limit=limit)
        now = ns.now()
        items = await self._described_all([node for node in page.nodes if search_matches(node, query, now)])
        return items, page.last if page.more else None

    def parse_grid_key(self, key: str) -> GridKey:
        return grid.parse_grid_key(key)

    def get_canonical_prefix(self, session_id: str) -> str:
        return grid.scope_prefix(self.sandbox_id, Scope.SESSION, grid.validate_id(session_id, "session id")) + "/"

    def generate_artifact_key(self, session_id: str, artifact_id: str) -> str:
        return grid.grid_key(self.sandbox_id, Scope.SESSION, grid.validate_id(session_id, "session id"),
                             grid.validate_id(artifact_id, "artifact id"))
