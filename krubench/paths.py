"""Where krubench finds its Hydra configs, from a source checkout, an editable install or a wheel."""
from __future__ import annotations

from pathlib import Path

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
