"""SeriesStandardize: each series over its own real steps, whatever it is batched with; RunConfig.standardize."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tsai_ssl import InputError, get_ssl_dls
from tsai_ssl.config import RunConfig
from tsai_ssl.standardize import SeriesStandardize


def reference(series: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    "Plain numpy: (x - mean) / (std + eps) per channel, population std."
    m = series.mean(-1, keepdims=True)
    return (series - m) / (series.std(-1, keepdims=True) + eps)


@pytest.mark.parametrize('lengths', [(50, 50), (50, 20, 7), (3, 64)])
@pytest.mark.parametrize('channels', [1, 3])
def test_matches_the_reference_per_series_and_ignores_padding(lengths, channels):
    rng = np.random.default_rng(len(lengths) * channels)
    series = [rng.normal(rng.uniform(-5, 5), 10 ** rng.uniform(-2, 2), (channels, n)) for n in lengths]
    L = max(lengths)
    x = torch.full((len(series), channels, L), 7.)  # a pad value that would shift the statistics if counted
    for i, s in enumerate(series): x[i, :, :s.shape[-1]] = torch.from_numpy(s)
    pad_mask = torch.arange(L)[None] < torch.tensor(lengths)[:, None]
    out = SeriesStandardize().scale(x, pad_mask)
    for i, s in enumerate(series):
        n = s.shape[-1]
        # float32 sums: a series with std 1e-2 around 5 keeps about 3 significant digits after the cancellation
        np.testing.assert_allclose(out[i, :, :n].numpy(), reference(s.astype(np.float32).astype(np.float64)), atol=2e-3)
        assert (out[i, :, n:] == 0).all()


def test_a_series_gets_the_same_input_alone_and_in_a_padded_batch():
    rng = np.random.default_rng(0)
    X = [rng.integers(0, 41, (1, n)).astype(np.float32) for n in (30, 90, 200, 45)]
    tfm = SeriesStandardize()
    alone = [tfm((torch.from_numpy(x)[None],))[0][0] for x in X]
    L = 200
    x = torch.zeros(4, 1, L)
    for i, s in enumerate(X): x[i, :, :s.shape[-1]] = torch.from_numpy(s)
    mask = torch.arange(L)[None] < torch.tensor([30, 90, 200, 45])[:, None]
    batched = tfm((x, mask))[0]  # the mask found among the batch's items
    for i, s in enumerate(X):
        torch.testing.assert_close(batched[i, :, :s.shape[-1]], alone[i], rtol=1e-5, atol=1e-5)


def test_nan_marks_padding_without_a_mask_and_stays_nan():
    x = torch.tensor([[[1., 2., 3., float('nan'), float('nan')]]])
    out = SeriesStandardize()((x,))[0]
    np.testing.assert_allclose(out[0, 0, :3].numpy(), reference(np.array([1., 2., 3.])), rtol=1e-5)
    assert torch.isnan(out[0, 0, 3:]).all()


def test_a_constant_series_becomes_zero():
    out = SeriesStandardize().scale(torch.full((2, 1, 10), 4.), None)
    assert torch.equal(out, torch.zeros_like(out))


def test_in_a_loader_the_input_is_standardized_and_the_raw_input_kept():
    rng = np.random.default_rng(1)
    X = [rng.integers(0, 41, (1, n)).astype(np.uint8) * (10 if i % 2 else 1) for i, n in enumerate((64, 80, 100, 120))]
    dls = get_ssl_dls(X, [0, 1, 0, 1], bs=4, batch_tfms=[SeriesStandardize()], seed=0)
    dl = dls.test_dl(X, exact=False)  # padded batches, unshuffled, full length
    xb = next(iter(dl))[0]
    pad_mask, raw = dl.pad_mask, dl.raw_input
    assert pad_mask is not None and raw is not None
    for i in range(4):
        n = int(pad_mask[i].sum())
        real = xb[i, 0, :n]
        assert abs(float(real.mean())) < 1e-4 and abs(float(real.std(unbiased=False)) - 1) < 1e-3
        assert torch.equal(raw[i, 0, :n], raw[i, 0, :n].round())  # raw integers for the pretext targets


def test_run_config_refuses_an_unknown_standardize():
    assert RunConfig(standardize='series').standardize == 'series'
    with pytest.raises(InputError, match="standardize must be one of dataset, series"):
        RunConfig(standardize='sample')


def test_finetune_refuses_weights_pretrained_with_another_standardize(tmp_path):
    from tsai_ssl.runs import _check_weights_arch
    w = tmp_path / 'w.pth'
    w.write_bytes(b'')
    (tmp_path / 'w.pth.json').write_text(json.dumps({'arch': 'ResNetPlus', 'arch_config': {}, 'standardize': 'series'}))
    _check_weights_arch(w, RunConfig(standardize='series'))
    with pytest.raises(InputError, match=r"pretrained with standardize='series'.*--standardize series"):
        _check_weights_arch(w, RunConfig())


def test_cli_standardize_option_and_the_recorded_one(tmp_path):
    from tsai_ssl import cli
    args = cli.build_parser().parse_args(['pretrain', '--synthetic', '--standardize', 'series'])
    assert cli._run_config(args, None).standardize == 'series'
    args = cli.build_parser().parse_args(['pretrain', '--synthetic'])
    assert cli._run_config(args, None).standardize == 'dataset'
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(['compare', '--synthetic', '--standardize', 'sample'])
    w = tmp_path / 'w.pth'
    (tmp_path / 'w.pth.json').write_text(json.dumps({'arch': 'ResNetPlus', 'arch_config': {}, 'standardize': 'series'}))
    args = cli.build_parser().parse_args(['finetune', '--synthetic', '--weights', str(w)])
    cli._arch_from_weights(args)  # finetune --weights uses what pretrain recorded
    assert cli._run_config(args, None).standardize == 'series'


def test_describe_data_points_at_series_standardization_when_scales_differ():
    from tsai_ssl.inputs import describe_data, scale_spread, split_data
    rng = np.random.default_rng(0)
    same = [rng.normal(0, 1, (1, 50)) for _ in range(20)]
    wide = [rng.normal(0, 10. ** (i % 5 - 2), (1, 50)) for i in range(20)]  # std 0.01 .. 100
    assert scale_spread(same) < 2 and scale_spread(wide) > 1e3
    y = np.arange(20) % 2
    assert '--standardize series' not in describe_data(split_data(same, y))
    assert '--standardize series' in describe_data(split_data(wide, y))
