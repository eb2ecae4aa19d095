"""Feature stores: id -> time-major float32 array, read from HDF5, LMDB or a folder of files.

Three on-disk layouts hold the same thing (one array per clip or query id):

* ``hdf5``: one file (``*.h5`` / ``*.hdf5``), one dataset per id at the root, float16 or float32.
* ``lmdb``: a directory with ``data.mdb`` in the reference's layout: key = id (utf-8), value =
  bytes of ``np.savez_compressed`` holding ``features`` (video) or ``token_features`` (text).
* ``folder``: ``<id>.pt`` (a tensor) or ``<id>.npy`` per id, the NaQ / EgoVLP / InternVideo
  release layout.

Readers always return ``(T, C)`` float32 (a 1-D array becomes ``(1, D)``, as the reference's text
reader does). Handles are opened lazily on first access *in each process*: a store built in the
main process and inherited by forked DataLoader workers reopens itself there, because neither
HDF5 nor LMDB handles may be shared across ``fork`` (spec 12 item 4). An optional LRU cache
bounded by a byte budget keeps decoded arrays (clips are read once per query otherwise).

Writers (``write_store``, ``copy_store``) serve the demo generator and conversion tools.
"""
from __future__ import annotations

import collections
import contextlib
import difflib
import io
import os
import pickle
import shutil
import tempfile
import zipfile
from typing import Any, Iterable, Iterator, List, Optional, Tuple

import numpy as np

from libs.core.errors import DataError

STORE_KINDS = ("hdf5", "lmdb", "folder")
HDF5_SUFFIXES = (".h5", ".hdf5")
FOLDER_SUFFIXES = (".npy", ".pt")
# npz member names, in the order the reader tries them (the reference's text reader order)
LMDB_FIELDS = ("token_features", "features")
# LMDB readers: the reference's settings (many concurrent readers, no readahead)
LMDB_MAX_READERS = 32768
# initial LMDB map size for writers; doubled whenever a write does not fit
LMDB_INITIAL_MAP_BYTES = 64 << 20
# how many closest ids a missing-id error lists
NUM_CLOSE_IDS = 3
# what h5py, lmdb, NumPy and torch raise on a damaged file (lmdb.Error is added when installed)
_DAMAGED_FILE_ERRORS: Tuple[type, ...] = (OSError, ValueError, RuntimeError, EOFError, KeyError,
                                          zipfile.BadZipFile, pickle.UnpicklingError)


def detect_kind(path: str) -> str:
    """Tell the store kind from the path: ``*.h5``/``*.hdf5`` file, LMDB dir, or folder of files."""
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "data.mdb")):
            return "lmdb"
        return "folder"
    if os.path.isfile(path):
        if path.lower().endswith(HDF5_SUFFIXES):
            return "hdf5"
        raise DataError(
            f"feature store {path}: a file store must end with {' or '.join(HDF5_SUFFIXES)} (HDF5); "
            f"LMDB stores and folders of .pt/.npy files are directories")
    raise DataError(f"feature store {path} does not exist")


def _damaged_file_errors() -> Tuple[type, ...]:
    """Exception types meaning "this file is damaged", lmdb's own included when it is installed."""
    try:
        import lmdb
    except ImportError:
        return _DAMAGED_FILE_ERRORS
    return _DAMAGED_FILE_ERRORS + (lmdb.Error,)


def _first_line(err: BaseException, max_chars: int = 160) -> str:
    """A backend's message shortened to one line (torch and h5py messages run over many)."""
    lines = str(err).strip().splitlines()
    line = lines[0] if lines else ""
    return line if len(line) <= max_chars else line[:max_chars] + "..."


def _as_time_major_float32(array: Any, key: str, path: str) -> np.ndarray:
    """Stored value -> (T, C) float32; 1-D -> (1, D) as in the reference's text reader."""
    if hasattr(array, "detach"):  # a torch tensor from a .pt file
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2:
        raise DataError(f"feature store {path}: id {key!r} holds an array of shape {array.shape}; "
                        f"expected (T, C) time-major or (D,)")
    return np.ascontiguousarray(array, dtype=np.float32)


