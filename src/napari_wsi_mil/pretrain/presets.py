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
#: mode), H&E-appropriate augmentation and a down-weighted similarity term. Not yet shown
#: to beat its start: its one finished 50-step pilot from random init collapsed at step 19
#: (``benchmarks/README.md`` section 22), and the monitor stops such runs.
PRESETS: dict[str, dict[str, object]] = {
    CPU_QUICK: {
        "method": "weaksupcon",
        "epochs": 8,
        "steps_per_epoch": 50,
        "batch_size": 64,
        "image_size": 64,
        "train_from": "layer4",
        "augment": "he",
        "warmup_epochs": 1.0,
        "negative_weight": 0.25,
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
