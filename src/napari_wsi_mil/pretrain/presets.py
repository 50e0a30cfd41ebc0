"""Named pretraining presets: one dict of settings each, the only place they are set.

A preset fills :class:`~napari_wsi_mil.pretrain.trainer.PretrainConfig` fields; settings
given explicitly (a CLI option, a widget field the user changed, a keyword) override it.
What was measured of each preset is in ``benchmarks/README.md`` (section 22).
"""

from __future__ import annotations

from napari_wsi_mil.errors import WsiMilError

CPU_QUICK = "cpu-quick"

#: ``cpu-quick``: WeakSupCon meant to fit in about 20 minutes on a 2-core CPU: small
#: views, only the last trunk stage trained (the earlier ones frozen, BatchNorm in eval
#: mode), the ``histology`` augmentation, a down-weighted similarity term and a low
#: learning rate. The best measured of the settings tried on the mosaic cohorts
#: (``benchmarks/README.md`` section 26): at the default learning rate (0.025) and with
#: the similarity term at full weight the runs collapsed; at 0.001 they did not; the
#: ``histology`` augmentation beat ``he`` on both measures (3 seeds). It is not shown to
#: beat its start: +0.011 linear-probe AUC, -0.015 novelty AUC over 3 seeds at 100 steps;
#: +0.034 and -0.019 at its full 400 steps (seed 0). Views of 112 px (3 seeds), full
#: similarity weight and a longer warm-up did no better (section 26).
PRESETS: dict[str, dict[str, object]] = {
    CPU_QUICK: {
        "method": "weaksupcon",
        "epochs": 8,
        "steps_per_epoch": 50,
        "batch_size": 64,
        "image_size": 64,
        "train_from": "layer4",
        "augment": "histology",
        "warmup_epochs": 0.0,  # measured so: a warm-up from 0.001 to 0.001 was flat
        "negative_weight": 0.25,
        "lr": 0.001,
        "num_workers": 1,
    },
}


def preset_settings(name: str | None) -> dict[str, object]:
    """The settings of preset ``name`` (``None``: no preset, an empty dict)."""
    if name is None:
        return {}
    if name not in PRESETS:
        raise WsiMilError(f"unknown preset {name!r}: use one of {', '.join(PRESETS)}")
    return dict(PRESETS[name])
