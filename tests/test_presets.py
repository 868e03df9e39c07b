"""The paper presets in conf/experiment/paper/: every one composes to the task and model its name says,
and trains for two steps, shrunk by overrides (real-data ones on ../shared/data; skipped without it)."""
from __future__ import annotations

import json
import re

import pytest
from omegaconf import OmegaConf

from conftest import compose_config, REPO, SHARED_DATA
from krubench.data import roots
from krubench.config import setting_key
from krubench.train import train

PRESETS = sorted(p.stem for p in (REPO / "conf" / "experiment" / "paper").glob("*.yaml"))
REAL = ("pixel_mnist", "ptb_char", "music")
#: overrides that shrink a preset to a couple of cheap steps, per task
SHRINK = {
    "copy": ["task.batch_size=2", "task.val_size=2"],
    "adding": ["task.batch_size=2", "task.val_size=2"],
    # batch 10, not 2: on 784 steps the KRU's initial state grows large, and a 2-image batch can overflow at step 2
    "pixel_mnist": ["task.batch_size=10", "task.eval_batch_size=4", "task.eval_limit=4"],
    "ptb_char": ["task.batch_size=2", "task.bptt=20", "task.eval_batch_size=4", "task.eval_limit=200"],
    "music": ["task.batch_size=2", "task.eval_batch_size=2", "task.eval_limit=2"],
}
STEPS = ["trainer.steps=2", "trainer.val_every=1", "trainer.log_every=1", "trainer.ckpt_every=2",
         "trainer.progress=never", "trainer.threads=1"]


def compose(name: str, *overrides: str):
    return compose_config([f"experiment=paper/{name}", *overrides])


def test_there_is_a_preset_per_benchmark_setting_and_model():
    settings = {"copy_T1000", "copy_T2000", "adding_T100", "adding_T200", "adding_T400", "adding_T750",
                "pixel_mnist", "permuted_mnist", "ptb_char", "music_jsb", "music_piano", "music_nottingham",
                "music_musedata"}
    for setting in settings:
        for model in ("kru", "rnn", "lstm"):
            assert f"{setting}_{model}" in PRESETS
    peer_settings = {"copy_T1000", "adding_T100", "adding_T400", "music_jsb", "pixel_mnist", "permuted_mnist"}
    for setting in peer_settings:  # the unitary RNNs KRU is compared with (issue 14)
        for model in ("urnn", "fcurnn", "eurnn", "exprnn"):
            assert f"{setting}_{model}" in PRESETS
    for model in ("eurnn", "exprnn"):  # the peers with published PTB numbers (nnRNN README)
        assert f"ptb_char_{model}" in PRESETS
    # the paper's second size of a model in one table: Table 2's FC uRNN n=116, Table 3's ≈420K block
    sizes = {"pixel_mnist_fcurnn_n116", "permuted_mnist_fcurnn_n116", "ptb_char_kru_n993", "ptb_char_rnn_n600",
             "ptb_char_lstm_n300"}
    assert sizes <= set(PRESETS)
    # the uRNN rows of the paper's figures outside the peers' settings (Fig. 1 T=2000, Fig. 2 T=200 and 750)
    figure_rows = {"copy_T2000_urnn", "copy_T2000_fcurnn", "adding_T200_urnn", "adding_T200_fcurnn", "adding_T750_fcurnn"}
    assert figure_rows <= set(PRESETS)
    assert len(PRESETS) == 46 + 4 * len(peer_settings) + 2 + len(sizes) + len(figure_rows)


#: the edit-test loop composes each setting's KRU preset and each model's copy T=1000 one; the full suite all
QUICK = {p for p in PRESETS if p.endswith("_kru") or p.startswith("copy_T1000_")}


@pytest.mark.parametrize("name", [pytest.param(p, marks=() if p in QUICK else pytest.mark.slow) for p in PRESETS])
def test_preset_composes_to_what_its_name_says(name):
    cfg = compose(name)
    config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    # the report groups runs by setting and model; a second size of one model in a table says its N
    size = f"_n{config['model']['hidden_size']}" if re.search(r"_n\d+$", name) else ""
    assert f"{setting_key(config['task'])}_{config['model']['name']}{size}" == name
    assert config["optim"]["name"] == "rmsprop" and config["trainer"]["steps"] > 1000


def test_a_command_line_value_wins_over_the_presets():
    for name in ("copy_T1000_kru", "music_jsb_lstm_kru", "pixel_mnist_exprnn"):
        cfg = compose(name, "model.hidden_size=16", "trainer.steps=3")
        assert (cfg.model.hidden_size, cfg.trainer.steps) == (16, 3)


def test_reproduce_script_runs_every_preset():
    script = (REPO / "scripts" / "reproduce_paper.sh").read_text()
    assert set(re.findall(r"paper/(\w+)", script)) == set(PRESETS)


def test_no_experiment_keeps_the_default_run():
    cfg = compose_config([])
    assert (cfg.task.name, cfg.task.T, cfg.model.name, cfg.trainer.steps) == ("copy", 100, "kru", 1500)


@pytest.fixture(scope="module")
def data_cache(tmp_path_factory):
    """One writable cache for the module (decompressed MNIST), offline: tests never touch the network."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(roots.CACHE_ENV, str(tmp_path_factory.mktemp("cache")))
        mp.setenv(roots.OFFLINE_ENV, "1")
        yield


@pytest.mark.slow
@pytest.mark.parametrize("name", PRESETS)
def test_preset_trains_two_steps(name, tmp_path, data_cache):
    task = compose(name).task.name
    overrides = [*SHRINK[task], *STEPS]
    if task in REAL:
        if not SHARED_DATA.is_dir():
            pytest.skip(f"real data folder {SHARED_DATA} is absent")
        overrides.append(f"data_dir={SHARED_DATA}")
    results = train(compose(name, *overrides), tmp_path / "run")
    assert results["steps"] == 2 and name.startswith(f"{setting_key(results['config']['task'])}_{results['model']}")
    assert json.loads((tmp_path / "run" / "status.json").read_text())["status"] == "ok"
