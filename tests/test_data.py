"""worker.data: every dataset kind, on real files in tmp_path and real torch tensors."""

from __future__ import annotations

import csv
import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from service.spec.data import BundledData, CifarData, CsvData, MnistData, NpzData, SyntheticData
from worker.data import DataError, Split, load_split, resolve_under_root


def load(dataset, root: Path | None = None, *, seed: int = 0, val_fraction: float = 0.25) -> Split:
    return load_split(dataset, val_fraction=val_fraction, seed=seed, device="cpu", data_root=root)


def check_split(s: Split, *, n: int, input_shape: tuple, n_outputs: int, task: str) -> None:
    assert s.input_shape == input_shape and s.n_outputs == n_outputs and s.task == task
    assert s.n_features == int(np.prod(input_shape))
    assert s.x_train.shape[0] + s.x_val.shape[0] == n
    assert s.x_train.shape[1:] == s.x_val.shape[1:] == input_shape
    assert s.x_train.dtype == s.x_val.dtype == torch.float32
    if task == "classification":
        assert s.y_train.dtype == s.y_val.dtype == torch.int64
        assert s.y_train.shape == (s.x_train.shape[0],) and s.y_val.shape == (s.x_val.shape[0],)
        assert int(s.y_train.min()) >= 0 and int(max(s.y_train.max(), s.y_val.max())) < n_outputs
    else:
        assert s.y_train.dtype == s.y_val.dtype == torch.float32
        assert s.y_train.shape == (s.x_train.shape[0], n_outputs) and s.y_val.shape == (s.x_val.shape[0], n_outputs)
    assert s.x_train.device.type == "cpu"


# --- bundled and synthetic ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, n, input_shape, n_outputs, task",
    [
        ("digits", 1797, (1, 8, 8), 10, "classification"),
        ("iris", 150, (4,), 3, "classification"),
        ("wine", 178, (13,), 3, "classification"),
        ("breast_cancer", 569, (30,), 2, "classification"),
        ("diabetes", 442, (10,), 1, "regression"),
    ],
)
def test_bundled(kind: str, n: int, input_shape: tuple, n_outputs: int, task: str) -> None:
    s = load(BundledData(kind=kind))
    check_split(s, n=n, input_shape=input_shape, n_outputs=n_outputs, task=task)
    assert s.x_val.shape[0] == pytest.approx(0.25 * n, abs=1)
    if task == "classification":  # stratified: every class is in validation
        assert set(s.y_val.tolist()) == set(range(n_outputs))
    else:  # targets standardized with training statistics
        assert abs(float(s.y_train.mean())) < 1e-4
        assert float(s.y_train.std(unbiased=False)) == pytest.approx(1, abs=1e-4)


def test_shorthand_and_unknown_kind() -> None:
    assert load("digits").input_shape == (1, 8, 8)
    with pytest.raises(DataError, match="digits"):
        load("imagenet")
    with pytest.raises(DataError, match="val_fraction"):
        load("iris", val_fraction=1.0)


def test_split_is_fixed_by_seed_and_disjoint() -> None:
    a, b, c = load("digits", seed=0), load("digits", seed=0), load("digits", seed=1)
    assert torch.equal(a.x_val, b.x_val) and torch.equal(a.y_val, b.y_val) and torch.equal(a.x_train, b.x_train)
    assert not torch.equal(a.x_val, c.x_val)
    train_rows = {tuple(r) for r in a.x_train.flatten(1).tolist()}
    assert not any(tuple(r) in train_rows for r in a.x_val.flatten(1).tolist())
    # Seeds beyond sklearn's 32 bits work and mean the same as their value mod 2**32.
    assert torch.equal(load("digits", seed=2**32 + 1).x_val, c.x_val)
    assert torch.equal(load("digits", seed=-1).x_val, load("digits", seed=2**32 - 1).x_val)


def test_cache_cannot_be_changed_through_a_trial() -> None:
    a = load("wine", seed=3)
    a.x_train.zero_()
    a.y_train.fill_(0)
    b = load("wine", seed=3)
    assert float(b.x_train.abs().sum()) > 0 and len(set(b.y_train.tolist())) == 3


