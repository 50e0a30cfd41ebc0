"""Where pretrained weights live, and how they get there: the standard caches.

- torchvision-style files (ImageNet ResNet-18, Ciga's SimCLR checkpoint) go to torch
  hub's ``checkpoints`` folder (``$TORCH_HOME/hub/checkpoints``), downloaded with a
  progress bar, resumed from a ``.partial`` file, and checked against the sha256
  prefix the publisher puts in the file name (``resnet18-f37072fd.pth``).
  ``WSI_MIL_DOWNLOAD_MIRROR=URL`` fetches the same file name from another server
  (an institute mirror; the tests' local server).
- Hugging Face hub files (timm models, foundation encoders) go to the hub cache
  (``$HF_HUB_CACHE`` or ``$HF_HOME/hub``) through ``huggingface_hub``.

``HF_HUB_OFFLINE=1`` is checked first: nothing then touches the network, and a file
missing from its cache is one error naming the cache path and the command that fills
it on a connected machine (``wsi-mil encoders --download NAME``). Connections time
out after :data:`CONNECT_TIMEOUT` seconds, so a node without network never hangs.
"""

from __future__ import annotations

import hashlib
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Generator
from pathlib import Path

from napari_wsi_mil.errors import WsiMilError

#: Seconds to wait for a server to answer before giving up.
CONNECT_TIMEOUT = 10.0

#: Environment variable naming a server that serves torch hub files by their names.
MIRROR_ENV = "WSI_MIL_DOWNLOAD_MIRROR"


def offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` is set to a true value (read at each call)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def torch_hub_checkpoints() -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache as ``huggingface_hub`` resolves it (read at each call)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface"
    )
    return Path(home) / "hub"


def missing_from_cache(what: str, where: Path, name: str) -> WsiMilError:
    return WsiMilError(
        f"{what} is not in the cache {where} and HF_HUB_OFFLINE is set; on a machine with "
        f"network run `wsi-mil encoders --download {name}` and copy {where} here"
    )


def hash_prefix_of(url: str) -> str | None:
    """The sha256 prefix torchvision-style file names carry (``name-<hex>.ext``)."""
    import torch

    match = torch.hub.HASH_REGEX.search(os.path.basename(url))
    return match.group(1) if match else None


def torch_hub_file(url: str, name: str, *, progress: bool = True) -> Path:
    """The cached copy of ``url`` in torch hub's checkpoints folder, downloaded if needed
    with a progress bar on stderr (:func:`torch_hub_steps`)."""
    from tqdm import tqdm

    steps = torch_hub_steps(url, name)
    label = os.path.basename(url)
    with tqdm(unit="B", unit_scale=True, desc=label, disable=not progress, file=sys.stderr) as bar:
        while True:
            try:
                done, total = next(steps)
            except StopIteration as stop:
                return stop.value
            bar.total, bar.n = total, done
            bar.refresh()


def torch_hub_steps(url: str, name: str) -> Generator[tuple[int, int | None], None, Path]:
    """:func:`torch_hub_file` as a generator of ``(bytes done, bytes in all or None)``
    that returns the cached file (a job's download stage shows these).

    ``name`` is the encoder name used in messages. Raises :class:`WsiMilError` when
    offline and not cached, when the server cannot be reached, or when the file's
    sha256 does not start with the prefix in its name (the download is then deleted).
    """
    dest = torch_hub_checkpoints() / os.path.basename(url)
    if dest.is_file():
        return dest
    if offline():
        raise missing_from_cache(dest.name, dest.parent, name)
    mirror = os.environ.get(MIRROR_ENV)
    source = f"{mirror.rstrip('/')}/{dest.name}" if mirror else url
    yield from download_steps(source, dest, hash_prefix_of(url))
    return dest


def download_steps(
    url: str, dest: Path, sha256_prefix: str | None
) -> Generator[tuple[int, int | None], None, None]:
    """Download ``url`` to ``dest`` through ``dest.partial``, resuming a partial file;
    yields ``(bytes done, bytes in all or None)`` after each block.

    A server that ignores the ``Range`` header starts the file again. The finished file
    is checked against ``sha256_prefix`` before it is moved into place.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    have = partial.stat().st_size if partial.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=CONNECT_TIMEOUT)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the partial file is already complete
            response = None
        else:
            raise WsiMilError(f"{url}: download failed (HTTP {exc.code} {exc.reason})") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise WsiMilError(
            f"{url}: cannot download ({getattr(exc, 'reason', exc)}); check the network, "
            f"or set HF_HUB_OFFLINE=1 and put the file in {dest.parent}"
        ) from exc
    if response is not None:
        with response:
            resumed = response.status == 206
            mode, done = ("ab", have) if resumed else ("wb", 0)
            length = response.headers.get("Content-Length")
            total = done + int(length) if length else None
            yield done, total
            with open(partial, mode) as out:
                try:
                    for block in iter(lambda: response.read(1 << 20), b""):
                        out.write(block)
                        done += len(block)
                        yield done, total
                except OSError as exc:
                    raise WsiMilError(
                        f"{url}: download interrupted ({exc}); run the command again to resume"
                    ) from exc
    if sha256_prefix:
        digest = file_sha256(partial)
        if not digest.startswith(sha256_prefix):
            partial.unlink()
            raise WsiMilError(
                f"{url}: the downloaded file's sha256 {digest[:12]}... does not start with "
                f"{sha256_prefix} as its name says; it was deleted (corrupt download or "
                "wrong file on the server)"
            )
    os.replace(partial, dest)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hf_token() -> str | None:
    """``HF_TOKEN`` or the token ``hf auth login`` stored."""
    from huggingface_hub import get_token

    return get_token()


def hf_file(repo: str, filenames: tuple[str, ...], name: str, *, gated: bool = False) -> Path:
    """The first of ``filenames`` in the Hugging Face repo ``repo``, from the hub cache
    (downloaded into it when online). ``name`` is the encoder name used in messages."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    cache = hf_hub_cache()
    for filename in filenames:
        cached = try_to_load_from_cache(repo, filename, cache_dir=cache)
        if isinstance(cached, str):
            return Path(cached)
    where = cache / f"models--{repo.replace('/', '--')}"
    if offline():
        raise missing_from_cache(f"{repo} ({' or '.join(filenames)})", where, name)
    if gated and not hf_token():
        raise gated_error(repo)
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    if not reachable(endpoint):  # huggingface_hub would retry for half a minute
        raise WsiMilError(
            f"{repo}: cannot reach {endpoint} and it is not in the cache {where}; check "
            f"the network, or run `wsi-mil encoders --download {name}` on a connected "
            "machine, copy the cache here and set HF_HUB_OFFLINE=1"
        )
    for filename in filenames:
        try:
            return Path(
                hf_hub_download(
                    repo,
                    filename,
                    cache_dir=cache,
                    endpoint=endpoint,
                    etag_timeout=CONNECT_TIMEOUT,
                )
            )
        except GatedRepoError as exc:
            raise gated_error(repo) from exc
        except RepositoryNotFoundError as exc:
            raise WsiMilError(
                f"{repo}: no such model on the Hugging Face hub (or it is private or gated "
                "and HF_TOKEN is not set)"
            ) from exc
        except LocalEntryNotFoundError as exc:  # the server did not answer as the hub does
            raise WsiMilError(
                f"{repo}: {endpoint} did not serve {filename} and it is not in the cache "
                f"{where}; try again, or run `wsi-mil encoders --download {name}` on a "
                "connected machine, copy the cache here and set HF_HUB_OFFLINE=1"
            ) from exc
        except EntryNotFoundError:  # on the hub, but not this file name
            continue
        except OSError as exc:
            raise WsiMilError(f"{repo}: download failed ({exc})") from exc
    raise WsiMilError(f"{repo}: has none of {', '.join(filenames)}")


def reachable(url: str) -> bool:
    """Whether ``url``'s host accepts a TCP connection within :data:`CONNECT_TIMEOUT`."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=CONNECT_TIMEOUT).close()
    except OSError:
        return False
    return True


def gated_error(repo: str) -> WsiMilError:
    return WsiMilError(
        f"{repo} is a gated model: accept its terms at https://huggingface.co/{repo} "
        "with your account, then set HF_TOKEN to an access token "
        "(https://huggingface.co/settings/tokens) or run `hf auth login`"
    )
