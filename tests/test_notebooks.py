"""The tutorial notebooks in nbs/ run from top to bottom with their tiny settings (TSAI_SSL_FAST=1).

Each notebook is executed by nbclient in a kernel running *this* interpreter (so it imports the installed tsai_ssl),
with the working directory set to a temporary folder (the `models/`, `data/` and `runs/` files the notebooks write
land there, not in the repository). Any cell error fails the test and names the cell.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip('nbformat')
nbclient = pytest.importorskip('nbclient')
pytest.importorskip('ipykernel')

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / 'nbs').glob('*.ipynb'))
KERNEL = 'tsai-ssl-test'


def test_the_tutorials_exist():
    assert [p.name for p in NOTEBOOKS] == ['01_quickstart.ipynb', '02_long_and_variable_length.ipynb',
                                            '03_how_many_labels.ipynb']


@pytest.mark.parametrize('path', NOTEBOOKS, ids=lambda p: p.stem)
def test_saved_without_outputs(path):
    "Committed notebooks carry no outputs (results depend on the machine; diffs stay readable)."
    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == 'code':
            assert cell.outputs == [] and cell.execution_count is None, f'{path.name}: cell {i} has outputs'
    assert "os.environ.get('TSAI_SSL_FAST', '1')" in nb.cells[1].source, f'{path.name}: no FAST setting in its first code cell'


@pytest.fixture(scope='module')
def kernel_dirs(tmp_path_factory) -> list[str]:
    "A kernelspec that starts ipykernel with this interpreter (a system-wide 'python3' spec could point elsewhere)."
    root = tmp_path_factory.mktemp('kernels')
    spec = root / KERNEL
    spec.mkdir()
    spec.joinpath('kernel.json').write_text(json.dumps({
        'argv': [sys.executable, '-m', 'ipykernel_launcher', '-f', '{connection_file}'],
        'display_name': 'tsai-ssl tests', 'language': 'python'}))
    return [str(root)]


@pytest.mark.parametrize('path', NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, kernel_dirs, tmp_path, monkeypatch):
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    monkeypatch.setenv('TSAI_SSL_FAST', '1')
    # tiny tensors: one intra-op thread is fastest and does not oversubscribe a small, busy CI machine
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    monkeypatch.setenv('MKL_NUM_THREADS', '1')
    nb = nbformat.read(path, as_version=4)
    km = KernelManager(kernel_name=KERNEL, kernel_spec_manager=KernelSpecManager(kernel_dirs=kernel_dirs))
    client = nbclient.NotebookClient(nb, km=km, timeout=600, resources={'metadata': {'path': str(tmp_path)}})
    client.execute()  # raises CellExecutionError (with the cell's source and traceback) on any error
    errors = [o for c in nb.cells if c.cell_type == 'code' for o in c.outputs if o.output_type == 'error']
    assert not errors
    assert (tmp_path / 'models').is_dir() or (tmp_path / 'runs').is_dir()  # the notebook wrote into the temp folder
