from .base import CountMetric, PretextModel, PretextTask
from .masked import MaskedValuePretrain
from .next_step import NextStepPretrain
