"""Reading a study's data files from under the worker's data root (HPO_DATA_ROOT).

Every reader returns raw numpy arrays, samples first: `x` as stored (uint8 pixels stay uint8),
`y` as stored (labels, strings or numbers). worker.data turns them into a split.

The service refuses absolute and '..' paths when a study is created; the worker checks again here,
because only the worker can see its own filesystem (a symlink that leads out of the root).
"""

from __future__ import annotations

import csv
import gzip
import os
import pickle
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np


class DataError(ValueError):
    """Bad or refused data: the trial fails with this message as its reason."""


def resolve_under_root(root: Path, path: str) -> Path:
    """`path` resolved under `root`, or a DataError saying why it is refused or missing.

    Refused: absolute paths, '..' that climbs out of the root, and anything that resolves
    (through a symlink, anywhere along the way) to a place outside the root.
    """
    if not path or "\x00" in path:
        raise DataError(f"data path {path!r} is empty or contains NUL bytes")
    if PurePosixPath(path).is_absolute() or PureWindowsPath(path).is_absolute() or path.startswith("~"):
        raise DataError(f"data path {path!r} is absolute; it must be relative to the worker's data root")
    root_real = Path(root).resolve()
    if not root_real.is_dir():
        raise DataError(f"the worker's data root {str(root)!r} is not a directory")
    # Lexically first, so a '..' escape is named as such even when the target does not exist.
    lexical = Path(os.path.normpath(root_real / path))
    if not lexical.is_relative_to(root_real):
        raise DataError(f"data path {path!r} leaves the worker's data root ('..' climbs out of it)")
    real = (root_real / path).resolve()
    if not real.is_relative_to(root_real):
        raise DataError(f"data path {path!r} resolves through a symlink to outside the worker's data root")
    if not real.exists():
        raise DataError(f"data path {path!r} not found under the data root")
    return real


def _join(path: str, name: str) -> str:
    return f"{path.rstrip('/')}/{name}"


def _want_file(p: Path, path: str) -> None:
    if not p.is_file():
        raise DataError(f"data path {path!r} is not a file")


def _want_dir(p: Path, path: str, what: str) -> None:
    if not p.is_dir():
        raise DataError(f"data path {path!r} must be a directory holding {what}")


# --- npz -------------------------------------------------------------------------------------


def npz_files(root: Path, path: str) -> list[Path]:
    p = resolve_under_root(root, path)
    _want_file(p, path)
    return [p]


def read_npz(file: Path, path: str) -> tuple[np.ndarray, np.ndarray]:
    """Arrays X and y; allow_pickle=False, so an object array in the file is refused, not run."""
    try:
        with np.load(file, allow_pickle=False) as npz:
            keys = sorted(npz.files)
            missing = [k for k in ("X", "y") if k not in keys]
            if missing:
                raise DataError(
                    f"{path}: no array named {' or '.join(missing)}; the file holds: {', '.join(keys) or 'nothing'}"
                )
            return npz["X"], npz["y"]
    except DataError:
        raise
    except Exception as exc:  # a zip that is not an npz, an object array, a truncated file...
        raise DataError(f"{path}: not a readable .npz file ({exc})") from exc


# --- csv -------------------------------------------------------------------------------------


def csv_files(root: Path, path: str) -> list[Path]:
    return npz_files(root, path)


def read_csv(file: Path, path: str, target: str) -> tuple[np.ndarray, np.ndarray]:
    """Comma-separated, header row first; `target` is the label column, all others are numbers.

    Returns x as float64 (N, F) and y as the target column's strings (the caller decides what
    they mean: class names or numbers)."""
    try:
        with open(file, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: not a readable UTF-8 CSV file ({exc})") from exc
    while rows and not rows[-1]:
        rows.pop()  # trailing blank lines
    if not rows:
        raise DataError(f"{path}: the CSV file is empty (it needs a header row)")
    header = [name.strip() for name in rows[0]]
    if target not in header:
        raise DataError(f"{path}: no column named {target!r}; the columns are: {', '.join(header)}")
    if len(header) < 2:
        raise DataError(f"{path}: the CSV has no feature columns besides the target {target!r}")
    body = rows[1:]
    if not body:
        raise DataError(f"{path}: the CSV has a header but no data rows")
    for i, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise DataError(f"{path}: line {i} has {len(row)} fields, the header has {len(header)}")
    t = header.index(target)
    y = np.array([row[t].strip() for row in body])
    x = np.empty((len(body), len(header) - 1), dtype=np.float64)
    for j, c in enumerate(c for c in range(len(header)) if c != t):
        column = [row[c] for row in body]
        try:
            x[:, j] = np.array(column, dtype=np.float64)
        except ValueError:
            line, bad = next((i, v) for i, v in enumerate(column, start=2) if not _is_float(v))
            raise DataError(
                f"{path}: feature column {header[c]!r} must be numeric; line {line} holds {bad!r}"
            ) from None
    return x, y


def _is_float(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False


# --- MNIST (IDX) -----------------------------------------------------------------------------

MNIST_FILES = {"images": "train-images-idx3-ubyte", "labels": "train-labels-idx1-ubyte"}


def mnist_files(root: Path, path: str) -> list[Path]:
    """The training images and labels (the t10k test files are not used: validation is cut from
    training). Accepts the plain names, their .gz, and the 'train-images.idx3-ubyte' spelling."""
    _want_dir(resolve_under_root(root, path), path, "MNIST's IDX files")
    found = []
    for name in MNIST_FILES.values():
        dotted = name.replace("-idx", ".idx")
        candidates = [name, name + ".gz", dotted, dotted + ".gz"]
        for c in candidates:
            p = resolve_under_root(root, _join(path, c)) if _exists_below(root, path, c) else None
            if p is not None:
                _want_file(p, _join(path, c))
                found.append(p)
                break
        else:
            raise DataError(f"{path}: no {name} (or {name}.gz) in the MNIST directory")
    return found


def _exists_below(root: Path, path: str, name: str) -> bool:
    return os.path.lexists(Path(root) / path / name)


def read_idx(file: Path) -> np.ndarray:
    """An IDX file (MNIST's format): 2 zero bytes, a type code, the number of dimensions, then
    each dimension as a big-endian uint32, then the values, big-endian, row-major."""
    opener = gzip.open if file.name.endswith(".gz") else open
    try:
        with opener(file, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{file.name}: cannot read the IDX file ({exc})") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DataError(f"{file.name}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    dtype, ndim = np.dtype(_IDX_TYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{file.name}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    count = int(np.prod(shape))
    if len(raw) - header != count * dtype.itemsize:
        raise DataError(
            f"{file.name}: the IDX header promises shape {shape} ({count * dtype.itemsize} bytes of data) "
            f"but the file holds {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_mnist(files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    images, labels = read_idx(files[0]), read_idx(files[1])
    if images.ndim != 3 or labels.ndim != 1:
        raise DataError(
            f"MNIST images must be 3-D (N, 28, 28) and labels 1-D; got {images.shape} and {labels.shape}"
        )
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"MNIST has {images.shape[0]} images but {labels.shape[0]} labels")
    if images.shape[1:] != (28, 28):
        raise DataError(f"MNIST images must be 28x28, got {images.shape[1]}x{images.shape[2]}")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"MNIST labels must be 0-9, got values from {labels.min()} to {labels.max()}")
    return images[:, None, :, :], labels


# --- CIFAR (python pickle batches) -----------------------------------------------------------

CIFAR_FILES = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], b"labels"),
    "cifar100": ("cifar-100-python", ["train"], b"fine_labels"),
}


