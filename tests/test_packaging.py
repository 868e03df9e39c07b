"""What the distribution says about itself: its license file, how to cite it and the paper, its metadata, and
no dependency it does not need (torchvision: krubench reads MNIST's idx files itself)."""
import pytest
import yaml

from conftest import REPO


def pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def test_license_file_matches_the_metadata():
    text = (REPO / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Copyright (c) 2026 the krubench authors" in text
    assert pyproject()["license"] == {"text": "MIT"} and "License :: OSI Approved :: MIT License" in pyproject()["classifiers"]


def test_citation_cites_krubench_and_the_paper():
    cff = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software" and cff["license"] == "MIT"
    assert cff["version"] == pyproject()["version"]
    paper = cff["references"][0]
    assert paper["title"] == "Kronecker Recurrent Units" and paper["year"] == 2018
    assert [a["family-names"] for a in paper["authors"]] == ["Jose", "Cissé", "Fleuret"]
    assert (paper["volume"], paper["start"], paper["end"]) == (80, 2380, 2389)
    assert paper["url"] == pyproject()["urls"]["Paper"] == "https://arxiv.org/abs/1705.10142"


def test_dependencies_and_extras():
    project = pyproject()
    assert not any(d.startswith("torchvision") for d in project["dependencies"])
    extras = project["optional-dependencies"]
    for extra in ("wandb", "mlflow", "joblib", "slurm", "optuna"):  # CI installs [dev]: every optional path is tested
        assert set(extras[extra]) <= set(extras["dev"]), extra
