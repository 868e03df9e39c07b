"""Config composition: every task × model composes; typos and bad values fail at composition."""
import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from conftest import compose_config
from hydra import initialize_config_dir
from krubench.config import config_dir
from krubench.config import constructor_options, schemas, validate
from krubench.models import build_model
from krubench.tasks import TASKS, build_task


def plain(cfg):
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


@pytest.mark.parametrize("task", sorted(t for t in schemas()["task"] if not TASKS[t].needs_data))  # real data: test_tasks_real.py
@pytest.mark.parametrize("model", sorted(schemas()["model"]))
def test_every_task_model_composes_and_builds(task, model):
    cfg = plain(compose_config([f"task={task}", f"model={model}", "model.hidden_size=16", "task.val_size=4"]))
    assert cfg["task"]["name"] == task and cfg["model"]["name"] == model
    validate(cfg)
    t = build_task(cfg["task"], seed=0)
    m = build_model(cfg["model"], t.input_size, t.output_size)
    x, target = t.train_batch(0)
    assert t.loss(m(x)[0], target).ndim == 0


@pytest.mark.parametrize("group", ["optim", "trainer"])
def test_every_option_of_other_groups_composes(group):
    for option in schemas()[group]:
        cfg = plain(compose_config([f"{group}={option}"]))
        validate(cfg)


def test_defaults_are_the_documented_experiment():
    cfg = plain(compose_config())
    assert (cfg["task"]["name"], cfg["task"]["T"], cfg["model"]["name"], cfg["model"]["hidden_size"]) == ("copy", 100, "kru", 128)
    assert cfg["optim"]["name"] == "rmsprop" and cfg["optim"]["lr"] == 1e-3


def test_typo_in_key_fails_with_the_key_named():
    with pytest.raises(ConfigCompositionException) as e:
        compose_config(["model.hiden_size=64"])
    assert "hiden_size" in str(e.value) + str(e.value.__cause__)


def test_wrong_type_fails():
    with pytest.raises(ConfigCompositionException) as e:
        compose_config(["task.T=abc"])
    assert "abc" in str(e.value.__cause__)


def test_bad_choice_lists_accepted_values():
    with pytest.raises(ConfigCompositionException) as e:
        compose_config(["model.nonlinearity=selu"])
    assert "modrelu, relu, tanh" in str(e.value.__cause__)


def test_key_of_another_model_is_refused():
    with pytest.raises(ConfigCompositionException):
        compose_config(["model=lstm", "model.complex=false"])


@pytest.mark.parametrize("override,message", [
    ("model=lstm +model.complex=true", "model.complex is not a key of model=lstm, whose keys are hidden_size: drop it"),
    ("+task.bptt=5", "task.bptt is not a key of task=copy, whose keys are T,"),
])
def test_a_key_appended_with_plus_that_the_class_does_not_take_is_refused(override, message):
    """`+model.KEY=…` gets past Hydra's struct mode; the class would fail with a TypeError when built."""
    with pytest.raises(ValueError, match=message):
        validate(plain(compose_config(override.split())))


@pytest.mark.parametrize("override", ["task=adding model=kru", "task=music model=lstm_kru optim=adam"])
def test_a_composed_config_unpickles_in_a_fresh_process(override):
    """A launcher (joblib, submitit) pickles the composed config for its workers; the schemas and choices it names
    must be found by a process that has only imported krubench."""
    import pickle
    import subprocess
    import sys

    data = pickle.dumps(compose_config(override.split()))
    code = "import pickle, sys; print(pickle.loads(sys.stdin.buffer.read()).task.name)"
    out = subprocess.run([sys.executable, "-c", code], input=data, capture_output=True, check=False)
    assert out.returncode == 0, out.stderr.decode()[-600:]
    assert out.stdout.decode().strip() == override.split()[0].split("=")[1]


def test_struct_mode_stays_on():
    cfg = compose_config()
    with pytest.raises((ConfigKeyError, ValidationError, AttributeError)):
        cfg.model.hiden_size = 3


