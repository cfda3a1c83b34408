"""The embedded stores' files are private: 0600 files (database, -wal, -shm) in 0700 directories."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from mesh.stores.sqlite import SqliteCommandStore, SqliteHistoryStore, SqliteMetadataStore


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("store", [SqliteCommandStore, SqliteHistoryStore, SqliteMetadataStore])
async def test_new_store_files_are_readable_by_their_owner_only(
    tmp_path: Path, store: type[SqliteCommandStore | SqliteHistoryStore | SqliteMetadataStore]
) -> None:
    old = os.umask(0o022)  # the usual umask, which alone would give 0644 files
    try:
        db = store(tmp_path / "region" / "store.db")
    finally:
        os.umask(old)
    try:
        files = sorted(p.name for p in (tmp_path / "region").iterdir())
        assert files == ["store.db", "store.db-shm", "store.db-wal"]
        assert {name: _mode(tmp_path / "region" / name) for name in files} == dict.fromkeys(
            files, 0o600
        )
        assert _mode(tmp_path / "region") == 0o700
    finally:
        await db.close()


async def test_an_existing_readable_file_is_narrowed(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    path.touch(mode=0o644)
    os.chmod(path, 0o644)
    db = SqliteHistoryStore(path)
    try:
        assert _mode(path) == 0o600
        assert _mode(tmp_path / "history.db-wal") == 0o600
    finally:
        await db.close()
