"""The collapse monitor of pretraining: projection spread per group, early warning, stop.

Contrastive pretraining can collapse: every projection lands on one point, the loss
stops changing and the encoder stops learning. The monitor measures the spread of
the projections at every step (:func:`projection_spread`, SimSiam's monitor).

WeakSupCon *means* to contract its negative-bag group (the similarity term pulls every
negative-bag patch together), so for it the monitor watches the positive-bag group,
which its SimCLR term keeps spread out; both groups are recorded. For the other
methods it watches the whole batch. When the mean watched spread over the last
:data:`WINDOW` steps falls below :data:`COLLAPSED_SPREAD`, the run has collapsed: it
stops with :class:`CollapseError` (whose suggestions name settings, so each front end
can word them as its own flags or fields), or, when the user allowed it, warns once
and goes on.
"""

from __future__ import annotations

from collections import deque

import torch

from napari_wsi_mil.errors import WsiMilError
from napari_wsi_mil.pretrain.presets import CPU_QUICK, PRESETS

#: Below this watched spread the projections count as collapsed. Full collapse measures
#: 0.003-0.007; SupCon's two pseudo-label clusters measure about 0.10 and WeakSupCon's
#: positive group (SimCLR on its own views) stays far above it while the run learns.
COLLAPSED_SPREAD = 0.05
#: Steps averaged before the spread is judged: collapse shows within the first epoch
#: (about 15-50 steps from a random-init trunk), and one odd batch must not stop a run.
WINDOW = 10

#: The groups whose spread is recorded (WeakSupCon: negative and positive bags).
GROUPS = ("negative", "positive")


def projection_spread(z: torch.Tensor) -> float:
    """How spread out a batch of projections is: 1 for uniformly spread, 0 for collapsed.

    The mean per-dimension standard deviation of the L2-normalised rows times
    ``sqrt(D)`` (SimSiam's collapse monitor, Chen & He 2021): rows spread uniformly
    over the sphere give about 1, identical rows give 0. NaN for fewer than 2 rows.
    """
    if z.shape[0] < 2:
        return float("nan")
    z = torch.nn.functional.normalize(z.detach().float(), dim=1)
    return float(z.std(0).mean() * z.shape[1] ** 0.5)


def step_spreads(method: str, z: torch.Tensor, bag_labels: torch.Tensor) -> dict[str, float]:
    """``spread`` of the whole batch, plus ``spread_negative`` / ``spread_positive``
    (projections of negative- / positive-bag patches) for WeakSupCon."""
    spreads = {"spread": projection_spread(z)}
    if method == "weaksupcon":
        positive = (bag_labels != 0).to(z.device)
        spreads["spread_negative"] = projection_spread(z[~positive])
        spreads["spread_positive"] = projection_spread(z[positive])
    return spreads


def watched_key(method: str) -> str:
    """The ``step_spreads`` key whose collapse stops a run."""
    return "spread_positive" if method == "weaksupcon" else "spread"


def watched_group(method: str) -> str:
    return "positive-bag group" if method == "weaksupcon" else "batch"


class CollapseError(WsiMilError):
    """A pretraining run collapsed and was stopped.

    ``suggestions`` maps :class:`~napari_wsi_mil.pretrain.trainer.PretrainConfig`
    settings to values worth trying (``allow_collapse: True`` to go on regardless);
    :meth:`describe` words them with a front end's names for those settings.
    """

    def __init__(self, summary: str, suggestions: dict[str, object]):
        self.summary = summary
        self.suggestions = suggestions
        super().__init__(self.describe())

    def describe(self, names: dict[str, str] | None = None) -> str:
        """The message, each suggested setting named by ``names`` (default: its name)."""
        names = names or {}
        tries = [
            f"{names.get(k, k)} {v}" if v is not True else names.get(k, k)
            for k, v in self.suggestions.items()
            if k != "allow_collapse"
        ]
        go_on = names.get("allow_collapse", "allow_collapse")
        return f"{self.summary} Try {'; or '.join(tries)}. To go on anyway: {go_on}."


def collapse_suggestions(config) -> dict[str, object]:
    """Settings worth changing after a collapse, most effective first."""

    suggestions: dict[str, object] = {}
    if config.preset != CPU_QUICK:
        suggestions["preset"] = CPU_QUICK
    suggestions["lr"] = round(config.lr / 4, 6)
    if config.method == "weaksupcon" and config.negative_weight > PRESETS[CPU_QUICK].get(
        "negative_weight", 1.0
    ):
        suggestions["negative_weight"] = PRESETS[CPU_QUICK]["negative_weight"]
    suggestions["allow_collapse"] = True
    return suggestions


def collapse_summary(method: str, step: int, spreads: dict[str, float]) -> str:
    """One sentence: which group collapsed, when, and the spreads."""
    watched = spreads[watched_key(method)]
    text = (
        f"the projections of the {watched_group(method)} collapsed by step {step} "
        f"(spread {watched:.3f}, healthy is near 1, collapsed below {COLLAPSED_SPREAD})"
    )
    if method == "weaksupcon":
        text += (
            f"; the negative-bag group, which WeakSupCon contracts on purpose, is at "
            f"{spreads['spread_negative']:.3f}"
        )
    return text + ": the encoder has stopped learning."


def collapse_warning(config, spread: float) -> str | None:
    """A user-facing warning when a run ended with its watched spread collapsed, else None."""
    if spread >= COLLAPSED_SPREAD:
        return None
    advice = "; ".join(
        f"{k}={v!r}" for k, v in collapse_suggestions(config).items() if k != "allow_collapse"
    )
    cause = ""
    if config.method == "weaksupcon":
        cause = (
            "WeakSupCon's similarity term pulls every negative-bag patch together and can "
            "drag the positive-bag group with it; "
        )
    return (
        f"the projections of the {watched_group(config.method)} collapsed (spread "
        f"{spread:.3f}, healthy is near 1): the encoder has stopped learning. {cause}"
        f"try {advice}."
    )


class CollapseMonitor:
    """Follows the per-step spreads of one run; says when the watched one collapsed."""

    def __init__(self, method: str, window: int = WINDOW):
        self.method = method
        self.key = watched_key(method)
        self.recent: deque[dict[str, float]] = deque(maxlen=window)
        self.collapsed_at: int | None = None

    def update(self, step: int, spreads: dict[str, float]) -> bool:
        """Record one step (``step`` counts from 1 over the run); True the first time
        the watched spread's window mean is below :data:`COLLAPSED_SPREAD`."""
        self.recent.append(spreads)
        if self.collapsed_at is not None or len(self.recent) < self.recent.maxlen:
            return False
        if self.means()[self.key] < COLLAPSED_SPREAD:
            self.collapsed_at = step
            return True
        return False

    def means(self) -> dict[str, float]:
        """Mean of each spread over the window (NaN steps, e.g. an empty group, skipped)."""
        keys = self.recent[0].keys() if self.recent else ()
        out = {}
        for key in keys:
            values = [s[key] for s in self.recent if s[key] == s[key]]
            out[key] = sum(values) / len(values) if values else float("nan")
        return out
