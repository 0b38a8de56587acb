"""The reference README's examples (shared/reference/002, the newest edition), run as tests.

Each snippet is copied unchanged apart from the import line (``from core import ...``
instead of ``from chuk_artifacts import ...``) and emoji in ``print`` strings that
the reference copy carries mis-encoded. Names a snippet uses without defining
them (``pdf_bytes``, ``session_id`` ...) are defined just before it. After each
snippet, assertions check that it did what its comments promise.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from core import AccessDeniedError, ArtifactStore, ArtifactStoreError, Scope, StreamDownloadRequest, StreamUploadRequest

ENV = ("ARTIFACT_PROVIDER", "ARTIFACT_FS_ROOT", "ARTIFACT_SANDBOX_ID", "SESSION_PROVIDER", "ARTIFACT_SQLITE_PATH",
       "ARTIFACT_BUCKET")


@pytest.fixture(params=["memory", "vfs-sqlite"])
def provider(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """``ArtifactStore()`` with no arguments, configured by the reference's environment variables."""
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ARTIFACT_PROVIDER", request.param)
    monkeypatch.setenv("ARTIFACT_FS_ROOT", str(tmp_path / "artifacts"))
    monkeypatch.chdir(tmp_path)  # the streaming examples read and write files in the working directory
    return request.param


@pytest.fixture
def persistent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """For examples that open a new ``ArtifactStore()`` for each step: the steps must share storage."""
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ARTIFACT_PROVIDER", "vfs-sqlite")
    monkeypatch.setenv("ARTIFACT_FS_ROOT", str(tmp_path / "artifacts"))
    monkeypatch.chdir(tmp_path)


# -- Quick Start


async def test_quick_start(provider: str) -> None:
    # ---- reference 002, lines 190-215 ----
    from core import ArtifactStore

    async with ArtifactStore() as store:
        # Store a file (session auto-created from user_id)
        file_id = await store.store(
            data=b"Hello, world!",
            mime="text/plain",
            summary="greeting",
            filename="hello.txt",
            user_id="alice",  # Auto-generates session like "sess-alice-123-abc"
            ttl=900  # 15 minutes (omit to use default)
        )

        # Generate secure download URL (15 minutes)
        url = await store.presign_short(file_id)

        # Read file content
        text = await store.read_file(file_id, as_text=True)
        assert text == "Hello, world!"

        # Update the file
        await store.update_file(
            file_id,
            data=b"Hello, updated world!",
            summary="Updated greeting"
        )
    # ---- end of snippet ----
    assert text == "Hello, world!" and "://" in url
    if provider != "memory":  # a persistent store shows the update after the snippet closed it
        async with ArtifactStore() as store:
            meta = await store.metadata(file_id)
            assert (meta.summary, meta.version, meta.user_id) == ("Updated greeting", 2, "alice")
            assert await store.read_file(file_id, as_text=True) == "Hello, updated world!"


