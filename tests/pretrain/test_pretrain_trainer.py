import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from napari_wsi_mil.errors import WsiMilError
from napari_wsi_mil.jobs import run_job
from napari_wsi_mil.pretrain import METHODS
from napari_wsi_mil.pretrain.encoder_file import load_encoder
from napari_wsi_mil.pretrain.models import load_trunk
from napari_wsi_mil.pretrain.optim import learning_rate
from napari_wsi_mil.pretrain.trainer import (
    COLLAPSED_SPREAD,
    PretrainConfig,
    collapse_warning,
    contrastive_loss,
    pretrain_job,
    projection_spread,
)
from pretrain_fixtures import tiny_cohort


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return tiny_cohort(tmp_path_factory.mktemp("pretrain"))


def _config(method, **kw):
    base = dict(
        method=method,
        epochs=2,
        steps_per_epoch=2,
        batch_size=8,
        image_size=32,
        num_workers=0,
        warmup_epochs=0.5,
    )
    return PretrainConfig(**{**base, **kw})


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_and_writes_an_encoder(cohort, tmp_path, method):
    store, table = cohort
    events = []
    out = tmp_path / f"{method}.safetensors"
    result = run_job(pretrain_job(store, table, _config(method), out), events.append)
    assert events[0].stage == "loading patches"  # at once, before the patch index is read
    events = [e for e in events if e.stage == "pretraining"]
    assert [e.done for e in events] == [1, 2, 3, 4] and {e.total for e in events} == {4}
    assert all(np.isfinite(e.info["loss"]) for e in events)
    assert len(result.epoch_losses) == 2 and result.patches_per_second > 0
    assert len(result.epoch_spreads) == 2 and all(0 <= x <= 1.5 for x in result.epoch_spreads)
    assert 0 <= result.final_spread <= 1.5
    assert all("spread" in e.info for e in events)
    encoder = load_encoder(out)
    assert encoder.metadata["method"] == method and encoder.metadata["input_size"] == 32
    assert encoder.metadata["projection_spread"] == pytest.approx(result.final_spread)
    assert encoder.metadata["target_mpp"] == 1.0
    assert bool(encoder.cluster_head_state) == (method == "clusiam")
    trunk = load_trunk(encoder)
    assert trunk(torch.zeros(2, 3, 32, 32)).shape == (2, 512)


def test_resume_after_kill_equals_uninterrupted_run(cohort, tmp_path):
    store, table = cohort
    config = _config("weaksupcon")
    full = run_job(pretrain_job(store, table, config, tmp_path / "full.safetensors"))
    job = pretrain_job(store, table, config, tmp_path / "resumed.safetensors")
    for event in job:
        if (event.info or {}).get("epoch") == 1:
            job.close()  # killed in the second epoch; epoch 1's checkpoint is on disk
            break
    assert not (tmp_path / "resumed.safetensors").exists()
    resumed = run_job(
        pretrain_job(store, table, config, tmp_path / "resumed.safetensors", resume=True)
    )
    assert resumed.epoch_losses == full.epoch_losses
    a = load_encoder(full.encoder_path).trunk_state
    b = load_encoder(resumed.encoder_path).trunk_state
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_resume_refuses_other_settings(cohort, tmp_path):
    store, table = cohort
    run_job(pretrain_job(store, table, _config("simclr", epochs=1), tmp_path / "a.safetensors"))
    with pytest.raises(WsiMilError, match="other settings"):
        run_job(
            pretrain_job(
                store,
                table,
                _config("simclr", epochs=1, lr=0.5),
                tmp_path / "a.safetensors",
                resume=True,
            )
        )


def test_only_train_split_is_used_and_needs_both_labels(tmp_path):
    store, table = tiny_cohort(tmp_path, n_slides=4, test_fraction=0.5)
    train = [e.slide_id for e in table if e.split == "train"]
    assert 0 < len(train) < len(table)
    from napari_wsi_mil.store.cohort import Cohort

    only_negative = Cohort([e for e in table if e.label == 0 or e.split != "train"])
    with pytest.raises(WsiMilError, match="both labels"):
        run_job(
            pretrain_job(store, only_negative, _config("weaksupcon"), tmp_path / "x.safetensors")
        )
    with pytest.raises(WsiMilError, match="not tiled"):
        from napari_wsi_mil.store.project import ProjectStore

        run_job(
            pretrain_job(
                ProjectStore(tmp_path / "empty", create=True),
                table,
                _config("simclr"),
                tmp_path / "y.safetensors",
            )
        )


class _IndexAndPid(torch.utils.data.Dataset):
    """Items shaped like PatchDataset's: a (3, 1, 1) "image" holding the index, the pid."""

    def __len__(self):
        return 40

    def __getitem__(self, i):
        import os

        return torch.full((3, 1, 1), i), os.getpid()


def test_loader_workers_persist_across_epochs_and_follow_the_sampler():
    from napari_wsi_mil.pretrain.distributed import DistInfo
    from napari_wsi_mil.pretrain.trainer import _build_loader

    config = _config("simclr", num_workers=1, steps_per_epoch=3, batch_size=4)
    loader, sampler = _build_loader(_IndexAndPid(), np.zeros(40, int), config, DistInfo())
    batches, pids = [], set()
    for epoch in (0, 1, 0):
        sampler.set_epoch(epoch)
        epoch_batches = []
        for images, pid in loader:
            epoch_batches.append(images[:, 0, 0, 0].tolist())
            pids.update(pid.tolist())
        assert epoch_batches == list(sampler)
        batches.append(epoch_batches)
    assert batches[0] == batches[2] != batches[1]
    assert len(pids) == 1  # one worker process served every epoch


