"""The documentation site's sources: every public name has an API entry with an example, every page is in the
navigation, code blocks parse, and the own-module guide runs as written. (`.ci/run` builds the site with
``mkdocs build --strict``, which checks links, anchors and the docstrings' sections.)"""
from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

import tsai_ssl

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / 'docs'
PAGES = sorted(p for p in DOCS.rglob('*.md'))


def _api_entries() -> dict[str, str]:
    "identifier after ``:::`` -> page, over the API reference."
    out = {}
    for page in sorted((DOCS / 'api').glob('*.md')):
        for ident in re.findall(r'^::: ([\w.]+)', page.read_text(), re.M): out[ident] = page.name
    return out


def test_every_public_name_has_an_api_entry():
    entries = {ident.rsplit('.', 1)[-1]: ident for ident in _api_entries()}
    missing = [n for n in tsai_ssl.__all__ if n not in entries]
    assert not missing, f'public names without an entry in docs/api/: {missing}'
    for name in tsai_ssl.__all__:  # the entry points at where the object really lives
        obj = getattr(tsai_ssl, name)
        module, _, attr = entries[name].rpartition('.')
        assert attr == name and obj.__module__ == module, (name, entries[name], obj.__module__)


@pytest.mark.parametrize('name', tsai_ssl.__all__)
def test_every_public_name_has_an_example(name):
    doc = inspect.getdoc(getattr(tsai_ssl, name)) or ''
    m = re.search(r'^Example:\n((?:    .*\n?|\n)+)', doc, re.M)
    assert m, f'{name}: no "Example:" section in its docstring'
    code = re.search(r'```python\n(.*?)```', inspect.cleandoc(m.group(1)), re.S)
    assert code, f'{name}: its example has no ```python block'
    ast.parse(code.group(1))


def _nav_files(nav) -> list[str]:
    out = []
    for item in nav:
        for v in (item.values() if isinstance(item, dict) else [item]):
            out += _nav_files(v) if isinstance(v, list) else [v]
    return out


def test_every_page_is_in_the_navigation():
    yaml = pytest.importorskip('yaml')
    config = yaml.safe_load((ROOT / 'mkdocs.yml').read_text())
    nav = set(_nav_files(config['nav']))
    pages = {str(p.relative_to(DOCS)) for p in PAGES} | {f'tutorials/{p.name}' for p in (ROOT / 'nbs').glob('*.ipynb')}
    assert pages == nav, f'not in nav: {sorted(pages - nav)}; in nav but missing: {sorted(nav - pages)}'


@pytest.mark.parametrize('page', [ROOT / 'README.md', *PAGES], ids=lambda p: str(p.relative_to(ROOT)))
def test_python_blocks_parse(page):
    for i, block in enumerate(re.findall(r'```python\n(.*?)```', page.read_text(), re.S)):
        try:
            ast.parse(block)
        except SyntaxError as e:
            pytest.fail(f'{page.name}: python block {i}: {e}')


def test_cli_help_marks_name_real_commands():
    import importlib.util
    spec = importlib.util.spec_from_file_location('docs_hooks', DOCS / 'hooks.py')
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    marks = hooks._MARK.findall((DOCS / 'guides' / 'cli.md').read_text())
    assert marks and 'store build' in marks
    for m in marks: assert hooks.help_text(m).startswith(f"usage: tsai-ssl {m}".rstrip()), m  # a real (sub)command


def test_changelog_has_the_package_version():
    text = (ROOT / 'CHANGELOG.md').read_text()
    first = re.search(r'^## (\S+)', text, re.M).group(1)
    assert first == tsai_ssl.__version__, (first, tsai_ssl.__version__)


def _run_guide(page: str, folder, monkeypatch) -> dict:
    "Run the first python block of a guide as written, in `folder`; return its namespace."
    code = re.findall(r'```python\n(.*?)```', (DOCS / 'guides' / page).read_text(), re.S)[0]
    monkeypatch.chdir(folder)
    ns: dict = {}
    exec(compile(code, page, 'exec'), ns)
    return ns


def test_own_module_guide_runs_as_written(tmp_path, monkeypatch):
    "The guide's code (the user story's nn.Module, pretrained with next-step, then fine-tuned) runs unchanged."
    ns = _run_guide('own-module.md', tmp_path, monkeypatch)
    from tsai_ssl import lookahead, split_backbone
    assert (tmp_path / 'models' / 'ssl_net.pth').exists()
    assert lookahead(split_backbone(ns['Net'](2)), c_in=1) == 24  # the figure the guide states


def test_transformers_guide_runs_as_written(tmp_path, monkeypatch):
    "The guide's code (a TSTPlus pretrained with next-step on patches, then the standard classifier) runs unchanged."
    ns = _run_guide('transformers.md', tmp_path, monkeypatch)
    assert (tmp_path / 'models' / 'ssl_tst.pth').exists() and tuple(ns['preds'].shape) == (8, 2)
    task = next(cb for cb in ns['learn'].cbs if type(cb).__name__ == 'NextStepPretrain')
    assert task.pretext_head.shift == 7  # patches of 8 steps: 'shift' predicts 7 steps past a feature
