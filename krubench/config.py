"""Structured-config schemas for every config group. Hydra checks each YAML file and each command-line
override against these dataclasses, so a misspelled key or a wrong type fails at composition.
The YAML files in conf/ hold the defaults users see; the schemas hold names and types."""
from __future__ import annotations

import copy
import hashlib
import math
import re
from pathlib import Path
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from .data.sources import MUSIC
from .models import MODELS
from .models.exprnn import SKEW_INITS
from .models.kru import FACTOR_INITS, MAP_INITS
from .models.lstm import FACTORISATIONS
from .models.rnn import RNN_INITS, RNN_NONLINEARITIES
from .models.unitary import RECURRENCES
from .ops import KERNELS, NONLINEARITIES
from .optim import USES as SCHEDULE_USES
from .tasks.adding import PLACEMENTS


class Choice(Enum):
    """A config choice that prints as its value (`jsb`, not `MusicDataset.jsb`): tab completion and messages."""

    def __str__(self) -> str:
        return str(self.value)


def choices(name: str, *values: str) -> type[Enum]:
    """An Enum of accepted strings: a wrong value fails at composition, naming the accepted ones."""
    return Choice(name, {v: v for v in values})


# the accepted values are defined next to the code that implements them; the schemas only name them
Placement = choices("Placement", *PLACEMENTS)
MusicDataset = choices("MusicDataset", *MUSIC)
KRUNonlinearity = choices("KRUNonlinearity", *NONLINEARITIES)
FactorInit = choices("FactorInit", *FACTOR_INITS)
MapInit = choices("MapInit", *MAP_INITS)
RNNNonlinearity = choices("RNNNonlinearity", *RNN_NONLINEARITIES)
RNNInit = choices("RNNInit", *RNN_INITS)
Factorisation = choices("Factorisation", *FACTORISATIONS)
SkewInit = choices("SkewInit", *SKEW_INITS)
Kernel = choices("Kernel", *KERNELS)
Recurrence = choices("Recurrence", *RECURRENCES)
OptimName = choices("OptimName", "rmsprop", "adam", "sgd")
Resume = choices("Resume", "auto", "never")
Progress = choices("Progress", "auto", "always", "never")
ScheduleName = choices("ScheduleName", *SCHEDULE_USES)


# The schemas give each group's keys, their types and the accepted values; the values themselves, defaults
# included, live in conf/ (one place; tests/test_config.py checks that the constructors' Python defaults agree).
# ---- task ----
@dataclass
class CopyConfig:
    name: str = "copy"
    T: int = MISSING  # blank length; sequences are T + 20 long
    batch_size: int = MISSING
    val_size: int = MISSING  # sequences in the fixed validation set


@dataclass
class AddingConfig:
    name: str = "adding"
    T: int = MISSING  # sequence length
    placement: Placement = MISSING  # halves (one marker per half, Arjovsky) | uniform
    batch_size: int = MISSING
    val_size: int = MISSING


@dataclass
class PixelMNISTConfig:
    name: str = "pixel_mnist"
    permute: bool = MISSING  # permuted MNIST: one fixed permutation of the 784 pixels
    permutation_seed: int = MISSING  # numpy RandomState(seed).permutation(784); 92916 as in uRNN/expRNN
    val_size: int = MISSING  # the last val_size training images are the validation split
    batch_size: int = MISSING
    eval_batch_size: int = MISSING
    eval_limit: Optional[int] = MISSING  # evaluate on the first eval_limit images of a split only (smoke runs: the final ones too)
    val_limit: Optional[int] = MISSING  # validate during training on the first val_limit images; the final evaluations read all


@dataclass
class PTBCharConfig:
    name: str = "ptb_char"
    bptt: int = MISSING  # truncated-BPTT segment length (steps); the state is carried across segments
    batch_size: int = MISSING  # parallel columns of the training stream
    eval_batch_size: int = MISSING  # parallel columns of the valid/test stream
    eval_limit: Optional[int] = MISSING  # evaluate on the first eval_limit tokens of a split only (smoke runs: the final ones too)
    val_limit: Optional[int] = MISSING  # validate during training on the first val_limit tokens; the final evaluations read all