def test_synthetic_classification() -> None:
    ds = SyntheticData(kind="synthetic", n_samples=400, n_features=12, n_classes=5, noise=0.0, seed=7)
    s = load(ds)
    check_split(s, n=400, input_shape=(12,), n_outputs=5, task="classification")
    assert set(s.y_val.tolist()) == set(range(5))
    assert torch.equal(load(ds).x_train, s.x_train)
    other = load(ds.model_copy(update={"seed": 8}))
    assert not torch.equal(other.x_train, s.x_train)  # the dataset's own seed draws other data


@pytest.mark.parametrize("n_features, n_classes", [(1, 2), (1, 3), (2, 10), (3, 1000), (64, 2), (40, 1000)])
def test_synthetic_any_features_and_classes(n_features: int, n_classes: int) -> None:
    ds = SyntheticData(kind="synthetic", n_samples=300, n_features=n_features, n_classes=n_classes)
    s = load(ds)
    check_split(s, n=300, input_shape=(n_features,), n_outputs=n_classes, task="classification")
    assert len(set(s.y_train.tolist())) > 1


def test_synthetic_large_and_regression() -> None:
    s = load(SyntheticData(kind="synthetic", n_samples=200_000, n_features=64), val_fraction=0.1)
    check_split(s, n=200_000, input_shape=(64,), n_outputs=2, task="classification")
    r = load(SyntheticData(kind="synthetic", task="regression", n_samples=500, n_features=3, noise=5.0))
    check_split(r, n=500, input_shape=(3,), n_outputs=1, task="regression")


def test_synthetic_refusals() -> None:
    # The spec refuses these when the study is created ...
    with pytest.raises(ValueError, match=r"fraction of labels flipped.*\[0, 1\]"):
        SyntheticData(kind="synthetic", noise=2.0)
    with pytest.raises(ValueError, match="n_samples x n_features"):
        SyntheticData(kind="synthetic", n_samples=10_000_000, n_features=100_000)
    # ... and the worker defends itself against an assignment that skipped that validation.
    with pytest.raises(DataError, match=r"fraction of labels flipped.*\[0, 1\]"):
        load(SyntheticData.model_construct(kind="synthetic", noise=2.0))
    with pytest.raises(DataError, match="too large"):
        load(SyntheticData.model_construct(kind="synthetic", n_samples=10_000_000, n_features=100_000))


# --- standardization --------------------------------------------------------------------------


