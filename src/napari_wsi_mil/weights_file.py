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
