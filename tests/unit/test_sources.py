"""Raw dataset readers on files written by the tests, and real Fashion-MNIST when installed."""

import gzip
import pickle
import tarfile

import numpy as np
import pytest

from bench.experiment import load_config
from bench.data.cards import DatasetError
from bench.data.lt import build_lt_data
from bench.data.sources import load_cifar, load_fashion_mnist


def write_idx(path, arr):
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def fake_fashion_mnist(d, n_train=60, n_test=20):
    rng = np.random.default_rng(0)
    write_idx(d / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (n_train, 28, 28)))
    write_idx(d / "train-labels-idx1-ubyte.gz", np.arange(n_train) % 10)
    write_idx(d / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (n_test, 28, 28)))
    write_idx(d / "t10k-labels-idx1-ubyte.gz", np.arange(n_test) % 10)


def test_idx_round_trip_and_fashion_mnist_from_root(tmp_path):
    fake_fashion_mnist(tmp_path)
    raw = load_fashion_mnist(str(tmp_path))
    assert raw.train_x.shape == (60, 28, 28, 1) and raw.test_y.tolist() == list(range(10)) * 2
    assert raw.num_classes == 10 and raw.class_names[6] == "shirt"


def test_truncated_idx_is_a_clear_error(tmp_path):
    fake_fashion_mnist(tmp_path)
    p = tmp_path / "train-images-idx3-ubyte.gz"
    data = gzip.decompress(p.read_bytes())
    p.write_bytes(gzip.compress(data[:-10]))
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte.gz: truncated or corrupt IDX"):
        load_fashion_mnist(str(tmp_path))


def test_missing_dataset_says_where_and_how(tmp_path):
    with pytest.raises(DatasetError) as e:
        load_fashion_mnist(str(tmp_path / "nowhere"))
    msg = str(e.value)
    assert "nowhere" in msg and "apt-get install -y dataset-fashion-mnist" in msg and "\n" not in msg


def _cifar_entry(n, num_classes, rng):
    key = b"labels" if num_classes == 10 else b"fine_labels"
    return {b"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8), key: [i % num_classes for i in range(n)]}


def write_fake_cifar(root, num_classes, per_file=20, archive=False):
    """The standard python-pickle layout (cifar-10-batches-py/data_batch_1..5, test_batch, batches.meta)."""
    rng = np.random.default_rng(num_classes)
    folder = root / ("cifar-10-batches-py" if num_classes == 10 else "cifar-100-python")
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"] if num_classes == 10 else ["train", "test"]
    for name in names:
        (folder / name).write_bytes(pickle.dumps(_cifar_entry(per_file * (5 if name == "train" else 1), num_classes,
                                                              rng)))
    meta_name, key = ("batches.meta", b"label_names") if num_classes == 10 else ("meta", b"fine_label_names")
    (folder / meta_name).write_bytes(pickle.dumps({key: [f"c{i}".encode() for i in range(num_classes)]}))
    if archive:
        with tarfile.open(root / ("cifar-10-python.tar.gz" if num_classes == 10 else "cifar-100-python.tar.gz"),
                          "w:gz") as tf:
            tf.add(folder, arcname=folder.name)
        import shutil
        shutil.rmtree(folder)


@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize("archive", [False, True])
def test_cifar_pickles_folder_or_archive(tmp_path, num_classes, archive):
    write_fake_cifar(tmp_path, num_classes, per_file=100 if num_classes == 100 else 20, archive=archive)
    raw = load_cifar(num_classes, str(tmp_path))
    assert raw.train_x.shape == (500 if num_classes == 100 else 100, 32, 32, 3)
    assert raw.train_x.dtype == np.uint8 and raw.class_names[1] == "c1"
    # pixel layout: row-major RGB planes -> HWC
    folder = tmp_path / ("cifar-10-batches-py" if num_classes == 10 else "cifar-100-python")
    if not archive:
        first = pickle.loads((folder / ("data_batch_1" if num_classes == 10 else "train")).read_bytes(),
                             encoding="bytes")
        assert np.array_equal(raw.train_x[0, :, :, 1].ravel(), first[b"data"][0][1024:2048])


def test_corrupt_cifar_pickle(tmp_path):
    write_fake_cifar(tmp_path, 10)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="data_batch_3: not a readable CIFAR pickle"):
        load_cifar(10, str(tmp_path))


def test_lt_build_on_fake_cifar10(tmp_path):
    write_fake_cifar(tmp_path, 10, per_file=200)   # 100 per class in the pool
    cfg = load_config(None, ["data.dataset=cifar10", f"data.root={tmp_path}", "data.n_max=50",
                             "data.imbalance_factor=10", "data.val_per_class=5"])
    data = build_lt_data(cfg.data)
    assert data.class_counts == [50, 38, 29, 23, 17, 13, 10, 8, 6, 5]   # int(50 * 0.1^(c/9))
    assert len(data.train) == sum(data.class_counts) and len(data.val) == 50 and len(data.test) == 200
    assert data.train.x.shape[1:] == (3, 32, 32)


