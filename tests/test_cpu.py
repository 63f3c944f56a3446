"""esmm.cpu: the idle-core sample and the OpenMP wait-policy choice made at import."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from esmm import cpu


def test_idle_cores_within_usable_cores():
    idle = cpu.idle_cores(0.02)
    assert 0.0 <= idle <= cpu.usable_cores()
    assert 1 <= cpu.free_threads() <= cpu.usable_cores()


def test_idle_cores_from_proc_stat_ticks(monkeypatch):
    # 2 cores: 150 of 200 ticks idle over the window -> 1.5 cores idle
    samples = iter([(1000, 4000), (1150, 4200)])
    monkeypatch.setattr(cpu, "_cpu_times", lambda: next(samples))
    monkeypatch.setattr(cpu, "usable_cores", lambda: 2)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert cpu.idle_cores(0.0) == pytest.approx(1.5)


def _policy_in_fresh_interpreter(env: dict[str, str], code: str = "import esmm") -> str:
    out = subprocess.run([sys.executable, "-c", code + "; import os, esmm.cpu as c; "
                          "print(os.environ.get('OMP_WAIT_POLICY'), c.decision['by'])"],
                         env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_users_own_wait_policy_wins():
    env = {**os.environ, "OMP_WAIT_POLICY": "ACTIVE"}
    assert _policy_in_fresh_interpreter(env) == "ACTIVE environment"


def test_no_choice_once_torch_is_loaded():
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    assert _policy_in_fresh_interpreter(env, "import torch; import esmm").endswith(
        "torch was imported before esmm")


def test_busy_machine_makes_threads_sleep(monkeypatch):
    monkeypatch.setattr(cpu, "decision", {})  # this process's own decision stays as it was
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    monkeypatch.setattr(cpu, "idle_cores", lambda *a: 0.9)
    monkeypatch.setattr(cpu, "usable_cores", lambda: 2)
    cpu.choose_wait_policy()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.delenv("OMP_WAIT_POLICY")
    monkeypatch.setattr(cpu, "idle_cores", lambda *a: 2.0)
    cpu.choose_wait_policy()
    assert "OMP_WAIT_POLICY" not in os.environ


def test_run_metrics_record_threads_and_wait_policy(tiny_world, tiny_config, tmp_path):
    from esmm import api

    metrics = api.train(tiny_world, tmp_path / "run", tiny_config)
    assert metrics["threads"] >= 1
    assert metrics["omp_wait_policy"] == cpu.decision and "by" in metrics["omp_wait_policy"]