def test_standardized_with_training_statistics_only(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 200
    raw = np.column_stack(
        [
            np.arange(n, dtype=np.float64),  # identifies each row after standardization
            rng.normal(50.0, 10.0, n),
            np.full(n, 3.0),  # constant: only centred
        ]
    )
    y = rng.normal(1000.0, 100.0, n)
    np.savez(tmp_path / "d.npz", X=raw, y=y)
    s = load(NpzData(kind="npz", path="d.npz", task="regression"), tmp_path)
    x_tr, x_va = s.x_train.double().numpy(), s.x_val.double().numpy()
    # Recover which raw rows went where from column 0 (an increasing affine image of the row index).
    both = np.sort(np.concatenate([x_tr[:, 0], x_va[:, 0]]))
    scale, offset = both[1] - both[0], both[0]
    tr_rows = np.rint((x_tr[:, 0] - offset) / scale).astype(int)
    va_rows = np.rint((x_va[:, 0] - offset) / scale).astype(int)
    assert sorted([*tr_rows, *va_rows]) == list(range(n))
    mean, std = raw[tr_rows].mean(axis=0), raw[tr_rows].std(axis=0)
    std[2] = 1.0
    np.testing.assert_allclose(x_tr, (raw[tr_rows] - mean) / std, atol=1e-4)
    np.testing.assert_allclose(x_va, (raw[va_rows] - mean) / std, atol=1e-4)
    assert not np.allclose(raw[va_rows].mean(axis=0)[1], mean[1], atol=1e-6)  # the two stats differ
    np.testing.assert_array_equal(x_va[:, 2], 0.0)
    # Regression targets too, with the training targets' mean and std.
    ym, ys = y[tr_rows].mean(), y[tr_rows].std()
    np.testing.assert_allclose(s.y_val.double().numpy()[:, 0], (y[va_rows] - ym) / ys, atol=1e-4)


def test_images_standardized_per_channel(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = np.stack([rng.normal(0, 1, (40, 4, 4)), rng.normal(100, 5, (40, 4, 4))], axis=1)  # (40, 2, 4, 4)
    np.savez(tmp_path / "img.npz", X=x.astype(np.float32), y=np.arange(40) % 2)
    s = load(NpzData(kind="npz", path="img.npz"), tmp_path)
    check_split(s, n=40, input_shape=(2, 4, 4), n_outputs=2, task="classification")
    per_channel = s.x_train.transpose(0, 1).reshape(2, -1)
    assert per_channel.mean(dim=1).abs().max() < 1e-4
    assert torch.allclose(per_channel.std(dim=1, unbiased=False), torch.ones(2), atol=1e-4)


# --- npz and csv ------------------------------------------------------------------------------


def test_npz_labels_map_to_sorted_indices(tmp_path: Path) -> None:
    x = np.arange(60, dtype=np.float64).reshape(30, 2)
    y = np.array([7, 3, 42] * 10)  # sorted: 3 -> 0, 7 -> 1, 42 -> 2
    np.savez(tmp_path / "t.npz", X=x, y=y)
    s = load(NpzData(kind="npz", path="t.npz"), tmp_path)
    check_split(s, n=30, input_shape=(2,), n_outputs=3, task="classification")
    # Row r has label [7, 3, 42][r % 3]; its first feature is 2r, an increasing function of r.
    xs = torch.cat([s.x_train, s.x_val])[:, 0].numpy()
    ys = torch.cat([s.y_train, s.y_val]).numpy()
    rows = np.argsort(np.argsort(xs))
    np.testing.assert_array_equal(ys, np.array([1, 0, 2])[rows % 3])


def test_npz_multi_target_regression(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "r.npz", X=rng.normal(size=(50, 3)), y=rng.normal(size=(50, 2)))
    s = load(NpzData(kind="npz", path="r.npz", task="regression"), tmp_path)
    check_split(s, n=50, input_shape=(3,), n_outputs=2, task="regression")


def test_npz_errors(tmp_path: Path) -> None:
    np.savez(tmp_path / "nokey.npz", features=np.zeros((4, 2)), labels=np.zeros(4))
    with pytest.raises(DataError, match=r"no array named X or y; the file holds: features, labels"):
        load(NpzData(kind="npz", path="nokey.npz"), tmp_path)
    np.savez(tmp_path / "frac.npz", X=np.zeros((10, 2)), y=np.linspace(0, 1, 10))
    with pytest.raises(DataError, match="task: regression"):
        load(NpzData(kind="npz", path="frac.npz"), tmp_path)
    np.savez(tmp_path / "3d.npz", X=np.zeros((10, 2, 2)), y=np.arange(10) % 2)
    with pytest.raises(DataError, match=r"2-D .* or 4-D"):
        load(NpzData(kind="npz", path="3d.npz"), tmp_path)
    np.savez(tmp_path / "len.npz", X=np.zeros((10, 2)), y=np.arange(9) % 2)
    with pytest.raises(DataError, match="10 samples but y has 9"):
        load(NpzData(kind="npz", path="len.npz"), tmp_path)
    np.savez(tmp_path / "obj.npz", X=np.array([{"a": 1}] * 4, dtype=object), y=np.arange(4))
    with pytest.raises(DataError, match="not a readable .npz"):
        load(NpzData(kind="npz", path="obj.npz"), tmp_path)
    (tmp_path / "dir.npz").mkdir()
    with pytest.raises(DataError, match="not a file"):
        load(NpzData(kind="npz", path="dir.npz"), tmp_path)


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def test_csv_with_string_labels(tmp_path: Path) -> None:
    names = ["dog", "cat", "bird"]  # sorted: bird -> 0, cat -> 1, dog -> 2
    rows = [[i, names[i % 3], i * 0.5] for i in range(30)]
    write_csv(tmp_path / "animals.csv", ["a", "species", "b"], rows)
    s = load(CsvData(kind="csv", path="animals.csv", target="species"), tmp_path)
    check_split(s, n=30, input_shape=(2,), n_outputs=3, task="classification")
    xs = torch.cat([s.x_train, s.x_val])[:, 0].numpy()
    ys = torch.cat([s.y_train, s.y_val]).numpy()
    rows_of = np.argsort(np.argsort(xs))
    np.testing.assert_array_equal(ys, np.array([2, 1, 0])[rows_of % 3])


def test_csv_numeric_labels_sort_numerically_and_regression(tmp_path: Path) -> None:
    write_csv(tmp_path / "n.csv", ["x", "y"], [[i, [2, 10][i % 2]] for i in range(20)])
    s = load(CsvData(kind="csv", path="n.csv", target="y"), tmp_path)
    xs, ys = torch.cat([s.x_train, s.x_val])[:, 0], torch.cat([s.y_train, s.y_val])
    assert s.n_outputs == 2 and torch.equal(ys, (torch.argsort(torch.argsort(xs)) % 2))  # 2 -> 0, 10 -> 1
    r = load(CsvData(kind="csv", path="n.csv", target="x", task="regression"), tmp_path)
    check_split(r, n=20, input_shape=(1,), n_outputs=1, task="regression")


def test_csv_errors(tmp_path: Path) -> None:
    write_csv(tmp_path / "c.csv", ["f1", "f2", "label"], [[1, 2, "a"], [3, "oops", "b"]])
    with pytest.raises(DataError, match=r"no column named 'target'; the columns are: f1, f2, label"):
        load(CsvData(kind="csv", path="c.csv", target="target"), tmp_path)
    with pytest.raises(DataError, match=r"column 'f2' must be numeric; line 3 holds 'oops'"):
        load(CsvData(kind="csv", path="c.csv", target="label"), tmp_path)
    write_csv(tmp_path / "r.csv", ["f1", "value"], [[1, "2.5"], [2, "n/a"]])
    with pytest.raises(DataError, match="regression but the targets are not all numbers"):
        load(CsvData(kind="csv", path="r.csv", target="value", task="regression"), tmp_path)
    (tmp_path / "ragged.csv").write_text("a,b\n1,2\n3\n")
    with pytest.raises(DataError, match="line 3 has 1 fields"):
        load(CsvData(kind="csv", path="ragged.csv", target="b"), tmp_path)


# --- MNIST (IDX) ------------------------------------------------------------------------------


def idx_bytes(a: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, a.ndim]) + np.array(a.shape, dtype=">u4").tobytes() + a.astype(np.uint8).tobytes()


def write_mnist(folder: Path, n: int = 50, *, gz_images: bool = False) -> np.ndarray:
    folder.mkdir(parents=True, exist_ok=True)
    labels = np.arange(n) % 10
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    images[:, 3:25, 3:25] = (labels * 25)[:, None, None]  # brightness encodes the label
    if gz_images:
        with gzip.open(folder / "train-images-idx3-ubyte.gz", "wb") as f:
            f.write(idx_bytes(images))
    else:
        (folder / "train-images-idx3-ubyte").write_bytes(idx_bytes(images))
    with gzip.open(folder / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write(idx_bytes(labels))
    return labels


@pytest.mark.parametrize("gz_images", [False, True])
def test_mnist_idx(tmp_path: Path, gz_images: bool) -> None:
    write_mnist(tmp_path / "mnist", gz_images=gz_images)
    s = load(MnistData(kind="mnist", path="mnist"), tmp_path, val_fraction=0.2)
    check_split(s, n=50, input_shape=(1, 28, 28), n_outputs=10, task="classification")
    assert set(s.y_val.tolist()) == set(range(10))
    # Labels travelled with their images: the brighter the image, the higher the label.
    x, y = torch.cat([s.x_train, s.x_val]), torch.cat([s.y_train, s.y_val])
    brightness = x[:, 0, 10, 10]
    assert torch.equal(y[torch.argsort(brightness, stable=True)], torch.sort(y).values)
    assert float(x[:, 0, 0, 0].abs().max()) > 0  # the black border is standardized with the channel
    assert abs(float(s.x_train.mean())) < 1e-4


def test_mnist_errors(tmp_path: Path) -> None:
    write_mnist(tmp_path / "m")
    header = b"\x00\x00\x08\x03" + np.array([50, 28, 28], ">u4").tobytes()
    (tmp_path / "m" / "train-images-idx3-ubyte").write_bytes(header + b"\x00" * 10)  # truncated
    with pytest.raises(DataError, match="promises shape"):
        load(MnistData(kind="mnist", path="m"), tmp_path)
    (tmp_path / "m" / "train-images-idx3-ubyte").write_bytes(b"PK\x03\x04junk")
    with pytest.raises(DataError, match="not an IDX file"):
        load(MnistData(kind="mnist", path="m"), tmp_path)
    os.remove(tmp_path / "m" / "train-images-idx3-ubyte")
    with pytest.raises(DataError, match="no train-images-idx3-ubyte"):
        load(MnistData(kind="mnist", path="m"), tmp_path)


# --- CIFAR (python pickles) -------------------------------------------------------------------


def cifar_images(n: int, start: int) -> np.ndarray:
    """Red varies down the rows, green across the columns, blue with the image: checks the layout."""
    h = np.arange(32)[:, None] * 4 + np.zeros((1, 32), dtype=int)
    red, green = h, h.T
    imgs = [np.stack([red, green, np.full((32, 32), (start + i) * 5)]) for i in range(n)]
    return np.array(imgs, dtype=np.uint8).reshape(n, 3072)


def write_cifar10(folder: Path, per_batch: int = 4) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for b in range(5):
        first = b * per_batch
        batch = {b"data": cifar_images(per_batch, first), b"labels": [(first + i) % 10 for i in range(per_batch)]}
        with open(folder / f"data_batch_{b + 1}", "wb") as f:
            pickle.dump(batch, f, protocol=2)


def check_cifar_layout(s: Split) -> None:
    x = torch.cat([s.x_train, s.x_val])
    red, green = x[0, 0], x[0, 1]
    assert bool((red[1:, 0] > red[:-1, 0]).all()) and bool((red[:, 1:] == red[:, :1]).all())
    assert bool((green[0, 1:] > green[0, :-1]).all()) and bool((green[1:, :] == green[:1, :]).all())


def test_cifar10(tmp_path: Path) -> None:
    write_cifar10(tmp_path / "c10")
    s = load(CifarData(kind="cifar10", path="c10"), tmp_path, val_fraction=0.5)
    check_split(s, n=20, input_shape=(3, 32, 32), n_outputs=10, task="classification")
    check_cifar_layout(s)
    # The labels stay with their images: blue encodes the image number, whose label is number % 10.
    x, y = torch.cat([s.x_train, s.x_val]), torch.cat([s.y_train, s.y_val])
    order = torch.argsort(x[:, 2, 0, 0])
    assert torch.equal(y[order], torch.arange(20) % 10)
    # The unpacked archive's folder one level down is found too.
    write_cifar10(tmp_path / "parent" / "cifar-10-batches-py")
    assert load(CifarData(kind="cifar10", path="parent"), tmp_path).n_outputs == 10


def test_cifar100(tmp_path: Path) -> None:
    (tmp_path / "c100").mkdir()
    batch = {b"data": cifar_images(30, 0), b"fine_labels": [i * 3 for i in range(30)], b"coarse_labels": [0] * 30}
    with open(tmp_path / "c100" / "train", "wb") as f:
        pickle.dump(batch, f)  # protocol 5: a different way of pickling the array
    s = load(CifarData(kind="cifar100", path="c100"), tmp_path)
    check_split(s, n=30, input_shape=(3, 32, 32), n_outputs=100, task="classification")
    check_cifar_layout(s)
    assert sorted(torch.cat([s.y_train, s.y_val]).tolist()) == [i * 3 for i in range(30)]


class _Evil:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.getcwd, ())


def test_cifar_errors(tmp_path: Path) -> None:
    write_cifar10(tmp_path / "c")
    os.remove(tmp_path / "c" / "data_batch_4")
    with pytest.raises(DataError, match="missing cifar10 batch file.*data_batch_4"):
        load(CifarData(kind="cifar10", path="c"), tmp_path)
    with open(tmp_path / "c" / "data_batch_4", "wb") as f:
        pickle.dump({b"data": _Evil(), b"labels": [0]}, f)
    with pytest.raises(DataError, match="refusing to load posix.getcwd"):
        load(CifarData(kind="cifar10", path="c"), tmp_path)
    with open(tmp_path / "c" / "data_batch_4", "wb") as f:
        pickle.dump({b"pixels": cifar_images(4, 0)}, f)
    with pytest.raises(DataError, match="needs keys b'data' and b'labels'; it has: b'pixels'"):
        load(CifarData(kind="cifar10", path="c"), tmp_path)


# --- the data root ----------------------------------------------------------------------------


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    (r / "sub").mkdir(parents=True)
    np.savez(r / "sub" / "ok.npz", X=np.zeros((8, 2)), y=np.arange(8) % 2)
    (tmp_path / "secret.npz").write_bytes((r / "sub" / "ok.npz").read_bytes())
    return r


def test_resolve_under_root(root: Path) -> None:
    assert resolve_under_root(root, "sub/ok.npz") == (root / "sub" / "ok.npz").resolve()
    assert resolve_under_root(root, "sub/../sub/ok.npz") == (root / "sub" / "ok.npz").resolve()  # stays inside
    with pytest.raises(DataError, match=r"'\.\./\.\./etc/passwd' leaves the worker's data root \('\.\.' climbs out"):
        resolve_under_root(root, "../../etc/passwd")
    with pytest.raises(DataError, match=r"'/etc/passwd' is absolute"):
        resolve_under_root(root, "/etc/passwd")
    with pytest.raises(DataError, match="not found under the data root"):
        resolve_under_root(root, "sub/nothing.npz")
    (root / "link.npz").symlink_to(root.parent / "secret.npz")
    with pytest.raises(DataError, match="'link.npz' resolves through a symlink to outside the worker's data root"):
        resolve_under_root(root, "link.npz")
    (root / "outdir").symlink_to(root.parent, target_is_directory=True)
    with pytest.raises(DataError, match="through a symlink to outside"):
        resolve_under_root(root, "outdir/secret.npz")
    (root / "inside.npz").symlink_to(root / "sub" / "ok.npz")  # a symlink within the root is fine
    assert resolve_under_root(root, "inside.npz") == (root / "sub" / "ok.npz").resolve()


def test_load_split_defends_the_root_itself(root: Path) -> None:
    """The spec refuses these paths at study creation; the worker refuses them again (a study row
    could predate a check, and symlinks can only be seen here)."""
    ok = load(NpzData(kind="npz", path="sub/ok.npz"), root)
    check_split(ok, n=8, input_shape=(2,), n_outputs=2, task="classification")
    refused = [("../../etc/passwd", "climbs out"), ("/etc/passwd", "is absolute"), ("../secret.npz", "climbs out")]
    for path, reason in refused:
        ds = NpzData.model_construct(kind="npz", path=path, task="classification")  # bypasses the spec's check
        with pytest.raises(DataError, match=reason):
            load(ds, root)
    (root / "evil.npz").symlink_to(root.parent / "secret.npz")
    with pytest.raises(DataError, match="symlink"):
        load(NpzData(kind="npz", path="evil.npz"), root)
    # A symlinked file inside a dataset directory is caught too.
    write_mnist(root / "mnist")
    os.remove(root / "mnist" / "train-labels-idx1-ubyte.gz")
    write_mnist(root.parent / "outside")
    (root / "mnist" / "train-labels-idx1-ubyte.gz").symlink_to(root.parent / "outside" / "train-labels-idx1-ubyte.gz")
    with pytest.raises(DataError, match="symlink"):
        load(MnistData(kind="mnist", path="mnist"), root)


def test_file_data_needs_a_root_and_an_existing_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no data root configured on this worker \(HPO_DATA_ROOT\)"):
        load(NpzData(kind="npz", path="x.npz"), None)
    with pytest.raises(DataError, match="'x.npz' not found under the data root"):
        load(NpzData(kind="npz", path="x.npz"), tmp_path)


def test_an_edited_file_is_read_again(tmp_path: Path) -> None:
    np.savez(tmp_path / "e.npz", X=np.zeros((10, 2)), y=np.arange(10) % 2)
    assert load(NpzData(kind="npz", path="e.npz"), tmp_path).n_outputs == 2
    np.savez(tmp_path / "e.npz", X=np.zeros((12, 2)), y=np.arange(12) % 3)
    os.utime(tmp_path / "e.npz", ns=(1, 1))  # a different mtime even on a coarse clock
    assert load(NpzData(kind="npz", path="e.npz"), tmp_path).n_outputs == 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_device() -> None:
    s = load_split(BundledData(kind="digits"), val_fraction=0.2, seed=0, device="cuda", data_root=None)
    assert s.x_train.is_cuda and s.y_val.is_cuda
    cpu = load("digits", val_fraction=0.2)
    assert torch.equal(s.x_val.cpu(), cpu.x_val)
