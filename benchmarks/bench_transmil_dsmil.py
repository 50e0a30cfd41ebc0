"""TransMIL and DSMIL against torchmil's on sklearn digits bags: test bag AUC, instance
AUC and epoch time.

Bags (the classic MIL digits task): sklearn's 1,797 8x8 digit images as 64-d features
(pixels / 16), split 50/50 into train and test images (stratified, seed 0); a bag holds
10-30 images drawn from its split, and is positive iff it holds a ``9`` (positive bags
get 1-3 nines, negative bags none); ``--bags`` bags per split, half positive.

Each model and seed is trained for ``--epochs`` epochs, one bag per optimiser step in the
class-balanced order of ``mil.train._epoch_order`` (ours by ``fit_job``, torchmil's by
the same loop as ``bench_mil.torchmil_fit``), with our defaults' optimiser settings
(``mil.registry``: Adam; TransMIL lr 2e-4, weight decay 1e-5; DSMIL lr 2e-4, weight decay
1e-4, betas (0.5, 0.9), cosine annealing to 5e-6 over the epochs) for both. Ours use
their registry defaults (TransMIL 512-d, 8 heads, 256 landmarks, dropout 0.1; DSMIL
query 128, value ``Linear(64, 64)``, Conv1d bag head, 2 logits). torchmil 1.0.2 (installed
for the benchmark only with ``pip install --no-deps --target benchmarks/_data/pydeps
torchmil==1.0.2 einops tensordict pyvers``), its 1-logit BCE heads trained with the sum
of the losses its ``compute_loss`` returns:

- ``TransMIL(in_shape=(64,), att_dim=512, n_heads=8, n_landmarks=256, dropout=0.1,
  feat_ext=Sequential(Linear(64, 512), ReLU()))`` (matched) and ``TransMIL(in_shape=
  (64,))`` (its default: 4 heads, a linear input layer, no dropout);
- ``DSMIL(in_shape=(64,), nonlinear_q=True, nonlinear_v=True)`` (matched: the paper's
  query network; its value adds a ReLU) and ``DSMIL(in_shape=(64,))`` (default: linear
  query, identity value).

Instance scores: ours ``instance_probability``; torchmil's TransMIL its attention
min-max scaled per bag, its DSMIL ``sigmoid`` of its instance logits. The AUC part's
epoch time is the mean wall time of the epochs after the first, one torch thread.

Epoch time (part ``timing``): ``--timing-bags`` (10) in-memory bags of
``--timing-instances`` (1,000) x 512 N(0, 1) features (odd bags positive, 10% of their
instances shifted by 1), one training epoch of each implementation (ours by
``fit_job(MilConfig(model, epochs=1))``), interleaved, twice (best of 2, as ``bench_mil``'s
epoch part: the first run in a process pays for warming up); one torch thread. Bags of
more than 256 instances put both TransMILs on the Nystrom path; on smaller bags ours
uses exact attention and torchmil's pads to 256 landmarks.

Run: ``OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bench_transmil_dsmil.py
[--parts auc,timing] [--epochs 10] [--bags 100] [--seeds 0,1,2] [--torchmil-seeds 0]
[--models transmil,dsmil] [--timing-bags 10] [--timing-instances 1000]``
(torchmil's TransMIL pads every bag to its 256 landmarks, so on a CPU its epochs are slow:
``--torchmil-seeds`` runs it on fewer seeds than ours)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

PYDEPS = _common.DATA / "pydeps"
IN_DIM = 64


def log(msg: str) -> None:
    print(msg, flush=True)


def digit_bags(n_bags: int, seed: int = 0):
    """``(train, test)`` lists of ``Bag``: positive iff the bag holds a 9."""
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from napari_wsi_mil.mil.bags import Bag

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    idx_train, idx_test = train_test_split(
        np.arange(len(x)), test_size=0.5, stratify=digits.target, random_state=seed
    )
    rng = np.random.default_rng(seed)
    splits = []
    for split, idx in (("train", idx_train), ("test", idx_test)):
        nines = idx[digits.target[idx] == 9]
        others = idx[digits.target[idx] != 9]
        bags = []
        for i in range(n_bags):
            n = int(rng.integers(10, 31))
            label = i % 2
            k = int(rng.integers(1, 4)) if label else 0
            rows = np.concatenate(
                [rng.choice(nines, k, replace=False), rng.choice(others, n - k, replace=False)]
            )
            rows = rng.permutation(rows)
            tiles = (digits.target[rows] == 9).astype(np.int8)
            bags.append(
                Bag(f"{split}{i}", label, split, [f"{split}{i}"], x[rows],
                    np.zeros(n, np.int32), np.arange(n), tiles)
            )  # fmt: skip
        splits.append(bags)
    return splits


def torchmil_factories(model: str, dim: int = IN_DIM) -> dict:
    sys.path.insert(0, str(PYDEPS))
    import torch
    from torchmil.models import DSMIL, TransMIL

    if model == "transmil":
        return {
            "torchmil TransMIL (matched)": lambda: TransMIL(
                in_shape=(dim,),
                att_dim=512,
                n_heads=8,
                n_landmarks=256,
                dropout=0.1,
                feat_ext=torch.nn.Sequential(torch.nn.Linear(dim, 512), torch.nn.ReLU()),
            ),
            "torchmil TransMIL (default)": lambda: TransMIL(in_shape=(dim,)),
        }
    return {
        "torchmil DSMIL (matched)": lambda: DSMIL(
            in_shape=(dim,), nonlinear_q=True, nonlinear_v=True
        ),
        "torchmil DSMIL (default)": lambda: DSMIL(in_shape=(dim,)),
    }


def torchmil_fit(factory, train, epochs: int, seed: int, hp: dict):
    """``(model, epoch seconds)``: the loop of ``bench_mil.torchmil_fit``, with the sum of
    the losses ``compute_loss`` returns, and our optimiser settings ``hp`` (Adam's lr,
    weight decay and betas; cosine annealing over ``epochs`` where ours anneal)."""
    import numpy as np
    import torch

    from napari_wsi_mil.mil.train import _epoch_order

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = factory()
    opt = torch.optim.Adam(
        model.parameters(),
        lr=hp["lr"],
        betas=tuple(hp.get("betas", (0.9, 0.999))),
        weight_decay=hp["weight_decay"],
    )
    schedule = (
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs, hp.get("min_lr", 0.0))
        if hp.get("schedule") == "cosine"
        else None
    )
    epoch_s = []
    for _ in range(epochs):
        model.train()
        t0 = time.perf_counter()
        for i in _epoch_order(train, True, rng):
            x = torch.from_numpy(train[i].features)[None]
            y = torch.tensor([float(train[i].label)])
            _, parts = model.compute_loss(y, x)
            loss = sum(parts.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if schedule is not None:
            schedule.step()
        epoch_s.append(time.perf_counter() - t0)
    return model, epoch_s


def torchmil_run(factory, train, test, epochs: int, seed: int, hp: dict) -> dict:
    import numpy as np
    import torch

    from napari_wsi_mil.mil.metrics import bag_metrics, instance_metrics

    model, epoch_s = torchmil_fit(factory, train, epochs, seed, hp)
    model.eval()
    probs, scores = [], []
    with torch.inference_mode():
        for b in test:
            x = torch.from_numpy(b.features)[None]
            if hasattr(model, "pos_layer"):  # TransMIL: attention as instance scores
                logit, att = model(x, return_att=True)
                a = att[0]
                scores.append(((a - a.min()) / (a.max() - a.min() + 1e-12)).numpy())
            else:  # DSMIL: instance logits
                logit, inst = model.predict(x, return_inst_pred=True)
                scores.append(torch.sigmoid(inst[0]).numpy())
            probs.append(float(torch.sigmoid(logit)[0]))
    out = bag_metrics([b.label for b in test], probs)
    out.update(
        instance_metrics(np.concatenate([b.tile_labels for b in test]), np.concatenate(scores))
    )
    out["epoch_s"] = epoch_s
    return out


def ours_run(model: str, train, test, epochs: int, seed: int) -> dict:
    from napari_wsi_mil.jobs import run_job
    from napari_wsi_mil.mil.train import MilConfig, evaluate_bags, fit_job

    fitted, history = run_job(fit_job(MilConfig(model, epochs=epochs, seed=seed), train, [], "t"))
    out = evaluate_bags(fitted, test)
    out["epoch_s"] = [row["seconds"] for row in history]
    return out


def _mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _fmt(mean, std) -> str:
    return "" if mean is None else f"{mean:.3f} +- {std:.3f}"


def random_bags(n_bags: int, n_instances: int, dim: int = 512):
    """In-memory bags of N(0, 1) features; odd bags positive with 10% of instances
    shifted by 1 (what the epoch time is measured on)."""
    import numpy as np

    from napari_wsi_mil.mil.bags import Bag

    rng = np.random.default_rng(0)
    bags = []
    for i in range(n_bags):
        x = rng.normal(size=(n_instances, dim)).astype(np.float32)
        tiles = np.zeros(n_instances, np.int8)
        if i % 2:
            tiles[: n_instances // 10] = 1
            x[: n_instances // 10] += 1.0
        bags.append(
            Bag(f"r{i}", i % 2, "train", [f"r{i}"], x,
                np.zeros(n_instances, np.int32), np.arange(n_instances), tiles)
        )  # fmt: skip
    return bags


def part_auc(args, out: dict) -> None:
    from napari_wsi_mil.mil.registry import training_defaults

    seeds = [int(s) for s in args.seeds.split(",")]
    torchmil_seeds = [int(s) for s in (args.torchmil_seeds or args.seeds).split(",")]
    if args.cohort == "mosaic":  # bench_encoders' random-init start at 64 px views
        train, test = _common.mosaic_bags(0.2, 112, "start-v64-s0")
    else:
        train, test = digit_bags(args.bags)
    runs, rows = [], []
    for model in args.models.split(","):
        hp = training_defaults(model)
        dim = train[0].features.shape[1]
        impls = {f"ours {model}": None, **torchmil_factories(model, dim)}
        for label, factory in impls.items():
            these = []
            for seed in seeds if factory is None else torchmil_seeds:
                if factory is None:
                    r = ours_run(model, train, test, args.epochs, seed)
                else:
                    r = torchmil_run(factory, train, test, args.epochs, seed, hp)
                r.update({"impl": label, "seed": seed})
                these.append(r)
                runs.append(r)
                epoch = statistics.fmean(r["epoch_s"][1:] or r["epoch_s"])
                log(f"{label} seed {seed}: AUC {r['auc']:.3f}, "
                    f"instance AUC {r['instance_auc']:.3f}, epoch {epoch:.2f} s")  # fmt: skip
            rows.append(
                {
                    "impl": label,
                    "bag_auc": _fmt(*_mean_std([r["auc"] for r in these])),
                    "instance_auc": _fmt(*_mean_std([r["instance_auc"] for r in these])),
                    "epoch_s": statistics.fmean(
                        s for r in these for s in r["epoch_s"][1:] or r["epoch_s"]
                    ),
                }
            )
    log("")
    log(_common.markdown_table(rows, ["impl", "bag_auc", "instance_auc", "epoch_s"]))
    out.update({"rows": rows, "runs": runs})


def part_timing(args, out: dict) -> None:
    """One training epoch of each implementation on the same random bags, interleaved
    twice; ours by ``fit_job``."""
    from napari_wsi_mil.jobs import run_job
    from napari_wsi_mil.mil.registry import training_defaults
    from napari_wsi_mil.mil.train import MilConfig, fit_job

    bags = random_bags(args.timing_bags, args.timing_instances)
    times: dict[str, list[float]] = {}
    for _ in range(2):
        for model in args.models.split(","):
            hp = training_defaults(model)
            label = f"ours {model}"
            _, history = run_job(fit_job(MilConfig(model, epochs=1), bags, [], "epoch"))
            times.setdefault(label, []).append(history[0]["seconds"])
            log(f"{label}: {times[label][-1]:.2f} s")
            for label, factory in torchmil_factories(model, bags[0].features.shape[1]).items():
                _, epoch_s = torchmil_fit(factory, bags, 1, 0, hp)
                times.setdefault(label, []).append(epoch_s[0])
                log(f"{label}: {epoch_s[0]:.2f} s")
    rows = []
    for label, values in times.items():
        ours = times[f"ours {label.split()[1].lower()}"]
        rows.append(
            {
                "impl": label,
                "best_epoch_s": min(values),
                "mean_epoch_s": statistics.fmean(values),
                "ours_over_this_best": min(ours) / min(values),
            }
        )
    log("")
    log(
        _common.markdown_table(
            rows, ["impl", "best_epoch_s", "mean_epoch_s", "ours_over_this_best"]
        )
    )
    out["timing"] = {
        "bags": args.timing_bags,
        "instances": args.timing_instances,
        "dim": 512,
        "rows": rows,
        "runs": times,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="auc,timing")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--bags", type=int, default=100, help="digits bags per split")
    parser.add_argument(
        "--cohort",
        choices=("digits", "mosaic"),
        default="digits",
        help="AUC part's bags: sklearn digits, or bench_encoders' binary mosaic cohort of "
        "real tiles (20%% lesions, random-init ResNet-18 features at 64 px views)",
    )
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument(
        "--torchmil-seeds", default=None, help="seeds of the torchmil runs (default: --seeds)"
    )
    parser.add_argument("--models", default="transmil,dsmil")
    parser.add_argument("--timing-bags", type=int, default=10)
    parser.add_argument("--timing-instances", type=int, default=1000)
    parser.add_argument("--name", default="bench_transmil_dsmil")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    out: dict = {"args": vars(args), "torch_threads": 1}
    parts = {"auc": part_auc, "timing": part_timing}
    for part in args.parts.split(","):
        parts[part](args, out)
    _common.save(args.name, out)


if __name__ == "__main__":
    main()
