import os
import stat
import warnings

import pytest
import torch
from conftest import ar_counts
from fastai.metrics import accuracy
from helpers import fit_quiet, unlabeled_dls
from test_backbone import UserNet
from tsai.learner import ts_learner
from tsai.models.FCN import FCN
from tsai.models.InceptionTimePlus import InceptionTimePlus
from tsai.models.ResNet import ResNet
from tsai.models.ResNetPlus import ResNetPlus
from tsai.models.TCN import TCN
from tsai.models.XceptionTimePlus import XceptionTimePlus

from tsai_ssl import MaskedValuePretrain, NextStepPretrain, get_ssl_dls, load_pretrained, save_backbone, split_backbone


def labeled_dls(n_classes):
    X, y = ar_counts(24, n_classes=n_classes, seed=3)
    y[:n_classes] = range(n_classes)
    return get_ssl_dls(X, y, bs=8)


def make(arch, dls):
    return ts_learner(dls, UserNet(c_out=dls.c or 1)) if arch is UserNet else ts_learner(dls, arch, metrics=accuracy)


CASES = [(MaskedValuePretrain, a) for a in (ResNet, ResNetPlus, InceptionTimePlus, XceptionTimePlus, FCN, TCN, UserNet)]
CASES += [(NextStepPretrain, a) for a in (ResNet, ResNetPlus, InceptionTimePlus, TCN, UserNet)]


@pytest.mark.parametrize('task, arch', CASES, ids=[f'{t.__name__}-{a.__name__}' for t, a in CASES])
def test_learn_load_changes_exactly_the_backbone(arch, task, tmp_path):
    if arch is UserNet: pre = ts_learner(unlabeled_dls(n=24, bs=8), UserNet(c_out=1), cbs=task(save_as='ssl', save='last'))
    else: pre = ts_learner(unlabeled_dls(n=24, bs=8), arch, cbs=task(save_as='ssl', save='last'))
    fit_quiet(pre, 1)
    saved = torch.load(tmp_path / 'models' / 'ssl.pth')
    for n_classes in (2, 5):
        clf = make(arch, labeled_dls(n_classes))
        before = {k: v.clone() for k, v in clf.model.state_dict().items()}
        clf.load('ssl', strict=False, with_opt=False)  # fastai's own load
        after = clf.model.state_dict()
        backbone = set(split_backbone(clf.model).state_dict())
        assert set(saved) == backbone
        for k, v in after.items():
            if k in backbone: assert torch.equal(v.cpu(), saved[k])
            else: assert torch.equal(v, before[k])  # head untouched
    fit_quiet(clf, 1)  # and it fine-tunes


def test_load_pretrained_report_and_errors(tmp_path):
    pre = ts_learner(unlabeled_dls(n=24, bs=8), ResNetPlus, cbs=MaskedValuePretrain(save_as='ssl', save='both'))
    fit_quiet(pre, 2)
    assert (tmp_path / 'models' / 'ssl_last.pth').exists()
    clf = make(ResNetPlus, labeled_dls(3))
    rep = load_pretrained(clf, 'ssl')
    assert len(rep.transferred) == len(split_backbone(clf.model).state_dict()) and rep.meta['task'] == 'MaskedValuePretrain'
    other = make(InceptionTimePlus, labeled_dls(3))
    with pytest.raises(ValueError, match=r'does not fit the backbone of .*tensors missing'):
        load_pretrained(other, 'ssl')
    with pytest.raises(FileNotFoundError, match='No weights file'):
        load_pretrained(clf, 'nope')
    data = (tmp_path / 'models' / 'ssl.pth').read_bytes()
    (tmp_path / 'models' / 'broken.pth').write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match='truncated, corrupt'):
        load_pretrained(clf, 'broken')
    assert not list((tmp_path / 'models').glob('*.tmp'))  # atomic writes leave nothing behind


def test_tsai_pretrained_weights_path(tmp_path):
    pre = ts_learner(unlabeled_dls(n=24, bs=8), ResNetPlus, cbs=MaskedValuePretrain(save_as='ssl'))
    fit_quiet(pre, 1)
    saved = torch.load(tmp_path / 'models' / 'ssl.pth')
    clf = ts_learner(labeled_dls(2), ResNetPlus, pretrained=True, weights_path=tmp_path / 'models' / 'ssl.pth')
    for k, v in split_backbone(clf.model).state_dict().items(): assert torch.equal(v.cpu(), saved[k])


def test_export_roundtrip_of_finetuned_classifier(tmp_path):
    from fastai.learner import load_learner
    clf = make(ResNetPlus, labeled_dls(2))
    fit_quiet(clf, 1)
    clf.export(tmp_path / 'clf.pkl')
    new, _ = ar_counts(3, seed=9)
    p1, _ = clf.get_preds(dl=clf.dls.test_dl(new))
    back = load_learner(tmp_path / 'clf.pkl')
    p2, _ = back.get_preds(dl=back.dls.test_dl(new))
    assert torch.allclose(p1, p2)


