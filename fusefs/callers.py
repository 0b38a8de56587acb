"""Who is calling, by uid, and what the store's access rules let them do.

Mode bits are the kernel's job (the mount uses ``default_permissions``); this
module adds the scope rules of DESIGN §7 on top, the way a security module
adds rules to the classic ones:

- root, the uid that mounted, and every ``--admin-uid`` are admins: they reach
  every scope and write ``shared/``;
- ``users/<u>`` is for the uids ``--map-user u=UID`` names;
- ``sessions/<s>`` is for the uid that created it, or a uid mapped to the
  session's user;
- ``shared/`` is readable by everyone, written by admins.

The decision itself is :mod:`core.api.access`'s, fed a :class:`Principal` built
for the scope at hand. Without ``allow_other`` the kernel lets only the
mounting user in, so nothing here runs.
"""

from __future__ import annotations

from collections import OrderedDict

from core.api.access import Principal, check_read, check_write
from core.errors import AccessDeniedError
from core.models import Scope
from core.nodes import Node, NodeRole, Space
from core.tree.namespace import Namespace

_SESSION_CACHE = 4096


class Callers:
    def __init__(
        self, ns: Namespace, *, enforce: bool, mount_uid: int, admin_uids: frozenset[int], user_uids: dict[str, int]
    ) -> None:
        self.ns = ns
        self.enforce = enforce
        self.mount_uid = mount_uid
        self._admins = frozenset({0, mount_uid}) | admin_uids
        self._uid_of_user = dict(user_uids)
        self._names: dict[int, tuple[str, ...]] = {}
        for name, uid in sorted(user_uids.items()):
            self._names[uid] = (*self._names.get(uid, ()), name)
        # session root ino -> the uid that created it; session roots keep their ino for life
        self._creators: OrderedDict[int, int] = OrderedDict()

    def is_admin(self, uid: int) -> bool:
        return uid in self._admins

    def claimant(self, uid: int) -> int | None:
        """``uid``, if a session it makes must be marked as its own (core.api.access.check_session_join).

        Only a uid the mount checks can squat: without ``allow_other`` only
        the mounting user gets in, and admins reach every session anyway.
        """
        return uid if self.enforce and uid not in self._admins else None

    def uid_of_user(self, user_id: str | None) -> int | None:
        return None if user_id is None else self._uid_of_user.get(user_id)

    def session_user(self, uid: int) -> str | None:
        """The user a session made by ``uid`` belongs to: its one mapped user, if it has exactly one."""
        names = self._names.get(uid, ())
        return names[0] if len(names) == 1 else None

    def _principal(self, uid: int, space: Space, creator: int | None) -> Principal:
        names = self._names.get(uid, ())
        user_id = space.user_id if space.user_id in names else (names[0] if names else None)
        session_id = space.session_id if space.scope is Scope.SESSION and creator == uid else None
        return Principal(session_id=session_id, user_id=user_id, admin=False)

    async def _creator(self, space: Space) -> int | None:
        assert space.session_id is not None
        root = await self.ns.session_root(space.sandbox_id, space.session_id)
        if root is None:
            return None
        uid = self._creators.get(root.ino)
        if uid is None:
            uid = self._creators[root.ino] = root.uid
            if len(self._creators) > _SESSION_CACHE:
                self._creators.popitem(last=False)
        return uid

    def forget_session(self, node: Node) -> None:
        """A session root was removed or changed owner."""
        self._creators.pop(node.ino, None)

    def changed_elsewhere(self, ino: int) -> None:
        """Another process changed inode ``ino``: if it is a session root, its owner is read afresh."""
        self._creators.pop(ino, None)

    async def check(self, uid: int, node: Node, *, write: bool) -> None:
        """May ``uid`` read (or change) ``node`` and what is directly inside it?"""
        if not self.enforce or uid in self._admins:
            return
        space = node.space
        if space is None:
            return  # the fixed upper tree: readable by all, and the tree refuses writes itself
        if space.scope is Scope.SANDBOX and not write:
            return
        creator = None
        if space.scope is Scope.SESSION:
            creator = node.uid if node.role is NodeRole.SCOPE_ROOT else await self._creator(space)
        who = self._principal(uid, space, creator)
        (check_write if write else check_read)(who, space, "mount")

    def check_new_scope(self, uid: int, holder: Node, name: str) -> None:
        """``mkdir`` of a sandbox, a session or a user directory."""
        if not self.enforce or uid in self._admins or holder.role is NodeRole.SESSIONS:
            return
        if holder.role is NodeRole.USERS and name in self._names.get(uid, ()):
            return
        raise AccessDeniedError(f"uid {uid} may not create {name!r} here")