def test_n_max_too_large_is_a_clear_error(tmp_path):
    write_fake_cifar(tmp_path, 10)
    cfg = load_config(None, ["data.dataset=cifar10", f"data.root={tmp_path}"])
    with pytest.raises(DatasetError, match="data.n_max=4980 / data.val_per_class=20 do not fit cifar10"):
        build_lt_data(cfg.data)


REAL = "/usr/share/datasets/fashion-mnist"


@pytest.mark.skipif(not __import__("os").path.isdir(REAL),
                    reason="dataset-fashion-mnist not installed (make test installs it)")
def test_real_fashion_mnist_lt_if100():
    # without a val split: the reference profile, 14,886 images (the WB code's cut)
    cfg = load_config(None, ["data.dataset=fashion-mnist", "data.val_per_class=0", "eval.selection_split=test"])
    data = build_lt_data(cfg.data)
    assert data.class_counts == [6000, 3596, 2156, 1292, 774, 464, 278, 166, 100, 60]
    assert len(data.train) == 14886 and data.val is None and len(data.test) == 10000
    # with 20 val images per class the head keeps 5,980 (HS convention)
    cfg = load_config(None, ["data.dataset=fashion-mnist", "data.pad_to=32"])
    data = build_lt_data(cfg.data)
    assert data.class_counts == [5980, 3584, 2149, 1288, 772, 463, 277, 166, 99, 59]
    assert len(data.train) == 14837 and len(data.val) == 200
    assert data.train.x.shape[1:] == (1, 32, 32)
    assert np.isclose(float(data.train.x[:, :, 2:30, 2:30].float().mean()) / 255, 0.2860, atol=0.03)
    assert data.selection_hash == build_lt_data(cfg.data).selection_hash


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar_arrays_of_any_pickle_protocol_load(tmp_path, protocol):
    # the real archives are protocol-2 pickles of Python 2's numpy; the restricted unpickler takes both forms
    write_fake_cifar(tmp_path, 10)
    folder = tmp_path / "cifar-10-batches-py"
    entry = pickle.loads((folder / "data_batch_2").read_bytes())
    (folder / "data_batch_2").write_bytes(pickle.dumps(entry, protocol=protocol))
    assert load_cifar(10, str(tmp_path)).train_x.shape == (100, 32, 32, 3)


def test_a_crafted_cifar_pickle_runs_no_code(tmp_path):
    import os

    write_fake_cifar(tmp_path, 10)
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (tmp_path / "cifar-10-batches-py" / "data_batch_2").write_bytes(pickle.dumps({b"data": Payload()}))
    with pytest.raises(DatasetError,
                       match="data_batch_2: not a readable CIFAR pickle .*is not allowed in a CIFAR archive"):
        load_cifar(10, str(tmp_path))
    assert not marker.exists()


def test_a_new_idx_card_reads_its_own_files_and_classes(tmp_path, monkeypatch):
    """A card with `source: idx` is read by the idx reader from the files and classes that card names, never
    from Fashion-MNIST's (the reader is chosen by `source`, the files by the card)."""
    import shutil

    import yaml

    from bench.config import DataConfig
    from bench.data import cards
    from bench.registry import READERS

    cards_dir = tmp_path / "cards"
    shutil.copytree(cards.cards_dir(), cards_dir)
    card = yaml.safe_load((cards_dir / "fashion-mnist.yaml").read_text())
    card.update(name="tiny-idx", title="Tiny IDX", num_classes=2, class_names=["zero", "one"],
                files={k: f"tiny-{k}.gz" for k in card["files"]})
    (cards_dir / "tiny-idx.yaml").write_text(yaml.safe_dump(card))
    monkeypatch.setenv("LTBENCH_DATASETS_DIR", str(cards_dir))
    cards.load_card.cache_clear()
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(1)
    for key, shape in (("train_images", (8, 5, 5)), ("test_images", (4, 5, 5))):
        write_idx(data / f"tiny-{key}.gz", rng.integers(0, 256, shape))
    write_idx(data / "tiny-train_labels.gz", np.arange(8) % 2)
    write_idx(data / "tiny-test_labels.gz", np.arange(4) % 2)
    try:
        raw = READERS["idx"](DataConfig(dataset="tiny-idx", root=str(data)))
    finally:
        cards.load_card.cache_clear()
    assert raw.train_x.shape == (8, 5, 5, 1) and raw.class_names == ["zero", "one"] and raw.num_classes == 2
