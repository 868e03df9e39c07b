"""krubench: Kronecker Recurrent Units and the benchmarks of Jose, Cissé & Fleuret (ICML 2018)."""
__version__ = "0.1.0"
