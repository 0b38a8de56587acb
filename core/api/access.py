"""Who may read or change what (DESIGN §7): the rules, in one place."""

from __future__ import annotations

from pydantic import BaseModel

from core.errors import AccessDeniedError
from core.models import Scope
from core.nodes import Space


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
        if who.session_id is not None and who.session_id == space.session_id:
            return True
        return who.session_id is None and who.user_id is not None and who.user_id == space.user_id
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


def _describe(space: Space) -> str:
    if space.scope is Scope.SESSION:
        return f"session {space.session_id}"
    if space.scope is Scope.USER:
        return f"user {space.user_id}"
    return "the shared scope"
