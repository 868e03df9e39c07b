"""What a researcher sees in TensorBoard, checked against a real TensorBoard server started here (its HTTP
API, the same requests its dashboards make): custom-scalars charts that each select exactly their tags, one
unit per chart, and one HParams experiment over runs of different tasks in one logdir."""
import json
import time
import urllib.request

import pytest

from conftest import small_run_config
from krubench.train import train

pytest.importorskip("tensorboard.program")


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
    """A copy run (KRU) and an adding run (LSTM) side by side, as a sweep folder holds them."""
    root = tmp_path_factory.mktemp("logdir")
    common = ["trainer.steps=4", "trainer.val_every=2", "trainer.log_every=2"]
    train(small_run_config(root, *common, "model.kernel=reference"), root / "copy_T10_kru")
    train(small_run_config(root, *common, "task=adding", "model=lstm", "model.hidden_size=8"), root / "adding_T10_lstm")
    return root


@pytest.fixture(scope="module")
def server(logdir):
    """TensorBoard on a free port, serving `logdir`; its base URL."""
    from tensorboard import program

    board = program.TensorBoard()
    board.configure(argv=[None, "--logdir", str(logdir), "--port", "0", "--load_fast", "false",
                          "--reload_interval", "0"])  # 0: load once, at start (in a thread)
    url = board.launch().rstrip("/")
    deadline = time.time() + 60
    while len(get(f"{url}/data/runs")) < 2:  # both runs loaded
        assert time.time() < deadline, "TensorBoard did not load the runs"
        time.sleep(0.2)
    return url


def get(url: str, body: dict | None = None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_each_custom_scalar_chart_selects_exactly_its_tags_in_one_unit(server):
    runs = get(f"{server}/data/runs")
    categories = {c["title"]: {chart["title"]: chart["multiline"]["tag"] for chart in c["chart"]}
                  for c in get(f"{server}/data/plugin/custom_scalars/layout")["category"]}
    loss = {"train/loss", "val/loss", "val/baseline"}
    expected = {
        "krubench copy": {"loss (nats per time step) vs memoryless baseline": loss,
                          "loss_bits (bits per time step) vs memoryless baseline": {"val/loss_bits", "val/baseline_loss_bits"},
                          "recall_accuracy (fraction of recalled symbols) vs memoryless baseline":
                              {"val/recall_accuracy", "val/baseline_recall_accuracy"}},
        "krubench adding": {"loss (MSE) vs memoryless baseline": loss}}
    assert {c: set(charts) for c, charts in categories.items()} == {c: set(charts) for c, charts in expected.items()}
    for category, charts in categories.items():
        run = next(r for r in runs if r.startswith(category.split()[1]))
        for title, regexes in charts.items():
            drawn = set()
            for regex in regexes:  # the dashboard asks for each regex of a chart, run by run
                answer = get(f"{server}/data/plugin/custom_scalars/scalars?tag={urllib.request.quote(regex)}"
                             f"&run={urllib.request.quote(run)}")
                assert answer["regex_valid"], regex
                drawn |= set(answer["tag_to_events"])
            assert drawn == expected[category][title], title


def test_hparams_experiment_is_the_union_of_every_run(server):
    experiment = get(f"{server}/data/plugin/hparams/experiment", {"experimentName": ""})
    hparams = {h["name"]: h for h in experiment["hparamInfos"]}
    assert {"task.name", "task.T", "task.placement", "model.name", "model.complex", "optim.lr", "seed"} <= set(hparams)
    assert hparams["task.name"]["differs"] and hparams["model.name"]["differs"]  # copy vs adding, kru vs lstm
    assert set(hparams["task.name"]["domainDiscrete"]) == {"copy", "adding"}
    assert not hparams["seed"]["differs"]
    assert "schedule.name" in hparams and "schedule.warmup_steps" in hparams
    for noise in ("trainer.progress", "trainer.resume", "trainer.device", "data_dir", "model.kernel",
                  "schedule.gamma", "schedule.patience", "trainer.early_stop_min_delta"):  # unused by these runs
        assert noise not in hparams, noise
    metrics = {m["name"]["tag"] for m in experiment["metricInfos"]}
    assert {"hparam/val_loss", "hparam/val_loss_bits", "hparam/best_val_loss", "val/loss"} <= metrics


def test_each_run_writes_its_session_and_no_experiment_of_its_own(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for run in ("copy_T10_kru", "adding_T10_lstm"):
        acc = EventAccumulator(str(logdir / run / "tb"), size_guidance={"tensors": 0})
        acc.Reload()
        tags = set(acc.PluginTagToContent("hparams"))
        assert tags == {"_hparams_/session_start_info", "_hparams_/session_end_info"}, run
