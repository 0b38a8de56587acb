"""Who may read or change what (DESIGN §7): the rules, in one place.

A session is its owner's (issue #16). Its owner is the user it belongs to,
or, for a session of no user, whoever holds its id. A caller naming another
user never reaches it, whatever session id it holds: not to read, store,
update or delete. A session a checked uid (``allow_other``, not an admin)
made through the mount (``mkdir sessions/<id>``) is that uid's: the library
stores into it only for the user it belongs to, so a uid cannot make an id
ahead of the user who will use it and catch what that user stores. The
library and the mount both decide here.
"""

from __future__ import annotations

from pydantic import BaseModel

from core.errors import AccessDeniedError, InvalidArgumentError
from core.models import Scope
from core.nodes import MADE_BY_UID, Node, Space


class Principal(BaseModel):
    """The caller an operation runs for.

    ``trusted`` is the application itself calling without naming a session
    or user (the reference API's ``store.retrieve(file_id)``): it reaches any
    session or user artifact, but writes to the shared scope still need
    ``admin``.
    """

    session_id: str | None = None
    user_id: str | None = None
    admin: bool = False
    trusted: bool = False


def may_read(who: Principal, space: Space) -> bool:
    if space.scope is Scope.SANDBOX or who.admin or who.trusted:
        return True
    if space.scope is Scope.SESSION:
        return _session_owner(who, space)
    return who.user_id is not None and who.user_id == space.user_id


def _session_owner(who: Principal, space: Space) -> bool:
    if who.user_id is not None and space.user_id is not None and who.user_id != space.user_id:
        return False  # another user's session, whatever id the caller holds
    if who.session_id is not None:
        return who.session_id == space.session_id
    return who.user_id is not None and who.user_id == space.user_id


def may_write(who: Principal, space: Space) -> bool:
    if space.scope is Scope.SANDBOX:
        return who.admin
    return may_read(who, space)


def check_read(who: Principal, space: Space, what: str) -> None:
    if not may_read(who, space):
        raise AccessDeniedError(f"{what}: access denied to {_describe(space)}")


def check_write(who: Principal, space: Space, what: str) -> None:
    if not may_write(who, space):
        if space.scope is Scope.SANDBOX:
            raise AccessDeniedError(f"{what}: the shared scope is written by admin operations only")
        raise AccessDeniedError(f"{what}: access denied to {_describe(space)}")


def check_session_join(who: Principal, root: Node, what: str) -> None:
    """May a library caller store into existing session ``root``?"""
    assert root.space is not None
    check_write(who, root.space, what)
    made_by = (root.session_meta or {}).get(MADE_BY_UID)
    owner = root.space.user_id
    if made_by is not None and not who.admin and (owner is None or who.user_id != owner):
        raise AccessDeniedError(f"{what}: {_describe(root.space)} was made through the mount by uid {made_by}")


def check_batch_user(batch_user: str | None, item_user: object, index: int) -> None:
    """A batch stores for one user: an item cannot name another."""
    if item_user is None or item_user == batch_user:
        return
    if batch_user is None:
        raise InvalidArgumentError(f"batch item {index}: names user {item_user!r:.60}; pass user_id to store_batch")
    raise AccessDeniedError(f"batch item {index}: names user {item_user!r:.60}, the batch is {batch_user!r}'s")


def _describe(space: Space) -> str:
    if space.scope is Scope.SESSION:
        return f"session {space.session_id}"
    if space.scope is Scope.USER:
        return f"user {space.user_id}"
    return "the shared scope"
