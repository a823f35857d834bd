import numpy as np
import pytest
import torch
from tsai.data.preprocessing import TSStandardize

from tsai_ssl import RaggedStore, get_ssl_dls, validate_series
from tsai_ssl.data import batch_raw_input, to_series_list


def _lognormal_lengths(n, seed=0):
    rng = np.random.default_rng(seed)
    return np.exp(rng.uniform(np.log(512), np.log(30720), n)).astype(int)


def _ints(lengths, seed=0, dtype=np.uint8):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 41, (1, L)).astype(dtype) for L in lengths]


def test_integer_roundtrip_exact_and_mask():
    X = _ints([50, 70, 90, 64])
    dls = get_ssl_dls(X, bs=4, shuffle=False)
    x, = dls.train.one_batch()
    m = dls.train.pad_mask
    assert x.shape == (4, 1, 90) and m.shape == (4, 90)
    order = np.argsort([50, 70, 90, 64], kind='stable')  # unshuffled loader sorts by length
    for row, i in enumerate(order):
        L = X[i].shape[-1]
        assert m[row].sum() == L and m[row, :L].all()
        assert torch.equal(x[row, 0, :L], torch.from_numpy(X[i][0].astype(np.float32)))
        assert (x[row, 0, L:] == 0).all()


def test_raw_input_is_exact_under_standardize():
    X = _ints([40] * 16)
    dls = get_ssl_dls(X, bs=8, batch_tfms=[TSStandardize()], shuffle=False)
    x, = dls.train.one_batch()
    assert abs(float(x.mean())) < 0.5  # standardized
    raw = batch_raw_input(dls.train, x)
    assert torch.equal(raw, raw.round()) and raw.min() >= 0 and raw.max() <= 40
    assert dls.train.pad_mask is None  # equal lengths: nothing padded


def test_bucketing_covers_every_series_once_and_pads_little():
    lengths = _lognormal_lengths(2048)
    dls = get_ssl_dls([np.zeros((1, L), np.uint8) for L in lengths], bs=32)
    dl = dls.train
    for _ in range(2):
        idxs = dl.get_idxs()
        assert sorted(idxs) == list(range(len(lengths)))
    assert dl.padded_fraction() < 0.10
    st = dl.rng.getstate()
    dl.randomize()  # what fastai does at the start of every epoch
    after = dl.get_idxs()
    dl.rng.setstate(st)
    assert dl.get_idxs() != after  # the order changes between epochs (fails if randomize() did nothing)


def test_unbucketed_padding_is_much_larger():
    lengths = _lognormal_lengths(512)
    X = [np.zeros((1, L), np.uint8) for L in lengths]
    assert get_ssl_dls(X, bs=32, bucket=False).train.padded_fraction() > 0.4


def test_crop_to_max_len_train_only():
    X = _ints([300, 500, 1000, 800])
    dls = get_ssl_dls(X, splits=([0, 1, 2, 3], [2, 3]), bs=4, max_len=256)
    x, = dls.train.one_batch()
    assert x.shape[-1] == 256 and dls.train.pad_mask is None
    xv, = dls.valid.one_batch()
    assert xv.shape[-1] == 1000
    assert dls.len == 256


def test_labeled_batches_and_dls_attributes():
    X = _ints([64] * 12)
    y = np.array(['a', 'b', 'c'] * 4)
    dls = get_ssl_dls(X, y, splits=(range(9), range(9, 12)), bs=4)
    x, yb = dls.train.one_batch()
    assert yb.dtype == torch.long and type(yb).__name__ == 'TensorCategory'
    assert (dls.vars, dls.c, dls.len, dls.cat) == (1, 3, 64, True) and list(dls.vocab) == ['a', 'b', 'c']
    assert dls.n_inp == 1


def test_input_forms_agree():
    rng = np.random.default_rng(0)
    fixed = rng.integers(0, 41, (5, 1, 32)).astype(np.float32)
    a = to_series_list(fixed)
    b = to_series_list([s[0] for s in fixed])  # 1-D series
    nanpad = np.full((5, 1, 40), np.nan, np.float32)
    nanpad[:, :, :32] = fixed
    c = to_series_list(nanpad)
    store = RaggedStore.from_series(fixed)
    for s in (b, c, [store[i] for i in range(len(store))]):
        assert all(np.array_equal(u, v) for u, v in zip(a, s))


def test_ragged_store_memmap_roundtrip(tmp_path):
    X = _ints([30, 50, 40])
    store = RaggedStore.from_series(X)
    store.save(tmp_path / 'corpus')
    mm = RaggedStore.load(tmp_path / 'corpus', mmap=True)
    assert isinstance(mm.data, np.memmap) and mm.data.dtype == np.uint8
    dls = get_ssl_dls(mm, bs=3, shuffle=False)
    x, = dls.train.one_batch()
    assert x.shape == (3, 1, 50)


def test_test_dl_variable_length_preds_in_input_order():
    from fastai.metrics import accuracy
    from tsai.learner import ts_learner
    from tsai.models.ResNetPlus import ResNetPlus
    X = _ints([40, 80, 60, 100, 50, 70])
    dls = get_ssl_dls(X, [0, 1, 0, 1, 0, 1], bs=3)
    learn = ts_learner(dls, ResNetPlus, metrics=accuracy)
    new = _ints([120, 30, 90], seed=1)
    learn.model.eval()
    with torch.no_grad():
        alone = torch.cat([learn.model(torch.tensor(s, dtype=torch.float32)[None]).softmax(-1) for s in new])
    preds, _ = learn.get_preds(dl=dls.test_dl(new, bs=1))
    assert torch.allclose(preds, alone, atol=1e-5)  # input order restored after length sorting
    preds, _ = learn.get_preds(dl=dls.test_dl(new))  # one padded batch: the longest series is unpadded
    assert preds.shape == (3, 2) and torch.allclose(preds[0], alone[0], atol=1e-5)


