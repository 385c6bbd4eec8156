"""Shared test setup: one throw-away cache per test session, shared by its workers (synth audio
and features are reused across tests, never written to the user's ~/.cache), and the real data
when present."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RAVDESS = REPO.parent / "shared" / "data" / "ravdess"


@pytest.fixture(scope="session", autouse=True)
def serbench_cache(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    # pytest-xdist's workers share one cache (their base temps are siblings): what one worker
    # generated or extracted, the other reuses (the cache's lock makes it wait, not redo it).
    base = tmp_path_factory.getbasetemp()
    path = (base.parent if worker_id != "master" else base) / "serbench-cache"
    path.mkdir(exist_ok=True)
    mp = pytest.MonkeyPatch()
    mp.setenv("SERBENCH_CACHE", str(path))
    yield path
    mp.undo()


@pytest.fixture
def ravdess_root() -> Path:
    if not (RAVDESS / "Actor_01").is_dir():
        pytest.skip(f"real RAVDESS copy not found at {RAVDESS} (see ../shared/data/README.md)")
    return RAVDESS