def test_exported_learner_keeps_vocab_and_channels(tmp_path):
    from fastai.learner import load_learner
    clf = make(ResNetPlus, labeled_dls(3))
    clf.export(tmp_path / 'clf.pkl')
    back = load_learner(tmp_path / 'clf.pkl')
    assert list(back.dls.vocab) == list(clf.dls.vocab) and back.dls.vars == 1 and back.dls.c == 3


def _documented_load_calls() -> list[str]:
    "Every `.load(..., strict=False...)` call shown to users: README, docs, notebooks, docstrings and CLI hints."
    import re
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    files = [root / 'README.md', *sorted((root / 'docs').rglob('*.md')), *sorted((root / 'nbs').glob('*.ipynb')),
             *sorted((root / 'tsai_ssl').rglob('*.py'))]
    calls = []
    for f in files:
        calls += [f'{f.name}: {m}' for m in re.findall(r"\.load\([^()]*strict=False[^()]*\)", f.read_text())]
    return calls


def test_documented_load_call_is_quiet(tmp_path):
    "Defect 6: the call the docs show loads pretrained weights without fastai's 'no optimizer state' warning."
    calls = _documented_load_calls()
    assert calls and all('with_opt=False' in c for c in calls), [c for c in calls if 'with_opt=False' not in c]
    pre = ts_learner(unlabeled_dls(n=24, bs=8), ResNetPlus, cbs=MaskedValuePretrain(save_as='ssl', save='last'))
    fit_quiet(pre, 1)
    clf = make(ResNetPlus, labeled_dls(2))
    with warnings.catch_warnings():
        warnings.simplefilter('error', UserWarning)  # fastai's "Saved file doesn't contain an optimizer state"
        clf.load('ssl', strict=False, with_opt=False)


def test_weight_files_respect_the_umask(tmp_path):
    "Defect 7: weights and sidecars get the mode a plain open() gives under the umask (mkstemp alone makes 0600)."
    old = os.umask(0o022)
    try:
        pre = ts_learner(unlabeled_dls(n=24, bs=8), ResNetPlus, cbs=MaskedValuePretrain(save_as='ssl', save='last'))
        fit_quiet(pre, 1)
        assert stat.S_IMODE((tmp_path / 'models' / 'ssl.pth').stat().st_mode) == 0o644
        assert stat.S_IMODE((tmp_path / 'models' / 'ssl.pth.json').stat().st_mode) == 0o644
        os.umask(0o077)
        save_backbone(pre.model, tmp_path / 'private.pth')
        assert stat.S_IMODE((tmp_path / 'private.pth').stat().st_mode) == 0o600
    finally:
        os.umask(old)


@pytest.mark.parametrize('arch', [ResNet, ResNetPlus, FCN], ids=lambda a: a.__name__)
def test_freeze_fine_tune_and_slice_on_a_pretrained_classifier(arch, tmp_path):
    # tsai splits ResNetPlus into (backbone, head); ResNet and FCN come as one group, where freeze() froze nothing
    pre = ts_learner(unlabeled_dls(n=24, bs=8), arch, cbs=MaskedValuePretrain(save_as='ssl', save='last'))
    fit_quiet(pre, 1)
    clf = make(arch, labeled_dls(3))
    load_pretrained(clf, 'ssl')
    body = {id(p) for p in split_backbone(clf.model).parameters()}
    clf.freeze()
    assert len(clf.opt.param_groups) == 2
    for p in clf.model.parameters():
        if id(p) not in body: assert p.requires_grad  # the new head trains
    convs = [m.weight for m in split_backbone(clf.model).modules() if isinstance(m, torch.nn.Conv1d)]
    assert convs and not any(w.requires_grad for w in convs)  # fastai keeps BatchNorm trainable (train_bn)
    frozen = [w.detach().clone() for w in convs]
    fit_quiet(clf, 1)
    assert all(torch.equal(a, w) for a, w in zip(frozen, convs))
    clf.unfreeze()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        with clf.no_bar(), clf.no_logging(): clf.fit_one_cycle(1, slice(1e-5, 1e-3))
    lrs = [h['lr'] for h in clf.opt.hypers]
    assert lrs[0] < lrs[1]  # discriminative: backbone slower than head
    assert not all(torch.equal(a, w) for a, w in zip(frozen, convs))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        with clf.no_bar(), clf.no_logging(): clf.fine_tune(1, 1e-3, freeze_epochs=1, lr_mult=1)
