from .base import PretextModel, PretextTask
from .masked import MaskedValuePretrain
