"""krubench: Kronecker Recurrent Units and the benchmarks of Jose, Cissé & Fleuret (ICML 2018).

For use in another model: `KRULayer` (a sequence in, its hidden states out) and `KRUCell` (one step)."""
from .models.kru import KRUCell, KRULayer

__version__ = "0.1.0"
__all__ = ["KRUCell", "KRULayer", "__version__"]
