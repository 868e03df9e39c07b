"""Model families. `build_model` turns the `model` config group into a module."""
from __future__ import annotations

from .base import SequenceModel
from .eurnn import EURNN
from .exprnn import ExpRNN
from .fcurnn import FCURNN
from .kru import KRU
from .lstm import LSTM, LSTMKRU
from .rnn import RNN
from .urnn import URNN

# in the order the report lists them and the plots colour them; the last four: the unitary peers
MODELS = {"kru": KRU, "lstm_kru": LSTMKRU, "lstm": LSTM, "rnn": RNN,
          "urnn": URNN, "fcurnn": FCURNN, "eurnn": EURNN, "exprnn": ExpRNN}


def default_factor_lr_scale(name: str) -> float:
    """What optim.factor_lr_scale=null means for model `name`."""
    return MODELS[name].default_factor_lr_scale


def build_model(cfg, input_size: int, output_size: int) -> SequenceModel:
    """cfg: the `model` config as a plain dict (enums as strings); its fields other than `name` are the constructor's keywords."""
    kwargs = {k: v for k, v in cfg.items() if k != "name"}
    return MODELS[cfg["name"]](input_size, output_size, **kwargs)


__all__ = ["EURNN", "FCURNN", "KRU", "LSTM", "LSTMKRU", "MODELS", "RNN", "SequenceModel", "URNN", "ExpRNN",
           "build_model", "default_factor_lr_scale"]
