from __future__ import annotations

from esmm.demo import format_demo_table, run_demo, summarise
from esmm.synth import WorldConfig


def test_demo_trains_both_models_per_seed_and_reuses_finished_runs(tmp_path, tiny_config,
                                                                   capsys) -> None:
    world = WorldConfig(rows=6000, n_users=100, n_items=80)
    cfg = tiny_config.replace(epochs=1)
    results = run_demo(tmp_path, seeds=(0, 1), world=world, config=cfg)
    assert set(results) == {"base", "esmm"} and all(len(v) == 2 for v in results.values())
    mean, std = summarise(results)["esmm"]["ctr_auc"]
    assert 0.0 < mean < 1.0 and std >= 0.0
    table = format_demo_table(results)
    assert "esmm - base" in table and "cvr_auc_entire_truth" in table and "±" in table
    capsys.readouterr()
    again = run_demo(tmp_path, seeds=(0, 1), world=world, config=cfg)
    assert again == results
    assert "already trained" in capsys.readouterr().err
