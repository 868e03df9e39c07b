"""Structured-config schemas for every config group. Hydra checks each YAML file and each command-line
override against them, so a misspelled key or a wrong type fails at composition.
A `model` or `task` option's schema is its class's constructor (constructor_options): a model or task registered in
MODELS or TASKS brings its keys with it. The YAML files in conf/ hold the defaults users see; the schemas hold
names and types."""
from __future__ import annotations

import collections.abc
import copy
import dataclasses
import functools
import hashlib
import inspect
import math
import re
import typing
from pathlib import Path
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from .models import MODELS
from .optim import OPTIMIZERS, USES as SCHEDULE_USES
from .tasks import TASKS


class Choice(Enum):
    """A config choice that prints as its value (`jsb`, not `MusicDataset.jsb`): tab completion and messages."""

    def __str__(self) -> str:
        return str(self.value)


def choices(name: str, *values: str) -> type[Enum]:
    """An Enum of accepted strings: a wrong value fails at composition, naming the accepted ones. It is made an
    attribute of this module, so that pickle (a launcher sending a config to its workers) finds it by name."""
    enum = Choice(name, {v: v for v in values}, module=__name__)
    globals()[name] = enum
    return enum


OptimName = choices("OptimName", *OPTIMIZERS)
Resume = choices("Resume", "auto", "never")
Progress = choices("Progress", "auto", "always", "never")
ScheduleName = choices("ScheduleName", *SCHEDULE_USES)

# ---- task and model: from the classes ----
#: constructor arguments that no `task` or `model` config sets: the sizes come from the task, the seed and the data
#: folder from the top level of the config
NOT_CONFIG_KEYS = ("self", "input_size", "output_size", "seed", "data_dir")


def constructor_options(cls) -> dict[str, inspect.Parameter]:
    """The keywords a `task` or `model` config gives cls's constructor, by name, annotations resolved: its named
    parameters less NOT_CONFIG_KEYS and keyword-only ones (options for Python use only), and where it passes
    **options on to its base class's constructor (the kru model to KRULayer), the base class's too, in the base
    class's order."""
    chain = []
    for klass in cls.__mro__:
        init = vars(klass).get("__init__")
        if not inspect.isfunction(init):
            continue
        params = inspect.signature(init).parameters.values()
        chain.append((params, typing.get_type_hints(init)))
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    options: dict[str, inspect.Parameter] = {}
    for params, hints in reversed(chain):
        for p in params:
            if p.kind is p.POSITIONAL_OR_KEYWORD and p.name not in NOT_CONFIG_KEYS:
                options[p.name] = p.replace(annotation=hints.get(p.name, Any))
    return options


def schema_type(hint, accepted: tuple[str, ...] | None, enum_name: str):
    """An annotation as OmegaConf takes it: `X | None` as Optional[X], a sequence as a List, a string with
    accepted values as a choice."""
    args = typing.get_args(hint)
    optional = type(None) in args
    if optional:
        hint = next(a for a in args if a is not type(None))
    if typing.get_origin(hint) in (list, tuple, collections.abc.Sequence):
        hint = List[typing.get_args(hint)[0]]
    if accepted is not None:
        hint = choices(enum_name, *accepted)
    return Optional[hint] if optional else hint


@functools.cache
def class_schema(group: str, name: str, cls) -> type:
    """The schema of option `name` of `group` (task or model): `name`, then a field per constructor option, typed as
    annotated, with no default (the YAML sets it)."""
    fields = [("name", str, field(default=name))]
    for key, p in constructor_options(cls).items():
        fields.append((key, schema_type(p.annotation, cls.choices.get(key), f"{cls.__name__}_{key}"),
                       field(default=MISSING)))
    schema = dataclasses.make_dataclass(f"{cls.__name__}Config", fields)
    schema.__module__ = __name__  # found by name by pickle, as the choices are
    globals()[schema.__name__] = schema
    return schema