def test_range_checks():
    cfg = plain(compose_config(["trainer.steps=0"]))
    with pytest.raises(ValueError, match="trainer.steps=0 must be positive"):
        validate(cfg)


def test_run_folders_name_the_setting_and_the_model():
    for overrides, label in (([], "_copy_T100_kru"), (["task=music", "task.dataset=piano", "model=lstm"], "_music_piano_lstm"),
                             (["experiment=paper/permuted_mnist_lstm_kru"], "_permuted_mnist_lstm_kru"),
                             (["task=adding", "task.T=200", "task.placement=uniform"], "_adding_T200_uniform_kru")):
        cfg = compose_config(overrides, return_hydra_config=True)
        assert OmegaConf.select(cfg, "hydra.run.dir").endswith(label), OmegaConf.select(cfg, "hydra.run.dir")


def test_groups_offer_only_their_options():
    """`krubench --help` lists each group's options: the schemas that validate them are root configs
    (`/schema_<group>_<option>`), not options a user could pick."""
    from hydra.core.global_hydra import GlobalHydra
    compose_config()  # registers the schemas
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        for group in ("task", "model", "optim", "trainer"):
            assert sorted(loader.get_group_options(group)) == sorted(schemas()[group]), group
    with pytest.raises(ConfigCompositionException, match="schema_kru"):
        compose_config(["model=schema_kru"])


@pytest.mark.parametrize("override,message", [
    ("optim.lr=inf", "optim.lr=inf must be a finite number"),
    ("optim.lr=nan", "optim.lr=nan must be a finite number"),
    ("optim.lr=-1", "optim.lr=-1.0 must be positive"),
    ("model.merge_upto=0", r"model.merge_upto=0 must be positive \(1 turns merging off\)"),
    ("trainer.unitary_penalty=-1", "trainer.unitary_penalty=-1.0 must be >= 0"),
    ("model=lstm trainer.unitary_penalty=0.1",
     "trainer.unitary_penalty=0.1 has nothing to act on: model=lstm has no Kronecker factors. It applies to kru, lstm_kru;"),
    ("trainer.threads=-1", "trainer.threads=-1 must be >= 0"),
    ("optim.weight_decay=-1", "optim.weight_decay=-1.0 must be >= 0"),
    ("optim.momentum=-1", "optim.momentum=-1.0 must be >= 0"),
    ("optim.alpha=1.5", r"optim.alpha=1.5 must be in \[0, 1\)"),
    ("optim.betas=[2,3]", r"optim.betas=\[2.0, 3.0\] must be two numbers in \[0, 1\)"),
    ("optim.eps=0", "optim.eps=0.0 must be positive"),
    ("trainer.grad_clip=inf", "trainer.grad_clip=inf must be a finite number"),
    ("trainer.device=banana", "trainer.device=banana is not a device"),
    ("task.T=0", "task.T=0 must be positive"),
])
def test_bad_numbers_are_refused_naming_the_key(override, message):
    with pytest.raises(ValueError, match=message):
        validate(plain(compose_config(override.split())))


@pytest.mark.parametrize("override,key", [("model.hidden_size=1048576", "model.hidden_size=1048576"),
                                          ("task.T=1000000", "task.T (1000020 steps)"),
                                          ("task.T=1000000 model.hidden_size=2", "task.val_size=500")])
def test_sizes_that_cannot_fit_are_refused_before_allocating(override, key, monkeypatch):
    """The estimate (states kept for backpropagation, and a synthetic task's validation set: 68 GB for copy
    T=10^6 with any model) against the memory available (here 32 GiB), before any allocation."""
    import torch
    from krubench.runtime import memory
    monkeypatch.setattr(memory, "available_bytes", lambda device: 32 * 2**30)
    with pytest.raises(ValueError, match="GiB") as e:
        memory.check_memory(plain(compose_config(override.split())), torch.device("cpu"))
    assert key in str(e.value)