class _ByteBudgetLRU:
    """LRU dict of arrays whose total ``nbytes`` stays within a budget (0 = disabled)."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = int(budget_bytes)
        self.used_bytes = 0
        self._items: "collections.OrderedDict[str, np.ndarray]" = collections.OrderedDict()

    def get(self, key: str) -> Optional[np.ndarray]:
        array = self._items.get(key)
        if array is not None:
            self._items.move_to_end(key)
        return array

    def put(self, key: str, array: np.ndarray) -> bool:
        """Keep ``array`` (evicting the least recently used); False when it exceeds the budget."""
        if array.nbytes > self.budget_bytes:
            return False
        if key in self._items:
            return True
        while self.used_bytes + array.nbytes > self.budget_bytes:
            _, evicted = self._items.popitem(last=False)
            self.used_bytes -= evicted.nbytes
        self._items[key] = array
        self.used_bytes += array.nbytes
        return True

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        self._items.clear()
        self.used_bytes = 0


class FeatureStore:
    """Read-only id -> ``(T, C)`` float32 mapping; subclasses implement one on-disk layout.

    Cached arrays are returned read-only (shared with the cache): copy before writing to them.
    """

    kind = ""

    def __init__(self, path: str, cache_bytes: int = 0) -> None:
        self.path = path
        self._handle: Any = None
        self._pid: Optional[int] = None
        self._cache = _ByteBudgetLRU(cache_bytes) if cache_bytes > 0 else None

    # --- per-process lazy handle -------------------------------------------------------
    def _open(self) -> Any:
        raise NotImplementedError

    def _close(self, handle: Any) -> None:
        pass

    def _get_handle(self) -> Any:
        """The handle of this process, (re)opened after a fork (handles never cross processes)."""
        if self._handle is None or self._pid != os.getpid():
            if self._handle is not None:
                # inherited from the parent through fork: release this process's copy (read-only,
                # unlocked handles; the parent's stays open). py-lmdb refuses to open an
                # environment twice in one process, so the copy must be closed first.
                try:
                    self._close(self._handle)
                except Exception:
                    pass
            with self._reading():
                self._handle = self._open()
            self._pid = os.getpid()
        return self._handle

    def close(self) -> None:
        """Close this process's handle (a later access reopens it) and empty the cache."""
        if self._handle is not None and self._pid == os.getpid():
            self._close(self._handle)
        self._handle = None
        self._pid = None
        if self._cache is not None:
            self._cache.clear()

    def __getstate__(self) -> dict:
        # pickled for spawned workers: handles and cached arrays stay behind
        state = self.__dict__.copy()
        state["_handle"] = None
        state["_pid"] = None
        if self._cache is not None:
            state["_cache"] = _ByteBudgetLRU(self._cache.budget_bytes)
        return state

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: modules may already be gone
            pass

    # --- reading -----------------------------------------------------------------------
    def _read(self, key: str) -> Optional[Any]:
        """The stored value of ``key``, or None when absent."""
        raise NotImplementedError

    def keys(self) -> List[str]:
        raise NotImplementedError

    def __contains__(self, key: str) -> bool:
        raise NotImplementedError

    @contextlib.contextmanager
    def _reading(self, key: Optional[str] = None) -> Iterator[None]:
        """Turn a backend's failure on a damaged file into a ``DataError`` naming the store (and id)."""
        try:
            yield
        except DataError:
            raise
        except _damaged_file_errors() as err:
            what = f"id {key!r} of " if key is not None else ""
            raise DataError(f"cannot read {what}{self.kind} feature store {self.path} (damaged or "
                            f"truncated?): {type(err).__name__}: {_first_line(err)}") from err

    def __getitem__(self, key: str) -> np.ndarray:
        """``(T, C)`` float32 features of ``key``; a missing id or a damaged file raises ``DataError``."""
        if self._cache is not None:
            cached = self._cache.get(key)
            if cached is not None:
                return cached
        with self._reading(key):
            value = self._read(key)
        if value is None:
            raise self.missing_error(key)
        with self._reading(key):
            array = _as_time_major_float32(value, key, self.path)
        if self._cache is not None and self._cache.put(key, array):
            array.setflags(write=False)  # shared with the cache from now on
        return array

    def __len__(self) -> int:
        return len(self.keys())

    def missing_error(self, key: str) -> DataError:
        """A ``DataError`` naming the id, this store and the closest ids it does hold."""
        keys = self.keys()
        close = difflib.get_close_matches(key, keys, n=NUM_CLOSE_IDS, cutoff=0.3)
        hint = f"closest ids present: {close}" if close else f"it holds {len(keys)} ids"
        return DataError(f"id {key!r} not found in {self.kind} feature store {self.path}; {hint}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r})"


class HDF5Store(FeatureStore):
    """One HDF5 file, one ``(T, C)`` dataset per id at the root."""

    kind = "hdf5"

    def _open(self) -> Any:
        import h5py

        return h5py.File(self.path, "r")

    def _close(self, handle: Any) -> None:
        handle.close()

    def _read(self, key: str) -> Optional[Any]:
        handle = self._get_handle()
        if key not in handle:
            return None
        return handle[key][()]

    def keys(self) -> List[str]:
        return list(self._get_handle().keys())

    def __contains__(self, key: str) -> bool:
        return key in self._get_handle()


def _decode_npz(value: bytes, key: str, path: str) -> np.ndarray:
    with np.load(io.BytesIO(value)) as npz:
        for field in LMDB_FIELDS:
            if field in npz.files:
                return npz[field]
        raise DataError(f"LMDB feature store {path}: id {key!r} holds {npz.files}; "
                        f"expected one of {list(LMDB_FIELDS)}")


class LMDBStore(FeatureStore):
    """The reference's LMDB layout: key = id, value = compressed npz bytes."""

    kind = "lmdb"

    def _open(self) -> Any:
        import lmdb

        return lmdb.open(self.path, readonly=True, lock=False, readahead=False,
                         max_readers=LMDB_MAX_READERS, subdir=True)

    def _close(self, handle: Any) -> None:
        handle.close()

    def _read(self, key: str) -> Optional[Any]:
        with self._get_handle().begin(buffers=False) as txn:
            value = txn.get(key.encode("utf-8"))
        if value is None:
            return None
        return _decode_npz(value, key, self.path)

    def keys(self) -> List[str]:
        with self._get_handle().begin() as txn:
            return [k.decode("utf-8") for k in txn.cursor().iternext(keys=True, values=False)]

    def __contains__(self, key: str) -> bool:
        with self._get_handle().begin() as txn:
            return txn.get(key.encode("utf-8")) is not None


class FolderStore(FeatureStore):
    """A folder of ``<id>.pt`` (a tensor, or a dict with a features key) or ``<id>.npy`` files."""

    kind = "folder"

    def _open(self) -> Any:
        return self.path  # nothing to hold open; files are read on demand

    def _file_of(self, key: str) -> Optional[str]:
        for suffix in FOLDER_SUFFIXES:
            candidate = os.path.join(self.path, key + suffix)
            if os.path.isfile(candidate):
                return candidate
        return None

    def _read(self, key: str) -> Optional[Any]:
        file = self._file_of(key)
        if file is None:
            return None
        if file.endswith(".npy"):
            return np.load(file)
        import torch

        value = torch.load(file, map_location="cpu", weights_only=True)
        if isinstance(value, dict):
            for field in LMDB_FIELDS:
                if field in value:
                    return value[field]
            raise DataError(f"{file}: holds a dict with keys {sorted(value)}; expected a tensor "
                            f"or one of {list(LMDB_FIELDS)}")
        return value

    def keys(self) -> List[str]:
        names = sorted(os.listdir(self.path))
        return [os.path.splitext(n)[0] for n in names if n.endswith(FOLDER_SUFFIXES)]

    def __contains__(self, key: str) -> bool:
        return self._file_of(key) is not None


_STORE_CLASSES = {"hdf5": HDF5Store, "lmdb": LMDBStore, "folder": FolderStore}


def _check_kind(kind: str, path: str) -> None:
    if kind not in STORE_KINDS:
        raise DataError(f"feature store {path}: unknown kind {kind!r}; expected one of {list(STORE_KINDS)}")


def open_store(path: str, kind: Optional[str] = None, cache_bytes: int = 0) -> FeatureStore:
    """Open a feature store (kind detected from ``path`` when None); nothing is read yet.

    ``cache_bytes`` > 0 keeps up to that many bytes of decoded arrays in an LRU cache (per
    process).
    """
    if not os.path.exists(path):
        raise DataError(f"feature store {path} does not exist")
    kind = kind or detect_kind(path)
    _check_kind(kind, path)
    return _STORE_CLASSES[kind](path, cache_bytes=cache_bytes)


# ---------------------------------------------------------------------------------------
# writers
# ---------------------------------------------------------------------------------------
def _npz_bytes(array: np.ndarray, field: str) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{field: array})
    return buffer.getvalue()


