"""Model files: tensors plus JSON metadata in safetensors, never unpickled.

safetensors stores tensors and a string-to-string table only, so a model file received
from someone else cannot run code when loaded (the safe equivalent of
``torch.load(weights_only=True)``). Metadata values are JSON; ``format`` names the kind
of file so one kind is never mistaken for another.
"""

from __future__ import annotations

import json
import os

from napari_wsi_mil.errors import WsiMilError
from napari_wsi_mil.jobs import atomic_file


def save_tensors(path: str | os.PathLike, tensors: dict, metadata: dict, fmt: str) -> None:
    """Write ``tensors`` (name -> torch.Tensor) and ``metadata`` atomically."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {"format": fmt, **{k: json.dumps(v) for k, v in metadata.items()}}
    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load_metadata(path: str | os.PathLike, fmt: str) -> dict:
    """The metadata of a file written by :func:`save_tensors` with ``fmt`` (no tensors)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as fh:
            raw = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise WsiMilError(f"{path}: not a readable safetensors file ({exc})") from exc
    if raw.get("format") != fmt:
        raise WsiMilError(f"{path}: not a {fmt} file (format tag {raw.get('format')!r})")
    try:
        return {k: json.loads(v) for k, v in raw.items() if k != "format"}
    except (json.JSONDecodeError, RecursionError) as exc:
        raise WsiMilError(f"{path}: metadata is not JSON ({exc})") from None


def load_tensors(path: str | os.PathLike, fmt: str) -> tuple[dict, dict]:
    """``(tensors, metadata)`` of a file written by :func:`save_tensors` with ``fmt``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    meta = load_metadata(path, fmt)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise WsiMilError(f"{path}: not a readable safetensors file ({exc})") from exc
    return tensors, meta


def load_weights_only(path: str | os.PathLike, map_location, advice: str):
    """``torch.load(path, weights_only=True)``: tensors and plain containers only, never
    code. Anything else (pickled objects, TorchScript, damage) is one
    :class:`WsiMilError` naming the file, the reason in a few words, and ``advice``."""
    import warnings

    import torch

    try:
        with warnings.catch_warnings():  # torch warns of TorchScript archives it refuses
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # any failure means a bad or unsafe file
        text = str(exc)
        if "TorchScript" in text:
            reason = "a TorchScript archive"
        elif "Unsupported global" in text:
            reason = "it holds pickled objects other than tensors"
        else:
            reason = "not a file of tensors saved with torch.save"
        raise WsiMilError(f"{path}: not loadable safely ({reason}); {advice}") from None


def read_state_dict(path: str | os.PathLike) -> dict:
    """The tensors of a third-party weights file, without running code from it.

    ``.safetensors`` files are read as they are; anything else with
    ``torch.load(weights_only=True)``, which refuses pickled modules and TorchScript
    archives. A checkpoint that wraps its weights (Lightning's ``state_dict``, a
    ``model`` entry) is unwrapped.
    """
    import torch

    if os.fspath(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            return load_file(os.fspath(path))
        except Exception as exc:
            raise WsiMilError(f"{path}: not a readable safetensors file ({brief(exc)})") from exc
    state = load_weights_only(
        path,
        "cpu",
        "give a safetensors file or a state dict of tensors: pickled modules and "
        "TorchScript archives are refused because loading them can run arbitrary code",
    )
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WsiMilError(f"{path}: expected a state dict of tensors")
    return state


def file_format(path: str | os.PathLike) -> str | None:
    """The ``format`` tag of a safetensors file (None for third-party files)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(os.fspath(path), "pt") as fh:
            return (fh.metadata() or {}).get("format")
    except (SafetensorError, OSError) as exc:
        raise WsiMilError(f"{path}: not a readable safetensors file ({brief(exc)})") from exc


def brief(exc: BaseException) -> str:
    """The first sentence of an exception's message, for one-line errors."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.split(". ")[0][:200]
