import os
import pickle

import numpy as np
import pytest
from layouts import write_cifar

from casdap import CasdapError
from casdap.data.cifar import CIFARLocal, read_cifar


def _write(root, variant="cifar100", n=40, classes=100):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(n) % classes
    names = [f"class{i}" for i in range(classes)]
    write_cifar(root, imgs, labels, names, variant, train=True)
    write_cifar(root, imgs[:10], labels[:10], names, variant, train=False)
    return imgs, labels


@pytest.mark.parametrize("variant,classes", [("cifar100", 100), ("cifar10", 10)])
def test_roundtrip_in_torchvision_layout(tmp_path, variant, classes):
    imgs, labels = _write(tmp_path, variant, classes=classes)
    x, y, names = read_cifar(tmp_path, variant, train=True)
    assert np.array_equal(x, imgs) and np.array_equal(y, labels) and len(names) == classes
    ds = CIFARLocal(tmp_path, train=False, variant=variant)
    img, target = ds[3]
    assert len(ds) == 10 and img.size == (32, 32) and target == labels[3]
    assert np.array_equal(np.asarray(img), imgs[3])


def test_layout_folder_itself_is_accepted(tmp_path):
    _write(tmp_path)
    assert len(CIFARLocal(tmp_path / "cifar-100-python", train=True)) == 40


def test_missing_data_explains_layout(tmp_path):
    with pytest.raises(CasdapError, match="cifar-100-python/ with files train, test, meta"):
        CIFARLocal(tmp_path / "nowhere")


def test_truncated_file(tmp_path):
    _write(tmp_path)
    path = tmp_path / "cifar-100-python" / "train"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CasdapError, match="truncated or not a CIFAR pickle"):
        read_cifar(tmp_path)


def test_malformed_shapes(tmp_path):
    _write(tmp_path)
    with open(tmp_path / "cifar-100-python" / "train", "wb") as f:
        pickle.dump({"data": np.zeros((4, 100), np.uint8), "fine_labels": [0] * 4}, f)
    with pytest.raises(CasdapError, match=r"must be uint8 \[N, 3072\]"):
        read_cifar(tmp_path)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch PWNED_CIFAR",))


def test_pickle_with_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path)
    with open(tmp_path / "cifar-100-python" / "train", "wb") as f:
        pickle.dump({"data": _Exploit()}, f)
    with pytest.raises(CasdapError, match="refusing to load posix.system"):
        read_cifar(tmp_path)
    assert not (tmp_path / "PWNED_CIFAR").exists()