# ---- optim ----
# optim and schedule options share one schema each, and an option's YAML sets only its own keys: the
# schema's values are what the others read (None or neutral).
@dataclass
class OptimConfig:
    name: OptimName = MISSING  # optim.OPTIMIZERS: rmsprop | adam | sgd
    lr: float = MISSING
    weight_decay: float = MISSING
    alpha: Optional[float] = None  # rmsprop smoothing constant
    betas: Optional[List[float]] = None  # adam
    momentum: Optional[float] = None  # sgd, rmsprop
    eps: float = 1e-8  # rmsprop, adam: added to the root-mean-square in the step's denominator
    # the recurrent matrix's own parameters (Kronecker factors; the peers' unitary part) train at lr × this;
    # None: the model's default_factor_lr_scale
    factor_lr_scale: Optional[float] = None


# ---- schedule ----
@dataclass
class ScheduleConfig:
    name: ScheduleName = ScheduleName.constant  # constant | cosine | step | reduce_on_plateau
    warmup_steps: int = 0  # linear warm-up over the first steps, with any schedule; 0 = none
    min_lr_scale: float = 0.0  # cosine: ends at lr × this; reduce_on_plateau: never below lr × this
    every: int = 1000  # step: multiply the lr by gamma every this many steps
    gamma: float = 0.1  # step
    factor: float = 0.5  # reduce_on_plateau: multiply the lr by this ...
    patience: int = 5  # reduce_on_plateau: ... after this many validations without improvement
    threshold: float = 0.0  # reduce_on_plateau: an improvement must exceed this (in the metric's units)


# ---- trainer ----
@dataclass
class TrainerConfig:
    steps: int = MISSING  # optimizer steps in total (a resumed run continues up to this)
    val_every: int = MISSING
    log_every: int = MISSING  # steps between log lines (the progress bar updates every step)
    ckpt_every: int = MISSING
    grad_clip: float = MISSING  # max global gradient norm; 0 = off
    unitary_penalty: float = MISSING  # λ of the soft unitary constraint λ·Σ‖W_f^H W_f − I‖² (kru, lstm_kru); 0 = off
    resume: Resume = MISSING  # auto (continue from last.pt if present) | never (refuse if present)
    deterministic: bool = MISSING  # torch.use_deterministic_algorithms
    progress: Progress = MISSING  # auto (bar on a terminal) | always | never
    device: str = MISSING  # auto | cpu | cuda | cuda:N
    threads: int = MISSING  # torch CPU threads; 0 = torch's default
    early_stop_patience: int = MISSING  # stop after this many validations without improvement of the metric; 0 = off
    early_stop_min_delta: float = MISSING  # an improvement must exceed this (in the metric's units)
    csv_log: bool = MISSING  # also write every scalar to metrics.csv in the run directory


# ---- logger ----
WandbMode = choices("WandbMode", "offline", "online")


@dataclass
class WandbConfig:
    project: str = "krubench"
    entity: Optional[str] = None  # your W&B user or team; None: the account's default
    mode: WandbMode = WandbMode.offline  # offline: files under <run dir>/wandb (upload later with wandb sync) | online
    group: Optional[str] = None  # W&B's run grouping, e.g. a sweep's name
    tags: List[str] = field(default_factory=list)


@dataclass
class MLflowConfig:
    tracking_uri: Optional[str] = None  # None: sqlite:///<run dir>/mlflow.db; or http://host:5000, sqlite:///shared.db
    experiment: str = "krubench"


@dataclass
class LoggerConfig:
    """The trackers beside TensorBoard (always on): None leaves one off (conf/logger/ turns them on)."""
    wandb: Optional[WandbConfig] = None
    mlflow: Optional[MLflowConfig] = None


@dataclass
class Config:
    task: Any = MISSING
    model: Any = MISSING
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    seed: int = 0
    data_dir: Optional[str] = None  # root of the real data sets; None: $KRUBENCH_DATA, else ~/.cache/krubench/data


