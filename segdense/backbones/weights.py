"""Loading pretrained DenseNet weights: torchvision checkpoints (new or old key form), safetensors
files, and torchvision's hosted ImageNet weights; ``download_weights``, the hash-checked download into the torch
hub cache that every ``pretrained="imagenet"`` uses."""
from __future__ import annotations

import hashlib
import logging
import os
import re
import urllib.error
import urllib.request
from pathlib import Path

import torch
import torch.nn as nn

from segdense.errors import CheckpointError, ConfigError, MissingFileError

from .weights_file import read_weights_file

logger = logging.getLogger(__name__)

# torchvision's hosted ImageNet-1k checkpoints (DenseNet*_Weights.IMAGENET1K_V1).
IMAGENET_URLS = {
    "densenet121": "https://download.pytorch.org/models/densenet121-a639ec97.pth",
    "densenet169": "https://download.pytorch.org/models/densenet169-b2777c0a.pth",
    "densenet201": "https://download.pytorch.org/models/densenet201-c1103571.pth",
    "densenet161": "https://download.pytorch.org/models/densenet161-8d451a50.pth",
}

# The hosted files name dense-layer parameters 'denselayer1.norm.1.weight'; torchvision renames
# them to 'denselayer1.norm1.weight' on load, and so do we.
_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


def convert_old_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename torchvision's old dotted keys (``norm.1``) to the current ones (``norm1``)."""
    out = {}
    for key, value in state_dict.items():
        m = _OLD_KEY.match(key)
        out[m.group(1) + m.group(2) if m else key] = value
    return out


