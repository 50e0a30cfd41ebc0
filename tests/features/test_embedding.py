import importlib.util

import numpy as np
import pytest

from napari_wsi_mil.errors import WsiMilError
from napari_wsi_mil.features.embedding import (
    EmbeddingTable,
    embed_features,
    embedding_job,
    sample_patches,
)
from napari_wsi_mil.features.embedding_plot import draw_embedding, plot_embedding
from napari_wsi_mil.jobs import Progress
from napari_wsi_mil.store.cohort import Cohort, CohortEntry
from napari_wsi_mil.store.project import ProjectStore
from pretrain_fixtures import tiny_cohort

D = 16


@pytest.fixture(scope="module")
def tiled(tmp_path_factory):
    """Four tiled slides (2 train, 2 test) with features separating the bag labels."""
    store, cohort = tiny_cohort(tmp_path_factory.mktemp("emb"), n_slides=4, test_fraction=0.5)
    rng = np.random.default_rng(0)
    for entry in cohort:
        grid, _ = store.read_tiles(entry.slide_id)
        feats = rng.normal(size=(len(grid), D)) + 3.0 * entry.label * np.eye(D)[0]
        store.write_result(
            "features", "test", entry.slide_id, {"features": feats.astype(np.float16)}, {"dim": D}
        )
    return store, cohort


def test_sampling_is_deterministic_per_slide():
    a = sample_patches(1000, 50, "s1", seed=0)
    assert len(a) == 50 and len(np.unique(a)) == 50 and np.all(np.diff(a) > 0)
    np.testing.assert_array_equal(a, sample_patches(1000, 50, "s1", seed=0))
    assert not np.array_equal(a, sample_patches(1000, 50, "s2", seed=0))
    assert not np.array_equal(a, sample_patches(1000, 50, "s1", seed=1))
    np.testing.assert_array_equal(sample_patches(30, 50, "s1"), np.arange(30))
    np.testing.assert_array_equal(sample_patches(30, None, "s1"), np.arange(30))


def test_embed_features_table(tiled):
    store, cohort = tiled
    events = []
    job = embedding_job(store, cohort, "test", max_per_slide=40)
    try:
        while True:
            events.append(next(job))
    except StopIteration as stop:
        table = stop.value
    assert all(isinstance(e, Progress) for e in events)
    assert [e.done for e in events if e.stage == "loading"] == [0, 1, 2, 3, 4]
    assert len(table) == 4 * 40
    assert table.slide_ids() == cohort.slide_ids
    labels, splits = cohort.labels(), {e.slide_id: e.split for e in cohort}
    for sid in cohort.slide_ids:
        rows = table.rows_of(sid)
        assert len(rows) == 40
        assert set(table.bag_label[rows].tolist()) == {labels[sid]}
        assert set(table.split[rows].tolist()) == {splits[sid]}
        # coords are the TileGrid coords of the sampled patches
        grid, _ = store.read_tiles(sid)
        np.testing.assert_array_equal(table.coords[rows], grid.coords[table.patch_index[rows]])
    assert table.attrs["fit_split"] == "train"
    assert table.attrs["n_fit"] == 80
    # deterministic, and a slide's sample does not depend on the other slides
    again = embed_features(store, cohort, "test", max_per_slide=40)
    np.testing.assert_array_equal(again.patch_index, table.patch_index)
    np.testing.assert_allclose(again.xy, table.xy)
    one = embed_features(store, cohort, "test", max_per_slide=40, slide_ids=["synth_001"])
    np.testing.assert_array_equal(one.patch_index, table.patch_index[table.rows_of("synth_001")])
    # the label shift (feature 0) is the main axis of variation: PC 1 separates the bags
    pos, neg = table.xy[table.bag_label == 1, 0], table.xy[table.bag_label == 0, 0]
    assert abs(pos.mean() - neg.mean()) > 2.0