@pytest.mark.parametrize('bad, msg', [
    ([np.array([[1., 2., np.nan, 4.] * 4])], r'X\[0\] has NaN at step 2, inside the series'),
    ([np.ones((1, 16)), np.array([[1., np.inf] * 8])], r'X\[1\] has an infinite value \(inf\) at step 1'),
    ([np.ones((1, 16)), np.ones((1, 4))], r'X\[1\] has length 4, shorter than the minimum of 8 steps'),
    ([np.ones((1, 16)), np.ones((2, 16))], r'X\[1\] has 2 channels'),
    ([], 'X is empty'),
])
def test_bad_series(bad, msg):
    with pytest.raises(ValueError, match=msg):
        get_ssl_dls(bad, bs=2)


def test_bad_shapes_and_labels():
    with pytest.raises(ValueError, match=r'shape \(4, 16\).*3-D array.*X\[:, None, :\]'):
        get_ssl_dls(np.ones((4, 16)))
    with pytest.raises(ValueError, match=r'X\[0\] has shape'):
        get_ssl_dls([np.ones((1, 2, 16))])
    with pytest.raises(ValueError, match='Got 3 labels for 4 series'):
        get_ssl_dls(np.ones((4, 1, 16)), y=[0, 1, 0])
    with pytest.raises(ValueError, match=r"Classes \['c'\] appear in the validation split"):
        get_ssl_dls(np.ones((4, 1, 16)), y=['a', 'b', 'a', 'c'], splits=([0, 1, 2], [3]))
    with pytest.raises(ValueError, match='NaN at step 2, inside the series'):
        a = np.zeros((2, 1, 8)); a[1, 0, 2] = np.nan; a[1, 0, 6:] = np.nan
        get_ssl_dls(a, min_len=1)


@pytest.mark.parametrize('value', [-1, 41, 2.5])
def test_n_values_check_names_series_step_and_value(value):
    X = [np.zeros((1, 16)), np.zeros((1, 16))]
    X[1][0, 5] = value
    with pytest.raises(ValueError, match=rf'X\[1\] has value {value:g} at step 5'):
        validate_series(X, n_values=41)
    validate_series([np.full((1, 16), 40.)], n_values=41)  # in range: fine


def test_mask_survives_fastai_distributed_wrapper():
    from fastai.distributed import DistributedDL

    from tsai_ssl.data import batch_pad_mask
    X = _ints([40, 80, 60, 100])
    dls = get_ssl_dls(X, [0, 1, 0, 1], bs=4, batch_tfms=[TSStandardize()])
    ddl = DistributedDL(dls.train, rank=0, world_size=1)
    ddl._broadcast = lambda t, rank: t  # no process group here: fastai's own tests stub this the same way
    b = next(iter(ddl))
    assert len(b) == 2 and b[0].shape == (4, 1, 100)
    m = batch_pad_mask(ddl, b[0])
    assert m is not None and sorted(m.sum(1).tolist()) == [40, 60, 80, 100]
    assert batch_raw_input(ddl, b[0]).max() > 1.5  # raw scale, not standardized


def test_seed_fixes_batch_transform_setup():
    "fastai sets up TSStandardize on a batch drawn inside the loader's constructor: `seed` must fix that batch too."
    import random

    from tsai.data.preprocessing import TSStandardize
    rng = np.random.default_rng(0)
    X = [rng.integers(0, 41, (1, int(L))).astype(np.uint8) for L in rng.integers(50, 400, 40)]
    stats = []
    for s in (1, 2):
        random.seed(s)  # a different global state each time
        t = TSStandardize()
        get_ssl_dls(X, bs=8, max_len=64, batch_tfms=[t], seed=0)
        stats.append((float(t.mean), float(t.std)))
    assert stats[0] == stats[1]
    state = random.getstate()
    get_ssl_dls(X, bs=8, seed=0)
    assert random.getstate() == state  # the global generator is left as it was


def test_nan_rules_shared_with_every_layer():
    "Trailing steps where every channel is NaN are padding (arrays and lists alike); any other NaN is an InputError."
    from tsai_ssl.errors import InputError
    a = np.ones((2, 2, 10)); a[1, :, 6:] = np.nan
    assert [x.shape for x in to_series_list(a)] == [(2, 10), (2, 6)]
    lst = [np.ones((2, 10)), a[1]]  # a list of series follows the same rule
    assert [x.shape for x in to_series_list(lst)] == [(2, 10), (2, 6)]
    b = a.copy(); b[1, 0, 5] = np.nan  # one channel NaN at step 5, before the padding: not padding
    with pytest.raises(InputError, match=r'X\[1\] has NaN at step 5 \(channel 0\), inside the series'):
        to_series_list(b)
    c = a.copy(); c[1, 0, 6:] = 0.  # only channel 1 NaN at the end: not padding either
    with pytest.raises(InputError, match=r'X\[1\] has NaN at step 6 \(channel 1\)'):
        to_series_list(c)
    with pytest.raises(ValueError):  # InputError is a ValueError: old `except ValueError` still works
        get_ssl_dls(b, min_len=1)