@dataclass
class MusicConfig:
    name: str = "music"
    dataset: MusicDataset = MISSING  # jsb | piano | nottingham | musedata
    batch_size: int = MISSING  # whole sequences per step, padded and masked
    eval_batch_size: int = MISSING
    eval_limit: Optional[int] = MISSING  # evaluate on the first eval_limit sequences of a split only (smoke runs: the final ones too)
    val_limit: Optional[int] = MISSING  # validate during training on the first val_limit sequences; the final evaluations read all


# ---- model ----
@dataclass
class KRUConfig:
    name: str = "kru"
    hidden_size: int = MISSING
    factor_size: int = MISSING  # square factors of this size: hidden_size must be a power of it
    factors: Optional[List[int]] = MISSING  # explicit factor sizes instead, e.g. [4, 4, 8]
    complex: bool = MISSING
    nonlinearity: KRUNonlinearity = MISSING  # modrelu | relu | tanh
    init: FactorInit = MISSING  # unitary (Haar random) | identity
    merge_upto: int = MISSING  # apply neighbouring factors merged up to this size (same W, fewer ops); 1 = off
    kernel: Kernel = MISSING  # auto (fastest for the device) | cuda | cpp | reference (pure PyTorch)
    input_bias: Optional[bool] = MISSING  # additive bias in U x_t + b; null: only without modReLU (its bias is b)
    input_init: MapInit = MISSING  # glorot (uRNN) | torch (nn.Linear's default)
    modrelu_bias_init: float = MISSING  # modReLU bias starts U(±this) (uRNN); 0: zeros
    readout_init: MapInit = MISSING  # glorot, zero bias (uRNN) | torch (nn.Linear's default)


@dataclass
class RNNConfig:
    name: str = "rnn"
    hidden_size: int = MISSING
    nonlinearity: RNNNonlinearity = MISSING  # tanh | relu
    init: RNNInit = MISSING  # default | orthogonal | identity


@dataclass
class LSTMConfig:
    name: str = "lstm"
    hidden_size: int = MISSING


@dataclass
class LSTMKRUConfig:
    name: str = "lstm_kru"
    hidden_size: int = MISSING
    factor_size: int = MISSING
    factors: Optional[List[int]] = MISSING
    complex: bool = MISSING
    init: FactorInit = MISSING
    factorisation: Factorisation = MISSING  # per_gate (four N×N products) | joint (one 4N×N product)
    merge_upto: int = MISSING
    kernel: Kernel = MISSING  # auto | cuda | cpp | reference, as for kru


@dataclass
class URNNConfig:
    name: str = "urnn"
    hidden_size: int = MISSING
    recurrence: Recurrence = MISSING  # auto | dense | reference (autograd through the loop): the same math


@dataclass
class FCURNNConfig(URNNConfig):
    name: str = "fcurnn"  # the same keys as urnn


@dataclass
class EURNNConfig:
    name: str = "eurnn"
    hidden_size: int = MISSING
    capacity: Optional[int] = MISSING  # tunable style: layers of rotations; null: 2 (tunable), log2 N (fft)
    fft: bool = MISSING  # FFT style: log2 N layers (hidden_size a power of 2)
    complex: bool = MISSING
    recurrence: Recurrence = MISSING  # as for urnn


@dataclass
class ExpRNNConfig:
    name: str = "exprnn"
    hidden_size: int = MISSING
    init: SkewInit = MISSING  # henaff (copy) | cayley (MNIST): the repository's skew initialisations
    recurrence: Recurrence = MISSING  # as for urnn