def test_pca_is_fitted_on_train_only(tmp_path):
    """Train varies along feature 0, test (much more) along feature 1."""
    from sklearn.decomposition import PCA

    store = ProjectStore(tmp_path / "proj", create=True)
    rng = np.random.default_rng(1)
    entries, train_feats = [], []
    for i, split in enumerate(["train", "train", "test", "test"]):
        sid = f"s{i}"
        feats = rng.normal(scale=0.1, size=(200, 8))
        feats[:, 0 if split == "train" else 1] *= 10 if split == "train" else 50
        store.write_result("features", "f", sid, {"features": feats.astype(np.float32)}, {})
        entries.append(CohortEntry(sid, i % 2, split=split))
        if split == "train":
            train_feats.append(feats)
    table = embed_features(store, Cohort(entries), "f", max_per_slide=None)
    assert (table.coords == -1).all()  # no tiling in this store
    expected = PCA(2, random_state=0).fit(np.concatenate(train_feats))
    all_feats = np.concatenate(
        [store.read_result("features", "f", f"s{i}")[0]["features"] for i in range(4)]
    )
    np.testing.assert_allclose(table.xy, expected.transform(all_feats), rtol=1e-4, atol=1e-4)
    # fitted on all, PC 1 would follow the test spread (feature 1); on train it is feature 0
    test_rows = table.split == "test"
    assert table.xy[~test_rows, 0].std() > 5 * table.xy[test_rows, 0].std()
    assert table.xy[test_rows, 0].std() < 0.5  # fitted on all it would be about 5
    assert table.attrs["fit_split"] == "train" and table.attrs["n_fit"] == 400


def test_embed_features_errors(tiled, tmp_path):
    store, cohort = tiled
    with pytest.raises(WsiMilError, match="no slide of the cohort"):
        embed_features(store, cohort, "nope")
    with pytest.raises(WsiMilError, match="not in the cohort"):
        embed_features(store, cohort, "test", slide_ids=["zzz"])
    with pytest.raises(WsiMilError, match="unknown embedding method"):
        embed_features(store, cohort, "test", method="tsne")
    other = ProjectStore(tmp_path / "p", create=True)
    other.write_result("features", "f", "a", {"features": np.zeros((5, 4), np.float32)}, {})
    other.write_result("features", "f", "b", {"features": np.zeros((5, 3), np.float32)}, {})
    with pytest.raises(WsiMilError, match="feature dimensions"):
        embed_features(other, Cohort([CohortEntry("a", 0), CohortEntry("b", 1)]), "f")


@pytest.mark.skipif(importlib.util.find_spec("umap") is not None, reason="umap-learn installed")
def test_umap_missing_is_a_clear_error(tiled):
    store, cohort = tiled
    with pytest.raises(WsiMilError, match="umap-learn"):
        embed_features(store, cohort, "test", method="umap")


def _synthetic_table(n: int, seed: int = 0) -> EmbeddingTable:
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 2, n)
    return EmbeddingTable(
        xy=rng.normal(size=(n, 2)) + label[:, None] * [2.0, 0.0],
        slide_id=np.array([f"s{i % 7}" for i in range(n)]),
        patch_index=np.arange(n),
        bag_label=label,
        split=np.where(np.arange(n) % 2 == 0, "train", "test"),
        attrs={"explained_variance_ratio": [0.4, 0.1]},
    )


def test_plot_embedding_writes_png(tiled, tmp_path):
    store, cohort = tiled
    table = embed_features(store, cohort, "test", max_per_slide=40)
    out = plot_embedding(table, tmp_path / "sub" / "pca.png", title="features")
    assert out == tmp_path / "sub" / "pca.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".tmp")]


def test_big_panels_switch_to_histograms(tmp_path):
    from matplotlib.figure import Figure

    table = _synthetic_table(60_000)
    plot = draw_embedding(Figure(), table)
    assert plot.splits == ["train", "test"]
    assert plot.modes == ["hist", "hist"]
    assert sorted(np.concatenate(plot.panel_rows).tolist()) == list(range(len(table)))
    small = draw_embedding(Figure(), _synthetic_table(700))
    assert small.modes == ["scatter", "scatter"]
    out = plot_embedding(table, tmp_path / "big.png")
    assert out.read_bytes()[:4] == b"\x89PNG"
