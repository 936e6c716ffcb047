"""Model inputs: the ``Observation`` container and its preprocessing (resize-with-pad, augmentations).

Images are keyed by camera slot (``base_0_rgb``, ``left_wrist_0_rgb``, ``right_wrist_0_rgb``), ``[B, H, W, 3]``
float in [-1, 1] (uint8 is converted by ``Observation.from_dict``), each with a ``[B]`` bool mask.
``Actions`` are ``[B, action_horizon, action_dim]`` float arrays.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pi0cli.embodiment import is_wrist_slot
from pi0cli.errors import Pi0Error

Actions = jax.Array  # [B, action_horizon, action_dim]


class ModelInputError(Pi0Error, ValueError):
    """Model inputs with missing keys or wrong shapes."""


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Observation:
    """One batch of model inputs (a pytree; every field is data).

    images ``{slot: [B, H, W, 3]}``; image_masks ``{slot: [B]}`` bool; state ``[B, S]``;
    tokenized_prompt ``[B, L]`` int32 with tokenized_prompt_mask ``[B, L]`` bool; token_ar_mask /
    token_loss_mask ``[B, L]`` (pi0-FAST style inputs, unused by pi0/pi0.5 but carried along);
    state_token_mask ``[B, L]``: which text positions carry the state (pi0-FAST, for ``state_dropout``).
    """

    images: dict[str, jax.Array]
    image_masks: dict[str, jax.Array]
    state: jax.Array
    tokenized_prompt: jax.Array | None = None
    tokenized_prompt_mask: jax.Array | None = None
    token_ar_mask: jax.Array | None = None
    token_loss_mask: jax.Array | None = None
    state_token_mask: jax.Array | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Observation:
        """From ``{"image": {...}, "image_mask": {...}, "state", "tokenized_prompt", "tokenized_prompt_mask"}``.

        uint8 images become ``x / 255 * 2 - 1``; missing image masks default to all-True.
        """
        if ("tokenized_prompt" in data) != ("tokenized_prompt_mask" in data):
            raise ModelInputError("tokenized_prompt and tokenized_prompt_mask must be given together")
        images = {}
        for key, img in data["image"].items():
            if hasattr(img, "dtype") and img.dtype == np.uint8:
                img = jnp.asarray(img).astype(jnp.float32) / 255.0 * 2.0 - 1.0
            images[key] = img
        batch = data["state"].shape[:-1]
        masks = dict(data.get("image_mask") or {})
        for key in images:
            if key not in masks:
                masks[key] = jnp.ones(batch, dtype=bool)
        return cls(
            images=images,
            image_masks=masks,
            state=data["state"],
            tokenized_prompt=data.get("tokenized_prompt"),
            tokenized_prompt_mask=data.get("tokenized_prompt_mask"),
            token_ar_mask=data.get("token_ar_mask"),
            token_loss_mask=data.get("token_loss_mask"),
            state_token_mask=data.get("state_token_mask"),
        )


def resize_with_pad(images: jax.Array, height: int, width: int, pad_value: float = -1.0) -> jax.Array:
    """Resize ``[..., h, w, c]`` keeping the aspect ratio (bilinear), then pad centred to ``[..., height, width, c]``.

    A no-op (the same array) at the target size."""
    h, w = images.shape[-3:-1]
    if (h, w) == (height, width):
        return images
    ratio = max(w / width, h / height)
    nh, nw = int(h / ratio), int(w / ratio)
    resized = jax.image.resize(images, (*images.shape[:-3], nh, nw, images.shape[-1]), method="bilinear")
    top, left = (height - nh) // 2, (width - nw) // 2
    pad = [(0, 0)] * (images.ndim - 3) + [(top, height - nh - top), (left, width - nw - left), (0, 0)]
    return jnp.pad(resized, pad, constant_values=pad_value)


def _crop_resize(key: jax.Array, img: jax.Array, frac: float = 0.95) -> jax.Array:
    """Random crop of ``frac`` of each side, resized back. img ``[h, w, c]`` in [0, 1]."""
    h, w, c = img.shape
    ch, cw = int(h * frac), int(w * frac)
    ky, kx = jax.random.split(key)
    y0 = jax.random.randint(ky, (), 0, h - ch + 1)
    x0 = jax.random.randint(kx, (), 0, w - cw + 1)
    crop = jax.lax.dynamic_slice(img, (y0, x0, 0), (ch, cw, c))
    return jax.image.resize(crop, (h, w, c), method="bilinear")


def _rotate(key: jax.Array, img: jax.Array, max_deg: float = 5.0) -> jax.Array:
    """Rotate about the centre by a uniform angle in [-max_deg, max_deg] (bilinear, zero fill)."""
    h, w, c = img.shape
    angle = jax.random.uniform(key, (), minval=-max_deg, maxval=max_deg) * (math.pi / 180.0)
    yy, xx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    # Inverse map: sample the source at the output pixel rotated by -angle.
    sy = cos * (yy - cy) - sin * (xx - cx) + cy
    sx = sin * (yy - cy) + cos * (xx - cx) + cx
    chans = [
        jax.scipy.ndimage.map_coordinates(img[..., k], [sy, sx], order=1, mode="constant", cval=0.0)
        for k in range(c)
    ]
    return jnp.stack(chans, axis=-1)


def _color_jitter(key: jax.Array, img: jax.Array, brightness=0.3, contrast=0.4, saturation=0.5) -> jax.Array:
    """Brightness, contrast and saturation factors uniform in ``[1 - s, 1 + s]``; img in [0, 1]."""
    kb, kc, ks = jax.random.split(key, 3)
    b = jax.random.uniform(kb, (), minval=1 - brightness, maxval=1 + brightness)
    img = jnp.clip(img * b, 0.0, 1.0)
    gray = img @ jnp.array([0.299, 0.587, 0.114], img.dtype)
    cf = jax.random.uniform(kc, (), minval=1 - contrast, maxval=1 + contrast)
    img = jnp.clip((img - gray.mean()) * cf + gray.mean(), 0.0, 1.0)
    gray = (img @ jnp.array([0.299, 0.587, 0.114], img.dtype))[..., None]
    sf = jax.random.uniform(ks, (), minval=1 - saturation, maxval=1 + saturation)
    return jnp.clip((img - gray) * sf + gray, 0.0, 1.0)


def augment_image(key: jax.Array, images: jax.Array, *, geometric: bool) -> jax.Array:
    """Training augmentation of ``[B, H, W, 3]`` images in [-1, 1], one random draw per example.

    ``geometric`` (non-wrist cameras): random 95% crop resized back, then rotation in [-5, 5] degrees.
    Always: colour jitter (brightness 0.3, contrast 0.4, saturation 0.5).
    """

    def one(k, img):
        k1, k2, k3 = jax.random.split(k, 3)
        img = (img + 1.0) / 2.0
        if geometric:
            img = _rotate(k2, _crop_resize(k1, img))
        img = _color_jitter(k3, img)
        return img * 2.0 - 1.0

    keys = jax.random.split(key, images.shape[0])
    return jax.vmap(one)(keys, images.astype(jnp.float32))


def preprocess_observation(
    rng: jax.Array | None,
    obs: Observation,
    *,
    train: bool = False,
    image_keys: Sequence[str],
    image_resolution: tuple[int, int],
    augment_geometric: bool = True,
    state_dropout: float = 0.0,
    hide_state: bool = False,
) -> Observation:
    """Select ``image_keys``, resize-with-pad to ``image_resolution``, augment when ``train`` (random crop and
    rotation only for non-wrist cameras and only with ``augment_geometric``; each example's state zeroed with
    probability ``state_dropout``), default masks; ``hide_state`` zeroes every example's state, training or not."""
    missing = [k for k in image_keys if k not in obs.images]
    if missing:
        raise ModelInputError(
            f"observation lacks image(s) {missing} (has {sorted(obs.images)}); give every camera slot, "
            "with a zero image and image_mask False for absent cameras"
        )
    if train and rng is None:
        raise ModelInputError("training-time preprocessing needs an rng for the augmentations")
    batch = obs.state.shape[:-1]
    images, masks = {}, {}
    keys: list[jax.Array | None] = (
        list(jax.random.split(rng, len(image_keys))) if train and rng is not None else [None] * len(image_keys)
    )
    for key, k in zip(image_keys, keys, strict=True):
        img = obs.images[key]
        if img.ndim != 4 or img.shape[-1] != 3:
            raise ModelInputError(f"image {key!r} has shape {img.shape}; expected [B, H, W, 3]")
        img = resize_with_pad(img, *image_resolution)
        if k is not None:
            img = augment_image(k, img, geometric=augment_geometric and not is_wrist_slot(key))
        images[key] = img
        masks[key] = obs.image_masks.get(key, jnp.ones(batch, dtype=bool)) if obs.image_masks else jnp.ones(batch, bool)
    state = obs.state
    if hide_state:
        state = jnp.zeros_like(state)
    elif train and rng is not None and state_dropout > 0:
        # A key of its own (folded in), so the image augmentations stay those of a model without dropout.
        keep = jax.random.uniform(jax.random.fold_in(rng, 0x57A7E), batch) >= state_dropout
        state = jnp.where(keep[..., None], state, jnp.zeros_like(state))
    return dataclasses.replace(obs, images=images, image_masks=masks, state=state)
