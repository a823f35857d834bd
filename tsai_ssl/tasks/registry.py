"""The task registry: every `PretextTask` subclass that declares a ``task_name`` registers itself when its module is
imported, with its aliases, table label, relative epoch cost and the options its constructor accepts.

    get_task('next-step')                 # -> NextStepPretrain
    make_task('masked', ratio=0.3)        # an unknown option raises, naming the accepted ones
    task_names()                          # ['masked', 'next', 'contrastive', 'ts2vec', ...]

A new task is one file in ``tsai_ssl/tasks/`` defining the class (with ``task_name``, ``aliases``, ``label``):
the package imports every module of the folder, and the experiment code and the CLI read this registry.
"""
from __future__ import annotations

import inspect

from ..errors import InputError
from ..task_index import task_key as _key

__all__ = ['register', 'get_task', 'task_names', 'task_label', 'task_options', 'make_task']

_TASKS: dict[str, type] = {}  # canonical name -> class, in registration (import) order
_ALIASES: dict[str, str] = {}  # lower-case name or alias -> canonical name


def register(cls: type) -> type:
    "Add a task class (called by `PretextTask.__init_subclass__` for classes that declare ``task_name``)."
    name = cls.task_name
    for k in (name, *cls.aliases):
        owner = _ALIASES.get(_key(k))
        if owner is not None and owner != name:
            raise ValueError(f'task name or alias {k!r} of {cls.__name__} is already taken by {_TASKS[owner].__name__}')
    _TASKS[name] = cls
    for k in (name, *cls.aliases): _ALIASES[_key(k)] = name
    return cls


def task_names() -> list[str]:
    "Canonical names of the registered tasks."
    return list(_TASKS)  # importing this module imported the package, and with it every shipped task


def get_task(name: str | type) -> type:
    "The task class for a name or alias (case-insensitive); a class passes through. `InputError` if unknown."
    if isinstance(name, type): return name
    tasks = _TASKS
    canon = _ALIASES.get(_key(name))
    if canon is None:
        known = ', '.join(f"{n} ({', '.join(c.aliases)})" if c.aliases else n for n, c in tasks.items())
        raise InputError(f'unknown task {name!r}: choose from {known}')
    return tasks[canon]


def task_label(name: str) -> str:
    "The label tables and plots use for a task ('masked-value', 'next-step', ...)."
    cls = get_task(name)
    return cls.label or cls.task_name


def task_options(name: str | type) -> dict[str, object]:
    "The options a task's constructor accepts, with their defaults (``inspect.Parameter.empty``: required)."
    sig = inspect.signature(get_task(name).__init__)
    return {p.name: p.default for p in list(sig.parameters.values())[1:]
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def make_task(name: str | type, **options):
    "An instance of a task with `options`; `InputError` naming the accepted options if one is unknown."
    cls = get_task(name)
    accepted = task_options(cls)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise InputError(f"{cls.__name__} ({cls.task_name}) has no option {', '.join(map(repr, unknown))}: "
                         f"it accepts {', '.join(accepted)}")
    return cls(**options)
