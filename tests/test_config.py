from __future__ import annotations

import pytest

from esmm.config import ConfigError, ModelConfig, RunConfig


def test_toml_round_trip_and_unknown_keys(tmp_path) -> None:
    p = tmp_path / "c.toml"
    p.write_text('model = "esmm-ns"\n[model_config]\nembedding_dim = 8\ntower = [32, 16]\n'
                 '[train]\nepochs = 2\n')
    cfg = RunConfig.from_toml(p)
    assert cfg.model == "esmm-ns" and cfg.model_config.tower == (32, 16)
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    p.write_text('[train]\nepoch = 2\n')
    with pytest.raises(ConfigError, match="unknown key.*epoch"):
        RunConfig.from_toml(p)
    p.write_text('[trian]\n')
    with pytest.raises(ConfigError, match="unknown section"):
        RunConfig.from_toml(p)


def test_paper_defaults_and_validation() -> None:
    m = ModelConfig()
    assert (m.embedding_dim, m.tower) == (18, (200, 80))
    with pytest.raises(ConfigError):
        ModelConfig(pooling="max")
    with pytest.raises(ConfigError):
        RunConfig().replace(epochs=0)
    with pytest.raises(ConfigError):
        RunConfig().replace(early_stop_metric="calibration_cvr")
    with pytest.raises(ConfigError):
        RunConfig().replace(epoch=3)
    with pytest.raises(ConfigError, match="precision"):
        RunConfig().replace(precision="fp16")
    assert RunConfig().train.precision == "fp32"


def test_saved_configs_read_missing_new_keys_as_the_behaviour_they_were_trained_with() -> None:
    saved = RunConfig().to_dict()
    del saved["model_config"]["output_bias_init"]  # a run written before the key existed
    assert RunConfig.from_saved({"esmm_version": "0.1.0", **saved}).model_config.output_bias_init == "zero"
    assert RunConfig.from_saved(RunConfig().to_dict()) == RunConfig()
    assert RunConfig.from_dict(saved).model_config.output_bias_init == "base_rate"  # a user's TOML