def test_the_memory_estimate_asks_the_model_and_task_classes(monkeypatch):
    """A model registered with 3 gates (a GRU) is estimated 3 times as wide as one with 1, with no change to the
    memory module; the task class supplies the sequence length and its key."""
    from krubench.models import MODELS, SequenceModel
    from krubench.runtime.memory import training_bytes

    class GRULike(SequenceModel):
        gates = 3

    monkeypatch.setitem(MODELS, "gru_like", GRULike)
    task = {"name": "ptb_char", "bptt": 150, "batch_size": 32}
    one = training_bytes({"task": task, "model": {"name": "rnn", "hidden_size": 64}})
    three = training_bytes({"task": task, "model": {"name": "gru_like", "hidden_size": 64}})
    assert three[0] == 3 * one[0] and "task.bptt (150 steps)" in three[1]


@pytest.mark.slow
def test_presets_fit_the_memory_estimate():
    """The estimate refuses no paper preset on a machine with 8 GiB free (music: the data decides, no estimate); the
    largest is Table 2's EURNN n=1024 on permuted MNIST, ≈ 5 GB (its loop keeps every step's state for autograd)."""
    from pathlib import Path
    from krubench.runtime.memory import training_bytes
    for preset in sorted((Path(config_dir()) / "experiment" / "paper").glob("*.yaml")):
        estimate = training_bytes(plain(compose_config([f"experiment=paper/{preset.stem}"])))
        assert estimate is None or estimate[0] < 8 * 2**30, preset.stem


@pytest.mark.parametrize("group,option", [("model", m) for m in sorted(schemas()["model"])]
                         + [("task", t) for t in sorted(schemas()["task"])])
def test_python_defaults_are_the_yaml_defaults(group, option):
    """conf/ holds the defaults (the schemas, from the constructors, only name and type the keys); the constructors
    keep defaults for use from Python, and they must be the same values, or a model built in a notebook would differ
    from `krubench model=...`."""
    import inspect

    from krubench.models import MODELS

    cls = (MODELS if group == "model" else TASKS)[option]
    cfg = plain(compose_config([f"{group}={option}"]))[group]
    params = constructor_options(cls)
    assert sorted(params) == sorted(k for k in cfg if k != "name")
    compared = [k for k in cfg if k in params and params[k].default is not inspect.Parameter.empty]
    assert compared, f"{option}: no constructor default to compare"
    for key in compared:
        assert params[key].default == cfg[key], (f"{cls.__name__}({key}={params[key].default!r}) but "
                                                 f"conf/{group}/{option}.yaml has {key}: {cfg[key]!r}")


def test_the_config_store_is_shared_by_hydras_copies_and_never_changed_by_composing():
    """Hydra deep-copies its config repository (and so the ConfigStore) for every compose and every group --help
    lists; krubench makes that copy the store itself (config.share_the_config_store). Composing must then leave the
    stored schemas as they were."""
    import copy

    from hydra.core.config_store import ConfigStore

    from krubench.config import register_configs

    register_configs()
    store = ConfigStore.instance()
    before = OmegaConf.to_yaml(store.load("schema.yaml").node)
    a = compose_config(["model=kru", "model.hidden_size=64", "trainer.steps=3"])
    assert copy.deepcopy(store) is store
    b = compose_config(["model=rnn"])
    assert OmegaConf.to_yaml(store.load("schema.yaml").node) == before
    assert a.model.hidden_size == 64 and b.model.name == "rnn" and b.trainer.steps != 3


@pytest.mark.parametrize("overrides,message", [
    (["model.hiden_size=64"], "model.hiden_size is not a key of model=kru, whose keys are hidden_size, factor_size,"),
    (["model=lstm", "model.complex=false"], "model.complex is not a key of model=lstm, whose keys are hidden_size: "
                                            "check the spelling, or choose a model that has complex (model=kru|lstm_kru|eurnn)"),
    (["experiment=paper/copy_T1000_lstm", "task.bptt=5"], "task.bptt is not a key of task=copy"),
    (["-m", "model=kru,rnn", "model.factor_size=4"], "model.factor_size is not a key of model=rnn"),
    (["model.hidden_size=64"], None),
])
def test_an_unknown_key_names_the_options_keys_and_the_options_that_have_it(overrides, message):
    from krubench.cli import unknown_key_message

    found = unknown_key_message(overrides)
    assert found == message if message is None else message in found