class _StoreWriter:
    """Adds arrays to a store being built at ``path`` (created if absent, appended otherwise)."""

    def __init__(self, path: str, kind: str, dtype: str, field: str, folder_format: str) -> None:
        self.path, self.kind, self.field, self.folder_format = path, kind, field, folder_format
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float16, np.float32):
            raise DataError(f"feature store {path}: dtype must be float16 or float32, got {dtype!r}")
        if kind == "hdf5":
            import h5py

            self._h5 = h5py.File(path, "a")
        elif kind == "lmdb":
            import lmdb

            os.makedirs(path, exist_ok=True)
            # no fsync per commit (one put = one commit); close() syncs once
            self._env = lmdb.open(path, map_size=LMDB_INITIAL_MAP_BYTES, subdir=True,
                                  sync=False, metasync=False)
        else:
            os.makedirs(path, exist_ok=True)

    def existing_keys(self) -> set:
        if self.kind == "hdf5":
            return set(self._h5.keys())
        if self.kind == "lmdb":
            with self._env.begin() as txn:
                return {k.decode("utf-8") for k in txn.cursor().iternext(keys=True, values=False)}
        return {os.path.splitext(n)[0] for n in os.listdir(self.path) if n.endswith(FOLDER_SUFFIXES)}

    def put(self, key: str, array: np.ndarray) -> None:
        array = np.ascontiguousarray(array, dtype=self.dtype)
        if self.kind == "hdf5":
            if key in self._h5:
                del self._h5[key]
            # track_times=False: the same arrays give byte-identical files
            self._h5.create_dataset(key, data=array, track_times=False)
        elif self.kind == "lmdb":
            self._lmdb_put(key.encode("utf-8"), _npz_bytes(array, self.field))
        else:
            self._folder_put(key, array)

    def _lmdb_put(self, key: bytes, value: bytes) -> None:
        import lmdb

        while True:
            try:
                with self._env.begin(write=True) as txn:
                    txn.put(key, value)
                return
            except lmdb.MapFullError:
                self._env.set_mapsize(self._env.info()["map_size"] * 2)

    def _folder_put(self, key: str, array: np.ndarray) -> None:
        target = os.path.join(self.path, key + "." + self.folder_format)
        fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=self.path)
        try:
            with os.fdopen(fd, "wb") as f:
                if self.folder_format == "npy":
                    np.save(f, array)
                else:
                    import torch

                    torch.save(torch.from_numpy(array), f)
            os.replace(tmp, target)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def close(self) -> None:
        if self.kind == "hdf5":
            self._h5.close()
        elif self.kind == "lmdb":
            self._env.sync()
            self._env.close()


