"""Pretext tasks, one module each. Importing this package imports every module in this folder, and each task class
registers itself (`registry`): a new task is one new file here, with nothing to add elsewhere."""
import importlib
import pkgutil

# isort: off
# registration order = the order of tables, plots and `tsai-ssl compare`'s default task list
from .base import CountMetric, PretextModel, PretextTask
from .masked import MaskedValuePretrain
from .next_step import NextStepPretrain
from .contrastive import ContrastivePretrain
from .ts2vec import TS2VecPretrain
from .moco import MoCoPretrain
from .byol import BYOLPretrain
from .vae import VAEPretrain
from .registry import get_task, make_task, task_label, task_names, task_options
# isort: on

for _m in pkgutil.iter_modules(__path__):  # a task file not listed above registers itself on import
    importlib.import_module(f'{__name__}.{_m.name}')

__all__ = ['CountMetric', 'PretextModel', 'PretextTask', 'MaskedValuePretrain', 'NextStepPretrain',
           'ContrastivePretrain', 'TS2VecPretrain', 'MoCoPretrain', 'BYOLPretrain', 'VAEPretrain',
           'get_task', 'make_task', 'task_label', 'task_names',
           'task_options']
