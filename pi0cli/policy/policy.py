"""``Policy``: robot observation in, robot action chunk out.

    obs -> input transforms (per request, numpy) -> stack + pad to a compiled batch size
        -> jitted sample_actions -> unpad -> output transforms (per request) -> {"actions", "policy_timing"}

The input and output transforms are plain callables (:func:`make_transforms` gives the standard chains of
:class:`pi0cli.pipeline.Pipeline`, the ones training uses). The model part is a
``sample(rng, batch) -> actions [B, H, A]`` callable; :meth:`Policy.from_model` builds it from a model module
and its family's sampler (:meth:`pi0cli.models.families.ModelFamily.sampler`) with one ``jax.jit`` whose weights
are an argument (not baked-in constants), compiled once per batch size in :meth:`Policy.warmup`.

Requests are padded to the smallest of ``batch_sizes`` that fits (by repeating the first request), so the
server never triggers a compilation in steady state.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from pi0cli.errors import ObservationError, Pi0Error
from pi0cli.models.fast_decode import DEFAULT_FAST_DECODE
from pi0cli.policy import rtc as rtc_fields
from pi0cli.transforms import Data, compose, stack_trees

if TYPE_CHECKING:
    import jax

    from pi0cli.embodiment import Embodiment
    from pi0cli.models.config import Pi0Config
    from pi0cli.models.families import PolicyModel
    from pi0cli.models.fast_grammar import ChunkGrammar
    from pi0cli.models.tokenizer import FastDecode, FASTTokenizer
    from pi0cli.normstats import NormStats
    from pi0cli.pipeline import PromptTokenizer

#: Keys of the model's input batch (everything else the input transforms produce stays per request).
MODEL_KEYS = ("image", "image_mask", "state", "tokenized_prompt", "tokenized_prompt_mask", "token_ar_mask",
              "state_token_mask")

SampleFn = Callable[[Any, Mapping[str, Any]], Any]


@dataclasses.dataclass(frozen=True)
class SamplerOptions:
    """The serving options handed to a model family's sampler (:meth:`ModelFamily.sampler`)."""

    num_steps: int = 10
    max_decoding_steps: int = 256
    temperature: float = 0.0
    rtc_max_guidance: float | None = None
    grammar: ChunkGrammar | None = None  # pi0-FAST constrained decoding


class PolicyError(Pi0Error):
    """A policy that cannot be built or run as asked."""


#: Normalised state magnitudes refused even without ``max_input_std``: their squares (RMSNorm) overflow float32
#: and bfloat16 (both top out near 3.4e38), so the model would compute infinities, not actions.
OVERFLOW_STD = 1e18


class InputRangeError(ObservationError):
    """A finite observation that lies too far outside the norm stats for the model to act on safely."""

    kind = "out_of_range"  # the server's error kind (/metrics)


class NonFiniteActionsError(PolicyError):
    """The model produced NaN or infinite actions for a request (never sent to a robot)."""

    kind = "non_finite"  # the server's error kind (/metrics)


#: Normalised state magnitudes above this make a NaN/inf action chunk's likely cause "an input far outside
#: the norm stats" rather than the checkpoint itself.
_FAR_OUTSIDE = 10.0


def batch_sizes_up_to(max_batch: int) -> tuple[int, ...]:
    """The compiled batch sizes for ``max_batch``: powers of two below it, and itself (1, 2, 4, 8 for 8)."""
    if max_batch < 1:
        raise PolicyError(f"--max-batch must be at least 1, got {max_batch}")
    sizes, size = [], 1
    while size < max_batch:
        sizes.append(size)
        size *= 2
    sizes.append(max_batch)
    return tuple(sizes)


@dataclasses.dataclass(frozen=True)
class ContiguousImages:
    """Make every camera image C-contiguous: a CHW camera turned HWC is a strided view, which PIL resizes
    about three times slower than a contiguous copy costs."""

    def __call__(self, data: Data) -> Data:
        return {**data, "image": {slot: np.ascontiguousarray(img) for slot, img in data["image"].items()}}


