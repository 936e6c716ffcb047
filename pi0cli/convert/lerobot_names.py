"""Parameter names between the reference (openpi) tree and LeRobot's PyTorch pi0 / pi0.5 / pi0-FAST (numpy only).

Each model family says how its names differ (``ModelFamily.lerobot_layout``: its top-level projections and its
action expert's norms, if it has an expert); the rules are built from that here.

The reference tree stacks layers on axis 0 and stores einsum kernels (``q_einsum/w [N, D, Hd]``); LeRobot uses
Hugging Face module names, one entry per layer, and torch ``Linear`` weights ``[out, in]``. Every mapping here is
a transpose or a reshape, so ``from_lerobot(to_lerobot(p)) == p`` bit for bit (tested for pi0 and pi0.5).

The token embedding is written as ``paligemma.lm_head.weight`` only: the two names are one tied tensor in LeRobot,
safetensors refuses to store shared tensors twice, and LeRobot's loader copies ``lm_head`` into ``embed_tokens``
(as in the policies LeRobot publishes). The action expert's ``lm_head`` is unused and has no reference
counterpart; it is written as zeros (its vocabulary is fixed at 257,152) so that LeRobot's strict
``from_pretrained`` accepts the file, and ignored on the way back.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from pi0cli.errors import Pi0Error

if TYPE_CHECKING:
    from pi0cli.models.config import GemmaConfig, Pi0Config, SigLIPConfig

#: LeRobot's policies keep the model under ``self.model``; their state dicts carry this prefix.
PREFIX = "model."
#: LeRobot hard-codes the expert's (unused) vocabulary.
LEROBOT_EXPERT_VOCAB = 257_152

_PG = "paligemma_with_expert.paligemma"
_VLM = f"{_PG}.model.language_model"
_EXPERT = "paligemma_with_expert.gemma_expert.model"
_VISION = f"{_PG}.model.vision_tower.vision_model"
_LLM, _IMG = "PaliGemma/llm", "PaliGemma/img"
LM_HEAD = f"{_PG}.lm_head.weight"
EMBED_TOKENS = f"{_VLM}.embed_tokens.weight"
EXPERT_LM_HEAD = "paligemma_with_expert.gemma_expert.lm_head.weight"
_BLOCK = f"{_IMG}/Transformer/encoderblock"


class NameMapError(Pi0Error, KeyError):
    """A state dict that does not hold the weights the model config needs."""

    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return str(self.args[0])


Array = Any  # numpy arrays, or jax arrays / tracers (``jax.eval_shape`` checks the full-size mapping abstractly)


def _stack(arrays: list[Array]) -> Array:
    if all(isinstance(a, np.ndarray) for a in arrays):
        return np.stack(arrays)
    import jax.numpy as jnp

    return jnp.stack(arrays)
#: one mapping: (our flat key, their key(s)), ours -> theirs (list of arrays), theirs -> ours.
_Rule = tuple[str, tuple[str, ...], Callable[[Array], list[Array]], Callable[[list[Array]], Array]]


def _linear(ours: str, theirs: str) -> list[_Rule]:
    """``{kernel [in, out], bias}`` <-> ``{weight [out, in], bias}``."""
    return [(f"{ours}/kernel", (f"{theirs}.weight",), lambda a: [a.T], lambda t: t[0].T),
            (f"{ours}/bias", (f"{theirs}.bias",), lambda a: [a], lambda t: t[0])]


def _same(ours: str, theirs: str) -> _Rule:
    return (ours, (theirs,), lambda a: [a], lambda t: t[0])


def _gemma_layer_rules(cfg: GemmaConfig, s: str, prefix: str, adaptive: bool) -> list[_Rule]:
    """Per-layer rules (``ours`` arrays are one layer's slice) for expert suffix ``s`` ('' or '_1')."""
    n, k, hd, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.width
    att = f"{_LLM}/layers/attn"
    rules: list[_Rule] = [
        (f"{att}/q_einsum{s}/w", (f"{prefix}.self_attn.q_proj.weight",),
         lambda a: [a.transpose(0, 2, 1).reshape(n * hd, d)], lambda t: t[0].reshape(n, hd, d).transpose(0, 2, 1)),
        (f"{att}/kv_einsum{s}/w", (f"{prefix}.self_attn.k_proj.weight", f"{prefix}.self_attn.v_proj.weight"),
         lambda a: [a[0].transpose(0, 2, 1).reshape(k * hd, d), a[1].transpose(0, 2, 1).reshape(k * hd, d)],
         lambda t: _stack([x.reshape(k, hd, d).transpose(0, 2, 1) for x in t])),
        (f"{att}/attn_vec_einsum{s}/w", (f"{prefix}.self_attn.o_proj.weight",),
         lambda a: [a.reshape(n * hd, d).T], lambda t: t[0].T.reshape(n, hd, d)),
        (f"{_LLM}/layers/mlp{s}/gating_einsum", (f"{prefix}.mlp.gate_proj.weight", f"{prefix}.mlp.up_proj.weight"),
         lambda a: [a[0].T, a[1].T], lambda t: _stack([t[0].T, t[1].T])),
        (f"{_LLM}/layers/mlp{s}/linear", (f"{prefix}.mlp.down_proj.weight",), lambda a: [a.T], lambda t: t[0].T),
    ]
    for ours, theirs in (("pre_attention_norm", "input_layernorm"), ("pre_ffw_norm", "post_attention_layernorm")):
        if adaptive:
            rules += _linear(f"{_LLM}/layers/{ours}{s}/Dense_0", f"{prefix}.{theirs}.dense")
        else:
            rules.append(_same(f"{_LLM}/layers/{ours}{s}/scale", f"{prefix}.{theirs}.weight"))
    return rules


def _siglip_layer_rules(cfg: SigLIPConfig, prefix: str) -> list[_Rule]:
    w = cfg.width
    att = f"{_BLOCK}/MultiHeadDotProductAttention_0"
    heads, hd = cfg.num_heads, cfg.width // cfg.num_heads
    rules = [_same(f"{_BLOCK}/LayerNorm_{i}/{p}", f"{prefix}.layer_norm{i + 1}.{t}")
             for i in (0, 1) for p, t in (("scale", "weight"), ("bias", "bias"))]
    for ours, theirs in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
        rules += [(f"{att}/{ours}/kernel", (f"{prefix}.self_attn.{theirs}.weight",),
                   lambda a: [a.reshape(w, heads * hd).T], lambda t: t[0].T.reshape(w, heads, hd)),
                  (f"{att}/{ours}/bias", (f"{prefix}.self_attn.{theirs}.bias",),
                   lambda a: [a.reshape(-1)], lambda t: t[0].reshape(heads, hd))]
    rules += [(f"{att}/out/kernel", (f"{prefix}.self_attn.out_proj.weight",),
               lambda a: [a.reshape(heads * hd, w).T], lambda t: t[0].T.reshape(heads, hd, w)),
              _same(f"{att}/out/bias", f"{prefix}.self_attn.out_proj.bias")]
    rules += _linear(f"{_BLOCK}/MlpBlock_0/Dense_0", f"{prefix}.mlp.fc1")
    rules += _linear(f"{_BLOCK}/MlpBlock_0/Dense_1", f"{prefix}.mlp.fc2")
    return rules


def paligemma_rules(config: Pi0Config) -> list[_Rule]:
    """The global (not per-layer) rules every PaliGemma-based family shares: token embedding, final norm,
    SigLIP's patch and position embeddings, encoder norm and projection head."""
    return [
        _same(f"{_LLM}/embedder/input_embedding", LM_HEAD),
        _same(f"{_LLM}/final_norm/scale", f"{_VLM}.norm.weight"),
        (f"{_IMG}/embedding/kernel", (f"{_VISION}.embeddings.patch_embedding.weight",),
         lambda a: [a.transpose(3, 2, 0, 1)], lambda t: t[0].transpose(2, 3, 1, 0)),
        _same(f"{_IMG}/embedding/bias", f"{_VISION}.embeddings.patch_embedding.bias"),
        (f"{_IMG}/pos_embedding", (f"{_VISION}.embeddings.position_embedding.weight",),
         lambda a: [a[0]], lambda t: t[0][None]),
        _same(f"{_IMG}/Transformer/encoder_norm/scale", f"{_VISION}.post_layernorm.weight"),
        _same(f"{_IMG}/Transformer/encoder_norm/bias", f"{_VISION}.post_layernorm.bias"),
        *_linear(f"{_IMG}/head", f"{_PG}.model.multi_modal_projector.linear"),
    ]


def _rules(config: Pi0Config) -> tuple[list[_Rule], list[tuple[list[_Rule], int]]]:
    """(global rules, [(per-layer rules with '{i}' in their names, depth)]), from the model family's
    :class:`~pi0cli.models.families.LeRobotLayout`."""
    layout = config.family.lerobot_layout
    if layout is None:
        raise NameMapError(f"LeRobot has no {config.model_type} policy: a {config.model_type} checkpoint converts "
                           "to pi0 or openpi")
    vlm, img = config.vlm, config.siglip
    flat = paligemma_rules(config)
    for name in layout.projections:
        flat += _linear(name, name)
    language = _gemma_layer_rules(vlm, "", f"{_VLM}.layers.{{i}}", False)
    if layout.expert_norm == "adaptive":
        flat += _linear(f"{_LLM}/final_norm_1/Dense_0", f"{_EXPERT}.norm.dense")
    elif layout.expert_norm == "scale":
        flat.append(_same(f"{_LLM}/final_norm_1/scale", f"{_EXPERT}.norm.weight"))
    if layout.expert_norm is not None:
        language += _gemma_layer_rules(config.expert, "_1", f"{_EXPERT}.layers.{{i}}",
                                       layout.expert_norm == "adaptive")
    return flat, [(language, vlm.depth), (_siglip_layer_rules(img, f"{_VISION}.encoder.layers.{{i}}"), img.depth)]


def _extra_weights(flat_params: Mapping[str, Array], config: Pi0Config) -> dict[str, Array]:
    """The action expert's ``lm_head``: unused, no reference counterpart, but LeRobot's strict loader wants it
    (its vocabulary is fixed); zeros. None without an action expert."""
    layout = config.family.lerobot_layout
    if layout is None or layout.expert_norm is None:
        return {}
    embedding = flat_params[f"{_LLM}/embedder/input_embedding"]
    shape = (LEROBOT_EXPERT_VOCAB, config.expert.width)
    if isinstance(embedding, np.ndarray):
        return {EXPERT_LM_HEAD: np.zeros(shape, embedding.dtype)}
    import jax.numpy as jnp

    return {EXPERT_LM_HEAD: jnp.zeros(shape, embedding.dtype)}


def to_lerobot(flat_params: Mapping[str, Any], config: Pi0Config, *, prefix: str = PREFIX) -> dict[str, Array]:
    """Flat reference-named params (``a/b/c`` keys) -> LeRobot state dict (``model.``-prefixed by default).

    Values are views where a transpose allows it; make them contiguous before handing them to torch.
    """
    out: dict[str, Array] = {}
    used: set[str] = set()
    simple, layered = _rules(config)

    def take(key: str) -> Array:
        if key not in flat_params:
            raise NameMapError(f"parameter {key!r} is missing; the checkpoint does not match its model config")
        used.add(key)
        return flat_params[key]

    for ours, theirs, forward, _ in simple:
        for name, value in zip(theirs, forward(take(ours)), strict=True):
            out[name] = value
    for rules, depth in layered:
        for ours, theirs, forward, _ in rules:
            stacked = take(ours)
            for i in range(depth):
                for name, value in zip(theirs, forward(stacked[i]), strict=True):
                    out[name.format(i=i)] = value
    left = sorted(set(flat_params) - used)
    if left:
        raise NameMapError(f"no LeRobot name for {len(left)} parameter(s), e.g. {left[:3]}; LeRobot's pi0 has no "
                           "LoRA or other extra weights (merge or drop them first)")
    out.update(_extra_weights(flat_params, config))
    return {prefix + k: v for k, v in out.items()}


def from_lerobot(state_dict: Mapping[str, Any], config: Pi0Config) -> dict[str, Array]:
    """LeRobot state dict (with or without the ``model.`` prefix) -> flat reference-named params."""
    sd = {(k[len(PREFIX):] if k.startswith(PREFIX) else k): v for k, v in state_dict.items()}
    if EMBED_TOKENS in sd:  # tied with lm_head; exports may keep either name (or both)
        sd[LM_HEAD] = sd.pop(EMBED_TOKENS)
    used: set[str] = set()
    out: dict[str, Array] = {}
    simple, layered = _rules(config)

    def take(key: str) -> Array:
        if key not in sd:
            raise NameMapError(f"LeRobot weight {key!r} is missing; is this a {config.model_type} policy with "
                               f"{config.paligemma_variant}/{config.action_expert_variant} sizes?")
        used.add(key)
        return sd[key]

    for ours, theirs, _, backward in simple:
        out[ours] = backward([take(t) for t in theirs])
    for rules, depth in layered:
        for ours, theirs, _, backward in rules:
            out[ours] = _stack([backward([take(t.format(i=i)) for t in theirs]) for i in range(depth)])
    ignored = {EXPERT_LM_HEAD}
    left = sorted(set(sd) - used - ignored)
    if left:
        raise NameMapError(f"{len(left)} LeRobot weight(s) have no pi0 counterpart, e.g. {left[:3]}; the policy "
                           f"does not match the model config ({config.model_type})")
    return out
