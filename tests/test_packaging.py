"""The package's metadata and the archive check `.ci/run` applies to the built sdist and wheel."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _check_dist():
    spec = importlib.util.spec_from_file_location('check_dist', ROOT / '.ci' / 'check_dist.py')
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_version_lives_in_one_place():
    tomllib = pytest.importorskip('tomllib')  # Python 3.11+
    meta = tomllib.loads((ROOT / 'pyproject.toml').read_text())
    assert 'version' not in meta['project'] and 'version' in meta['project']['dynamic']
    assert meta['tool']['setuptools']['dynamic']['version'] == {'attr': 'tsai_ssl.__version__'}
    assert re.search(r"^__version__ = '[0-9.]+'$", (ROOT / 'tsai_ssl' / '__init__.py').read_text(), re.M)


def test_archive_check_accepts_the_package_and_refuses_anything_else():
    cd = _check_dist()
    pkg = {'tsai_ssl/__init__.py', 'tsai_ssl/tasks/masked.py'}
    wheel = ['tsai_ssl/__init__.py', 'tsai_ssl/tasks/masked.py', 'tsai_ssl-0.1.0.dist-info/METADATA', 'tsai_ssl-0.1.0.dist-info/RECORD']
    sdist = [*pkg, 'PKG-INFO', 'pyproject.toml', 'README.md', 'LICENSE', 'tsai_ssl.egg-info/SOURCES.txt']
    assert cd.problems(wheel, sdist, pkg) == []
    assert cd.problems(wheel + ['tests/test_data.py'], sdist, pkg) == [
        'wheel holds tests/test_data.py, which is not part of the package']
    assert cd.problems(wheel, sdist + ['bench/panel.py'], pkg) == [
        'sdist holds bench/panel.py, which is not part of the package']
    assert cd.problems(wheel[1:], sdist, pkg) == ['wheel lacks tsai_ssl/__init__.py']  # wheel[0] is __init__.py


def test_the_package_files_are_what_git_tracks():
    files = _check_dist().package_files()
    assert 'tsai_ssl/__init__.py' in files and 'tsai_ssl/tasks/registry.py' in files
    assert all(f.startswith('tsai_ssl/') for f in files)