#: flattened config keys (prefixes) that do not change what a run computes: where data is read from, the device
#: and threads, logging, resume and progress bar, the Kronecker backend, the merging of small factors and the peers'
#: recurrence (the same math), and the trackers beside TensorBoard.
#: The HParams view leaves them out; krubench-report groups runs differing only in these (and the seed) into one
#: row; a run resumes when only these differ from its checkpoint.
INCIDENTAL_KEYS = ("data_dir", "trainer.device", "trainer.threads", "trainer.progress", "trainer.resume",
                   "trainer.log_every", "trainer.ckpt_every", "trainer.val_every", "trainer.csv_log", "model.kernel",
                   "model.recurrence", "model.merge_upto", "logger.")


def schemas() -> dict[str, dict[str, type]]:
    """Each config group's options and their schemas: the registered tasks and models (from their classes), the
    optimizers and schedules of optim.py, the trainer's presets."""
    return {
        "task": {name: class_schema("task", name, cls) for name, cls in TASKS.items()},
        "model": {name: class_schema("model", name, cls) for name, cls in MODELS.items()},
        "optim": dict.fromkeys(OPTIMIZERS, OptimConfig),
        "trainer": {"default": TrainerConfig, "debug": TrainerConfig},
        "schedule": dict.fromkeys(SCHEDULE_USES, ScheduleConfig),
    }


def setting_key(task) -> str:
    """The benchmark setting of a `task` config (a dict or the composed node): what its task class says it is
    (`Task.setting`), e.g. copy_T1000, permuted_mnist, music_jsb."""
    from .tasks.base import config_value

    return TASKS[config_value(task, "name")].setting(task)


#: the longest run label: a sweep job's folder is its number, "_" and the label, well below the file systems'
#: 255 bytes per name, and its TensorBoard run name (the folder) stays readable
MAX_LABEL = 90


def run_label(task, model: str, overrides: str = "") -> str:
    """A run folder's name after its time stamp or job number: setting, model, then a sweep job's swept overrides
    (copy_T2000_kru, 3_copy_T1000_rnn_seed=1). The `run_label` resolver of conf/config.yaml.
    A "/" in a value is written %2F: a value is never a path (trainer.device=../../x stays inside the sweep).
    A label longer than MAX_LABEL is cut and ends in "~" and a hash of the whole label, so cut labels stay distinct."""
    label = (f"{setting_key(task)}_{model}" + (f"_{overrides}" if overrides else "")).replace("/", "%2F")
    if len(label) <= MAX_LABEL:
        return label
    digest = hashlib.sha1(label.encode()).hexdigest()[:8]
    return f"{label[:MAX_LABEL - len(digest) - 1]}~{digest}"


PACKAGE_DIR = Path(__file__).resolve().parent