def _remove(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.unlink(path)


def _replace(tmp: str, path: str) -> None:
    """Move ``tmp`` onto ``path``; a directory target is swapped via a backup name."""
    if os.path.isdir(path):
        backup = tmp + ".old"
        os.replace(path, backup)
        os.replace(tmp, path)
        shutil.rmtree(backup)
    else:
        os.replace(tmp, path)


def write_store(path: str, items: Iterable[Tuple[str, np.ndarray]], kind: Optional[str] = None,
                dtype: str = "float32", field: str = "features", folder_format: str = "npy") -> int:
    """Write ``(id, (T, C) array)`` pairs as a new store at ``path``, atomically.

    Everything is written under a temporary name beside ``path`` and renamed into place at the
    end, so a crash never leaves a half store. ``kind`` defaults to what the path suggests
    (``*.h5``/``*.hdf5`` -> hdf5, else folder). ``field`` is the LMDB npz member (``features``
    for video, ``token_features`` for text); ``folder_format`` is ``npy`` or ``pt``.
    Returns the number of arrays written.
    """
    kind = kind or ("hdf5" if path.lower().endswith(HDF5_SUFFIXES) else "folder")
    _check_kind(kind, path)
    if folder_format not in ("npy", "pt"):
        raise DataError(f"feature store {path}: folder_format must be 'npy' or 'pt', got {folder_format!r}")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    _remove(tmp)
    count = 0
    try:
        writer = _StoreWriter(tmp, kind, dtype, field, folder_format)
        try:
            for key, array in items:
                writer.put(key, array)
                count += 1
        finally:
            writer.close()
        _replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    return count


def copy_store(src: str, dst: str, kind: Optional[str] = None, dtype: str = "float32",
               field: str = "features", folder_format: str = "npy", progress: bool = True) -> int:
    """Copy every array of store ``src`` into store ``dst`` (another kind), resumably.

    Work goes to ``<dst>.partial`` and is renamed to ``dst`` when complete; a killed copy resumes
    from the partial store, and ids already present (in the partial store or in an existing
    ``dst``) are skipped. Returns the number of arrays copied by this call.
    """
    from tqdm import tqdm

    source = open_store(src)
    kind = kind or ("hdf5" if dst.lower().endswith(HDF5_SUFFIXES) else "folder")
    _check_kind(kind, dst)
    partial = dst + ".partial"
    if os.path.exists(dst) and not os.path.exists(partial):
        os.replace(dst, partial)  # extend an existing store in place of a fresh copy
    copied = 0
    writer = _StoreWriter(partial, kind, dtype, field, folder_format)
    try:
        done = writer.existing_keys()
        todo = [key for key in source.keys() if key not in done]
        for key in tqdm(todo, desc=f"copy {os.path.basename(src)} -> {os.path.basename(dst)}",
                        disable=not progress or not todo):
            writer.put(key, source[key])
            copied += 1
    finally:
        writer.close()
        source.close()
    _replace(partial, dst)
    return copied


def iterate_store(store: FeatureStore) -> Iterator[Tuple[str, np.ndarray]]:
    """``(id, array)`` pairs of a store in key order (for conversions and checks)."""
    for key in store.keys():
        yield key, store[key]
