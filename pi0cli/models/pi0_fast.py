"""pi0-FAST: PaliGemma (SigLIP + one Gemma with a tied LM head) predicting FAST action tokens (Flax NNX).

Sequence: ``[image tokens per camera | text tokens]``. The text is the tokenized prompt and state (prefix,
``token_ar_mask`` 0) followed, in training, by the action tokens (postfix, ``token_ar_mask`` 1): a prefix-LM
(prefix bidirectional, postfix causal; ``make_attn_mask``). Parameter names are the reference's
(``PaliGemma/img/...`` and ``PaliGemma/llm/...`` with no ``_1`` names), so its checkpoints import unchanged
through :mod:`pi0cli.models.params`.

Training (``compute_loss``): next-token cross-entropy on the postfix tokens only (``token_loss_mask[:, 1:]``),
normalised per example by its number of loss tokens; RoPE positions are the plain index in the sequence
(``arange``, so padding and masked cameras advance them), as the reference trains.

Decoding (``sample_actions``): prefill the prompt once into a KV cache of ``prefix + max_decoding_steps``
slots, then one token per step (greedy, or sampled with a temperature), until every row has emitted EOS or
after ``max_decoding_steps``. Two conventions (``Pi0Config.fast_decoding``):

- ``"training"`` (default): exactly the computation of training on the prompt followed by the generated
  tokens. The first generated token sits at the index after the last valid prefix token (its training
  position), each step attends every valid prefix token and the tokens generated so far. Cached decoding
  therefore equals an uncached teacher-forced forward token for token (tested), whatever cameras are masked.
- ``"reference"``: the reference decoder, for parity: the prefix is rotated so that its valid tokens end the
  buffer (``left_to_right_align``), prefill positions are ``cumsum(mask) - 1``, decode step ``i`` runs at
  position ``prefill_len + i + fast_reference_position_offset`` (1 in the reference version this follows:
  one more than the training position), attends the window of the last ``prefill_len`` prefix slots, and
  decoding stops only at a step where every row emits EOS at once. The window is right only when the valid
  prefix tokens are contiguous: a masked camera (e.g. a zero padding image with mask False) in front of the
  prompt makes the decoder attend that camera's tokens and miss the first ones of the first camera, and its
  positions no longer match training. The reference's FAST robots never mask a camera, so it rarely shows.

Either convention can decode under a :class:`~pi0cli.models.fast_grammar.ChunkGrammar` (``grammar=``,
``fast_decode="constrained"``): each row's place in the grammar rides in the loop's carry
(:class:`GrammarWalk`) and :func:`constrained_step` masks the FAST ids that would make a malformed chunk, so
every row decodes; a row that has finished repeats EOS (the reference convention then stops as soon as every
row has finished).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from pi0cli.models.config import FastDecoding, Pi0Config
from pi0cli.models.fast_grammar import ACCEPT, ChunkGrammar
from pi0cli.models.gemma import Gemma, KVCache
from pi0cli.models.observation import ModelInputError, Observation, preprocess_observation
from pi0cli.models.pi0 import PaliGemma, make_attn_mask, vision_tower

#: PaliGemma's end-of-sequence id (the generated postfix ends with it).
EOS_TOKEN = 1


@jax.vmap
def left_to_right_align(x: jax.Array, input_mask: jax.Array, attn_mask: jax.Array):
    """The reference's alignment, per row: rotate the sequence so that its last valid token ends it.

    Assumes the valid tokens are contiguous (see the module docstring for what happens when they are not).
    """
    seqlen = jnp.max(input_mask * jnp.arange(input_mask.shape[0])) + 1
    return (jnp.roll(x, -seqlen, axis=0), jnp.roll(input_mask, -seqlen, axis=0),
            jnp.roll(attn_mask, -seqlen, axis=(0, 1)))


def reference_decode_window(aligned_mask: jax.Array) -> jax.Array:
    """Prefix slots ``[B, S]`` a reference decode step attends: the last ``sum(mask)`` slots of the aligned
    prefix (equal to the valid slots only when those are contiguous)."""
    s = aligned_mask.shape[1]
    start = s - jnp.sum(aligned_mask, axis=-1)
    return jnp.arange(s)[None, :] >= start[:, None]


def choose(logits: jax.Array, key: jax.Array, temperature: float) -> jax.Array:
    """One token id per row ``[B]`` int32: greedy (``temperature`` 0) or sampled at ``temperature``."""
    if temperature > 0:
        return jax.random.categorical(key, logits.astype(jnp.float32) / temperature, axis=-1).astype(jnp.int32)
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class GrammarWalk:
    """Where each row stands in a :class:`~pi0cli.models.fast_grammar.ChunkGrammar`: program counter, UTF-8
    automaton state and coefficients emitted so far (each ``[B]`` int32)."""

    pc: jax.Array
    utf8: jax.Array
    count: jax.Array

    @classmethod
    def start(cls, batch: int) -> GrammarWalk:
        zero = jnp.zeros((batch,), jnp.int32)
        return cls(zero, zero + ACCEPT, zero)


def constrained_step(grammar: ChunkGrammar, logits: jax.Array, key: jax.Array, temperature: float,
                     walk: GrammarWalk, steps_left: jax.Array) -> tuple[jax.Array, GrammarWalk]:
    """One constrained decoding step: the token per row ``[B]`` and the rows' next place in the grammar.

    Outside the FAST phase the program's token is forced. In it, a FAST id is allowed when its bytes are valid
    from the row's UTF-8 state, it does not overshoot the coefficient count, and the fewest ids that finish the
    chunk from where it leads, plus the delimiter and EOS, fit in the ``steps_left - 1`` steps after this one;
    greedy or sampled choice runs over the allowed ids only (the model's distribution renormalised over them).
    Costs a few gathers of ``[B, F]`` from the grammar's tables (F = FAST vocabulary) per step."""
    nxt_table, emitted_table = jnp.asarray(grammar.next_state), jnp.asarray(grammar.emitted)
    n, size = grammar.coefficients, grammar.next_state.shape[1]
    nxt, emitted = nxt_table[walk.utf8], emitted_table[walk.utf8]  # [B, F]
    left = n - walk.count[:, None] - emitted
    finish = jnp.asarray(grammar.min_tokens)[jnp.maximum(nxt, 0), jnp.clip(left, 0, n)]
    allowed = (nxt >= 0) & (left >= 0) & (finish + grammar.tail <= steps_left - 1)
    # FAST id f is model id fast_top - f: the FAST logits are a reversed static slice of the vocabulary.
    fast_logits = jax.lax.slice_in_dim(logits, grammar.fast_top - size + 1, grammar.fast_top + 1, axis=-1)[:, ::-1]
    fast = choose(jnp.where(allowed, fast_logits, -jnp.inf), key, temperature)
    program = jnp.asarray(grammar.program, jnp.int32)
    last = len(grammar.program) - 1
    in_fast = walk.pc == grammar.fast_phase
    token = jnp.where(in_fast, grammar.fast_top - fast, program[jnp.minimum(walk.pc, last)])
    pick = fast[:, None]
    utf8 = jnp.where(in_fast, jnp.take_along_axis(nxt, pick, axis=1)[:, 0], walk.utf8)
    count = jnp.where(in_fast, walk.count + jnp.take_along_axis(emitted, pick, axis=1)[:, 0], walk.count)
    advance = ~in_fast | (count == n)  # a chunk's last id leads to ACCEPT (min_tokens[s, 0] is 0 only there)
    pc = jnp.where(advance, jnp.minimum(walk.pc + 1, last), walk.pc)
    return token.astype(jnp.int32), GrammarWalk(pc, utf8, count)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Generation:
    """Output of :meth:`Pi0FAST.generate`: token ids ``[B, K]`` (0 after the loop stopped), the number of
    steps run, and (``return_logits``) each step's logits ``[B, K, V]``."""

    tokens: jax.Array
    steps: jax.Array
    logits: jax.Array | None = None


class Pi0FAST(nnx.Module):
    """pi0-FAST (``model_type="pi0_fast"``); see the module docstring."""

    def __init__(self, config: Pi0Config, rngs: nnx.Rngs):
        if not config.fast:
            raise ModelInputError(f"Pi0FAST needs model_type 'pi0_fast', got {config.model_type!r}")
        self.config = config
        dtype, pdtype = jnp.dtype(config.dtype), jnp.dtype(config.param_dtype)
        vlm = config.vlm
        llm = Gemma([vlm], dtype=dtype, param_dtype=pdtype, scan=config.scan, remat=config.llm_remat,
                    attention_impl=config.attention_impl, attention_chunk=config.attention_chunk,
                    mlp_chunk=config.mlp_chunk, rngs=rngs)
        # The tied LM head reads the embedding table. Gemma's init (std 1, meant to be overwritten by loaded
        # weights) gives random logits of std sqrt(width); 1/sqrt(width) makes a model trained from scratch
        # start near the uniform distribution (embedded tokens keep unit scale through the sqrt(width) factor).
        table = llm.embedder.input_embedding
        table[...] = table[...] * jnp.asarray(vlm.width**-0.5, table.dtype)
        self.PaliGemma = PaliGemma(vision_tower(config, rngs), llm)

    # ----------------------------------------------------------------------------------------------- pieces
    def preprocess(self, rng: jax.Array | None, obs: Observation, train: bool) -> Observation:
        """:func:`preprocess_observation` with this model's settings, then its state rules (hidden state tokens)."""
        for name in ("tokenized_prompt", "tokenized_prompt_mask", "token_ar_mask"):
            if getattr(obs, name) is None:
                raise ModelInputError(
                    f"pi0-FAST needs {name} in the observation; tokenize with pi0cli.models.tokenizer.FASTTokenizer"
                )
        obs = preprocess_observation(
            rng, obs, train=train, image_keys=self.config.image_keys, image_resolution=self.config.image_resolution,
            augment_geometric=self.config.augment_geometric,
        )
        if self.config.state_input == "hidden" or (train and self.config.state_dropout > 0):
            return self._hide_state_tokens(rng, obs)
        # From here on state_token_mask means "hidden from this example": none are.
        return dataclasses.replace(obs, state_token_mask=None)

    def _hide_state_tokens(self, rng: jax.Array | None, obs: Observation) -> Observation:
        """``state_input="hidden"`` (every example) or, in training, ``state_dropout`` (a random share): the state
        is text here, so the hidden examples' state tokens leave the attention mask, and take no positions
        (:meth:`positions`): how many tokens a state's text takes would otherwise tell the model about the state
        it cannot see, and a one-token shift turned a trained model's chunks to noise (docs/benchmarks.md). The
        returned ``state_token_mask`` marks the tokens hidden from each example."""
        if obs.state_token_mask is None:
            raise ModelInputError(
                "hiding the state (state_dropout, state_input 'hidden') needs state_token_mask in the observation "
                "(which tokens are the state); tokenize with pi0cli.models.families.pi0_fast.FastTokenLayout"
            )
        assert obs.tokenized_prompt_mask is not None
        batch = obs.tokenized_prompt_mask.shape[0]
        if self.config.state_input == "hidden":
            drop = jnp.ones((batch,), bool)
        else:
            assert rng is not None  # train=True: preprocess_observation checked it
            # The same fold-in as pi0's state zeroing, so the image augmentations stay those of a model without it.
            drop = jax.random.uniform(jax.random.fold_in(rng, 0x57A7E), (batch,)) < self.config.state_dropout
        hidden = drop[:, None] & obs.state_token_mask.astype(bool)
        return dataclasses.replace(obs, tokenized_prompt_mask=obs.tokenized_prompt_mask.astype(bool) & ~hidden,
                                   state_token_mask=hidden)

    @staticmethod
    def positions(obs: Observation, length: int) -> jax.Array:
        """Positions ``[B, length]`` of the ``[images | text]`` sequence in the training convention: ``arange``,
        less the hidden state tokens before each (a preprocessed ``obs``; none hidden: plain ``arange``)."""
        assert obs.tokenized_prompt is not None
        b, n_text = obs.tokenized_prompt.shape
        plain = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (b, length))
        if obs.state_token_mask is None:
            return plain
        hidden = jnp.pad(obs.state_token_mask.astype(jnp.int32), ((0, 0), (length - n_text, 0)))
        return plain - jnp.cumsum(hidden, axis=-1)

    def embed_inputs(self, obs: Observation) -> tuple[jax.Array, jax.Array, jax.Array]:
        """``(tokens [B, S, D], input_mask bool [B, S], ar_mask int32 [B, S])`` of images then text."""
        tokens, masks, ars = [], [], []
        llm = self.PaliGemma.llm
        for key in self.config.image_keys:
            t = self.PaliGemma.img(obs.images[key]).astype(llm.dtype)
            tokens.append(t)
            masks.append(jnp.broadcast_to(obs.image_masks[key][:, None], t.shape[:2]))
            ars.append(jnp.zeros(t.shape[:2], jnp.int32))  # image tokens attend each other
        assert obs.tokenized_prompt is not None and obs.tokenized_prompt_mask is not None
        assert obs.token_ar_mask is not None
        tokens.append(llm.embed(obs.tokenized_prompt))
        masks.append(obs.tokenized_prompt_mask.astype(bool))
        ars.append(obs.token_ar_mask.astype(jnp.int32))
        return jnp.concatenate(tokens, axis=1), jnp.concatenate(masks, axis=1), jnp.concatenate(ars, axis=1)

    def lm_head(self, x: jax.Array) -> jax.Array:
        """Logits of final-normed activations ``[..., D]`` -> ``[..., V]`` (tied embedding, as the reference:
        ``x @ table.T`` with the usual dtype promotion)."""
        return jnp.dot(x, self.PaliGemma.llm.embedder.input_embedding[...].T)

    # ------------------------------------------------------------------------------------------------ training
    def token_logits(
        self, rng: jax.Array | None, obs: Observation, *, train: bool = False, preprocessed: bool = False
    ) -> jax.Array:
        """Next-token logits of the text ``[B, L - 1, V]``: entry ``j`` predicts ``tokenized_prompt[:, j + 1]``.

        One forward over ``[images | text]`` minus the last token, prefix-LM mask, :meth:`positions`."""
        if not preprocessed:
            obs = self.preprocess(rng, obs, train)
        x, mask, ar = self.embed_inputs(obs)
        attn = make_attn_mask(mask, ar)
        b, s = mask.shape
        positions = self.positions(obs, s)[:, :-1]
        (out,), _ = self.PaliGemma.llm([x[:, :-1]], mask=attn[:, :-1, :-1], positions=positions)
        assert out is not None and obs.tokenized_prompt is not None
        n_text = obs.tokenized_prompt.shape[1] - 1
        return self.lm_head(out[:, -n_text:])  # only the text positions: the LM head is a big matmul

    def compute_loss(
        self,
        rng: jax.Array,
        obs: Observation,
        actions: jax.Array | None = None,
        *,
        train: bool = False,
        noise: jax.Array | None = None,
        time: jax.Array | None = None,
        preprocessed: bool = False,
    ) -> jax.Array:
        """Cross-entropy per example ``[B]`` over the postfix tokens, normalised by each example's count.

        ``actions`` is ignored (the actions are in the tokens), as in the reference; ``rng`` only drives the
        training-time image augmentation. ``noise`` and ``time`` (pi0's flow-matching draws) are accepted and
        unused, so one train step serves both model kinds; ``preprocessed``: ``obs`` already went through
        ``preprocess_observation``."""
        del actions, noise, time
        if obs.token_loss_mask is None:
            raise ModelInputError("pi0-FAST training needs token_loss_mask; tokenize with actions")
        logits = self.token_logits(rng, obs, train=train, preprocessed=preprocessed)
        assert obs.tokenized_prompt is not None
        targets = obs.tokenized_prompt[:, 1:]
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        token_logp = jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
        loss_mask = obs.token_loss_mask[:, 1:].astype(jnp.float32)
        return -jnp.sum(token_logp * loss_mask, axis=-1) / jnp.clip(jnp.sum(loss_mask, axis=-1), 1)

    # ------------------------------------------------------------------------------------------------ decoding
    def prefill(
        self, obs: Observation, decoding: FastDecoding
    ) -> tuple[KVCache, jax.Array, jax.Array, jax.Array]:
        """Run the (preprocessed) prompt once: ``(kv_cache, attendable prefix slots [B, S], first logits
        [B, V], position of the first generated token [B])`` in the given convention."""
        x, mask, ar = self.embed_inputs(obs)
        attn = make_attn_mask(mask, ar)
        b, s = mask.shape
        llm = self.PaliGemma.llm
        if decoding == "training":
            positions = self.positions(obs, s)
            (out,), kv = llm([x], mask=attn, positions=positions)
            assert out is not None
            last = jnp.max(mask * jnp.arange(s), axis=-1)  # index of the last valid prefix token
            last_out = jnp.take_along_axis(out, last[:, None, None], axis=1)[:, 0]
            first = jnp.take_along_axis(positions, last[:, None], axis=1)[:, 0] + 1
            return kv, mask, self.lm_head(last_out), first.astype(jnp.int32)
        x, mask, attn = left_to_right_align(x, mask, attn)
        positions = (jnp.cumsum(mask, axis=-1) - 1).astype(jnp.int32)
        (out,), kv = llm([x], mask=attn, positions=positions)
        assert out is not None
        prefill_len = jnp.sum(mask, axis=-1).astype(jnp.int32)
        first = prefill_len + self.config.fast_reference_position_offset
        return kv, reference_decode_window(mask), self.lm_head(out[:, -1]), first

    def generate(
        self,
        rng: jax.Array,
        obs: Observation,
        *,
        max_decoding_steps: int = 256,
        temperature: float = 0.0,
        decoding: FastDecoding | None = None,
        return_logits: bool = False,
        grammar: ChunkGrammar | None = None,
    ) -> Generation:
        """Autoregressive decoding with a KV cache (see the module docstring); ``decoding`` defaults to the
        config's ``fast_decoding``. ``grammar``: constrained decoding (:func:`constrained_step`); the logits
        returned are the model's, before the constraint."""
        decoding = decoding or self.config.fast_decoding
        if decoding not in ("training", "reference"):
            raise ModelInputError(f"decoding {decoding!r} is not supported; use training or reference")
        obs = self.preprocess(None, obs, train=False)
        (k, v), prefix_ok, logits, first_pos = self.prefill(obs, decoding)
        b, s = prefix_ok.shape
        steps = int(max_decoding_steps)
        pad = ((0, 0), (0, 0), (0, steps), (0, 0), (0, 0))
        k_buf, v_buf = jnp.pad(k, pad), jnp.pad(v, pad)
        slots = jnp.arange(s + steps)
        llm = self.PaliGemma.llm
        all_logits = jnp.zeros((b, steps, logits.shape[-1]), logits.dtype) if return_logits else None

        def step(carry):
            rng, logits, tokens, k_buf, v_buf, done, stop, i, all_logits, walk = carry
            rng, key = jax.random.split(rng)
            if grammar is None:
                token = choose(logits, key, temperature)
            else:
                token, walk = constrained_step(grammar, logits, key, temperature, walk, steps - i)
            tokens = tokens.at[:, i].set(token)
            if all_logits is not None:
                all_logits = all_logits.at[:, i].set(logits)
            is_eos = token == EOS_TOKEN
            done = done | is_eos
            # training: every row has emitted EOS by now; reference: every row emits EOS at this very step.
            stop = jnp.all(done) if decoding == "training" else jnp.all(is_eos)

            # Attend the prefix slots, the tokens generated before, and itself (appended after the buffer).
            seen = jnp.where(slots[None, :] < s, jnp.pad(prefix_ok, ((0, 0), (0, steps))),
                             (slots[None, :] >= s) & (slots[None, :] < s + i))
            mask = jnp.concatenate([seen, jnp.ones((b, 1), bool)], axis=-1)[:, None, :]
            positions = (first_pos + i)[:, None]
            (out,), (k_all, v_all) = llm([llm.embed(token[:, None])], mask=mask, positions=positions,
                                         kv_cache=(k_buf, v_buf))
            assert out is not None
            k_buf = jax.lax.dynamic_update_slice_in_dim(k_buf, k_all[:, :, -1:].astype(k_buf.dtype), s + i, axis=2)
            v_buf = jax.lax.dynamic_update_slice_in_dim(v_buf, v_all[:, :, -1:].astype(v_buf.dtype), s + i, axis=2)
            logits = self.lm_head(out[:, -1]).astype(logits.dtype)
            return rng, logits, tokens, k_buf, v_buf, done, stop, i + 1, all_logits, walk

        def cond(carry):
            stop, i = carry[6], carry[7]
            return (~stop) & (i < steps)

        walk = None if grammar is None else GrammarWalk.start(b)
        init = (rng, logits, jnp.zeros((b, steps), jnp.int32), k_buf, v_buf, jnp.zeros((b,), bool),
                jnp.asarray(False), jnp.asarray(0, jnp.int32), all_logits, walk)
        # The loop body only reads the weights: a plain lax.while_loop closing over the module is enough.
        out = jax.lax.while_loop(cond, step, init)
        return Generation(tokens=out[2], steps=out[7], logits=out[8])

    def sample_actions(
        self,
        rng: jax.Array,
        obs: Observation,
        *,
        max_decoding_steps: int = 256,
        temperature: float = 0.0,
        decoding: FastDecoding | None = None,
        grammar: ChunkGrammar | None = None,
    ) -> jax.Array:
        """Generated token ids ``[B, max_decoding_steps]`` int32 (before detokenization; 0 after the stop).

        Detokenize with :meth:`pi0cli.models.tokenizer.FASTTokenizer.extract_actions`. ``grammar``
        (:meth:`~pi0cli.models.tokenizer.FASTTokenizer.chunk_grammar`): only well-formed chunks."""
        return self.generate(
            rng, obs, max_decoding_steps=max_decoding_steps, temperature=temperature, decoding=decoding,
            grammar=grammar,
        ).tokens
