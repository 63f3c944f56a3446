from __future__ import annotations

from pathlib import Path

import pytest

from esmm.config import ModelConfig, RunConfig
from esmm.synth import WorldConfig, write_world

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# Small enough to train in a second or two; same code path as the default world.
TINY_MODEL = ModelConfig(embedding_dim=8, tower=(16, 8))


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world")
    write_world(out, WorldConfig(rows=20_000, seed=1, n_users=300, n_items=200), verbose=False)
    return out


@pytest.fixture()
def tiny_config() -> RunConfig:
    return RunConfig(model="esmm", model_config=TINY_MODEL).replace(
        epochs=2, batch_size=512, progress=False, threads=1)