def make_transforms(
    embodiment: Embodiment,
    model_config: Pi0Config,
    norm_stats: Mapping[str, NormStats],
    *,
    tokenizer: PromptTokenizer | FASTTokenizer | None,
    default_prompt: str | None = None,
    delta_action_mask: Sequence[bool] | None | str = "embodiment",
    fast_decode: FastDecode = DEFAULT_FAST_DECODE,
) -> tuple[Callable[[Data], Data], Callable[[Data], Data]]:
    """The inference chains of :class:`pi0cli.pipeline.Pipeline` (the same transforms training uses):
    default prompt, embodiment inputs, delta actions, normalise, resize, tokenize, pad; and back: unnormalise,
    absolute actions, embodiment outputs. ``delta_action_mask``: ``"embodiment"`` (its own), or a mask
    (``None`` / empty: absolute actions)."""
    from pi0cli.pipeline import Pipeline

    mask = None if delta_action_mask == "embodiment" else tuple(bool(m) for m in delta_action_mask or ())
    pipeline = Pipeline.create(embodiment, model_config, norm_stats, tokenizer=tokenizer, delta_action_mask=mask,
                               default_prompt=default_prompt)
    inputs = pipeline.inference_inputs()
    steps = tuple(inputs)
    # Contiguous images just before the model-side step (resize), which is the last one.
    inputs = compose(*steps[:-1], ContiguousImages(), steps[-1]) if steps else inputs
    return inputs, pipeline.outputs(fast_decode=fast_decode)


