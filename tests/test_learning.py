"""Short learning runs: the models learn something about the past (beat the memoryless baseline)."""
import pytest

from conftest import compose_config
from krubench.train import train


@pytest.mark.slow
def test_kru_beats_the_copy_baseline(tmp_path):
    cfg = compose_config(["task.T=30", "task.val_size=200", "model.hidden_size=64", "trainer.steps=600",
                          "trainer.val_every=100", "trainer.progress=never", "trainer.deterministic=true"])
    results = train(cfg, tmp_path / "run")
    baseline = results["baseline"]["loss"]
    assert results["best_val"]["loss"] < 0.5 * baseline, results["best_val"]
    assert results["final_val"]["recall_accuracy"] > 0.5
