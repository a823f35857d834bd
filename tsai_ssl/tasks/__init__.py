from .base import CountMetric, PretextModel, PretextTask
from .contrastive import ContrastivePretrain, TS2VecPretrain
from .masked import MaskedValuePretrain
from .next_step import NextStepPretrain
