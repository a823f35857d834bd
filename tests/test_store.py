"""Tests of tsai_ssl.store: a RaggedStore written series by series (round trip, append, atomic on a crash, streamed
validation, constant memory), the folder builder, and `tsai-ssl store build`."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import tracemalloc

import numpy as np
import pytest
from helpers import ALL_TASKS, fit_quiet

from tsai_ssl.data import RaggedStore, get_ssl_dls
from tsai_ssl.errors import InputError
from tsai_ssl.store import StoreWriter, build_store, iter_series_files, store_summary


def _series(n, C=1, lo=5, hi=40, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 41, (C, int(L))).astype(np.uint8) for L in rng.integers(lo, hi, n)]


@pytest.mark.parametrize('C', [1, 3])
def test_round_trip_and_append(C):
    X = _series(7, C)
    with RaggedStore.create('s', channels=C, dtype=np.uint8, n_values=41) as w:
        w.append(X[0][0] if C == 1 else X[0])  # (L,) is one channel
        w.extend(X[1:5])
        assert len(w) == 5
    st = RaggedStore.load('s')
    assert len(st) == 5 and st.data.shape == (C, sum(x.shape[1] for x in X[:5])) and isinstance(st.data, np.memmap)
    assert all(np.array_equal(st[i], X[i]) for i in range(5)) and st[1].shape == X[1].shape
    with RaggedStore.create('s', channels=C, dtype=np.uint8, append=True) as w: w.extend(X[5:])
    st = RaggedStore.load('s', mmap=False)
    assert len(st) == 7 and all(np.array_equal(st[i], X[i]) for i in range(7))
    assert sorted(os.listdir('.')) == ['s.data.npy', 's.offsets.npy']  # no partial files left
    assert 's: 7 series' in store_summary('s')


def test_existing_stores_are_refused_or_replaced_and_save_format_appends_on_one_channel():
    X = _series(4)
    RaggedStore.from_series(X[:2]).save('old')  # written by RaggedStore.save: C-order, one channel
    with pytest.raises(FileExistsError, match='append=True'): RaggedStore.create('old', dtype=np.uint8)
    with RaggedStore.create('old', dtype=np.uint8, append=True) as w: w.extend(X[2:])
    assert [len(x[0]) for x in X] == list(RaggedStore.load('old').lengths)
    with RaggedStore.create('old', dtype=np.uint8, overwrite=True) as w: w.append(X[0])
    assert len(RaggedStore.load('old')) == 1
    RaggedStore.from_series(_series(2, C=2)).save('two')
    with pytest.raises(InputError, match='cannot grow in place'): RaggedStore.create('two', channels=2, dtype=np.uint8, append=True)
    with pytest.raises(InputError, match='2-channel uint8'): RaggedStore.create('two', channels=1, dtype=np.uint8, append=True)
    with pytest.raises(FileNotFoundError, match='No store'): RaggedStore.create('none', append=True)


@pytest.mark.parametrize('bad, msg', [
    (np.array([[1., np.nan, 2.]]), 'series 2 of the store has NaN at step 1'),
    (np.array([[1., 50., 2.]]), 'series 2 of the store has value 50 at step 1: with n_values=41'),
    (np.array([[1., 2.5]]), 'series 2 of the store has value 2.5 at step 1'),
    (np.ones((2, 4)), 'series 2 of the store has 2 channels'),
    (np.ones((1, 0)), 'series 2 of the store'),
])
def test_streamed_validation_names_the_series_and_step(bad, msg):
    with pytest.raises(InputError, match=msg):
        with RaggedStore.create('v', dtype=np.uint8, n_values=41) as w:
            w.extend(_series(2))
            w.append(bad)
    assert not any(p.startswith('v.') for p in os.listdir('.'))  # the failed writer left nothing behind


def test_dtype_range_is_checked():
    with pytest.raises(InputError, match='value 300 at step 1, which uint8 cannot hold'):
        with RaggedStore.create('d', dtype=np.uint8) as w: w.append(np.array([1, 300]))
    with pytest.raises(ValueError, match='does not fit dtype uint8'): RaggedStore.create('d', dtype=np.uint8, n_values=300)


def test_failed_append_leaves_the_store_as_it_was():
    X = _series(3)
    with RaggedStore.create('a', dtype=np.uint8) as w: w.extend(X)
    before = open('a.data.npy', 'rb').read()
    with pytest.raises(RuntimeError):
        with RaggedStore.create('a', dtype=np.uint8, append=True) as w:
            w.extend(_series(5, seed=1))
            raise RuntimeError('crash in the user code')
    assert open('a.data.npy', 'rb').read() == before and len(RaggedStore.load('a')) == 3


_KILLED = textwrap.dedent('''
    import sys, time, numpy as np
    from tsai_ssl.store import StoreWriter
    w = StoreWriter(sys.argv[1], dtype=np.uint8, append=sys.argv[2] == 'append')
    for i in range(400):
        w.append(np.full(1000, i % 41))
        if i == 200: print('ready', flush=True)
    time.sleep(60)
''')


@pytest.mark.parametrize('mode', ['new', 'append'])
def test_a_killed_writer_leaves_no_store_that_looks_valid(mode):
    X = _series(3)
    if mode == 'append':
        with RaggedStore.create('k', dtype=np.uint8) as w: w.extend(X)
    p = subprocess.Popen([sys.executable, '-c', _KILLED, 'k', mode], stdout=subprocess.PIPE, text=True)
    try: assert p.stdout.readline().strip() == 'ready'
    finally: p.send_signal(signal.SIGKILL); p.wait()
    if mode == 'new':
        with pytest.raises(FileNotFoundError): RaggedStore.load('k')
        assert os.path.exists('k.data.npy.partial')  # only the partial file, which nothing reads
    else:  # the old store, unchanged (the new bytes past its end are ignored, then cut by the next append)
        st = RaggedStore.load('k')
        assert len(st) == 3 and all(np.array_equal(st[i], X[i]) for i in range(3))
        with RaggedStore.create('k', dtype=np.uint8, append=True) as w: w.append(X[0])
        st = RaggedStore.load('k')
        assert len(st) == 4 and np.array_equal(st[3], X[0]) and st.data.shape[1] == sum(x.shape[1] for x in X) + X[0].shape[1]


def test_memory_does_not_grow_with_the_corpus():
    "Writing 10x more series costs no more memory than the offsets (8 bytes a series)."
    peaks = []
    for n in (2000, 20000):
        tracemalloc.start()
        with StoreWriter(f'm{n}', dtype=np.uint8) as w:
            for i in range(n): w.append(np.full(200, i % 41, dtype=np.uint8))
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < peaks[0] + 20000 * 8 * 2 + 200_000, peaks  # the data (4 MB at 20k) never sits in memory
    assert RaggedStore.load('m20000').data.shape == (1, 20000 * 200)


def test_build_from_a_folder_and_an_iterator(tmp_path):
    src = tmp_path / 'src'
    src.mkdir()
    X = _series(6)
    np.save(src / 'a.npy', X[0])                                        # one (1, L) series
    np.save(src / 'b.npy', np.stack([X[1][:, :5], X[2][:, :5]]))        # (N, C, L)
    np.savez(src / 'c.npz', first=X[3][0], second=X[4])
    (src / 'd.csv').write_text(','.join(map(str, X[5][0])) + '\n\n1,2,3\n')
    (src / 'notes.txt').write_text('ignored')
    names = [w for w, _ in iter_series_files(src)]
    assert names == ['a.npy[0]', 'b.npy[0]', 'b.npy[1]', 'c.npz:first[0]', 'c.npz:second[0]', 'd.csv line 1', 'd.csv line 3']
    build_store(src, 'f', dtype=np.uint8, n_values=41, progress=False)
    st = RaggedStore.load('f')
    assert list(st.lengths) == [X[0].shape[1], 5, 5, X[3].shape[1], X[4].shape[1], X[5].shape[1], 3]
    assert np.array_equal(st[4], X[4]) and np.array_equal(st[6], [[1, 2, 3]])
    build_store(iter(X), 'g', dtype=np.uint8, progress=False)
    assert len(RaggedStore.load('g')) == 6
    with pytest.raises(InputError, match=r'item 2: series 2 of the store has value 99'):
        build_store([X[0], X[1], np.array([99])], 'h', dtype=np.uint8, n_values=41, progress=False)
    assert not any(p.startswith('h.') for p in os.listdir('.'))


def test_a_store_goes_through_every_task():
    "A built store feeds get_ssl_dls and every registered task (one short epoch each), memory-mapped."
    from tsai.learner import ts_learner
    from tsai.models.ResNetPlus import ResNetPlus
    build_store(_series(32, lo=48, hi=96), 'corpus', dtype=np.uint8, n_values=41, progress=False)
    st = RaggedStore.load('corpus')
    for Task in ALL_TASKS:
        dls = get_ssl_dls(st, splits=(range(24), range(24, 32)), bs=8, drop_last=True)
        learn = ts_learner(dls, ResNetPlus, nf=8, cbs=Task())
        fit_quiet(learn, 1)
        assert all(np.isfinite(v) for v in learn.recorder.values[-1][:2]), Task.__name__


def _cli(*args):
    return subprocess.run([sys.executable, '-m', 'tsai_ssl.cli', *args], capture_output=True, text=True)


def test_cli_store_build_and_its_errors(tmp_path):
    src = tmp_path / 'src'
    src.mkdir()
    np.save(src / 'a.npy', np.random.default_rng(0).integers(0, 41, (5, 1, 30)))
    r = _cli('store', 'build', str(src), str(tmp_path / 'st'), '--dtype', 'uint8', '--n-values', '41', '-q')
    assert r.returncode == 0 and '5 series, 1 channel uint8' in r.stdout, r.stderr
    cases = [
        ((str(tmp_path / 'missing'), str(tmp_path / 'x')), 'is not a folder'),
        ((str(src), str(tmp_path / 'st')), 'already holds a store: pass --append'),
        ((str(src), str(tmp_path / 'y'), '--dtype', 'int9'), "--dtype 'int9' is not a numpy dtype"),
    ]
    np.save(src / 'b.npy', np.ones((2, 10)))  # mixed channels
    cases.append(((str(src), str(tmp_path / 'z'), '--n-values', '41'), 'b.npy[0]: series 5 of the store has 2 channels'))
    for args, msg in cases:
        r = _cli('store', 'build', *args, '-q')
        assert r.returncode == 2 and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)
    (src / 'b.npy').unlink()
    np.save(src / 'c.npy', np.array([3, 41, 2]))
    r = _cli('store', 'build', str(src), str(tmp_path / 'w'), '--n-values', '41', '-q')
    assert r.returncode == 2 and 'c.npy[0]: series 5 of the store has value 41 at step 1: with n_values=41' in r.stderr
    assert not (tmp_path / 'w.data.npy').exists()


def test_cli_pretrain_with_an_unlabeled_store(tmp_path):
    "--unlabeled STORE adds the store's series to the pretraining ones; a bad one is named STORE[i]."
    rng = np.random.default_rng(0)
    X = np.empty(16, object)
    X[:] = [rng.integers(0, 41, int(L)) for L in rng.integers(48, 96, 16)]
    np.savez(tmp_path / 'd.npz', X=X, y=np.arange(16) % 2)
    build_store((rng.integers(0, 41, int(L)) for L in rng.integers(48, 96, 20)), tmp_path / 'u', dtype=np.uint8,
                progress=False)
    out = tmp_path / 'w.pth'
    r = _cli('pretrain', str(tmp_path / 'd.npz'), '--unlabeled', str(tmp_path / 'u'), '--epochs', '1', '--arch-config',
             '{"nf": 8}', '--out', str(out), '--threads', '1')
    assert r.returncode == 0 and out.exists(), r.stderr
    assert 'on 32 series' in r.stderr and '20 unlabeled series from the store' in r.stderr  # 12 training + 20
    r = _cli('pretrain', str(tmp_path / 'd.npz'), '--unlabeled', str(tmp_path / 'nope'))
    assert r.returncode == 2 and 'no store there' in r.stderr
    build_store([np.ones(10) for _ in range(3)] + [np.array([1., 2.5] + [1.] * 8)], tmp_path / 'bad', progress=False)
    r = _cli('pretrain', str(tmp_path / 'd.npz'), '--unlabeled', str(tmp_path / 'bad'), '--n-values', '41')
    assert r.returncode == 2 and f"{tmp_path / 'bad'}[3] has value 2.5 at step 1" in r.stderr, r.stderr