def config_dir() -> str:
    """Absolute path of the `conf/` folder: shipped inside the package in a wheel (krubench/conf),
    or at the repository's top level in a checkout (editable install)."""
    for candidate in (PACKAGE_DIR / "conf", PACKAGE_DIR.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(
        f"krubench cannot find its configs: neither {PACKAGE_DIR / 'conf'} nor {PACKAGE_DIR.parent / 'conf'} "
        "holds config.yaml. Reinstall krubench (pip install -e . from a checkout, or pip install krubench)."
    )


#: config groups that presets use internally: not listed by `krubench --help`
INTERNAL_GROUPS = ("hydra", "experiment/paper/setting")


def config_groups() -> str:
    """The `config_groups` resolver of `krubench --help` (conf/config.yaml, hydra.help.template): each group of
    conf/ and its options, one line each as Hydra lists them, without the INTERNAL_GROUPS."""
    root = Path(config_dir())
    lines = []
    for folder in sorted(p for p in root.rglob("*") if p.is_dir()):
        group = folder.relative_to(root).as_posix()
        options = sorted(f.stem for f in folder.glob("*.yaml"))
        if options and not group.startswith(INTERNAL_GROUPS):
            lines.append(f"{group}: {', '.join(options)}")
    return "\n".join(lines)


def task_direction(task: str) -> str:
    """The `task_direction` resolver of the Optuna preset (conf/hparams_search/optuna.yaml): maximize for a task
    whose metric is better higher (accuracy), else minimize."""
    return "maximize" if TASKS[getattr(task, "value", task)].higher_is_better else "minimize"


def share_the_config_store() -> None:
    """Make a deep copy of Hydra's ConfigStore singleton the singleton itself. Hydra 1.3 deep-copies its config
    repository, and with it the store and every schema in it, each time it composes a config or lists a config
    group, which `krubench --help` does once per group and schema. Hydra's own later fix refetches the singleton
    instead of copying it (facebookresearch/hydra#2928; hydra-zen#769 patches the same copy). Safe: the store is
    read, never changed, while composing (ConfigStore.load returns a copy of the node it holds)."""
    if "__deepcopy__" not in vars(ConfigStore):
        ConfigStore.__deepcopy__ = lambda self, memo: self


def register_configs() -> None:
    """Store each schema as the root config `schema_<group>_<option>`; the YAML of that option lists it
    first in its defaults (`/schema_<group>_<option>@_here_`), so the YAML's values are validated against
    the schema. At the root, the schemas are not options of the group (`krubench --help` lists the group's
    options only). Also the `config_groups` resolver of --help and the `run_label` resolver of the run folders' names."""
    OmegaConf.register_new_resolver("run_label", run_label, replace=True)
    OmegaConf.register_new_resolver("config_groups", config_groups, replace=True)
    OmegaConf.register_new_resolver("task_direction", task_direction, replace=True)
    share_the_config_store()
    cs = ConfigStore.instance()
    cs.store(name="schema", node=Config)
    for group, options in schemas().items():
        for option, node in options.items():
            cs.store(name=f"schema_{group}_{option}", node=node)


def validate(config: dict) -> None:
    """Checks a schema cannot express (ranges, finiteness), on the resolved plain config; raises ValueError
    naming the key."""
    optim, trainer, model, task = config["optim"], config["trainer"], config["model"], config["task"]
    options = schemas()
    for group in ("task", "model"):  # a `+group.KEY=…` override adds a key the class would not take
        name = config[group]["name"]
        keys = [f.name for f in dataclasses.fields(options[group][name])]
        if extra := [k for k in config[group] if k not in keys]:
            raise ValueError(f"{group}.{extra[0]} is not a key of {group}={name}, whose keys are "
                             f"{', '.join(k for k in keys if k != 'name')}: drop it from the command line")
    positive = {  # key: (value, what its bound means)
        "trainer.steps": (trainer["steps"], ""), "trainer.val_every": (trainer["val_every"], ""),
        "trainer.log_every": (trainer["log_every"], ""), "trainer.ckpt_every": (trainer["ckpt_every"], ""),
        "optim.lr": (optim["lr"], ""), "optim.eps": (optim["eps"], ""),
        "optim.factor_lr_scale": (optim["factor_lr_scale"], ""),
    }
    at_least_zero = {
        "optim.weight_decay": (optim["weight_decay"], ""), "optim.momentum": (optim["momentum"], ""),
        "trainer.threads": (trainer["threads"], "0: torch's default"),
        "trainer.unitary_penalty": (trainer["unitary_penalty"], ""),
        "trainer.grad_clip": (trainer["grad_clip"], "0 turns clipping off"),
    }
    for group, cls in (("task", TASKS[task["name"]]), ("model", MODELS[model["name"]])):  # each class's own bounds
        positive |= {f"{group}.{k}": (config[group].get(k), hint) for k, hint in cls.positive.items()}
        at_least_zero |= {f"{group}.{k}": (config[group].get(k), hint) for k, hint in cls.non_negative.items()}
    for key, value in flatten_numbers(config).items():
        if not math.isfinite(value):
            raise ValueError(f"{key}={value} must be a finite number")
    for bound, keys in (("positive", positive), (">= 0", at_least_zero)):
        for key, (value, hint) in keys.items():  # None: unset (optim.factor_lr_scale=null: the model's own)
            if value is not None and (value <= 0 if bound == "positive" else value < 0):
                raise ValueError(f"{key}={value} must be {bound}" + (f" ({hint})" if hint else ""))
    if optim["alpha"] is not None and not 0 <= optim["alpha"] < 1:
        raise ValueError(f"optim.alpha={optim['alpha']} must be in [0, 1) (RMSprop's smoothing constant)")
    if optim["betas"] is not None and (len(optim["betas"]) != 2 or not all(0 <= b < 1 for b in optim["betas"])):
        raise ValueError(f"optim.betas={optim['betas']} must be two numbers in [0, 1), e.g. [0.9,0.999]")
    schedule = config["schedule"]
    for key in ("every", "gamma", "factor", "patience"):
        if schedule[key] <= 0:
            raise ValueError(f"schedule.{key}={schedule[key]} must be positive")
    for key, value in {"schedule.warmup_steps": schedule["warmup_steps"], "schedule.threshold": schedule["threshold"],
                       "trainer.early_stop_patience": trainer["early_stop_patience"],
                       "trainer.early_stop_min_delta": trainer["early_stop_min_delta"]}.items():
        if value < 0:
            raise ValueError(f"{key}={value} must be >= 0" + (" (0 turns early stopping off)" if key ==
                                                              "trainer.early_stop_patience" else ""))
    for key in ("min_lr_scale", "factor"):
        if not 0 <= schedule[key] <= 1:
            raise ValueError(f"schedule.{key}={schedule[key]} must be in [0, 1] (a fraction of optim.lr)")
    device = trainer["device"]
    if device != "auto" and not re.fullmatch(r"cpu|cuda(:\d+)?|mps", device):
        raise ValueError(f"trainer.device={device} is not a device: use auto, cpu, cuda or cuda:N")
    if trainer["unitary_penalty"] > 0:
        penalised = [name for name, cls in MODELS.items() if cls.penalised]
        if model["name"] not in penalised:
            raise ValueError(f"trainer.unitary_penalty={trainer['unitary_penalty']} has nothing to act on: "
                             f"model={model['name']} has no Kronecker factors. It applies to {', '.join(penalised)}; "
                             "leave it at 0 for the other models")


#: keys that moved, old -> new (flattened): configs written by earlier krubench (checkpoints, results.json)
#: are read as if written with the new names, so old runs resume and share report rows with new ones
MOVED_KEYS = {"model.penalty": "trainer.unitary_penalty"}


def upgrade_config(config: dict) -> dict:
    """A run's saved config with MOVED_KEYS renamed, and the default schedule (constant) where it was written
    before schedules existed (a new dict; the argument is left as it is)."""
    config = copy.deepcopy(config)
    if "schedule" not in config:
        config["schedule"] = OmegaConf.to_container(OmegaConf.structured(ScheduleConfig), enum_to_str=True)
    for old, new in MOVED_KEYS.items():
        (old_group, old_key), (new_group, new_key) = old.split("."), new.split(".")
        if old_key in config.get(old_group, {}):
            config.setdefault(new_group, {})[new_key] = config[old_group].pop(old_key)
    return config


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as one level of dotted keys: {"optim": {"lr": 1}} -> {"optim.lr": 1}."""
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def flatten_numbers(d, prefix: str = "") -> dict[str, float]:
    """Every float (and list of floats) in the config by its dotted key; ints and bools are always finite."""
    if isinstance(d, dict):
        return {k: v for key, sub in d.items() for k, v in flatten_numbers(sub, f"{prefix}{key}.").items()}
    if isinstance(d, list):
        return {k: v for i, sub in enumerate(d) for k, v in flatten_numbers(sub, f"{prefix[:-1]}[{i}].").items()}
    return {prefix[:-1]: d} if isinstance(d, float) else {}


# Made at import, not on first use: a launcher's worker (joblib, submitit) unpickles the composed config, whose
# nodes name these schemas and their choices, before anything in it would have built them.
schemas()
