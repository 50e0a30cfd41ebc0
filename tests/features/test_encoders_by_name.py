"""Encoders by name, online and offline, without network: a local HTTP server stands in
for the download server, hand-built caches for the torch hub and Hugging Face caches."""

from __future__ import annotations

import functools
import http.server
import json
import threading

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from napari_wsi_mil.cli import main
from napari_wsi_mil.errors import WsiMilError
from napari_wsi_mil.features import timm_encoders
from napari_wsi_mil.features.encoder_cards import CARDS
from napari_wsi_mil.features.encoders import load_encoder_spec
from napari_wsi_mil.pretrain.models import resnet18_trunk
from napari_wsi_mil.weight_caches import file_sha256
from pretrain_fixtures import tiny_cohort


@pytest.fixture(autouse=True)
def private_caches(tmp_path, monkeypatch):
    """Empty torch hub and Hugging Face caches, no token, online unless a test says not."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for name in ("HF_HUB_CACHE", "HF_TOKEN", "HF_HUB_OFFLINE", "WSI_MIL_DOWNLOAD_MIRROR"):
        monkeypatch.delenv(name, raising=False)


def _checkpoints(tmp_path):
    path = tmp_path / "torch" / "hub" / "checkpoints"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _resnet_state(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return resnet18_trunk().state_dict()


def _same_trunk(loaded, state) -> None:
    reference = resnet18_trunk().eval()
    reference.load_state_dict(state)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(loaded.model(x), reference(x))


# ----------------------------------------------------------------- aliases


@pytest.mark.parametrize("name", [n for n, c in CARDS.items() if c.arch != "resnet18"])
def test_every_alias_builds_and_gives_its_documented_dimension(name):
    """Random weights, shapes only (meta device: ViT-g is 1.1 B parameters)."""
    card = CARDS[name]
    model = timm_encoders.build(timm_encoders.card_source(card), "meta")
    if card.output == "class+mean_patch":
        model = timm_encoders.ClassAndMeanPatchTokens(model, card.prefix_tokens)
    out = model(torch.zeros(2, 3, 224, 224, device="meta"))
    assert tuple(out.shape) == (2, card.dim)


def test_virchow2_embedding_is_the_class_token_beside_the_mean_patch_token():
    """Virchow2's tokens: class, 4 registers, then the patches (its model card)."""
    tokens = torch.randn(2, 1 + 4 + 9, 8)

    class Tokens(torch.nn.Module):
        def forward(self, x):
            return tokens

    card = CARDS["virchow2"]
    assert card.output == "class+mean_patch" and card.prefix_tokens == 5
    out = timm_encoders.ClassAndMeanPatchTokens(Tokens(), card.prefix_tokens)(None)
    expected = torch.cat([tokens[:, 0], tokens[:, 5:].mean(1)], dim=1)
    torch.testing.assert_close(out, expected)


