"""Adding a model and a task: one class, one registry line and one YAML each, nothing else edited. A user's script
registers them and runs krubench's own command line, with the YAML in a conf folder of its own (hydra.searchpath);
the run composes, is checked, memory-estimated, trains and validates, and krubench-report lists it."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

# the classes and their registry lines, as a user's module
EXTENSION = '''
import torch
import torch.nn.functional as F
from torch import nn

from krubench.models import MODELS, SequenceModel
from krubench.tasks import TASKS
from krubench.tasks.base import Task, evaluate_batches, seeded_generator


class GRU(SequenceModel):
    """torch's GRU with a read-out."""
    gates = 3
    choices = {"readout": ("linear", "tanh")}
    non_negative = {"dropout": "0 turns it off"}

    def __init__(self, input_size: int, output_size: int, hidden_size: int = 32, readout: str = "linear",
                 dropout: float = 0.0):
        super().__init__()
        self.gru = nn.GRU(input_size, hidden_size, batch_first=True)
        self.V = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden_size, output_size),
                               *([nn.Tanh()] if readout == "tanh" else []))

    def recurrent_parameters(self):
        return [self.gru.weight_hh_l0]

    def forward(self, x, state=None, last_only=False):
        H, h = self.gru(x, None if state is None else state.unsqueeze(0))  # (B, T, N), (1, B, N)
        return self.V(H[:, -1:] if last_only else H), h[0]


class FirstBit(Task):
    """Recall the first of T random bits at the last step."""
    name = "first_bit"
    input_size, output_size = 1, 2
    scores_last_step_only = True
    positive = {"T": "", "batch_size": ""}

    @classmethod
    def sequence_length(cls, cfg):
        return cfg["T"], "task.T"

    def __init__(self, T: int = 8, batch_size: int = 16, seed: int = 0):
        self.T, self.batch_size, self.seed = T, batch_size, seed

    def train_batch(self, step, stream="train"):
        bits = torch.randint(0, 2, (self.batch_size, self.T), generator=seeded_generator(self.seed, stream, step))
        return bits.unsqueeze(-1).float(), bits[:, 0]  # (B, T, 1), (B,)

    def loss(self, y, target):
        return F.cross_entropy(y[:, -1], target)

    def evaluate(self, model, device, split="val", whole=False):
        return evaluate_batches(model, [self.train_batch(0, "val")], self.loss, device, last_only=True)

    def baselines(self):
        return {"loss": float(torch.log(torch.tensor(2.0)))}


MODELS["gru"] = GRU  # the registry lines
TASKS["first_bit"] = FirstBit
'''

YAML = {
    "model/gru.yaml": """
        # torch's GRU.
        defaults:
          - /schema_model_gru@_here_
          - _self_

        hidden_size: 32
        readout: linear
        dropout: 0.0
        """,
    "task/first_bit.yaml": """
        # The first of T bits, recalled at the last step.
        defaults:
          - /schema_task_first_bit@_here_
          - _self_

        T: 8
        batch_size: 16
        """,
}


def run(tmp_path: Path, module: str, *args: str) -> subprocess.CompletedProcess:
    """`module`'s main (krubench.cli: krubench, krubench.report.table: krubench-report) after the extension."""
    code = f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import extension; from {module} import main; main()"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)


def test_a_model_and_a_task_are_one_class_one_registry_line_and_one_yaml_each(tmp_path):
    (tmp_path / "extension.py").write_text(EXTENSION)
    for name, text in YAML.items():
        (tmp_path / "conf" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "conf" / name).write_text(textwrap.dedent(text))
    common = [f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "task=first_bit", "model=gru", "trainer=debug",
              "trainer.steps=6", "trainer.val_every=3"]

    trained = run(tmp_path, "krubench.cli", *common, "model.readout=tanh", f"hydra.run.dir={tmp_path / 'run'}")
    assert trained.returncode == 0, trained.stderr
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert (results["setting"], results["model"], results["steps"]) == ("first_bit", "gru", 6)
    assert results["config"]["model"] == {"name": "gru", "hidden_size": 32, "readout": "tanh", "dropout": 0.0}
    assert results["params"]["recurrent"] == 3 * 32 * 32

    report = run(tmp_path, "krubench.report.table", str(tmp_path / "run"))
    assert report.returncode == 0 and "| first_bit | gru |" in report.stdout, report.stdout + report.stderr

    # the schema, the range checks and the memory estimate come from the classes
    refusals = {"model.readout=relu": "Invalid value 'relu', expected one of [linear, tanh]",
                "model.hiden_size=8": "model.hiden_size is not a key of model=gru, whose keys are hidden_size, "
                                      "readout, dropout",
                "model.dropout=-1": "model.dropout=-1.0 must be >= 0 (0 turns it off)",
                "task.T=0": "task.T=0 must be positive",
                "task.T=100000000": "task.T (100000000 steps)"}
    for override, message in refusals.items():
        refused = run(tmp_path, "krubench.cli", *common, override, f"hydra.run.dir={tmp_path / 'refused'}")
        assert refused.returncode == 1 and message in refused.stderr, (override, refused.stderr)