def test_learning_rate_schedule():
    lr = [learning_rate(s, 100, 10, 0.2, 3, "step", 3) for s in range(100)]
    assert lr[0] == pytest.approx(0.001) and lr[15] == pytest.approx(0.001 + 0.199 / 2)
    # step decay counts epochs from the start: x0.5 at epochs 3, 6, 9
    assert lr[30] == pytest.approx(0.1) and lr[59] == pytest.approx(0.1)
    assert lr[60] == pytest.approx(0.05)
    cos = [learning_rate(s, 100, 10, 0.2, 1, "cosine", 3) for s in range(100)]
    assert cos[10] == pytest.approx(0.2) and cos[99] < 0.001
    # a base rate at or below the reference's start still warms up, from a tenth of it
    low = [learning_rate(s, 100, 10, 0.001, 2, "step", 3) for s in range(100)]
    assert low[0] == pytest.approx(0.0001) and low[10] == pytest.approx(0.00055)
    assert low[20] == pytest.approx(0.001) and low[0] < low[10] < low[19] < low[20]


# -- DDP: the loss of one step on 2 gloo ranks equals the single-process loss ---------


def _fixed_batch(method, n=8):
    from napari_wsi_mil.pretrain.models import ContrastiveModel

    torch.manual_seed(0)
    model = ContrastiveModel(method).eval()  # BatchNorm statistics are per rank on CPU
    g = torch.Generator().manual_seed(1)
    v1, v2 = torch.randn(n, 3, 32, 32, generator=g), torch.randn(n, 3, 32, 32, generator=g)
    labels = torch.tensor([0, 1] * (n // 2))
    return model, v1, v2, labels


def _rank_main(rank, world, port, out_dir):
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    results = {}
    for method in METHODS:
        model, v1, v2, labels = _fixed_batch(method)
        net = torch.nn.parallel.DistributedDataParallel(model)
        part = slice(rank * len(v1) // world, (rank + 1) * len(v1) // world)
        config = PretrainConfig(method=method, batch_size=8)
        loss, _ = contrastive_loss(
            net, v1[part], v2[part], labels[part], config, torch.Generator().manual_seed(5)
        )
        loss.backward()
        results[method] = {"loss": loss.detach(), "grad": model.trunk.conv1.weight.grad.clone()}
    torch.save(results, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank_main, args=(2, port, str(out)), nprocs=2, join=True)
    return [torch.load(out / f"rank{rank}.pt", weights_only=True) for rank in range(2)]


@pytest.mark.parametrize("method", METHODS)
def test_ddp_loss_and_gradient_equal_single_process(ddp_results, method):
    """Two gloo ranks with half the batch each (features all-gathered with gradient,
    DDP averaging) give the loss and gradient of one process on the whole batch."""
    model, v1, v2, labels = _fixed_batch(method)
    loss, _ = contrastive_loss(
        model,
        v1,
        v2,
        labels,
        PretrainConfig(method=method, batch_size=8),
        torch.Generator().manual_seed(5),
    )
    loss.backward()
    for rank_results in ddp_results:
        got = rank_results[method]
        torch.testing.assert_close(got["loss"], loss.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got["grad"], model.trunk.conv1.weight.grad, rtol=1e-4, atol=1e-6)


def test_cli_pretrain_under_torchrun(cohort, tmp_path):
    """The real job under torchrun with 2 CPU processes (gloo) writes one encoder."""
    import subprocess
    import sys

    store, table = cohort
    cohort_csv = table.source
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp.safetensors"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(port),
        "-m",
        "napari_wsi_mil",
        "pretrain",
        "--project",
        str(store.root),
        "--cohort",
        str(cohort_csv),
        "--method",
        "weaksupcon",
        "--epochs",
        "1",
        "--steps-per-epoch",
        "1",
        "--batch-size",
        "8",
        "--image-size",
        "32",
        "--workers",
        "0",
        "--out",
        str(out),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("encoder:") == 1  # only rank 0 reports
    assert load_encoder(out).metadata["method"] == "weaksupcon"


def test_projection_spread_tells_collapse_from_spread_out_projections():
    generator = torch.Generator().manual_seed(0)
    spread_out = torch.randn(512, 128, generator=generator)
    assert 0.9 < projection_spread(spread_out) < 1.1
    collapsed = torch.randn(1, 128, generator=generator).repeat(512, 1)
    collapsed += 1e-4 * torch.randn(512, 128, generator=generator)
    assert projection_spread(collapsed) < 0.01
    # two tight clusters (WeakSupCon's goal for negative bags, at half the batch) are not collapse
    two = torch.cat([collapsed[:256], spread_out[:256]])
    assert projection_spread(two) > COLLAPSED_SPREAD


def test_collapse_warning_names_the_cause_and_the_remedies():
    config = _config("weaksupcon")
    assert collapse_warning(config, 0.5) is None
    warning = collapse_warning(config, 0.003)
    assert "collapsed" in warning and "similarity term" in warning
    assert "preset='cpu-quick'" in warning and "lr=" in warning
    assert "similarity" not in collapse_warning(_config("simclr"), 0.003)
