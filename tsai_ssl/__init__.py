"""tsai-ssl: self-supervised pretraining (masked-value, next-step, contrastive) for tsai/fastai classifiers.

    learn = ts_learner(get_ssl_dls(X_unlabeled), ResNetPlus, cbs=MaskedValuePretrain(save_as='ssl'))
    learn.fit_one_cycle(10, 1e-3)
    clf = ts_learner(get_ssl_dls(X, y, splits=splits), ResNetPlus, metrics=accuracy)
    clf.load('ssl', strict=False)
    clf.fit_one_cycle(10, 1e-3)
"""
__version__ = '0.1.0'

import warnings

with warnings.catch_warnings():
    # tsai's model modules call the deprecated torch.jit.script at import: keep `import tsai_ssl` silent
    warnings.simplefilter('ignore', FutureWarning)
    from .data import RaggedStore, SSLDataLoaders, batch_pad_mask, get_ssl_dls, validate_series

from .backbone import Backbone, causal, check_causal, lookahead, masked_max, masked_mean, split_backbone
from .masking import span_mask
from .padding import IgnorePadding, PaddingAware, padding_aware
from .checkpoint import Checkpoint
from .memory import MemorySaver, checkpoint_blocks, find_blocks
from .embed import LinearProbe, get_embeddings, linear_probe
from .tasks import ContrastivePretrain, MaskedValuePretrain, NextStepPretrain, PretextModel, PretextTask, TS2VecPretrain
from .transfer import TransferReport, load_pretrained, save_backbone
