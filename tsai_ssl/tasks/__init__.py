"""Pretext tasks: one module each; importing this package registers every shipped task (`registry`)."""
from .base import CountMetric, PretextModel, PretextTask
from .masked import MaskedValuePretrain
from .next_step import NextStepPretrain
from .contrastive import ContrastivePretrain
from .ts2vec import TS2VecPretrain
from .registry import get_task, make_task, task_label, task_names, task_options
