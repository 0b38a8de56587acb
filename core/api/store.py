"""``ArtifactStore``: the public async API, with the reference API's names.

Policy lives in this package (who may do what, sessions, TTL defaults,
argument checks), one module per concern; tree and blob mechanics live in
:mod:`core.tree.namespace`. Works when awaited from trio and from asyncio:
everything below uses anyio, never one loop's API.
"""

from __future__ import annotations

from core.api.files import FilesApi
from core.api.listing import ListingApi
from core.api.maintenance import MaintenanceApi
from core.api.namespaces import NamespaceApi
from core.api.presign import PresignApi
from core.api.sessions import SessionsApi
from core.api.status import StatusApi
from core.infra.metrics import instrumented


@instrumented  # every public call timed and counted (artifact_operation_duration_seconds, ...)
class ArtifactStore(NamespaceApi, FilesApi, ListingApi, SessionsApi, PresignApi, StatusApi, MaintenanceApi):
    """An artifact store over one blob backend and one metadata backend.

    With no arguments it keeps everything in memory (the reference's zero
    configuration). ``admin=True`` grants the capability to write the shared
    (sandbox) scope. See :class:`core.api.base.StoreBase` for the arguments.
    """
