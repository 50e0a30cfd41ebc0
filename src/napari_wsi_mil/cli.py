"""The ``wsi-mil`` command line. Each command parses arguments and drives a core job."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence

from napari_wsi_mil import __version__
from napari_wsi_mil.demo import DemoSettings, demo_job
from napari_wsi_mil.errors import WsiMilError
from napari_wsi_mil.features.embedding import embedding_job
from napari_wsi_mil.features.embedding_plot import plot_embedding
from napari_wsi_mil.jobs import Job, Progress, run_job
from napari_wsi_mil.mil import MODELS
from napari_wsi_mil.mil.infer import evaluate_predictions, infer_job, write_metrics
from napari_wsi_mil.mil.metrics import describe_bag_metrics, small_split_warning
from napari_wsi_mil.pretrain import AUGMENTATIONS, METHODS, TRUNK_STAGES
from napari_wsi_mil.pretrain.presets import PRESETS
from napari_wsi_mil.review.export import export_predictions_job
from napari_wsi_mil.slide import open_slide
from napari_wsi_mil.slide.tiling import TilingParams
from napari_wsi_mil.store.cohort import read_cohort
from napari_wsi_mil.store.h5_interop import (
    export_features_job,
    export_tiles_job,
    import_features_job,
)
from napari_wsi_mil.store.project import ProjectStore
from napari_wsi_mil.store.tiling_job import cohort_slides, slide_id_for, tile_slides_job
from napari_wsi_mil.validate import (
    CLASS_LIST,
    DEVICE,
    FRACTION,
    JSON_OBJECT,
    NON_NEGATIVE_FLOAT,
    NON_NEGATIVE_INT,
    POSITIVE_FLOAT,
    POSITIVE_INT,
    arg_type,
    check_int,
)
from napari_wsi_mil.wording import counted

PATCH_SIZE = arg_type(check_int, int, minimum=8)
BATCH_OF_PAIRS = arg_type(check_int, int, minimum=2)


def drive(job: Job):
    """Run a job with a terminal progress bar (one bar per stage) and return its result."""
    from tqdm import tqdm

    bars: dict[str, tqdm] = {}
    if int(os.environ.get("RANK", "0")) > 0:  # torchrun: only rank 0 reports
        return run_job(job)

    def show(event: Progress) -> None:
        bar = bars.get(event.stage)
        if bar is None:
            for old in bars.values():
                old.close()
            bars.clear()
            bar = bars[event.stage] = tqdm(
                total=event.total,
                desc=event.stage,
                unit="",
                dynamic_ncols=True,
                file=sys.stderr,
            )
        bar.total = event.total
        bar.n = event.done
        if event.message:
            bar.set_postfix_str(event.message, refresh=False)
        bar.refresh()

    try:
        return run_job(job, on_progress=show)
    finally:
        for bar in bars.values():
            bar.close()


def _cmd_info(args: argparse.Namespace) -> int:

    path = args.slide
    if args.sample:
        from napari_wsi_mil.slide.synthetic import sample_slide_path

        path = sample_slide_path()
    if path is None:
        raise WsiMilError("give a SLIDE path or --sample")
    with open_slide(path) as slide:
        info = slide.describe()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    width = max(len(k) for k in info)
    for key, value in info.items():
        print(f"{key:<{width}}  {value}")
    return 0


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="describe a slide: backend, levels, downsamples, MPP, vendor")
    p.add_argument("slide", nargs="?", help="slide file")
    p.add_argument("--sample", action="store_true", help="describe the built-in synthetic sample")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_info)


def _tiling_params(args: argparse.Namespace):

    return TilingParams(
        target_mpp=None if args.level is not None else args.mpp,
        level=args.level,
        patch_size=args.patch_size,
        stride=args.stride,
        min_tissue=args.min_tissue,
        slide_mpp=args.slide_mpp,
    )


def _cmd_tile(args: argparse.Namespace) -> int:

    if args.cohort:
        slides = cohort_slides(args.cohort, args.slide_dir)
    elif args.slides:
        slides = [(slide_id_for(path), path) for path in args.slides]
    else:
        raise WsiMilError("give SLIDE files or --cohort cohort.csv")
    store = ProjectStore(args.project, create=True)
    report = drive(
        tile_slides_job(
            store,
            slides,
            _tiling_params(args),
            overwrite=args.overwrite,
            skip_errors=args.skip_errors,
        )
    )
    for slide_id, n in report.tiled.items():
        print(f"{slide_id}: {counted(n, 'patch', 'patches')}")
        for warning in report.warnings.get(slide_id, []):
            print(f"  warning: {warning}")
    if report.skipped:
        skipped = counted(len(report.skipped), "slide")
        print(f"already tiled (skipped): {skipped}; --overwrite redoes them")
    for slide_id, error in report.failed.items():
        print(f"FAILED {slide_id}: {error}", file=sys.stderr)
    if report.tiled and not any(report.tiled.values()) and not report.skipped:
        raise WsiMilError(
            "no slide gave any patch; try a smaller --patch-size, a lower --min-tissue "
            "or another --mpp"
        )
    return 1 if report.failed else 0


def _add_tile(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tile", help="detect tissue and tile slides into a project store")
    p.add_argument("slides", nargs="*", help="slide files (ids are the file names)")
    p.add_argument("--cohort", help="cohort CSV (slide_id,label[,path,case_id,split])")
    p.add_argument("--slide-dir", help="folder to find slides of a cohort without paths")
    p.add_argument("--project", required=True, help="project store folder (created if new)")
    p.add_argument("--mpp", type=POSITIVE_FLOAT, default=0.5, help="target microns per pixel (0.5)")
    p.add_argument(
        "--level", type=NON_NEGATIVE_INT, help="tile this pyramid level instead of --mpp"
    )
    p.add_argument("--patch-size", type=PATCH_SIZE, default=224, help="patch side in pixels (224)")
    p.add_argument(
        "--stride", type=POSITIVE_INT, help="step between patches in pixels (patch size)"
    )
    p.add_argument(
        "--min-tissue",
        type=FRACTION,
        default=0.5,
        help="minimum tissue fraction under a patch (0.5)",
    )
    p.add_argument(
        "--slide-mpp", type=POSITIVE_FLOAT, help="override the slides' microns per pixel"
    )
    p.add_argument("--overwrite", action="store_true", help="redo slides already tiled")
    p.add_argument(
        "--skip-errors",
        action="store_true",
        help="report bad slides at the end instead of stopping",
    )
    p.set_defaults(func=_cmd_tile)


def _cmd_export_tiles(args: argparse.Namespace) -> int:

    written = drive(export_tiles_job(ProjectStore(args.project), args.out))
    print(f"wrote {len(written)} files to {args.out}")
    return 0


def _add_export_tiles(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export-tiles", help="write <slide_id>.h5 coordinates in the CLAM/TRIDENT layout"
    )
    p.add_argument("--project", required=True, help="project store folder")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=_cmd_export_tiles)


def _cmd_synth(args: argparse.Namespace) -> int:
    from napari_wsi_mil.slide.synthetic import make_cohort_job

    cohort = drive(
        make_cohort_job(
            args.out,
            n_slides=args.slides,
            seed=args.seed,
            lesion_fractions=tuple(args.lesion_fraction),
            positive_ratio=args.positive_ratio,
            width=args.width,
            height=args.height,
            mpp=args.mpp,
            slides_per_case=args.slides_per_case,
            test_fraction=args.test_fraction,
        )
    )
    print(f"cohort table: {cohort.csv_path}")
    return 0


def _add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="generate a synthetic cohort (slides, cohort.csv, GeoJSON)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--slides", type=POSITIVE_INT, default=8, help="number of slides (8)")
    p.add_argument("--seed", type=NON_NEGATIVE_INT, default=0, help="random seed")
    p.add_argument(
        "--lesion-fraction",
        type=FRACTION,
        nargs="+",
        default=[0.05],
        help="lesion fraction(s) of tissue, cycled over positive slides (0.05)",
    )
    p.add_argument(
        "--positive-ratio", type=FRACTION, default=0.5, help="fraction of positive slides"
    )
    p.add_argument("--width", type=POSITIVE_INT, default=4096, help="slide width in pixels")
    p.add_argument("--height", type=POSITIVE_INT, default=3072, help="slide height in pixels")
    p.add_argument("--mpp", type=POSITIVE_FLOAT, default=0.5, help="microns per pixel")
    p.add_argument(
        "--slides-per-case", type=POSITIVE_INT, default=1, help="slides of one case (one bag)"
    )
    p.add_argument(
        "--test-fraction", type=FRACTION, default=0.25, help="fraction of cases held out"
    )
    p.set_defaults(func=_cmd_synth)


#: ``PretrainConfig`` field -> ``wsi-mil pretrain`` option, for settings a preset can set.
PRETRAIN_OPTIONS = {
    "method": "--method",
    "epochs": "--epochs",
    "steps_per_epoch": "--steps-per-epoch",
    "batch_size": "--batch-size",
    "lr": "--lr",
    "optimizer": "--optimizer",
    "schedule": "--schedule",
    "warmup_epochs": "--warmup-epochs",
    "init": "--init",
    "image_size": "--image-size",
    "train_from": "--train-from",
    "augment": "--augment",
    "negative_weight": "--negative-weight",
    "allow_collapse": "--allow-collapse",
    "max_patches_per_slide": "--max-patches-per-slide",
    "amp": "--amp",
    "grad_accum": "--grad-accum",
    "num_workers": "--workers",
    "device": "--device",
    "seed": "--seed",
    "tau": "--tau",
    "clusters": "--clusters",
    "preset": "--preset",
}


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from napari_wsi_mil.pretrain.collapse import CollapseError
    from napari_wsi_mil.pretrain.trainer import PretrainConfig, pretrain_job

    given = {
        field: getattr(args, opt[2:].replace("-", "_")) for field, opt in PRETRAIN_OPTIONS.items()
    }
    explicit = {
        k: v for k, v in given.items() if k != "preset" and v is not None and v is not False
    }
    config = PretrainConfig.from_preset(args.preset, **explicit)
    job = pretrain_job(
        ProjectStore(args.project),
        read_cohort(args.cohort),
        config,
        args.out,
        checkpoint_dir=args.checkpoint_dir,
        resume=args.resume,
    )
    try:
        result = drive(job)
    except CollapseError as exc:
        raise WsiMilError(exc.describe(PRETRAIN_OPTIONS)) from exc
    if int(os.environ.get("RANK", "0")) > 0:
        return 0
    if result.epoch_losses:
        losses = ", ".join(f"{x:.4f}" for x in result.epoch_losses)
        print(f"epoch losses: {losses}")
        watched = "positive-bag group" if result.group_spreads else "batch"
        spreads = ", ".join(f"{x:.3f}" for x in result.epoch_spreads)
        print(f"projection spread ({watched}) per epoch: {spreads}")
        if result.group_spreads:
            groups = ", ".join(f"{k} {v:.3f}" for k, v in result.group_spreads.items())
            print(f"projection spread at the end by bag group: {groups}")
    for warning in result.warnings:
        print(f"warning: {warning}")
    print(f"encoder: {result.encoder_path} (checkpoint {result.checkpoint_path})")
    return 0


def _add_pretrain(sub: argparse._SubParsersAction) -> None:

    p = sub.add_parser(
        "pretrain",
        help="pretrain a patch encoder (WeakSupCon, SimCLR, ...)",
        description="Pretrain a ResNet-18 patch encoder on the split=train "
        "slides of a cohort. Runs under torchrun for several GPUs or nodes. A run whose "
        "projections collapse stops with advice (see --allow-collapse).",
    )
    p.add_argument("--project", required=True, help="project store folder")
    p.add_argument("--cohort", required=True, help="cohort CSV with slide labels and splits")
    p.add_argument(
        "--preset",
        choices=list(PRESETS),
        help="a named recipe (cpu-quick: WeakSupCon sized for a 2-core CPU); options given "
        "explicitly override it",
    )
    p.add_argument("--method", choices=METHODS, help="pretraining method (weaksupcon)")
    p.add_argument("--epochs", type=POSITIVE_INT, help="epochs (10)")
    p.add_argument("--steps-per-epoch", type=POSITIVE_INT, help="steps per epoch (50)")
    p.add_argument("--batch-size", type=BATCH_OF_PAIRS, help="patches per step, all ranks (64)")
    p.add_argument(
        "--lr", type=POSITIVE_FLOAT, help="learning rate (default: the method's, scaled by batch)"
    )
    p.add_argument(
        "--optimizer", choices=["sgd", "lars", "adam"], help="optimiser (default: the method's)"
    )
    p.add_argument(
        "--schedule",
        choices=["cosine", "step", "constant"],
        help="learning-rate schedule (default: the method's)",
    )
    p.add_argument("--warmup-epochs", type=NON_NEGATIVE_FLOAT, help="linear warm-up, epochs (1.0)")
    p.add_argument(
        "--init",
        default="random",
        help="trunk start: random, imagenet or ciga (torch hub cache, downloaded when "
        "online) or FILE (an encoder .safetensors to continue from, or a ResNet-18 "
        "state dict or checkpoint)",
    )
    p.add_argument("--image-size", type=PATCH_SIZE, help="augmented view size, px (224)")
    p.add_argument(
        "--train-from",
        choices=TRUNK_STAGES,
        help="first trunk stage trained; earlier ones frozen, BatchNorm in eval mode (conv1)",
    )
    p.add_argument(
        "--augment", choices=AUGMENTATIONS, help="augmentation recipe (histology; he: H&E)"
    )
    p.add_argument(
        "--negative-weight",
        type=NON_NEGATIVE_FLOAT,
        help="WeakSupCon similarity-term weight (1.0)",
    )
    p.add_argument(
        "--allow-collapse",
        action="store_true",
        help="go on with a warning when the projections collapse (default: stop)",
    )
    p.add_argument(
        "--max-patches-per-slide",
        type=POSITIVE_INT,
        help="sample at most this many patches of a slide (default: all)",
    )
    p.add_argument("--tau", type=POSITIVE_FLOAT, help="temperature (0.1)")
    p.add_argument("--clusters", type=POSITIVE_INT, help="CluSiam clusters (100)")
    p.add_argument(
        "--amp", choices=["auto", "bf16", "fp16", "off"], help="mixed precision on CUDA (auto)"
    )
    p.add_argument("--grad-accum", type=POSITIVE_INT, help="gradient accumulation steps (1)")
    p.add_argument("--workers", type=NON_NEGATIVE_INT, help="patch loader workers (2)")
    p.add_argument("--device", type=DEVICE, help="auto, cpu, cuda, cuda:1, mps (auto)")
    p.add_argument("--seed", type=NON_NEGATIVE_INT, help="random seed (0)")
    p.add_argument("--checkpoint-dir", help="default: <out>-checkpoints beside --out")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--out", required=True, help="encoder file to write (.safetensors)")
    p.set_defaults(func=_cmd_pretrain)


def _cmd_extract(args: argparse.Namespace) -> int:

    store = ProjectStore(args.project)
    ids = args.slides or store.slide_ids()
    if args.cohort:
        ids = [e.slide_id for e in read_cohort(args.cohort)]
    from napari_wsi_mil.features.encoders import default_feature_name

    name = args.name or default_feature_name(args.encoder)
    options = dict(
        batch_size=args.batch_size, device=args.device, dtype=args.dtype, weights=args.weights
    )
    if args.stain_norm != "none":
        options.update(stain=args.stain_norm, stain_reference=args.stain_reference)
    if args.scheduler or args.dask:
        from napari_wsi_mil.features.distributed import extract_with_dask_job

        job = extract_with_dask_job(
            store,
            ids,
            args.encoder,
            name,
            scheduler=args.scheduler,
            workers=args.workers,
            overwrite=args.overwrite,
            **options,
        )
    else:
        from napari_wsi_mil.features.extract import extract_features_job

        job = extract_features_job(
            store,
            ids,
            args.encoder,
            name,
            num_workers=args.workers,
            overwrite=args.overwrite,
            skip_errors=args.skip_errors,
            **options,
        )
    report = drive(job)
    print(
        f"feature set {name!r}: {counted(len(report.extracted), 'slide')} extracted, "
        f"{len(report.skipped)} already done"
    )
    for slide_id, warnings in report.warnings.items():
        print(f"  {slide_id}: {'; '.join(warnings)}")
    for slide_id, error in report.failed.items():
        print(f"FAILED {slide_id}: {error}", file=sys.stderr)
    return 1 if report.failed else 0


def _add_extract(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "extract",
        help="extract patch features with an encoder",
        description="Run an encoder over every patch of the tiled slides and "
        "store N x D features per slide under a feature-set name.",
    )
    p.add_argument("--project", required=True, help="project store folder")
    p.add_argument(
        "--encoder",
        required=True,
        help="an encoder name (random, imagenet, ciga, uni, virchow2, ...: see "
        "`wsi-mil encoders`), hf-hub:ORG/NAME, a timm model name, or an encoder file "
        "(.safetensors, ResNet-18 state dict)",
    )
    p.add_argument(
        "--weights",
        metavar="FILE",
        help="local weights for the named encoder (safetensors or a state dict), "
        "instead of the cache",
    )
    p.add_argument("--name", help="feature-set name (default: from the encoder)")
    p.add_argument("--slides", nargs="*", help="slide ids (default: all tiled slides)")
    p.add_argument("--cohort", help="extract the slides of this cohort CSV")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=64, help="patches per batch")
    p.add_argument(
        "--workers",
        type=NON_NEGATIVE_INT,
        default=2,
        help="loader workers (or Dask workers of the local cluster)",
    )
    p.add_argument("--device", type=DEVICE, default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument(
        "--dtype", choices=["float16", "float32"], default="float16", help="stored feature type"
    )
    p.add_argument(
        "--stain-norm",
        choices=["none", "macenko", "reinhard"],
        default="none",
        help="stain normalisation before the encoder, each slide onto one target",
    )
    p.add_argument(
        "--stain-reference",
        default="cohort",
        metavar="IMAGE|cohort",
        help="what the stain target is fitted on: a reference tile image, or patches "
        "sampled from the slides extracted (cohort)",
    )
    p.add_argument("--scheduler", help="Dask distributed scheduler address (one task/slide)")
    p.add_argument("--dask", action="store_true", help="use a local Dask cluster")
    p.add_argument("--overwrite", action="store_true", help="redo slides that have features")
    p.add_argument(
        "--skip-errors", action="store_true", help="go on past unreadable slides and report them"
    )
    p.set_defaults(func=_cmd_extract)


def _cmd_import_features(args: argparse.Namespace) -> int:

    store = ProjectStore(args.project, create=True)
    done = drive(
        import_features_job(
            args.h5_dir,
            store,
            args.name,
            patch_size_level0=args.patch_size_level0,
            overwrite=args.overwrite,
        )
    )
    print(f"imported {counted(len(done), 'slide')} as feature set {args.name!r}")
    return 0


def _cmd_encoders(args: argparse.Namespace) -> int:
    from napari_wsi_mil.features.encoder_cards import CARDS
    from napari_wsi_mil.features.encoders import cached_weights, download_encoder

    for name in args.download or []:
        path = download_encoder(name)
        print(f"{name}: {path or 'no weights needed'}")
    if args.download:
        return 0
    print(f"{'name':<14} {'dim':>5} {'input':>6} {'um/px':>6}  {'cached':<6}  licence / source")
    for name, card in CARDS.items():
        size = f"{card.input_size}" if card.input_size else "stored"
        mpp = f"{card.mpp:g}" if card.mpp else "any"
        cached = "-" if name == "random" else ("yes" if cached_weights(name) else "no")
        print(f"{name:<14} {card.dim:>5} {size:>6} {mpp:>6}  {cached:<6}  {card.licence}")
        print(f"{'':<14} {card.description} [{card.repo or card.url or 'built in'}]")
    print(
        "Input 'stored': patches go in at their stored size. Also: hf-hub:ORG/NAME (a "
        "timm model on the Hugging Face hub), any timm model name, or an encoder file. "
        "Gated models: accept the terms on the model's hub "
        "page, then set HF_TOKEN. Offline: HF_HUB_OFFLINE=1 reads the caches only."
    )
    return 0


def _add_encoders(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "encoders",
        help="list the encoders by name, or download their weights into the caches",
        description="List the encoder names with their feature dimension, input size, "
        "recommended magnification, licence and cache state; --download fills the "
        "torch hub / Hugging Face caches (run it on a connected machine, then copy "
        "the caches to an offline one).",
    )
    p.add_argument("--download", nargs="+", metavar="NAME", help="encoder names to download")
    p.set_defaults(func=_cmd_encoders)


def _add_import_features(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import-features", help="import CLAM/TRIDENT .h5 features")
    p.add_argument("h5_dir", help="folder of <slide_id>.h5 files (features, coords)")
    p.add_argument("--project", required=True, help="project store folder")
    p.add_argument("--name", required=True, help="feature-set name")
    p.add_argument(
        "--patch-size-level0",
        type=POSITIVE_INT,
        help="patch size at level 0 when the files do not record it",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing feature set")
    p.set_defaults(func=_cmd_import_features)


def _cmd_export_features(args: argparse.Namespace) -> int:

    written = drive(export_features_job(ProjectStore(args.project), args.name, args.out))
    print(f"wrote {len(written)} files to {args.out}")
    return 0


def _add_export_features(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export-features", help="write features as CLAM/TRIDENT .h5 files")
    p.add_argument("--project", required=True, help="project store folder")
    p.add_argument("--name", required=True, help="feature-set name")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=_cmd_export_features)


def _cmd_pca(args: argparse.Namespace) -> int:

    table = drive(
        embedding_job(
            ProjectStore(args.project),
            read_cohort(args.cohort),
            args.features,
            max_per_slide=args.max_per_slide or None,
            method=args.method,
            seed=args.seed,
        )
    )
    out = plot_embedding(table, args.out, title=args.title)
    print(
        f"{counted(len(table), 'patch', 'patches')} from "
        f"{counted(len(table.slide_ids()), 'slide')} "
        f"({table.method.upper()} fitted on {table.attrs['fit_split']}); wrote {out}"
    )
    return 0


def _add_pca(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pca", help="PCA (or UMAP) figure of patch features, train vs test")
    p.add_argument("--project", required=True, help="project store folder")
    p.add_argument("--cohort", required=True, help="cohort CSV (labels and splits)")
    p.add_argument("--features", required=True, help="feature-set name")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument(
        "--max-per-slide", type=NON_NEGATIVE_INT, default=500, help="patches per slide (0 = all)"
    )
    p.add_argument(
        "--method", choices=["pca", "umap"], default="pca", help="embedding (umap needs umap-learn)"
    )
    p.add_argument("--seed", type=NON_NEGATIVE_INT, default=0, help="random seed")
    p.add_argument("--title", help="figure title (default: the method and feature-set name)")
    p.set_defaults(func=_cmd_pca)


def _cmd_train(args: argparse.Namespace) -> int:
    from napari_wsi_mil.mil.train import MilConfig, train_mil_job

    config = MilConfig(
        model=args.model,
        epochs=args.epochs,
        lr=args.lr,
        weight_decay=args.weight_decay,
        seed=args.seed,
        folds=args.folds,
        balance=not args.no_balance,
        tile_label_fraction=args.tile_label_fraction,
        hparams=args.hparams or {},
        threads=args.threads,
    )
    cohort = read_cohort(args.cohort, classes=args.classes)
    print(f"classes: {', '.join(cohort.classes)} (negative class: {cohort.classes[0]})")
    result = drive(
        train_mil_job(
            ProjectStore(args.project),
            cohort,
            args.features,
            args.out,
            config,
            annotations=args.annotations,
        )
    )
    metrics = result.metrics
    for split in ("train", "val", "test"):
        if split in metrics:
            others = [
                f"{key} {metrics[split][key]:.3f}"
                for key in ("instance_auc", "dice", "specificity")
                if metrics[split].get(key) is not None
            ]
            print(f"{split}: {', '.join([describe_bag_metrics(metrics[split]), *others])}")
    if "cv" in metrics:
        summary = metrics["cv"]["summary"]
        for key in ("auc", "instance_auc", "dice", "specificity"):
            if summary.get(key, {}).get("mean") is not None:
                print(f"cv {key}: {summary[key]['mean']:.4f} +- {summary[key]['std']:.4f}")
    if metrics["threshold_fitted_on"] != "fixed":
        print(
            f"bag threshold {metrics['threshold']:.3f}, fitted on {metrics['threshold_fitted_on']}"
        )
    for warning in metrics["warnings"]:
        print(f"WARNING: {warning}")
    print(f"run folder: {result.out_dir}")
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:

    p = sub.add_parser(
        "train",
        help="train a MIL model on stored features",
        description="Train a MIL model on the split=train cases; val/test "
        "cases are evaluated. Defaults per model follow the papers.",
    )
    p.add_argument("--project", required=True, help="project store folder")
    p.add_argument("--cohort", required=True, help="cohort CSV with slide labels and splits")
    p.add_argument("--features", required=True, help="feature-set name")
    p.add_argument("--model", choices=MODELS, default="abmil", help="MIL model")
    p.add_argument(
        "--classes",
        type=CLASS_LIST,
        help="class names in order, the negative class first, e.g. normal,luad,lusc "
        "(default: from the labels: normal/negative/benign first, the rest sorted)",
    )
    p.add_argument("--annotations", help="folder of <slide_id>.geojson tumour outlines")
    p.add_argument(
        "--tile-label-fraction",
        type=FRACTION,
        default=1.0,
        help="fraction of annotated tumour cases MS-CLAM may use (1.0)",
    )
    p.add_argument("--epochs", type=POSITIVE_INT, help="epochs (default: the model's)")
    p.add_argument("--lr", type=POSITIVE_FLOAT, help="learning rate (default: the model's)")
    p.add_argument(
        "--weight-decay", type=NON_NEGATIVE_FLOAT, help="weight decay (default: the model's)"
    )
    p.add_argument("--seed", type=NON_NEGATIVE_INT, default=0, help="random seed")
    p.add_argument(
        "--folds", type=POSITIVE_INT, default=1, help="k-fold cross-validation (1 = off)"
    )
    p.add_argument("--no-balance", action="store_true", help="no class-balanced sampling")
    p.add_argument(
        "--hparams",
        type=JSON_OBJECT,
        help="architecture overrides as JSON, e.g. '{\"dropout\": 0.1}'",
    )
    p.add_argument("--threads", type=POSITIVE_INT, help="torch CPU threads")
    p.add_argument("--out", required=True, help="run folder")
    p.set_defaults(func=_cmd_train)


def _cmd_infer(args: argparse.Namespace) -> int:

    cohort = None
    if args.cohort:
        cohort = read_cohort(args.cohort)
    project = ProjectStore(args.project)
    report = drive(
        infer_job(
            project,
            args.model,
            slide_ids=args.slides,
            cohort=cohort,
            out_dir=args.out,
            name=args.name,
            mask_threshold=args.mask_threshold,
        )
    )
    if args.geojson or args.heatmap_tiff:
        drive(
            export_predictions_job(
                project,
                report.name,
                list(report.probabilities),
                geojson_dir=args.geojson,
                heatmap_dir=args.heatmap_tiff,
                attention_mode=args.attention_scale,
            )
        )

    multiclass, negative = len(report.classes) > 2, report.classes[0]
    for slide_id, p in report.probabilities.items():
        called = report.predictions[slide_id]
        if multiclass:  # the class by name; P(not negative) beside it
            print(f"{slide_id}: P(not {negative}) = {p:.4f} -> {report.classes[called]}")
        else:
            print(f"{slide_id}: P(positive) = {p:.4f} -> {called}")
    print(f"predictions {report.name!r} stored in the project; files in {args.out}")
    if report.failed:
        print(f"WARNING: this model is not to be trusted: {report.failed}")
    return 0


def _add_infer(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("infer", help="predict slides with a trained MIL model")
    p.add_argument("--project", required=True, help="project store folder")
    p.add_argument("--model", required=True, help="RUN_DIR/model.safetensors")
    p.add_argument("--slides", nargs="*", help="slide ids (default: all with features)")
    p.add_argument("--cohort", help="group slides into case bags as in training")
    p.add_argument("--name", help="prediction name in the store (default: run folder name)")
    p.add_argument("--out", required=True, help="prediction folder (slides.csv, tiles/)")
    p.add_argument(
        "--geojson",
        metavar="DIR",
        help="also write QuPath GeoJSON per slide: <slide_id>.tiles.geojson (tiles "
        "as detections with attention, attention_rank, probability) and "
        "<slide_id>.mask.geojson (predicted tumour as annotations)",
    )
    p.add_argument(
        "--heatmap-tiff",
        metavar="DIR",
        help="also write <slide_id>.heatmap.ome.tif: pyramidal OME-TIFF, channels "
        "attention and probability, one pixel per patch, calibrated in um",
    )
    p.add_argument(
        "--mask-threshold",
        type=FRACTION,
        help="instance probability of a tumour tile in the GeoJSON mask and in wsi-mil "
        "evaluate, recorded in slides.csv (default: the model's: its fitted bag threshold "
        "for WENO, 0.5 for the others)",
    )
    p.add_argument(
        "--attention-scale",
        choices=("raw", "minmax", "rank"),
        default="rank",
        help="normalisation of the heatmap's attention channel (rank)",
    )
    p.set_defaults(func=_cmd_infer)


def _cmd_evaluate(args: argparse.Namespace) -> int:

    metrics = evaluate_predictions(
        args.pred,
        read_cohort(args.cohort),
        annotations=args.annotations,
        min_coverage=args.min_coverage,
        project=args.project,
    )
    write_metrics(args.out, metrics)
    print(json.dumps(metrics, indent=2))
    print(describe_bag_metrics(metrics), file=sys.stderr)
    if warning := small_split_warning("evaluated", metrics):
        print(f"WARNING: {warning}", file=sys.stderr)
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="bag, instance and localisation metrics of predictions")
    p.add_argument("--pred", required=True, help="prediction folder of wsi-mil infer")
    p.add_argument("--cohort", required=True, help="cohort CSV with slide labels and splits")
    p.add_argument(
        "--project",
        help="project store the predictions were made from: its tile labels (painted in "
        "napari) come before --annotations, as in training",
    )
    p.add_argument("--annotations", help="folder of <slide_id>.geojson tumour outlines")
    p.add_argument(
        "--min-coverage",
        type=FRACTION,
        default=0.2,
        help="tumour fraction for a positive tile (0.2)",
    )
    p.add_argument("--out", required=True, help="metrics JSON file")
    p.set_defaults(func=_cmd_evaluate)


def _cmd_demo(args: argparse.Namespace) -> int:

    settings = DemoSettings(seed=args.seed)
    result = drive(demo_job(args.out, settings))
    report = result.findings
    print(report["headline"])
    for alarm in report["alarms"]:
        print(f"WARNING: {alarm}")
    print("test-set metrics (bag AUC [95% interval], instance AUC, Dice, specificity):")
    for r in report["results"]:
        keys = ("auc", "instance_auc", "dice", "specificity")
        number = ["-" if r[k] is None else f"{r[k]:.3f}" for k in keys]
        if r["auc_interval"] is not None:
            number[0] += " [{:.2f}-{:.2f}]".format(*r["auc_interval"])
        print(f"  {r['encoder']:>10} {r['model']:>7}: {', '.join(number)}")
    first = report["results"][0]
    print(f"  (n = {first['n_tumour']} tumour / {first['n_normal']} normal test slides)")
    print(f"report: {result.report} (every number also in report.json)")
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the whole workflow on a cohort built from packaged real H&E tiles",
        description="Build a cohort of mosaic slides from packaged real H&E tiles "
        "(CC BY 4.0), tile it, pretrain with WeakSupCon, extract features, train "
        "AB-MIL/WENO/MS-CLAM, evaluate on 20 held-out slides and write DIR/report.html "
        "and DIR/report.json; prints whether learning happened. Minutes on a laptop "
        "CPU; resumable.",
    )
    p.add_argument("--out", default="wsi-mil-demo", help="output folder (wsi-mil-demo)")
    p.add_argument("--seed", type=NON_NEGATIVE_INT, default=0, help="random seed")
    p.set_defaults(func=_cmd_demo)


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_demo,
    _add_info,
    _add_synth,
    _add_tile,
    _add_export_tiles,
    _add_pretrain,
    _add_extract,
    _add_encoders,
    _add_import_features,
    _add_export_features,
    _add_pca,
    _add_train,
    _add_infer,
    _add_evaluate,
]


class _HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless it has none or says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if not action.option_strings or any(default is v for v in (None, False, argparse.SUPPRESS)):
            return text
        shown = " ".join(map(str, default)) if isinstance(default, list) else str(default)
        if f"({shown})" in text or "default" in text:
            return text
        return f"{text} (default: {shown.replace('%', '%%')})"


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (``wsi-mil tile: error: ...``), exit status 2; help shows
    defaults."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:

    parser = _Parser(
        prog="wsi-mil",
        description="Weakly supervised learning on whole-slide images (napari-wsi-mil).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except WsiMilError as exc:
        print(f"wsi-mil {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a read-only folder, a full disk, a name too long, ...
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"wsi-mil {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"wsi-mil {args.command}: interrupted; finished results are kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