def _unwrap(obj, path: str) -> dict[str, torch.Tensor]:
    """Find the state_dict inside a checkpoint (a bare one, or under 'state_dict'/'model')."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a state_dict of tensors")
    prefix = "module."
    if obj and all(k.startswith(prefix) for k in obj):  # saved from DataParallel/DDP
        obj = {k[len(prefix):]: v for k, v in obj.items()}
    return obj


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state_dict from a ``.pth``/``.pt`` (``torch.load(weights_only=True)``) or a
    ``.safetensors`` file, with old torchvision keys converted."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"pretrained weights file not found: {path}")
    try:
        obj = read_weights_file(path)
    except CheckpointError as e:  # never torch's advice to read with weights_only=False (it would run the file's code)
        raise CheckpointError(f"could not read weights from {e}") from None
    return convert_old_keys(_unwrap(obj, str(path)))


def download_imagenet_weights(arch: str, timeout: float = 30.0) -> Path:
    """Download torchvision's ImageNet checkpoint for ``arch`` into the torch hub cache (or use the
    cached copy) and return its path. Fails with a clear message, never hangs, without network."""
    if arch not in IMAGENET_URLS:
        raise ConfigError(
            f"no ImageNet weights for {arch!r}; available for: {', '.join(IMAGENET_URLS)}. "
            "Pass pretrained=PATH to load a checkpoint file instead."
        )
    return download_weights(IMAGENET_URLS[arch], arch, timeout)


def download_weights(url: str, arch: str, timeout: float = 30.0, filename: str | None = None,
                     git_blob: str | None = None) -> Path:
    """Download ``url`` (the ImageNet weights of ``arch``) into the torch hub cache as ``filename`` (default: the
    URL's last part), or use the cached copy, and return its path.

    The download is checked against a SHA256: the prefix a torchvision file name carries (``densenet121-a639ec97.pth``,
    as torch.hub's ``check_hash`` reads it), else the one the server publishes for the file (the HF hub's
    ``X-Linked-Etag``, an LFS file's SHA256, as huggingface_hub reads it); or, for a file a git repository holds,
    against its ``git_blob`` id (the SHA-1 git names the file's content by). A file that does not match, or comes
    without a hash to check, is refused and nothing is kept. Without network: one clear error, no half-written file.
    """
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    target = cache / (filename or url.rsplit("/", 1)[1])
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + f".part{os.getpid()}")
    try:
        digest, published = _fetch(url, tmp, timeout)
        if git_blob is None:
            _check_sha256(url, digest, published, target)
        else:
            _check_git_blob(url, git_blob_id(tmp), git_blob)
        os.replace(tmp, target)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        raise RuntimeError(
            f"could not download ImageNet weights for {arch} from {url} ({e}). Without network "
            f"access, download that file elsewhere and pass pretrained='/path/to/{target.name}', "
            f"or place it at {target}."
        ) from e
    finally:
        tmp.unlink(missing_ok=True)
    return target


_SHA256 = re.compile(r"[0-9a-f]{64}")
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.\w+$")  # torchvision's hosted files: densenet121-a639ec97.pth


def _published_sha256(headers) -> str | None:
    """The SHA256 a response names for the file: ``X-Linked-Etag`` (the HF hub's, on the redirect to the storage),
    else an ``ETag`` that is one."""
    for name in ("X-Linked-Etag", "ETag"):
        value = (headers.get(name) or "").removeprefix("W/").strip('"').lower()
        if _SHA256.fullmatch(value):
            return value
    return None


class _KeepPublishedSha256(urllib.request.HTTPRedirectHandler):
    """urllib's redirects, keeping the first SHA256 a redirect names (the HF hub sends it with its redirect)."""

    sha256: str | None = None

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        self.sha256 = self.sha256 or _published_sha256(headers)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _fetch(url: str, path: Path, timeout: float) -> tuple[str, str | None]:
    """Write ``url``'s body to ``path``; returns its SHA256 and the one the server published (or None)."""
    redirects = _KeepPublishedSha256()
    digest = hashlib.sha256()
    with urllib.request.build_opener(redirects).open(url, timeout=timeout) as response, open(path, "wb") as f:
        while chunk := response.read(1 << 20):
            digest.update(chunk)
            f.write(chunk)
        return digest.hexdigest(), redirects.sha256 or _published_sha256(response.headers)


def _check_sha256(url: str, digest: str, published: str | None, target: Path) -> None:
    in_name = _HASH_IN_NAME.search(url.rsplit("/", 1)[1])
    expected, source = (in_name.group(1), "its name says") if in_name else (published, "the server publishes")
    keep_out = f"it was not kept; download it yourself and pass pretrained=PATH, or place it at {target}"
    if expected is None:
        raise CheckpointError(f"{url}: the server publishes no SHA256 for it (the HF hub sends it as X-Linked-Etag), "
                              f"so the download cannot be checked: {keep_out}")
    if not digest.startswith(expected):
        raise CheckpointError(f"{url}: the downloaded file's SHA256 is {digest}, but {source} {expected}: a corrupt "
                              f"or altered download, not kept; try again, or download it yourself and pass "
                              f"pretrained=PATH")


def git_blob_id(path: Path) -> str:
    """The id git gives ``path``'s content: the SHA-1 of ``blob <size>\\0`` followed by the bytes."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _check_git_blob(url: str, got: str, expected: str) -> None:
    if got != expected:
        raise CheckpointError(f"{url}: the downloaded file's git blob id is {got}, but the repository holds "
                              f"{expected}: a corrupt or altered download, not kept; try again, or download it "
                              "yourself and pass pretrained=PATH")


def adapt_input_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Adapt a stem kernel (O, 3, kH, kW) trained on RGB to ``in_channels`` bands.

    Lay ``max(3, in_channels)`` slots side by side; slot ``s`` carries RGB channel ``s % 3`` and band
    ``s % in_channels``. Each RGB kernel is split evenly over the slots that carry it, and each band's kernel is the
    sum over its slots. So the adapted model on an image ``x`` equals the RGB model on the image whose channel ``j``
    is the mean of the bands that carry ``j``: a 1-band model on ``g`` is the RGB model on ``(g, g, g)`` (the
    kernels summed), any band count on ``(g, ..., g)`` is the RGB model on ``(g, g, g)``, and for a multiple of 3
    bands this is smp's rule (repeated, scaled by 3 / in_channels)."""
    rgb = weight.shape[1]
    if rgb == in_channels:
        return weight
    slots = max(rgb, in_channels)
    carriers = torch.tensor([sum(1 for s in range(slots) if s % rgb == j) for j in range(rgb)], dtype=weight.dtype)
    adapted = weight.new_zeros(weight.shape[0], in_channels, *weight.shape[2:])
    for s in range(slots):
        adapted[:, s % in_channels] += weight[:, s % rgb] / carriers[s % rgb]
    return adapted


def load_pretrained(model: nn.Module, pretrained: str | os.PathLike, arch: str | None = None) -> None:
    """Load ``pretrained`` (a file path, or ``"imagenet"`` for the builder's torchvision weights) into
    a DenseNet, strictly: every backbone parameter must be present and of the right shape.

    A classifier of another size (or a model built without one) drops the file's classifier and
    logs that it did; a file without a classifier, loaded into a model with one, leaves that classifier
    freshly initialised and logs that too. A different ``in_channels`` adapts the stem.
    """
    if str(pretrained) == "imagenet":
        if arch is None:
            raise ConfigError("pretrained='imagenet' needs a named DenseNet (densenet121/169/201/161)")
        path = download_imagenet_weights(arch)
    else:
        path = Path(pretrained)
    state = read_state_dict(path)
    read_keys = list(state)
    own = model.state_dict()

    for key in [k for k in state if k.startswith("classifier.")]:
        if key not in own or own[key].shape != state[key].shape:
            del state[key]
            logger.warning(
                "pretrained weights %s: dropped %s (its classifier does not match this model's "
                "num_classes); the classifier keeps its fresh initialisation", path, key
            )
    stem = "features.conv0.weight"
    if stem in state and stem in own and state[stem].shape[1] != own[stem].shape[1]:
        state[stem] = adapt_input_conv(state[stem], own[stem].shape[1])

    if model.classifier is not None:
        fresh = [k for k in own if k.startswith("classifier.") and k not in state]
        if fresh and not any(k.startswith("classifier.") for k in read_keys):
            logger.warning(
                "pretrained weights %s hold no classifier (%s): this model's %d-class classifier keeps its fresh "
                "initialisation; train it, or load a file with a classifier of that size", path,
                ", ".join(fresh), model.classifier.out_features,
            )
    # Files saved before BatchNorm counted batches (torchvision's hosted ones) lack those counters.
    ignore_missing = ("classifier.",) if model.classifier is not None else ()
    problems = state_dict_mismatch(own, state, ignore_missing)
    if problems:
        raise CheckpointError(
            f"pretrained weights {path} do not fit this model ({type(model).__name__} with "
            f"units {getattr(model, 'num_units_per_block', '?')}): {problems}"
        )
    model.load_state_dict(state, strict=False)


def state_dict_mismatch(
    own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], ignore_missing: tuple[str, ...] = ()
) -> str:
    """What keeps ``state`` from loading strictly into a model whose state_dict is ``own``: missing,
    unexpected and wrong-shape keys (a few of each), or "" when it fits. BatchNorm batch counters
    and keys starting with ``ignore_missing`` may be missing."""
    missing = [
        k for k in own
        if k not in state and not k.endswith("num_batches_tracked") and not k.startswith(ignore_missing)
    ]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in state
        if k in own and state[k].shape != own[k].shape
    ]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if items:
            shown = ", ".join(items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")
            parts.append(f"{label} keys: {shown}")
    return "; ".join(parts)