def test_testing_section_quick_test(provider: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The "Testing" section's complete program; it runs its own asyncio loop."""
    # ---- reference 002, lines 1623-1644 ----
    # Quick test
    import asyncio

    from core import ArtifactStore

    async def test_basic():
        async with ArtifactStore() as store:
            # Store (session auto-created from user_id)
            file_id = await store.store(
                data=b"test",
                mime="text/plain",
                summary="Test",
                user_id="test"  # Session auto-generated
            )

            # Verify
            assert await store.exists(file_id)
            content = await store.read_file(file_id)
            assert content == b"test"

            print("✅ Tests passed!")

    asyncio.run(test_basic())
    # ---- end of snippet ----
    assert "Tests passed!" in capsys.readouterr().out


# -- Core Concepts: grid paths and sessions


async def test_grid_paths(store: ArtifactStore) -> None:
    data = b"grid example"
    # ---- reference 002, lines 346-358 ----
    # Grid paths are generated automatically
    session_id = "example-session"
    file_id = await store.store(data, mime="text/plain", summary="Test", session_id=session_id)

    # Inspect the grid path
    metadata = await store.metadata(file_id)
    print(metadata.key)  # grid/my-app/session-abc123/artifact-def456

    # Parse any grid path
    parsed = store.parse_grid_key(metadata.key)
    print(f"Sandbox: {parsed.sandbox_id}")
    print(f"Session: {parsed.session_id}")
    print(f"Artifact: {parsed.artifact_id}")
    # ---- end of snippet ----
    assert metadata.key == f"grid/{store.sandbox_id}/sessions/example-session/{file_id}"
    assert (parsed.sandbox_id, parsed.session_id, parsed.artifact_id) == (store.sandbox_id, session_id, file_id)


async def test_session_options(store: ArtifactStore) -> None:
    user = SimpleNamespace(id="alice")
    organization = SimpleNamespace(id="acme")
    tenant_id, workflow_id = "t1", "wf9"
    # ---- reference 002, lines 369-375 ----
    # Pass user_id → gets auto-generated session like "sess-alice-123-abc"
    file_id = await store.store(
        data=b"Alice's private data",
        mime="text/plain",
        summary="Private file",
        user_id="alice"  # Session auto-created
    )
    # ---- end of snippet ----
    assert (await store.metadata(file_id)).session_id.startswith("sess-alice-")
    # ---- reference 002, lines 380-388 ----
    # Use your own session ID format
    session_id = f"user_{user.id}"  # Or any format you prefer

    file_id = await store.store(
        data=b"Alice's private data",
        mime="text/plain",
        summary="Private file",
        session_id=session_id  # Custom ID used directly
    )
    # ---- end of snippet ----
    assert (await store.metadata(file_id)).session_id == "user_alice"
    # ---- reference 002, lines 394-404 ----
    # User-based sessions
    session_id = f"user_{user.id}"

    # Organization-based sessions
    session_id = f"org_{organization.id}"

    # Multi-tenant sessions (tenant + user isolation)
    session_id = f"tenant_{tenant_id}_user_{user.id}"

    # Workflow-based sessions (temporary workspaces)
    session_id = f"workflow_{workflow_id}"
    # ---- end of snippet ----
    assert session_id == "workflow_wf9"


async def test_session_isolation(store: ArtifactStore, capsys: pytest.CaptureFixture[str]) -> None:
    # ---- reference 002, lines 410-432 ----
    # Alice and Bob each get their own sessions
    alice_file = await store.store(
        data=b"Alice's private data",
        mime="text/plain",
        summary="Private file",
        user_id="alice"  # Separate session
    )

    bob_file = await store.store(
        data=b"Bob's private data",
        mime="text/plain",
        summary="Private file",
        user_id="bob"  # Different session
    )

    # Cross-session operations are blocked for security
    alice_meta = await store.metadata(alice_file)
    bob_meta = await store.metadata(bob_file)

    try:
        await store.copy_file(alice_file, target_session_id=bob_meta.session_id)
    except ArtifactStoreError:
        print("🔒 Cross-session access denied!")  # Security enforced
    # ---- end of snippet ----
    assert "Cross-session access denied!" in capsys.readouterr().out
    assert alice_meta.session_id != bob_meta.session_id
    assert await store.list_by_session(bob_meta.session_id) == [bob_meta]


# -- Storage Scopes


async def test_session_scoped_storage(store: ArtifactStore) -> None:
    """``session_id`` is defined between the snippet's two statements, from the artifact just stored.

    The snippet stores with ``user_id`` (which makes a new session) and reads with a
    ``session_id`` it never defines; only that new session may read the artifact, and
    its id is known only once the store returns.
    """
    # ---- reference 002, lines 454-465 ----
    # Default behavior - no changes needed
    file_id = await store.store(
        data=b"Temporary work file",
        mime="text/plain",
        summary="Work in progress",
        user_id="alice",
        # scope="session" is default
        ttl=900  # 15 minutes
    )

    # Access requires same session
    session_id = (await store.metadata(file_id)).session_id  # [defined here: see the note above]
    data = await store.retrieve(file_id, session_id=session_id)
    # ---- end of snippet ----
    assert data == b"Temporary work file"
    assert (await store.metadata(file_id)).scope is Scope.SESSION


async def test_user_scoped_storage(store: ArtifactStore) -> None:
    pdf_bytes = b"%PDF-1.7 Q4 sales"
    await store.store(b"%PDF q3", mime="application/pdf", user_id="alice", scope="user", meta={"quarter": "Q3"})
    await store.store(b"notes", mime="text/plain", user_id="alice", scope="user", meta={"quarter": "Q4"})
    await store.store(b"%PDF bob", mime="application/pdf", user_id="bob", scope="user", meta={"quarter": "Q4"})
    # ---- reference 002, lines 473-501 ----
    # Store persistently for user
    document_id = await store.store(
        data=pdf_bytes,
        mime="application/pdf",
        summary="Q4 Sales Report",
        user_id="alice",
        scope="user",  # Persists across sessions!
        ttl=86400 * 365  # 1 year (or None for unlimited)
    )

    # Retrieve from any session - just need user_id
    data = await store.retrieve(document_id, user_id="alice")

    # Search all user's artifacts
    alice_files = await store.search(user_id="alice", scope="user")

    # Filter by MIME type
    alice_pdfs = await store.search(
        user_id="alice",
        scope="user",
        mime_prefix="application/pdf"
    )

    # Filter by custom metadata
    q4_docs = await store.search(
        user_id="alice",
        scope="user",
        meta_filter={"quarter": "Q4"}
    )
    # ---- end of snippet ----
    assert data == pdf_bytes
    assert len(alice_files) == 3 and all(m.user_id == "alice" and m.scope is Scope.USER for m in alice_files)
    assert document_id in {m.artifact_id for m in alice_pdfs} and {m.mime for m in alice_pdfs} == {"application/pdf"}
    assert len(alice_pdfs) == 2  # the Q3 PDF and the report; not the notes, not Bob's
    assert [m.meta for m in q4_docs] == [{"quarter": "Q4"}] and q4_docs[0].mime == "text/plain"  # the notes


async def test_sandbox_scoped_storage(admin_store: ArtifactStore) -> None:
    store = admin_store  # "admin operation": the shared scope is written with the admin capability
    template_bytes = b"\x89PNG logo"
    # ---- reference 002, lines 509-522 ----
    # Store shared template (admin operation)
    template_id = await store.store(
        data=template_bytes,
        mime="image/png",
        summary="Company logo",
        scope="sandbox",
        ttl=None  # No expiry
    )

    # Anyone in sandbox can read
    logo_data = await store.retrieve(template_id)  # No user/session needed

    # Search shared resources
    templates = await store.search(scope="sandbox")
    # ---- end of snippet ----
    assert logo_data == template_bytes
    assert [t.artifact_id for t in templates] == [template_id]


async def test_access_control(store: ArtifactStore, capsys: pytest.CaptureFixture[str]) -> None:
    # ---- reference 002, lines 540-556 ----
    # Alice stores a private document
    doc_id = await store.store(
        data=b"Private data",
        mime="text/plain",
        summary="Alice's private doc",
        user_id="alice",
        scope="user"
    )

    # Alice can access it ✅
    data = await store.retrieve(doc_id, user_id="alice")

    # Bob cannot access it ❌
    try:
        data = await store.retrieve(doc_id, user_id="bob")
    except AccessDeniedError:
        print("Access denied!")
    # ---- end of snippet ----
    assert data == b"Private data"
    assert capsys.readouterr().out == "Access denied!\n"


async def test_mcp_server_with_persistent_storage(provider: str) -> None:
    pptx_bytes = b"PK\x03\x04 slides"

    class RemotionServer:
        async def render(self, deck: bytes) -> str:
            return "video-" + hashlib.sha256(deck).hexdigest()[:8]

    remotion_server = RemotionServer()
    # ---- reference 002, lines 562-583 ----
    from core import ArtifactStore

    store = ArtifactStore()

    # Session 1: User creates a presentation
    deck_id = await store.store(
        data=pptx_bytes,
        mime="application/vnd.ms-powerpoint",
        summary="Q4 Sales Deck",
        user_id="alice",
        scope="user",  # Persists beyond session!
        ttl=None  # No expiry
    )

    # Session 2: Different MCP server retrieves and processes
    # (works because it's user-scoped, not session-scoped!)
    deck_data = await store.retrieve(deck_id, user_id="alice")
    video_id = await remotion_server.render(deck_data)

    # Session 3: User finds all their work across all sessions
    artifacts = await store.search(user_id="alice", scope="user")
    print(f"Found {len(artifacts)} files")
    # ---- end of snippet ----
    try:
        assert deck_data == pptx_bytes
        assert [a.artifact_id for a in artifacts] == [deck_id] and video_id.startswith("video-")
    finally:
        await store.close()


async def test_migration_to_user_scope(store: ArtifactStore) -> None:
    data = b"migrating"
    # ---- reference 002, lines 593-602 ----
    # Before (session-scoped, ephemeral)
    file_id = await store.store(data, mime="text/plain", user_id="alice")

    # After (user-scoped, persistent)
    file_id = await store.store(
        data, mime="text/plain",
        user_id="alice",
        scope="user",  # Add this line
        ttl=None  # Optional: no expiry
    )
    # ---- end of snippet ----
    meta = await store.metadata(file_id)
    assert (meta.scope, meta.expires_at) == (Scope.USER, None)


# -- Common Recipes


async def test_batch_store(store: ArtifactStore, capsys: pytest.CaptureFixture[str]) -> None:
    catalog_id = "spring-2025"
    image1_bytes = b"\xff\xd8\xff jpeg"
    # ---- reference 002, lines 664-679 ----
    # Create session for catalog
    session_id = f"catalog_{catalog_id}"

    files = [
        {
            "data": image1_bytes,
            "mime": "image/jpeg",
            "filename": f"products/img-{i}.jpg",
            "summary": f"Product image {i}",
            "meta": {"product_id": "LPT-001"}
        }
        for i in range(10)
    ]

    file_ids = await store.store_batch(files, session_id=session_id)
    print(f"Uploaded {len([id for id in file_ids if id])} images")
    # ---- end of snippet ----
    assert capsys.readouterr().out == "Uploaded 10 images\n"
    assert [m.filename for m in await store.list_by_session(session_id)] == sorted(f["filename"] for f in files)


async def test_directory_like_operations(store: ArtifactStore, capsys: pytest.CaptureFixture[str]) -> None:
    doc_id = await store.store(b"# readme", filename="docs/README.md", session_id="session-123")
    await store.store(b"img", filename="images/a.png", session_id="session-123")
    # ---- reference 002, lines 685-698 ----
    # List files in a session
    files = await store.list_by_session("session-123")
    for f in files:
        print(f"{f.filename}: {f.bytes} bytes")

    # Get directory contents
    docs = await store.get_directory_contents("session-123", "docs/")
    images = await store.get_directory_contents("session-123", "images/")

    # Copy within same session (security enforced)
    backup_id = await store.copy_file(
        doc_id,
        new_filename="docs/README_backup.md"
    )
    # ---- end of snippet ----
    assert [d.filename for d in docs] == ["docs/README.md"] and [i.filename for i in images] == ["images/a.png"]
    assert (await store.metadata(backup_id)).filename == "docs/README_backup.md"
    assert "docs/README.md: 8 bytes" in capsys.readouterr().out


# -- Streaming Operations


async def test_streaming_operations(persistent: None, capsys: pytest.CaptureFixture[str]) -> None:
    video = bytes(range(256)) * 4096 * 3  # 3 MiB
    Path("large_video.mp4").write_bytes(video)
    # ---- reference 002, lines 815-843 ----
    from core import ArtifactStore, StreamUploadRequest

    async with ArtifactStore() as store:
        # Open file and create streaming generator
        async def file_chunks():
            with open("large_video.mp4", "rb") as f:
                while chunk := f.read(65536):  # 64KB chunks
                    yield chunk

        # Optional: Track upload progress
        def progress_callback(bytes_sent, total_bytes):
            if total_bytes:
                percent = (bytes_sent / total_bytes) * 100
                print(f"Upload progress: {percent:.1f}%")

        # Create streaming upload request
        request = StreamUploadRequest(
            data_stream=file_chunks(),
            mime="video/mp4",
            summary="Product demo video",
            filename="demo.mp4",
            user_id="alice",
            content_length=os.path.getsize("large_video.mp4"),  # Optional but recommended
            progress_callback=progress_callback  # Optional
        )

        # Upload with streaming
        artifact_id = await store.stream_upload(request)
        print(f"Uploaded: {artifact_id}")
    # ---- end of snippet ----
    # ---- reference 002, lines 851-873 ----
    from core import StreamDownloadRequest

    async with ArtifactStore() as store:
        # Optional: Track download progress
        def progress_callback(bytes_received, total_bytes):
            if total_bytes:
                percent = (bytes_received / total_bytes) * 100
                print(f"Download progress: {percent:.1f}%")

        # Create streaming download request
        request = StreamDownloadRequest(
            artifact_id=artifact_id,
            user_id="alice",  # For access control
            chunk_size=65536,  # 64KB chunks (default)
            progress_callback=progress_callback  # Optional
        )

        # Stream download to file
        with open("downloaded.mp4", "wb") as f:
            async for chunk in store.stream_download(request):
                f.write(chunk)

        print("Download complete!")
    # ---- end of snippet ----
    assert Path("downloaded.mp4").read_bytes() == video
    # ---- reference 002, lines 881-895 ----
    import hashlib

    async with ArtifactStore() as store:
        # Stream download and compute hash on-the-fly
        sha256 = hashlib.sha256()
        bytes_processed = 0

        request = StreamDownloadRequest(artifact_id=artifact_id)

        async for chunk in store.stream_download(request):
            sha256.update(chunk)
            bytes_processed += len(chunk)

        print(f"SHA256: {sha256.hexdigest()}")
        print(f"Processed {bytes_processed / 1024 / 1024:.1f} MB")
    # ---- end of snippet ----
    assert sha256.hexdigest() == hashlib.sha256(video).hexdigest() and bytes_processed == len(video)
    out = capsys.readouterr().out
    assert "Upload progress: 100.0%" in out and "Download progress: 100.0%" in out and "Download complete!" in out


async def test_streaming_with_access_control(store: ArtifactStore) -> None:
    async def data_generator():
        for part in (b"%PDF-", b"1.7 ", b"user document"):
            yield part

    received: list[bytes] = []
    process_chunk = received.append
    # ---- reference 002, lines 903-922 ----
    # User-scoped streaming upload (persistent)
    request = StreamUploadRequest(
        data_stream=data_generator(),
        mime="application/pdf",
        summary="User document",
        user_id="alice",
        scope="user",  # Persistent, user-owned
        ttl=None  # No expiry
    )

    artifact_id = await store.stream_upload(request)

    # Only Alice can download (access control enforced)
    request = StreamDownloadRequest(
        artifact_id=artifact_id,
        user_id="alice"  # Required for user-scoped artifacts
    )

    async for chunk in store.stream_download(request):
        process_chunk(chunk)
    # ---- end of snippet ----
    assert b"".join(received) == b"%PDF-1.7 user document"
    with pytest.raises(AccessDeniedError):
        async for chunk in store.stream_download(StreamDownloadRequest(artifact_id=artifact_id, user_id="bob")):
            pass


def test_concurrent_streaming(persistent: None) -> None:
    """Uses ``asyncio.gather``: an asyncio program, run with its own loop."""
    for n in range(1, 6):
        Path(f"file{n}.bin").write_bytes(bytes([n]) * (100_000 * n))

    async def program() -> list[str]:
        # ---- reference 002, lines 930-951 ----
        import asyncio

        async with ArtifactStore() as store:
            async def upload_file(file_path):
                async def file_chunks():
                    with open(file_path, "rb") as f:
                        while chunk := f.read(65536):
                            yield chunk

                request = StreamUploadRequest(
                    data_stream=file_chunks(),
                    mime="application/octet-stream",
                    summary=f"Upload: {file_path}",
                    user_id="alice"
                )
                return await store.stream_upload(request)

            # Upload 5 files concurrently
            files = ["file1.bin", "file2.bin", "file3.bin", "file4.bin", "file5.bin"]
            artifact_ids = await asyncio.gather(*[upload_file(f) for f in files])

            print(f"Uploaded {len(artifact_ids)} files concurrently")
        # ---- end of snippet ----
        async with ArtifactStore() as check:
            return [await check.retrieve(i) for i in artifact_ids]

    contents = asyncio.run(program())
    assert contents == [bytes([n]) * (100_000 * n) for n in range(1, 6)]


# -- Advanced Features: rich metadata, file operations, monitoring


async def test_rich_metadata(store: ArtifactStore) -> None:
    image_bytes = b"\xff\xd8\xff laptop"
    session_id = "marketing"
    # ---- reference 002, lines 1377-1396 ----
    file_id = await store.store(
        data=image_bytes,
        mime="image/jpeg",
        summary="Product photo",
        filename="products/laptop-pro.jpg",
        session_id=session_id,
        meta={
            "product_id": "LPT-001",
            "tags": ["laptop", "professional"],
            "dimensions": {"width": 1920, "height": 1080}
        }
    )

    # Update metadata without changing content
    await store.update_metadata(
        file_id,
        summary="Updated product photo",
        meta={"tags": ["laptop", "professional", "workspace"]},
        merge=True
    )
    # ---- end of snippet ----
    meta = await store.metadata(file_id)
    assert meta.summary == "Updated product photo"
    assert meta.meta == {"product_id": "LPT-001", "tags": ["laptop", "professional", "workspace"],
                         "dimensions": {"width": 1920, "height": 1080}}
    assert await store.retrieve(file_id) == image_bytes


async def test_file_operations(store: ArtifactStore, capsys: pytest.CaptureFixture[str]) -> None:
    file_id = await store.store(b"old content", filename="notes.txt", user_id="alice")
    new_content = b"new content"
    # ---- reference 002, lines 1402-1416 ----
    # Update file content
    await store.update_file(file_id, data=new_content)

    # Copy (same session only)
    copy_id = await store.copy_file(file_id, new_filename="backup.txt")

    # Move/rename
    moved = await store.move_file(file_id, new_filename="renamed.txt")

    # Check existence
    if await store.exists(file_id):
        print("File exists!")

    # Delete
    deleted = await store.delete(file_id)
    # ---- end of snippet ----
    assert deleted is True and not await store.exists(file_id)
    assert moved.filename == "renamed.txt" and capsys.readouterr().out == "File exists!\n"
    assert await store.retrieve(copy_id) == b"new content"
    assert (await store.metadata(copy_id)).filename == "backup.txt"


async def test_monitoring(store: ArtifactStore, capsys: pytest.CaptureFixture[str]) -> None:
    # ---- reference 002, lines 1422-1433 ----
    # Validate configuration
    status = await store.validate_configuration()
    print(f"Storage: {status['storage']['status']}")
    print(f"Sessions: {status['session']['status']}")

    # Get statistics
    stats = await store.get_stats()
    print(f"Provider: {stats['storage_provider']}")
    print(f"Bucket: {stats['bucket']}")

    # Cleanup expired sessions
    cleaned = await store.cleanup_expired_sessions()
    # ---- end of snippet ----
    assert capsys.readouterr().out.splitlines()[:2] == ["Storage: ok", "Sessions: ok"]
    assert cleaned == 0


# -- FAQ


async def test_faq_sessions(store: ArtifactStore) -> None:
    user = SimpleNamespace(id="alice")
    data = b"faq"
    # ---- reference 002, lines 1716-1717 ----
    # Pass user_id → session auto-created like "sess-alice-123-abc"
    await store.store(data, mime="text/plain", user_id=user.id)
    # ---- end of snippet ----
    # ---- reference 002, lines 1722-1726 ----
    # Define your own session ID format
    session_id = f"user_{user.id}"  # Or any format

    # Pass it directly
    await store.store(data, mime="text/plain", session_id=session_id)
    # ---- end of snippet ----
    assert [m.session_id for m in await store.list_by_session("user_alice")] == ["user_alice"]