class Policy:
    """Transforms around a batched sampler; thread-safe (one model call at a time)."""

    def __init__(
        self,
        sample: SampleFn,
        *,
        input_transform: Callable[[Data], Data],
        output_transform: Callable[[Data], Data],
        batch_sizes: Sequence[int] = (1,),
        seed: int = 0,
        metadata: Mapping[str, Any] | None = None,
        example: Callable[[], Data] | None = None,
        rng_fn: Callable[[int, int], Any] | None = None,
        description: str = "",
        rtc_shape: tuple[int, int] | None = None,
        max_input_std: float | None = None,
    ):
        self._sample = sample
        self.input_transform = input_transform
        self.output_transform = output_transform
        self.batch_sizes = tuple(sorted(set(int(b) for b in batch_sizes)))
        if not self.batch_sizes or self.batch_sizes[0] < 1:
            raise PolicyError(f"batch sizes must be positive, got {batch_sizes}")
        self.seed = seed
        self.metadata = dict(metadata or {})
        self.example = example
        self.description = description
        # (horizon, action_dim) of the model when ``sample`` takes real-time chunking inputs (pi0cli.policy.rtc).
        self.rtc_shape = rtc_shape
        #: Refuse requests whose normalised state exceeds this magnitude (``--max-input-std``; None: off).
        #: In z-score units for mean/std norm stats; for quantile norm stats q01..q99 maps to -1..1.
        self.max_input_std = max_input_std
        self._rng_fn = rng_fn or (lambda seed, counter: np.random.default_rng([seed, counter]))
        self._counter = 0
        self._lock = threading.Lock()

    # ---------------------------------------------------------------------------------------- construction

    @classmethod
    def from_model(cls, model: PolicyModel, *, num_steps: int = 10, max_decoding_steps: int = 256,
                   temperature: float = 0.0, rtc_max_guidance: float | None = None,
                   grammar: ChunkGrammar | None = None, **kwargs: Any) -> Policy:
        """A policy around a model module (``Pi0``, ``Pi0FAST``, any family's): its family's sampler jitted with
        the weights as an argument.

        The sampler reads the options it knows: pi0 and pi0.5 take ``num_steps`` denoising steps and real-time
        chunking (``rtc_max_guidance``: the clip of its guidance weight; default the paper's 5); pi0-FAST decodes
        up to ``max_decoding_steps`` tokens (greedy, or sampled at ``temperature``; only well-formed chunks under
        a ``grammar``), and its "actions" are token ids, which the output transforms decode
        (:class:`~pi0cli.models.tokenizer.FastActionOutputs`)."""
        import jax
        from flax import nnx

        from pi0cli.models.rtc import RTCInputs

        config = model.config
        family = config.family
        options = SamplerOptions(num_steps=num_steps, max_decoding_steps=max_decoding_steps,
                                 temperature=temperature, rtc_max_guidance=rtc_max_guidance, grammar=grammar)
        call = family.sampler(config, options)
        graphdef, state = nnx.split(model)

        @jax.jit
        def sample(state: Any, rng: jax.Array, batch: Mapping[str, Any]) -> jax.Array:
            # Every batch of a family that supports it carries RTC inputs (plain rows have no overlap): one
            # program serves both kinds of request.
            rtc = RTCInputs(*(batch[k] for k in rtc_fields.MODEL_KEYS)) if family.supports_rtc else None
            return call(nnx.merge(graphdef, state), rng, batch, rtc)

        def run(rng: Any, batch: Mapping[str, Any]) -> Any:
            return sample(state, rng, batch)

        def rng_fn(seed: int, counter: int) -> Any:
            return jax.random.fold_in(jax.random.key(seed), counter)

        # (horizon, action_dim) when the sampler takes real-time chunking inputs (a flow-matching feature).
        kwargs.setdefault("rtc_shape", (config.action_horizon, config.action_dim) if family.supports_rtc else None)
        return cls(run, rng_fn=rng_fn, **kwargs)

    @property
    def max_batch(self) -> int:
        return self.batch_sizes[-1]

    def _bucket(self, n: int) -> int:
        for size in self.batch_sizes:
            if size >= n:
                return size
        return self.max_batch

    # ------------------------------------------------------------------------------------------- inference

    def warmup(self, example: Data | None = None) -> dict[int, float]:
        """Run (and so compile) every batch size once; returns seconds per size.

        Warm-up consumes no noise: the n-th real request draws the same noise whether or not (and for however
        many batch sizes) the policy was warmed up, so a served policy and the same checkpoint run in-process
        act identically.
        """
        if example is None:
            if self.example is None:
                raise PolicyError("warmup needs an example observation")
            example = self.example()
        times = {}
        with self._lock:
            counter = self._counter
        try:
            for size in self.batch_sizes:
                start = time.perf_counter()
                results = self.infer_batch([example] * size, return_exceptions=True)
                for result in results:
                    if isinstance(result, BaseException):
                        raise PolicyError(
                            f"warm-up inference with the example observation failed: {result}") from result
                times[size] = time.perf_counter() - start
        finally:
            with self._lock:
                self._counter = counter
        return times

    def infer(self, obs: Data) -> dict[str, Any]:
        """One observation -> ``{"actions": [H, robot_dim], "policy_timing": {"infer_ms"}}``."""
        result: dict[str, Any] = self.infer_batch([obs])[0]
        return result

    def prepare(self, obs: Data) -> Data:
        """The input transforms of one request (thread-safe; the server runs them off the model thread)."""
        horizon = self.rtc_shape[0] if self.rtc_shape else None
        obs, rtc = rtc_fields.split_request(obs, horizon)
        with np.errstate(over="ignore"):  # a state that overflows is refused below, in one line, not warned about
            data = rtc_fields.transform(self.input_transform, obs, rtc, horizon)
        missing = [k for k in ("image", "state") if k not in data]
        if missing:
            raise PolicyError(f"the input transforms produced no {missing}")
        if self.rtc_shape is not None:
            data = {**data, **rtc_fields.model_fields(data, rtc, *self.rtc_shape)}
        self._check_input_range(np.asarray(data["state"]))
        return data

    def _check_input_range(self, state: np.ndarray[Any, Any]) -> None:
        """The normalised state must be finite (a finite but huge raw value can overflow when normalised) and,
        with ``max_input_std``, within that many units of the norm stats' centre."""
        if state.dtype.kind not in "fc" or not state.size:
            return
        finite = np.isfinite(state)
        if not finite.all():
            dim = int(np.flatnonzero(~finite.reshape(-1))[0])
            raise InputRangeError(
                f"'state' overflows to infinity when normalised (dimension {dim} after the embodiment's input "
                "transforms): it lies far outside the norm stats; check the robot's state units")
        magnitude = np.abs(state.reshape(-1))
        dim = int(np.argmax(magnitude))
        if magnitude[dim] > OVERFLOW_STD:  # refused whatever --max-input-std says: the model cannot compute it
            raise InputRangeError(
                f"'state' dimension {dim} (after the embodiment's input transforms) is {magnitude[dim]:.3g} normalised "
                f"units from the norm stats' centre: beyond {OVERFLOW_STD:.0e} the model's norm layers overflow "
                "(they square it); check the robot's state units")
        if self.max_input_std is None:
            return
        if magnitude[dim] > self.max_input_std:
            raise InputRangeError(
                f"'state' dimension {dim} (after the embodiment's input transforms) is {magnitude[dim]:.3g} "
                f"normalised units from the norm stats' centre, more than --max-input-std {self.max_input_std:g}; "
                "check the robot's state units and the checkpoint's norm stats")

    def infer_batch(self, observations: Sequence[Data], *, return_exceptions: bool = False) -> list[Any]:
        """Many observations in as few model calls as the batch sizes allow; one result per observation.

        With ``return_exceptions`` a request whose transforms fail yields its exception instead of a result
        (the others still run); otherwise the first failure is raised.
        """
        prepared: list[Any] = []
        for obs in observations:
            try:
                prepared.append(self.prepare(obs))
            except Exception as exc:  # noqa: BLE001 - reported per request
                if not return_exceptions:
                    raise
                prepared.append(exc)
        return self.run_prepared(prepared, return_exceptions=return_exceptions)

    def run_prepared(self, prepared: Sequence[Any], *, return_exceptions: bool = True) -> list[Any]:
        """Model + output transforms for requests already through :meth:`prepare` (exceptions pass through)."""
        results: list[Any] = [p if isinstance(p, BaseException) else None for p in prepared]
        todo = [(i, p) for i, p in enumerate(prepared) if not isinstance(p, BaseException)]
        step = self.max_batch
        for start in range(0, len(todo), step):
            chunk = todo[start : start + step]
            try:
                self._run_chunk(chunk, results)
            except Exception as exc:  # noqa: BLE001
                if not return_exceptions:
                    raise
                for i, _ in chunk:
                    results[i] = exc
        if not return_exceptions:
            for r in results:
                if isinstance(r, BaseException):
                    raise r
        return results

    def _run_chunk(self, chunk: list[tuple[int, Data]], results: list[Any]) -> None:
        n = len(chunk)
        size = self._bucket(n)
        model_inputs = [{k: d[k] for k in MODEL_KEYS + rtc_fields.MODEL_KEYS if k in d} for _, d in chunk]
        model_inputs += [model_inputs[0]] * (size - n)
        try:
            batch = stack_trees(model_inputs)
        except (ValueError, KeyError) as exc:
            raise ObservationError(f"requests in one batch do not share shapes ({exc})") from None
        with self._lock:
            rng = self._rng_fn(self.seed, self._counter)
            self._counter += 1
            start = time.perf_counter()
            actions = np.asarray(self._sample(rng, batch))
            infer_ms = (time.perf_counter() - start) * 1000.0
        for j, (i, data) in enumerate(chunk):
            try:
                state = np.asarray(data["state"])
                with np.errstate(over="ignore", invalid="ignore"):  # non-finite actions are reported below
                    out = self.output_transform({"state": state, "actions": actions[j]})
                    robot_actions = np.ascontiguousarray(np.asarray(out["actions"], dtype=np.float32))
                if not np.isfinite(robot_actions).all():
                    raise NonFiniteActionsError(_non_finite_cause(state))
                result = {k: v for k, v in out.items() if k != "state"}
                result["actions"] = robot_actions
                result["policy_timing"] = {"infer_ms": infer_ms, "batch_size": n, "padded_batch_size": size}
                results[i] = result
            except Exception as exc:  # noqa: BLE001
                results[i] = exc


def _non_finite_cause(state: np.ndarray[Any, Any]) -> str:
    """The error text for a NaN/inf action chunk, naming its likely cause from the normalised state."""
    text = "the model produced NaN or infinite actions for this request (no actions were sent)"
    magnitude = np.abs(np.asarray(state, np.float64).reshape(-1)) if state.size else np.zeros(1)
    dim = int(np.argmax(magnitude))
    if magnitude[dim] > _FAR_OUTSIDE:
        return (f"{text}; likely cause: an input far outside the norm stats (the normalised state reaches "
                f"{magnitude[dim]:.3g} at dimension {dim}); check the robot's state units, or start the server "
                "with --max-input-std to refuse such inputs")
    return (f"{text}; the inputs are within the norm stats, so the checkpoint (weights or norm stats) likely "
            "holds NaN or infinity")
