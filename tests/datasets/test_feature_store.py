"""Feature stores: round trips of every kind, lazy reopen after fork, cache budget, errors, copies."""
import io
import multiprocessing
import os
import pickle

import numpy as np
import pytest

from libs.core.errors import DataError
from libs.datasets.feature_store import (
    FolderStore,
    HDF5Store,
    LMDBStore,
    copy_store,
    detect_kind,
    open_store,
    write_store,
)

KIND_PATHS = {"hdf5": "store.h5", "lmdb": "store_lmdb", "folder": "store_dir"}


def _arrays():
    rng = np.random.default_rng(0)
    return {
        "clip-alpha": rng.standard_normal((5, 3)).astype(np.float32),
        "clip-beta": rng.standard_normal((2, 3)).astype(np.float32),
        "clip-gamma": np.arange(4, dtype=np.float32),  # 1-D: read back as (1, 4)
    }


@pytest.mark.parametrize("kind", ["hdf5", "lmdb", "folder"])
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_round_trip(tmp_path, kind, dtype):
    path = str(tmp_path / KIND_PATHS[kind])
    arrays = _arrays()
    assert write_store(path, arrays.items(), kind=kind, dtype=dtype) == 3
    assert detect_kind(path) == kind
    store = open_store(path)
    assert sorted(store.keys()) == sorted(arrays)
    assert "clip-beta" in store and "clip-delta" not in store
    for key, array in arrays.items():
        got = store[key]
        expected = array.astype(dtype).astype(np.float32)
        if expected.ndim == 1:
            expected = expected[None]
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, expected)
    store.close()


def test_folder_pt_files_hold_tensors(tmp_path):
    import torch

    path = str(tmp_path / "pt_store")
    write_store(path, _arrays().items(), kind="folder", folder_format="pt")
    assert sorted(os.listdir(path)) == ["clip-alpha.pt", "clip-beta.pt", "clip-gamma.pt"]
    assert isinstance(torch.load(os.path.join(path, "clip-alpha.pt"), weights_only=True), torch.Tensor)
    np.testing.assert_array_equal(open_store(path)["clip-alpha"], _arrays()["clip-alpha"])


def test_lmdb_reads_token_features_and_falls_back_to_features(tmp_path):
    import lmdb

    path = str(tmp_path / "text_lmdb")
    env = lmdb.open(path, map_size=1 << 24)
    with env.begin(write=True) as txn:
        for key, field, value in (("q_0", "token_features", np.ones((3, 2), np.float32)),
                                  ("q_1", "features", np.full((2,), 7.0, np.float32))):
            buffer = io.BytesIO()
            np.savez_compressed(buffer, **{field: value})
            txn.put(key.encode(), buffer.getvalue())
    env.close()
    store = open_store(path)
    assert isinstance(store, LMDBStore)
    np.testing.assert_array_equal(store["q_0"], np.ones((3, 2)))
    np.testing.assert_array_equal(store["q_1"], np.full((1, 2), 7.0))  # 1-D -> (1, D)


def test_missing_id_names_id_store_and_closest(tmp_path):
    path = str(tmp_path / "store.h5")
    write_store(path, _arrays().items(), kind="hdf5")
    with pytest.raises(DataError) as info:
        open_store(path)["clip-betta"]
    message = str(info.value)
    assert "'clip-betta'" in message and path in message and "clip-beta" in message


def test_open_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        open_store(str(tmp_path / "nowhere.h5"))
    bad = tmp_path / "feats.bin"
    bad.write_bytes(b"x")
    with pytest.raises(DataError, match="must end with .h5"):
        open_store(str(bad))
    with pytest.raises(DataError, match="unknown kind"):
        open_store(str(tmp_path), kind="zarr")


def _child_read(store, queue):
    array = store["clip-alpha"]
    queue.put((float(array.sum()), store._pid == os.getpid()))


@pytest.mark.parametrize("kind", ["hdf5", "lmdb"])
def test_reopens_after_fork(tmp_path, kind):
    path = str(tmp_path / KIND_PATHS[kind])
    write_store(path, _arrays().items(), kind=kind)
    store = open_store(path)
    parent_sum = float(store["clip-alpha"].sum())  # the parent's handle is open now
    parent_pid = store._pid
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child_read, args=(store, queue))
    child.start()
    child_sum, reopened_in_child = queue.get(timeout=20)
    child.join(timeout=60)
    assert child.exitcode == 0
    assert child_sum == pytest.approx(parent_sum) and reopened_in_child
    assert store._pid == parent_pid  # the parent's handle is untouched
    assert float(store["clip-alpha"].sum()) == pytest.approx(parent_sum)


def test_pickled_store_drops_handle_and_cache(tmp_path):
    path = str(tmp_path / "store.h5")
    write_store(path, _arrays().items(), kind="hdf5")
    store = open_store(path, cache_bytes=1 << 20)
    store["clip-alpha"]
    clone = pickle.loads(pickle.dumps(store))
    assert clone._handle is None and len(clone._cache) == 0
    np.testing.assert_array_equal(clone["clip-alpha"], store["clip-alpha"])


def test_cache_respects_byte_budget_lru(tmp_path):
    path = str(tmp_path / "store.h5")
    arrays = {f"clip{i}": np.full((10, 4), i, np.float32) for i in range(3)}  # 160 bytes each
    write_store(path, arrays.items(), kind="hdf5")
    store = open_store(path, cache_bytes=400)  # room for two
    store["clip0"], store["clip1"]
    store["clip0"]  # clip0 becomes most recent, so clip1 is evicted next
    store["clip2"]
    assert store._cache.used_bytes == 320 <= 400
    assert sorted(store._cache._items) == ["clip0", "clip2"]
    cached = store["clip2"]
    assert not cached.flags.writeable  # shared with the cache
    np.testing.assert_array_equal(cached, arrays["clip2"])
    assert open_store(path, cache_bytes=100)["clip0"].flags.writeable  # too big to cache


def test_write_store_is_atomic(tmp_path):
    path = str(tmp_path / "store.h5")

    def items():
        yield "a", np.zeros((2, 2))
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        write_store(path, items(), kind="hdf5")
    assert os.listdir(tmp_path) == []


def test_copy_store_converts_and_resumes(tmp_path):
    src = str(tmp_path / "src.h5")
    arrays = _arrays()
    write_store(src, arrays.items(), kind="hdf5", dtype="float16")
    dst = str(tmp_path / "dst_lmdb")
    # a copy killed after one id left a partial store: the rerun copies the other two
    write_store(dst + ".partial", [("clip-alpha", open_store(src)["clip-alpha"])], kind="lmdb")
    assert copy_store(src, dst, kind="lmdb", progress=False) == 2
    assert not os.path.exists(dst + ".partial")
    assert isinstance(open_store(dst), LMDBStore)
    for key in arrays:
        np.testing.assert_array_equal(open_store(dst)[key], open_store(src)[key])
    assert copy_store(src, dst, kind="lmdb", progress=False) == 0  # everything is there
    folder = str(tmp_path / "dst_folder")
    assert copy_store(dst, folder, kind="folder", progress=False) == 3
    assert isinstance(open_store(folder), FolderStore)
    assert isinstance(open_store(src), HDF5Store)
