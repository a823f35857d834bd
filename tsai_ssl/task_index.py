"""Task names without importing the tasks, so the CLI refuses a mistyped ``--tasks`` at once.

The registry (`tsai_ssl.tasks.registry`) is the truth, but importing it imports torch, fastai and tsai (8-13 s on
2 cores). The names and aliases are literals in each task class (``task_name, aliases, label = ...``), so they are
read here from the files in ``tsai_ssl/tasks/`` with `ast`, without running them; a test checks that this index and
the registry agree.
"""
from __future__ import annotations

import ast
from pathlib import Path

from .errors import InputError

__all__ = ['shipped_tasks', 'check_task_names', 'task_key']

_TASKS_DIR = Path(__file__).parent / 'tasks'


def _literal_attrs(cls: ast.ClassDef) -> dict:
    "The literal values of `task_name` / `aliases` / `label` assigned in a class body (tuple assignments too)."
    out = {}
    for node in cls.body:
        if not isinstance(node, ast.Assign) or len(node.targets) != 1: continue
        tgt, val = node.targets[0], node.value
        pairs = (zip(tgt.elts, val.elts) if isinstance(tgt, ast.Tuple) and isinstance(val, ast.Tuple)
                 and len(tgt.elts) == len(val.elts) else [(tgt, val)])
        for t, v in pairs:
            if isinstance(t, ast.Name) and t.id in ('task_name', 'aliases', 'label'):
                try: out[t.id] = ast.literal_eval(v)
                except ValueError: pass
    return out


def shipped_tasks() -> dict[str, tuple[str, ...]]:
    "Canonical name -> aliases of every task class in ``tsai_ssl/tasks/*.py`` (files in name order)."
    found = {}
    for path in sorted(_TASKS_DIR.glob('*.py')):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef):
                attrs = _literal_attrs(node)
                if attrs.get('task_name'): found[attrs['task_name']] = tuple(attrs.get('aliases', ()))
    return found


def task_key(name: str) -> str:
    "How names and aliases compare: case, spaces and '_' vs '-' do not matter (the registry uses it too)."
    return str(name).strip().lower().replace('_', '-')


def check_task_names(names) -> list[str]:
    "The canonical names of `names` (names or aliases, any case); `InputError` for one that is no task."
    tasks = shipped_tasks()
    lookup = {task_key(k): n for n, aliases in tasks.items() for k in (n, *aliases)}
    out = []
    for name in names:
        canon = lookup.get(task_key(name))
        if canon is None:
            known = ', '.join(f"{n} ({', '.join(a)})" if a else n for n, a in tasks.items())
            raise InputError(f'unknown task {name!r}: choose from {known}')
        out.append(canon)
    return out
