"""tsai-ssl: self-supervised pretraining (masked-value, next-step, contrastive) for tsai/fastai classifiers.

    learn = ts_learner(get_ssl_dls(X_unlabeled), ResNetPlus, cbs=MaskedValuePretrain(save_as='ssl'))
    learn.fit_one_cycle(10, 1e-3)
    clf = ts_learner(get_ssl_dls(X, y, splits=splits), ResNetPlus, metrics=accuracy)
    clf.load('ssl', strict=False, with_opt=False)
    clf.fit_one_cycle(10, 1e-3)

The package imports lazily (PEP 562): ``import tsai_ssl`` loads nothing heavy, and a name is imported from its
module, with torch, fastai and tsai, on first use. So the ``tsai-ssl`` command answers ``--help`` and input errors
without waiting for them.
"""
from __future__ import annotations

import importlib
import warnings

__version__ = '0.1.0'

# public name -> module (relative to this package) that defines it
_NAMES = {
    'RaggedStore': 'data', 'SSLDataLoaders': 'data', 'batch_pad_mask': 'data', 'get_ssl_dls': 'data',
    'validate_series': 'data', 'SeriesStandardize': 'standardize', 'StoreWriter': 'store', 'build_store': 'store',
    'Backbone': 'backbone', 'causal': 'backbone', 'check_causal': 'backbone', 'lookahead': 'backbone',
    'masked_max': 'backbone', 'masked_mean': 'backbone', 'split_backbone': 'backbone',
    'span_mask': 'masking', 'TransformerBackbone': 'transformer', 'causal_attention': 'transformer',
    'IgnorePadding': 'padding', 'PaddingAware': 'padding', 'padding_aware': 'padding',
    'Checkpoint': 'checkpoint',
    'MemorySaver': 'memory', 'checkpoint_blocks': 'memory', 'find_blocks': 'memory',
    'LinearProbe': 'embed', 'get_embeddings': 'embed', 'linear_probe': 'embed',
    'ContrastivePretrain': 'tasks', 'MaskedValuePretrain': 'tasks', 'NextStepPretrain': 'tasks',
    'PretextModel': 'tasks', 'PretextTask': 'tasks', 'TS2VecPretrain': 'tasks', 'MoCoPretrain': 'tasks',
    'BYOLPretrain': 'tasks', 'VAEPretrain': 'tasks', 'EMATeacher': 'ema',
    'TransferReport': 'transfer', 'load_pretrained': 'transfer', 'save_backbone': 'transfer', 'backbone_splitter': 'transfer',
    'SemiSupervised': 'semi',
    'InputError': 'errors', 'RunConfig': 'config',
}

__all__ = list(_NAMES)


def __getattr__(name: str):
    module = _NAMES.get(name)
    if module is None and not (name[:1].isupper() and name.endswith('Pretrain')):
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    with warnings.catch_warnings():
        # tsai's model modules call the deprecated torch.jit.script at import: keep the first use silent
        warnings.simplefilter('ignore', FutureWarning)
        if module is None: return _registered_task(name)
        value = getattr(importlib.import_module(f'.{module}', __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def _registered_task(name: str):
    "A task class added as a file in tsai_ssl/tasks/ (registered on import) is a public name too."
    registry = importlib.import_module('.tasks.registry', __name__)
    for canon in registry.task_names():
        cls = registry.get_task(canon)
        if cls.__name__ == name:
            globals()[name] = cls
            return cls
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
    return sorted(set(globals()) | set(__all__))
