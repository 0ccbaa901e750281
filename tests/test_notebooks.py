"""The notebooks in examples/ run from a clean kernel, each showing at least one inline image and
one sample, with no error; and they are committed without outputs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))


def test_there_are_notebooks():
    assert {p.name for p in NOTEBOOKS} >= {"lecture.ipynb", "finetune.ipynb", "inside.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_a_notebook_is_committed_without_outputs_and_with_a_parameter_cell(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    with_outputs = [i for i, c in enumerate(code) if c.outputs or c.execution_count is not None]
    assert with_outputs == [], f"{path.name}: clear the outputs of code cells {with_outputs}"
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and "CHARLOOM_NOTEBOOK_QUICK" in params[0].source


def _outputs(nb) -> list[tuple[list[str], dict]]:
    return [
        (c.metadata.get("tags", []), o)
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_a_notebook_runs_from_a_clean_kernel(path, tmp_path, monkeypatch):
    monkeypatch.setenv("CHARLOOM_NOTEBOOK_QUICK", "1")
    # The kernel inherits the environment: charloom from this tree.
    src = str(Path(__file__).resolve().parents[1] / "src")
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))
    )
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError on the first failing cell
    outputs = _outputs(nb)
    errors = [o for _, o in outputs if o.output_type == "error"]
    assert errors == []
    images = [o for _, o in outputs if "image/png" in o.get("data", {})]
    assert images, f"{path.name} showed no inline image"
    samples = [
        o.text
        for tags, o in outputs
        if "sample" in tags and o.output_type == "stream" and o.name == "stdout"
    ]
    assert any(len(s.strip()) >= 100 and "Th" in s for s in samples), samples
    assert (tmp_path / "runs").is_dir()  # the runs went where the notebook said