def cifar_files(root: Path, path: str, kind: str) -> list[Path]:
    """The training batches (test_batch / test are not used: validation is cut from training).
    `path` is the directory holding them, or the one holding the unpacked archive's folder."""
    _want_dir(resolve_under_root(root, path), path, f"{kind}'s python batches")
    folder, names, _ = CIFAR_FILES[kind]
    if not _exists_below(root, path, names[0]) and _exists_below(root, path, folder):
        path = _join(path, folder)
    missing = [n for n in names if not _exists_below(root, path, n)]
    if missing:
        raise DataError(f"{path}: missing {kind} batch file(s): {', '.join(missing)}")
    files = [resolve_under_root(root, _join(path, n)) for n in names]
    for n, f in zip(names, files):
        _want_file(f, _join(path, n))
    return files


def read_cifar(files: list[Path], kind: str) -> tuple[np.ndarray, np.ndarray]:
    label_key = CIFAR_FILES[kind][2]
    xs, ys = [], []
    for file in files:
        batch = _unpickle(file)
        if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
            keys = ", ".join(repr(k) for k in batch) if isinstance(batch, dict) else type(batch).__name__
            raise DataError(f"{file.name}: a {kind} batch needs keys b'data' and {label_key!r}; it has: {keys}")
        data = np.asarray(batch[b"data"])
        labels = np.asarray(batch[label_key])
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DataError(f"{file.name}: b'data' must be uint8 of shape (N, 3072), got {data.dtype} {data.shape}")
        if labels.shape != (data.shape[0],) or labels.dtype.kind not in "iu":
            raise DataError(f"{file.name}: {label_key!r} must be {data.shape[0]} integer labels")
        xs.append(data.reshape(-1, 3, 32, 32))  # stored channel-major: 1024 red, 1024 green, 1024 blue
        ys.append(labels)
    y = np.concatenate(ys)
    n_classes = 10 if kind == "cifar10" else 100
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise DataError(f"{kind} labels must be 0-{n_classes - 1}, got values from {y.min()} to {y.max()}")
    return np.concatenate(xs), y


# The official CIFAR files are pickles, and unpickling can run code chosen by whoever wrote the
# file. The data root is the worker operator's own directory, which is why it is trusted at all;
# as a second line, this unpickler resolves only the globals a pickled numpy array needs, so a
# file that tries to call anything else is refused instead of run.
_PICKLE_GLOBALS = {
    ("_codecs", "encode"),  # how Python 3 writes bytes at protocol 2
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),  # protocol 5
}


_NUMPY2 = int(np.__version__.split(".")[0]) >= 2


class _ArrayOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # type: ignore[no-untyped-def]
        # numpy 2 renamed numpy.core to numpy._core; the official files were written by numpy 1.
        if module.startswith("numpy.core."):
            module = "numpy._core." + module.removeprefix("numpy.core.")
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only numpy arrays are allowed)")
        if not _NUMPY2 and module.startswith("numpy._core."):
            module = "numpy.core." + module.removeprefix("numpy._core.")
        return super().find_class(module, name)


def _unpickle(file: Path) -> object:
    try:
        with open(file, "rb") as f:
            return _ArrayOnlyUnpickler(f, encoding="bytes").load()
    except Exception as exc:
        raise DataError(f"{file.name}: not a readable CIFAR python batch ({exc})") from exc
