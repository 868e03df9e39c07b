"""Model families. `build_model` turns the `model` config group into a module."""
from __future__ import annotations

from .base import SequenceModel
from .kru import KRU
from .lstm import LSTM, LSTMKRU
from .rnn import RNN

MODELS = {"kru": KRU, "rnn": RNN, "lstm": LSTM, "lstm_kru": LSTMKRU}


def build_model(cfg, input_size: int, output_size: int) -> SequenceModel:
    """cfg: the `model` config as a plain dict (enums as strings); its fields other than `name` are the constructor's keywords."""
    kwargs = {k: v for k, v in cfg.items() if k not in ("name", "penalty")}  # penalty is the trainer's
    return MODELS[cfg["name"]](input_size, output_size, **kwargs)


__all__ = ["KRU", "LSTM", "LSTMKRU", "MODELS", "RNN", "SequenceModel", "build_model"]