# ---- optim ----
# optim and schedule options share one schema each, and an option's YAML sets only its own keys: the
# schema's values are what the others read (None or neutral).
@dataclass
class OptimConfig:
    name: OptimName = MISSING  # rmsprop | adam | sgd
    lr: float = 1e-3
    weight_decay: float = 0.0
    alpha: Optional[float] = None  # rmsprop smoothing constant
    betas: Optional[List[float]] = None  # adam
    momentum: Optional[float] = None  # sgd, rmsprop
    eps: float = 1e-8  # rmsprop, adam: added to the root-mean-square in the step's denominator
    # the recurrent matrix's own parameters (Kronecker factors; the peers' unitary part) train at lr × this;
    # None: the model's default_factor_lr_scale (kru and exprnn 0.1, the others 1.0)
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

SCHEMAS = {
    "task": {"copy": CopyConfig, "adding": AddingConfig, "pixel_mnist": PixelMNISTConfig, "ptb_char": PTBCharConfig,
             "music": MusicConfig},
    "model": {"kru": KRUConfig, "rnn": RNNConfig, "lstm": LSTMConfig, "lstm_kru": LSTMKRUConfig, "urnn": URNNConfig,
              "fcurnn": FCURNNConfig, "eurnn": EURNNConfig, "exprnn": ExpRNNConfig},
    "optim": {"rmsprop": OptimConfig, "adam": OptimConfig, "sgd": OptimConfig},
    "trainer": {"default": TrainerConfig, "debug": TrainerConfig},
    "schedule": {"constant": ScheduleConfig, "cosine": ScheduleConfig, "step": ScheduleConfig,
                 "reduce_on_plateau": ScheduleConfig},
}


def setting_key(task) -> str:
    """The benchmark setting of a `task` config (a dict or the composed node): what its task class says it is
    (`Task.setting`), e.g. copy_T1000, permuted_mnist, music_jsb."""
    from .tasks import TASKS  # here: the tasks import the data layer, which imports this module
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
    from .tasks import TASKS

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
    for group, options in SCHEMAS.items():
        for option, node in options.items():
            cs.store(name=f"schema_{group}_{option}", node=node)


def validate(config: dict) -> None:
    """Checks a schema cannot express (ranges, finiteness), on the resolved plain config; raises ValueError
    naming the key."""
    optim, trainer, model, task = config["optim"], config["trainer"], config["model"], config["task"]
    positive = {
        "trainer.steps": trainer["steps"], "trainer.val_every": trainer["val_every"],
        "trainer.log_every": trainer["log_every"], "trainer.ckpt_every": trainer["ckpt_every"],
        "optim.lr": optim["lr"], "model.hidden_size": model["hidden_size"],
        "optim.eps": optim["eps"], "optim.factor_lr_scale": optim["factor_lr_scale"],
    }
    for key in ("batch_size", "val_size", "eval_batch_size", "eval_limit", "bptt", "T"):
        if task.get(key) is not None:
            positive[f"task.{key}"] = task[key]
    at_least_zero = {
        "optim.weight_decay": optim["weight_decay"], "optim.momentum": optim["momentum"],
        "trainer.threads": trainer["threads"], "trainer.unitary_penalty": trainer["unitary_penalty"],
        "model.modrelu_bias_init": model.get("modrelu_bias_init"),
        "trainer.grad_clip": trainer["grad_clip"],
    }
    for key, value in flatten_numbers(config).items():
        if not math.isfinite(value):
            raise ValueError(f"{key}={value} must be a finite number")
    for key, value in positive.items():
        if value is not None and value <= 0:  # None: optim.factor_lr_scale=null, the model's own
            raise ValueError(f"{key}={value} must be positive")
    for key, value in at_least_zero.items():
        if value is not None and value < 0:
            raise ValueError(f"{key}={value} must be >= 0" + {
                "trainer.grad_clip": " (0 turns clipping off)", "trainer.threads": " (0: torch's default)",
                "model.modrelu_bias_init": " (the half-width of the uniform range; 0 starts the bias at zero)",
            }.get(key, ""))
    if model.get("merge_upto") is not None and model["merge_upto"] < 1:
        raise ValueError(f"model.merge_upto={model['merge_upto']} must be >= 1 (1 turns merging off)")
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