def test_encoders_lists_every_alias_with_its_facts_and_cache_state(tmp_path, capsys):
    torch.save(_resnet_state(7), _checkpoints(tmp_path) / "resnet18-f37072fd.pth")
    assert main(["encoders"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name, card in CARDS.items():
        row = next(line.split() for line in lines if line.startswith(name + " "))
        assert row[1] == str(card.dim)
    assert next(x for x in lines if x.startswith("imagenet ")).split()[4] == "yes"
    assert next(x for x in lines if x.startswith("uni ")).split()[4] == "no"


def test_resnet_aliases_give_512_on_a_224_batch(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.save(_resnet_state(1), _checkpoints(tmp_path) / "resnet18-f37072fd.pth")
    for name in ("random", "imagenet"):
        with torch.inference_mode():
            assert load_encoder_spec(name).model(torch.zeros(1, 3, 224, 224)).shape == (1, 512)


def test_ciga_lightning_checkpoint_maps_onto_resnet18(tmp_path, monkeypatch):
    """Ciga et al.'s checkpoint: Lightning ``state_dict`` with ``model.resnet.`` keys
    and an ``fc`` layer, beside training state; read with weights_only."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    state = _resnet_state(2)
    ckpt = {
        "epoch": 3,
        "global_step": 1000,
        "state_dict": {
            **{f"model.resnet.{k}": v for k, v in state.items()},
            "model.resnet.fc.weight": torch.zeros(128, 512),
            "model.resnet.fc.bias": torch.zeros(128),
        },
    }
    path = _checkpoints(tmp_path) / "tenpercent_resnet18.ckpt"
    torch.save(ckpt, path)
    loaded = load_encoder_spec("ciga")
    assert loaded.name == "ciga" and loaded.sha256 == file_sha256(path) and loaded.dim == 512
    _same_trunk(loaded, state)
    trunk = resnet18_trunk("ciga")  # the same start for pretraining
    assert torch.equal(trunk.conv1.weight, state["conv1.weight"])


# ----------------------------------------------------------------- downloads


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files with ``Range: bytes=N-`` support and records the requests."""

    log: list = []

    def do_GET(self):  # noqa: N802
        self.log.append((self.path, self.headers.get("Range")))
        path = self.translate_path(self.path)
        try:
            data = open(path, "rb").read()
        except OSError:
            self.send_error(404)
            return
        start = 0
        if self.headers.get("Range"):
            start = int(self.headers["Range"].split("=")[1].rstrip("-"))
            self.send_response(206)
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path, monkeypatch):
    root = tmp_path / "served"
    root.mkdir()
    _RangeHandler.log = []
    handler = functools.partial(_RangeHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    monkeypatch.setenv("WSI_MIL_DOWNLOAD_MIRROR", f"http://127.0.0.1:{httpd.server_port}/models")
    (root / "models").mkdir()
    yield root / "models", _RangeHandler.log
    httpd.shutdown()


def test_download_resumes_a_partial_file_and_shows_progress(tmp_path, server, capfd):
    served, log = server
    state = _resnet_state(3)
    torch.save({"state_dict": {f"model.resnet.{k}": v for k, v in state.items()}}, served / "c")
    (served / "c").rename(served / "tenpercent_resnet18.ckpt")
    data = (served / "tenpercent_resnet18.ckpt").read_bytes()
    partial = _checkpoints(tmp_path) / "tenpercent_resnet18.ckpt.partial"
    partial.write_bytes(data[: len(data) // 2])
    assert main(["encoders", "--download", "ciga"]) == 0
    cached = _checkpoints(tmp_path) / "tenpercent_resnet18.ckpt"
    assert cached.read_bytes() == data and not partial.exists()
    assert log == [("/models/tenpercent_resnet18.ckpt", f"bytes={len(data) // 2}-")]
    err = capfd.readouterr().err
    assert "tenpercent_resnet18.ckpt" in err and "100%" in err
    _same_trunk(load_encoder_spec("ciga"), state)  # now from the cache, no request
    assert len(log) == 1


def test_extraction_shows_the_download_as_a_job_stage(tmp_path, server, tiled):
    """What the Extract widget's status line shows: download progress in bytes."""
    import shutil

    from napari_wsi_mil.features.extract import extract_features_job
    from napari_wsi_mil.jobs import run_job
    from napari_wsi_mil.store.project import ProjectStore

    served, _ = server
    state = _resnet_state(5)
    torch.save({"state_dict": {f"model.resnet.{k}": v for k, v in state.items()}}, served / "c")
    (served / "c").rename(served / "tenpercent_resnet18.ckpt")
    shutil.copytree(tiled[0].root, tmp_path / "p")
    store = ProjectStore(tmp_path / "p")
    events = []
    ids = store.slide_ids()[:1]
    run_job(extract_features_job(store, ids, "ciga", "c", num_workers=0), events.append)
    downloads = [e for e in events if e.stage == "download"]
    size = (served / "tenpercent_resnet18.ckpt").stat().st_size
    assert downloads[-1].done == downloads[-1].total == size
    assert downloads[-1].message.startswith("ciga weights,") and "MB" in downloads[-1].message
    events.clear()  # cached now: no download stage
    run_job(extract_features_job(store, ids, "ciga", "c2", num_workers=0), events.append)
    assert not [e for e in events if e.stage == "download"]


def test_download_with_a_wrong_hash_is_refused(tmp_path, server, capfd):
    served, _ = server
    torch.save(_resnet_state(4), served / "resnet18-f37072fd.pth")  # not ImageNet's hash
    assert main(["encoders", "--download", "imagenet"]) == 2
    err = [x for x in capfd.readouterr().err.splitlines() if "error" in x]  # beside progress
    assert len(err) == 1 and "sha256" in err[0] and "f37072fd" in err[0]
    assert not any(_checkpoints(tmp_path).iterdir())


def test_offline_missing_cache_names_the_path_and_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WSI_MIL_DOWNLOAD_MIRROR", "http://127.0.0.1:9")  # never contacted
    with pytest.raises(WsiMilError) as info:
        load_encoder_spec("imagenet")
    assert str(_checkpoints(tmp_path)) in str(info.value)
    assert "wsi-mil encoders --download imagenet" in str(info.value)
    with pytest.raises(WsiMilError, match="wsi-mil encoders --download uni"):
        load_encoder_spec("uni")


def test_no_network_fails_at_once_with_one_message(monkeypatch):
    """Online mode, but nothing answers: one probe, no retries, the cache path named."""
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # a closed port
    with pytest.raises(WsiMilError, match="cannot reach http://127.0.0.1:9") as info:
        load_encoder_spec("hf-hub:someorg/absent")
    assert "models--someorg--absent" in str(info.value)
    assert "wsi-mil encoders --download hf-hub:someorg/absent" in str(info.value)


# ----------------------------------------------------------------- Hugging Face cache

TINY_ARGS = {"img_size": 32, "patch_size": 16, "depth": 1, "num_heads": 6, "embed_dim": 384}


def _fake_hub_repo(tmp_path, repo="testorg/tiny-vit"):
    """A Hugging Face cache entry as ``huggingface_hub`` lays it out: refs/main names a
    snapshot that holds the repo's config.json and model.safetensors."""
    import timm

    torch.manual_seed(5)
    model = timm.create_model("vit_small_patch16_224", num_classes=0, **TINY_ARGS)
    commit = "0123456789abcdef0123456789abcdef01234567"
    entry = tmp_path / "hf" / "hub" / f"models--{repo.replace('/', '--')}"
    snapshot = entry / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text(commit)
    config = {
        "architecture": "vit_small_patch16_224",
        "num_classes": 0,
        "model_args": {**TINY_ARGS, "num_classes": 10},  # features are taken all the same
        "pretrained_cfg": {
            "input_size": [3, 32, 32],
            "mean": [0.5, 0.5, 0.5],
            "std": [0.25, 0.25, 0.25],
        },
    }
    (snapshot / "config.json").write_text(json.dumps(config))
    save_file(model.state_dict(), snapshot / "model.safetensors")
    return model.eval(), snapshot / "model.safetensors"


@pytest.fixture(scope="module")
def tiled(tmp_path_factory):
    return tiny_cohort(tmp_path_factory.mktemp("named"), n_slides=8, test_fraction=0.25)


def test_offline_hub_model_extracts_and_384_d_features_flow_through_mil_pca_h5(
    tmp_path, monkeypatch, tiled, capsys
):
    import shutil

    from napari_wsi_mil.features.extract import preprocess, read_features

    store, cohort = tiled
    shutil.copytree(store.root, tmp_path / "p")
    project = str(tmp_path / "p")
    csv = str(next((store.root.parent / "cohort").glob("*.csv")))
    model, weights = _fake_hub_repo(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = "hf-hub:testorg/tiny-vit"
    extract = ["extract", "--project", project, "--encoder", spec, "--workers", "0"]
    assert main(extract) == 0
    from napari_wsi_mil.store.project import ProjectStore

    copy = ProjectStore(project)
    slide = copy.slide_ids()[0]
    feats, attrs = copy.read_result("features", "tiny-vit", slide)
    assert feats["features"].shape[1] == 384
    assert attrs["encoder"] == spec and attrs["encoder_sha256"] == file_sha256(weights)
    assert attrs["dim"] == 384 and attrs["input_size"] == 32 and attrs["mean"] == [0.5] * 3
    loaded = load_encoder_spec(spec)
    images = torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.inference_mode():
        x = preprocess(images, loaded, torch.device("cpu"))
        torch.testing.assert_close(loaded.model(x), model(x))

    run = tmp_path / "run"
    train = ["train", "--project", project, "--cohort", csv, "--features", "tiny-vit"]
    assert main([*train, "--epochs", "2", "--threads", "1", "--out", str(run)]) == 0
    assert main(["pca", "--project", project, "--cohort", csv, "--features", "tiny-vit",
                 "--out", str(tmp_path / "pca.png")]) == 0  # fmt: skip
    assert (tmp_path / "pca.png").stat().st_size > 0
    h5_dir = tmp_path / "h5"
    assert main(["export-features", "--project", project, "--name", "tiny-vit",
                 "--out", str(h5_dir)]) == 0  # fmt: skip
    with h5py.File(h5_dir / f"{slide}.h5") as h5:
        assert h5["features"].shape[1] == 384
    np.testing.assert_allclose(
        read_features(copy, "tiny-vit", slide).astype(np.float32),
        np.asarray(feats["features"], np.float32),
    )
    capsys.readouterr()

    # the model expects 384-d features; a 512-d feature set of the same name is refused
    other = [*extract[:4], "random", "--name", "tiny-vit", "--overwrite", "--workers", "0"]
    assert main(other) == 0
    capsys.readouterr()
    infer = ["infer", "--project", project, "--model", str(run / "model.safetensors")]
    assert main([*infer, "--out", str(tmp_path / "pred")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "D=512" in err[0] and "D=384" in err[0]
    assert not (tmp_path / "pred").exists()


# ----------------------------------------------------------------- bad input


def test_bad_encoder_inputs_are_one_line_exit_2_and_write_nothing(tmp_path, tiled, capsys):
    import shutil

    store, _ = tiled
    shutil.copytree(store.root, tmp_path / "p")
    project = str(tmp_path / "p")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    vit_weights = tmp_path / "vit.safetensors"
    save_file({"cls_token": torch.zeros(1, 1, 384)}, vit_weights)
    pickled = tmp_path / "pickled.pt"
    torch.save(resnet18_trunk(), pickled)
    _fake_hub_repo(tmp_path)
    resnet_pth = tmp_path / "resnet.pth"
    torch.save(_resnet_state(6), resnet_pth)
    cases = {
        ("virchow",): "did you mean virchow2",
        ("uni",): "gated model",
        ("imagenet", "--weights", str(bad)): "not loadable safely",
        ("imagenet", "--weights", str(vit_weights)): "not a ResNet-18 trunk",
        ("hf-hub:testorg/tiny-vit", "--weights", str(resnet_pth)): "not weights of",
        (str(pickled),): "pickled modules and TorchScript archives are refused",
        (str(tmp_path / "missing.pth"),): "no such encoder file",
    }
    for args, message in cases.items():
        name = "x"
        rc = main(["extract", "--project", project, "--encoder", *args, "--name", name])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and message in err[0], (args, err)
        assert not (tmp_path / "p" / "features").exists() or not any(
            (tmp_path / "p" / "features").glob("x*")
        )


def test_2560_d_features_flow_through_import_mil_pca_and_export(tmp_path, capsys):
    """The widest alias (Virchow2, 2560-d) as a TRIDENT user brings it: .h5 files."""
    rng = np.random.default_rng(0)
    h5_dir, rows = tmp_path / "h5", ["slide_id,label,split"]
    h5_dir.mkdir()
    for i in range(8):
        features = rng.normal(size=(12, 2560)).astype(np.float32) + (i % 2)
        coords = np.stack(np.meshgrid(np.arange(4), np.arange(3)), -1).reshape(-1, 2) * 224
        with h5py.File(h5_dir / f"s{i}.h5", "w") as h5:
            h5["features"] = features
            h5["coords"] = coords
        rows.append(f"s{i},{i % 2},{'test' if i >= 6 else 'train'}")
    cohort = tmp_path / "cohort.csv"
    cohort.write_text("\n".join(rows) + "\n")
    project = str(tmp_path / "project")
    imported = ["import-features", str(h5_dir), "--project", project, "--name", "v2"]
    assert main([*imported, "--patch-size-level0", "224"]) == 0
    run = tmp_path / "run"
    train = ["train", "--project", project, "--cohort", str(cohort), "--features", "v2"]
    assert main([*train, "--epochs", "2", "--threads", "1", "--out", str(run)]) == 0
    infer = ["infer", "--project", project, "--model", str(run / "model.safetensors")]
    assert main([*infer, "--out", str(tmp_path / "pred")]) == 0
    pca = ["pca", "--project", project, "--cohort", str(cohort), "--features", "v2"]
    assert main([*pca, "--out", str(tmp_path / "pca.png")]) == 0
    out = tmp_path / "out"
    assert main(["export-features", "--project", project, "--name", "v2", "--out", str(out)]) == 0
    with h5py.File(out / "s7.h5") as h5:
        assert h5["features"].shape == (12, 2560)
