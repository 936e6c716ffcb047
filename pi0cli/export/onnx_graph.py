"""A jaxpr -> ONNX converter for the primitives pi0-family inference traces to.

Why our own and not a general converter: the model code itself is traced (no second implementation of Gemma,
SigLIP or the action expert to keep in step), the primitive set of an unrolled, unchunked inference pass is
small (elementwise math, dot_general, reshapes, slices, one embedding gather), and every choice that matters
for ONNX Runtime and TensorRT (opset, external-data layout, how a dot_general becomes a MatMul) stays here.

Values that depend only on constants are folded at export time (iota, RoPE timescales, masks of fixed
layout). Weights are graph initializers stored in one external-data file (:class:`WeightFile`), so a model
past protobuf's 2 GB limit saves and loads. Loops must be unrolled before tracing: ``while``/``scan`` are
refused by name.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from jax.extend import core as jcore
from onnx import TensorProto, helper, numpy_helper

from pi0cli.errors import Pi0Error

#: The ONNX operator set written (ONNX Runtime >= 1.14, TensorRT >= 8.6 load it).
OPSET = 18
#: IR version 9 (onnx 1.15): what TensorRT 10's parser accepts.
IR_VERSION = 9
#: Folded constants above this many elements stay ops on constant inputs (ORT folds them at load instead).
_FOLD_LIMIT = 1 << 20
#: Byte alignment of each tensor in the external-data file (lets ONNX Runtime memory-map it).
_ALIGN = 4096

_ELEM_TYPES: dict[str, int] = {
    "float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16, "bfloat16": TensorProto.BFLOAT16,
    "float64": TensorProto.DOUBLE, "int32": TensorProto.INT32, "int64": TensorProto.INT64,
    "int8": TensorProto.INT8, "uint8": TensorProto.UINT8, "bool": TensorProto.BOOL,
}

_UNARY = {"exp": "Exp", "log": "Log", "tanh": "Tanh", "logistic": "Sigmoid", "sin": "Sin", "cos": "Cos",
          "sqrt": "Sqrt", "neg": "Neg", "abs": "Abs", "erf": "Erf", "floor": "Floor", "ceil": "Ceil",
          "sign": "Sign", "not": "Not", "stop_gradient": "Identity", "copy": "Identity", "copy_p": "Identity",
          "reduce_precision": "Identity", "optimization_barrier": "Identity", "sharding_constraint": "Identity"}
_BINARY = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "max": "Max", "min": "Min", "pow": "Pow",
           "lt": "Less", "le": "LessOrEqual", "gt": "Greater", "ge": "GreaterOrEqual", "eq": "Equal"}
_INLINE = ("jit", "pjit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call", "remat", "checkpoint")


class OnnxExportError(Pi0Error):
    """A traced model that the ONNX converter cannot express."""


def elem_type(dtype: Any, *, float16: bool = False) -> int:
    """The ONNX element type of a numpy/JAX dtype (``float16``: bfloat16 is written as float16)."""
    name = np.dtype(dtype).name
    if float16 and name == "bfloat16":
        name = "float16"
    if name not in _ELEM_TYPES:
        raise OnnxExportError(f"dtype {name} has no ONNX equivalent here; export in float32")
    return _ELEM_TYPES[name]


class WeightFile:
    """One external-data file shared by every graph of an artifact; each tensor is written once, aligned."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._file = self.path.open("wb")
        self._offset = 0
        self._written: dict[str, tuple[int, int]] = {}

    def tensor(self, name: str, array: np.ndarray, data_type: int) -> TensorProto:
        """An initializer ``name`` whose bytes live in this file (written on first use)."""
        if name not in self._written:
            pad = -self._offset % _ALIGN
            self._file.write(b"\0" * pad)
            self._offset += pad
            data = np.ascontiguousarray(array).tobytes()
            self._file.write(data)
            self._written[name] = (self._offset, len(data))
            self._offset += len(data)
        offset, length = self._written[name]
        proto = TensorProto(name=name, data_type=data_type, dims=list(array.shape))
        proto.data_location = TensorProto.EXTERNAL
        for key, value in (("location", self.path.name), ("offset", offset), ("length", length)):
            entry = proto.external_data.add()
            entry.key, entry.value = key, str(value)
        return proto

    def close(self) -> None:
        self._file.close()


@dataclasses.dataclass(frozen=True)
class Weight:
    """A traced input that is a weight: its initializer name and value."""

    name: str
    value: np.ndarray


@dataclasses.dataclass
class _Tensor:
    name: str


class _Graph:
    """Nodes and initializers under construction; jaxpr values map to tensor names or folded constants."""

    def __init__(self, weights: WeightFile, float16: bool):
        self.weights, self.float16 = weights, float16
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self._count = 0
        self._consts: dict[tuple, str] = {}

    def fresh(self, hint: str = "t") -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def node(self, op: str, inputs: Sequence[str], outputs: int | Sequence[str] = 1, **attrs: Any) -> list[str]:
        names = [self.fresh(op.lower()) for _ in range(outputs)] if isinstance(outputs, int) else list(outputs)
        self.nodes.append(helper.make_node(op, list(inputs), names, **attrs))
        return names

    def one(self, op: str, inputs: Sequence[str], **attrs: Any) -> str:
        return self.node(op, inputs, 1, **attrs)[0]

    def const(self, value: Any, dtype: Any = None) -> str:
        """A constant tensor (deduplicated); large ones go to the external-data file."""
        array = np.asarray(value, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes()) if array.size <= 64 else None
        if key is not None and key in self._consts:
            return self._consts[key]
        name = self.fresh("const")
        data_type = elem_type(array.dtype, float16=self.float16)
        if data_type == TensorProto.FLOAT16 and array.dtype != np.float16:
            array = array.astype(np.float16)
        if array.nbytes >= 1 << 16:
            self.initializers.append(self.weights.tensor(name, array, data_type))
        elif data_type in (TensorProto.BFLOAT16,):
            proto = TensorProto(name=name, data_type=data_type, dims=list(array.shape))
            proto.raw_data = np.ascontiguousarray(array).tobytes()
            self.initializers.append(proto)
        else:
            self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        if key is not None:
            self._consts[key] = name
        return name

    def ints(self, values: Sequence[int]) -> str:
        return self.const(np.asarray(list(values), dtype=np.int64))


Value = _Tensor | np.ndarray


def convert(closed: jcore.ClosedJaxpr, *, inputs: Sequence[str | Weight], outputs: Sequence[str],
            weights: WeightFile, name: str = "pi0", float16: bool = False,
            doc: str = "") -> onnx.ModelProto:
    """The ONNX model of ``closed``: each invar is a graph input (its name) or a :class:`Weight` initializer.

    ``float16``: write every bfloat16 value as float16 (for runtimes without bfloat16 kernels).
    """
    jaxpr = closed.jaxpr
    if len(inputs) != len(jaxpr.invars) or len(outputs) != len(jaxpr.outvars):
        raise OnnxExportError(f"{len(jaxpr.invars)} inputs and {len(jaxpr.outvars)} outputs traced, "
                              f"{len(inputs)} and {len(outputs)} named")
    graph = _Graph(weights, float16)
    env: dict[Any, Value] = {}
    graph_inputs = []
    for var, spec in zip(jaxpr.invars, inputs, strict=True):
        if isinstance(spec, Weight):
            array = spec.value
            data_type = elem_type(array.dtype, float16=float16)
            if data_type == TensorProto.FLOAT16:
                array = array.astype(np.float16)
            graph.initializers.append(weights.tensor(spec.name, array, data_type))
            env[var] = _Tensor(spec.name)
        else:
            env[var] = _Tensor(spec)
            graph_inputs.append(helper.make_tensor_value_info(
                spec, elem_type(_dtype(var), float16=float16), list(_shape(var))))
    for var, const in zip(jaxpr.constvars, closed.consts, strict=True):
        env[var] = np.asarray(const)
    _emit(graph, jaxpr, env)
    graph_outputs = []
    for atom, out in zip(jaxpr.outvars, outputs, strict=True):
        result = _read(env, atom)
        source = graph.const(result) if isinstance(result, np.ndarray) else result.name
        graph.node("Identity", [source], [out])
        graph_outputs.append(helper.make_tensor_value_info(
            out, elem_type(_dtype(atom), float16=float16), list(_shape(atom))))
    model = helper.make_model(
        helper.make_graph(graph.nodes, name, graph_inputs, graph_outputs, graph.initializers),
        opset_imports=[helper.make_opsetid("", OPSET)], producer_name="pi0", doc_string=doc)
    model.ir_version = IR_VERSION
    return model


def _read(env: Mapping[Any, Value], atom: Any) -> Value:
    if isinstance(atom, jcore.Literal):
        return np.asarray(atom.val, dtype=_dtype(atom))
    return env[atom]


def _emit(graph: _Graph, jaxpr: jcore.Jaxpr, env: dict[Any, Value]) -> None:
    for eqn in jaxpr.eqns:
        args = [_read(env, a) for a in eqn.invars]
        prim = eqn.primitive.name
        if prim in _INLINE:
            sub = eqn.params.get("jaxpr") or eqn.params.get("call_jaxpr") or eqn.params.get("fun_jaxpr")
            if sub is None:
                raise OnnxExportError(f"cannot inline primitive {prim!r} (no sub-jaxpr)")
            inner, consts = (sub.jaxpr, sub.consts) if hasattr(sub, "consts") else (sub, ())
            sub_env: dict[Any, Value] = dict(zip(inner.constvars, (np.asarray(c) for c in consts), strict=True))
            sub_env.update(zip(inner.invars, args, strict=True))
            _emit(graph, inner, sub_env)
            outs = [_read(sub_env, v) for v in inner.outvars]
        elif all(isinstance(a, np.ndarray) for a in args) and _foldable(eqn):
            result = eqn.primitive.bind(*args, **eqn.params)
            outs = [np.asarray(r) for r in (result if eqn.primitive.multiple_results else [result])]
        else:
            outs = _lower(graph, eqn, prim, args)
        for var, value in zip(eqn.outvars, outs, strict=True):
            if not isinstance(var, jcore.DropVar):
                env[var] = value


def _foldable(eqn: jcore.JaxprEqn) -> bool:
    return all(math.prod(_shape(v)) <= _FOLD_LIMIT for v in eqn.outvars if hasattr(v.aval, "shape"))


def _name(graph: _Graph, value: Value) -> str:
    return graph.const(value) if isinstance(value, np.ndarray) else value.name


def _lower(graph: _Graph, eqn: jcore.JaxprEqn, prim: str, args: list[Value]) -> list[Value]:
    lower = _LOWERINGS.get(prim)
    if lower is not None:
        names = [_name(graph, a) for a in args]
        result = lower(graph, eqn, names)
        return [_Tensor(n) for n in (result if isinstance(result, list) else [result])]
    if prim in _UNARY:
        return [_Tensor(graph.one(_UNARY[prim], [_name(graph, args[0])]))]
    if prim in _BINARY:
        a, b = (_name(graph, x) for x in args)
        return [_Tensor(graph.one(_BINARY[prim], [a, b]))]
    if prim in ("while", "scan", "cond", "fori_loop"):
        raise OnnxExportError(f"the traced model has a {prim!r} loop; the exporter unrolls loops before tracing "
                              "(scan=False, one attention chunk), so this model variant is not exportable yet")
    raise OnnxExportError(f"JAX primitive {prim!r} has no ONNX lowering in pi0's exporter")


# ------------------------------------------------------------------------------------------------ lowerings


def _shape(var: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in var.aval.shape)


def _dtype(var: Any) -> np.dtype:
    return np.dtype(var.aval.dtype)


def _logical(graph: _Graph, eqn: jcore.JaxprEqn, names: list[str], op: str, bitwise: str) -> str:
    return graph.one(op if _dtype(eqn.outvars[0]) == np.bool_ else bitwise, names)


def _square(graph: _Graph, eqn: jcore.JaxprEqn, names: list[str]) -> str:
    return graph.one("Mul", [names[0], names[0]])


def _rsqrt(graph: _Graph, eqn: jcore.JaxprEqn, names: list[str]) -> str:
    return graph.one("Reciprocal", [graph.one("Sqrt", names)])


def _integer_pow(graph: _Graph, eqn: jcore.JaxprEqn, names: list[str]) -> str:
    y = int(eqn.params["y"])
    if 1 <= y <= 4:  # repeated products: exact, as XLA computes them
        out = names[0]
        for _ in range(y - 1):
            out = graph.one("Mul", [out, names[0]])
        return out if y > 1 else graph.one("Identity", [out])
    exponent = graph.const(np.asarray(y, dtype=_dtype(eqn.invars[0])))
    return graph.one("Pow", [names[0], exponent])


def _ne(graph: _Graph, eqn: jcore.JaxprEqn, names: list[str]) -> str:
    return graph.one("Not", [graph.one("Equal", names)])


def _convert(graph: _Graph, eqn: jcore.JaxprEqn, names: list[str]) -> str:
    return graph.one("Cast", names, to=elem_type(eqn.params["new_dtype"], float16=graph.float16))


def _reshape(graph: _Graph, eqn: jcore.JaxprEqn, names: list[str]) -> str:
    if eqn.params.get("dimensions") is not None:
        raise OnnxExportError("reshape with a dimension permutation is not supported")
    return graph.one("Reshape", [names[0], graph.ints(_shape(eqn.outvars[0]))])


def _broadcast_in_dim(graph: _Graph, eqn: jcore.JaxprEqn, names: list[str]) -> str:
    out_shape = _shape(eqn.outvars[0])
    in_shape = _shape(eqn.invars[0])
    staged = [1] * len(out_shape)
    for src, dst in enumerate(eqn.params["broadcast_dimensions"]):
        staged[dst] = in_shape[src]
    x = names[0]
    if tuple(staged) != in_shape:
        x = graph.one("Reshape", [x, graph.ints(staged)])
    if tuple(staged) == out_shape:
        return x if x != names[0] else graph.one("Identity", [x])
    return graph.one("Expand", [x, graph.ints(out_shape)])


def _transpose(graph: _Graph, eqn: jcore.JaxprEqn, names: list[str]) -> str:
    return graph.one("Transpose", names, perm=[int(p) for p in eqn.params["permutation"]])


def _squeeze(graph: _Graph, eqn: jcore.JaxprEqn, names: list[str]) -> str:
    return graph.one("Reshape", [names[0], graph.ints(_shape(eqn.outvars[0]))])


def _slice(graph: _Graph, eqn: jcore.JaxprEqn, names: list[str]) -> str:
    starts, limits = eqn.params["start_indices"], eqn.params["limit_indices"]
    strides = eqn.params.get("strides") or (1,) * len(starts)
    axes = [i for i, (s, e, n) in enumerate(zip(starts, limits, _shape(eqn.invars[0]), strict=True))
            if (s, e) != (0, n) or strides[i] != 1]
    if not axes:
        return graph.one("Identity", names)
    return graph.one("Slice", [names[0], graph.ints([starts[i] for i in axes]), graph.ints([limits[i] for i in axes]),
                               graph.ints(axes), graph.ints([strides[i] for i in axes])])


def _concatenate(graph: _Graph, eqn: jcore.JaxprEqn, names: list[str]) -> str:
    return graph.one("Concat", names, axis=int(eqn.params["dimension"]))


def _reduce(op: str) -> Callable[[_Graph, jcore.JaxprEqn, list[str]], str]:
    def lower(graph: _Graph, eqn: jcore.JaxprEqn, names: list[str]) -> str:
        axes = [int(a) for a in eqn.params["axes"]]
        if not axes:
            return graph.one("Identity", names)
        return graph.one(op, [names[0], graph.ints(axes)], keepdims=0)
    return lower


def _cumsum(graph: _Graph, eqn: jcore.JaxprEqn, names: list[str]) -> str:
    return graph.one("CumSum", [names[0], graph.const(np.asarray(int(eqn.params["axis"]), np.int64))],
                     reverse=int(bool(eqn.params.get("reverse", False))))


def _select_n(graph: _Graph, eqn: jcore.JaxprEqn, names: list[str]) -> str:
    if len(names) != 3:
        raise OnnxExportError(f"select_n with {len(names) - 1} cases is not supported (only 2)")
    pred = names[0]
    if _dtype(eqn.invars[0]) != np.bool_:
        pred = graph.one("Cast", [pred], to=TensorProto.BOOL)
    return graph.one("Where", [pred, names[2], names[1]])


def _clamp(graph: _Graph, eqn: jcore.JaxprEqn, names: list[str]) -> str:
    low, x, high = names
    return graph.one("Max", [graph.one("Min", [x, high]), low])


def _split(graph: _Graph, eqn: jcore.JaxprEqn, names: list[str]) -> list[str]:
    sizes = [int(s) for s in eqn.params["sizes"]]
    return graph.node("Split", [names[0], graph.ints(sizes)], len(sizes), axis=int(eqn.params["axis"]))


def _unstack(graph: _Graph, eqn: jcore.JaxprEqn, names: list[str]) -> list[str]:
    axis = int(eqn.params["axis"])
    n = _shape(eqn.invars[0])[axis]
    parts = graph.node("Split", [names[0], graph.ints([1] * n)], n, axis=axis)
    return [graph.one("Squeeze", [p, graph.ints([axis])]) for p in parts]


def _stack(graph: _Graph, eqn: jcore.JaxprEqn, names: list[str]) -> str:
    axis = int(eqn.params["axis"])
    parts = [graph.one("Unsqueeze", [n, graph.ints([axis])]) for n in names]
    return graph.one("Concat", parts, axis=axis)


def _expand_dims(graph: _Graph, eqn: jcore.JaxprEqn, names: list[str]) -> str:
    return graph.one("Reshape", [names[0], graph.ints(_shape(eqn.outvars[0]))])


def _pad(graph: _Graph, eqn: jcore.JaxprEqn, names: list[str]) -> str:
    config = eqn.params["padding_config"]
    if any(interior or low < 0 or high < 0 for low, high, interior in config):
        raise OnnxExportError("pad with interior or negative padding is not supported")
    pads = [low for low, _, _ in config] + [high for _, high, _ in config]
    return graph.one("Pad", [names[0], graph.ints(pads), names[1]], mode="constant")


def _dot_general(graph: _Graph, eqn: jcore.JaxprEqn, names: list[str]) -> str:
    """A dot_general as (Transpose, Reshape) + MatMul + Reshape; output order: batch, lhs free, rhs free."""
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    lc, rc, lb, rb = (tuple(int(d) for d in dims) for dims in (lc, rc, lb, rb))
    ls, rs = _shape(eqn.invars[0]), _shape(eqn.invars[1])
    lf = tuple(d for d in range(len(ls)) if d not in lc and d not in lb)
    rf = tuple(d for d in range(len(rs)) if d not in rc and d not in rb)
    lhs, rhs = names
    out_dtype = _dtype(eqn.outvars[0])
    lhs_dtype, rhs_dtype = _dtype(eqn.invars[0]), _dtype(eqn.invars[1])
    if lhs_dtype != rhs_dtype or lhs_dtype != out_dtype:  # one compute dtype for MatMul: the output's
        to = elem_type(out_dtype, float16=graph.float16)
        lhs = lhs if lhs_dtype == out_dtype else graph.one("Cast", [lhs], to=to)
        rhs = rhs if rhs_dtype == out_dtype else graph.one("Cast", [rhs], to=to)
    k = math.prod(ls[d] for d in lc)
    n = math.prod(rs[d] for d in rf)
    batch = [ls[d] for d in lb]
    free = [ls[d] for d in lf]

    def arrange(x: str, perm: tuple[int, ...], shape: list[int], current: tuple[int, ...]) -> str:
        if perm != tuple(range(len(perm))):
            x = graph.one("Transpose", [x], perm=list(perm))
        if tuple(shape) != tuple(current[p] for p in perm):
            x = graph.one("Reshape", [x, graph.ints(shape)])
        return x

    if not lb:
        # Keep the lhs free dims unflattened: MatMul broadcasts them and ORT fuses MatMul + Add.
        lhs = arrange(lhs, lf + lc, [*free, k], ls)
        rhs = arrange(rhs, rc + rf, [k, n], rs)
        out = graph.one("MatMul", [lhs, rhs])
        final = [*free, *(rs[d] for d in rf)]
        if final != [*free, n]:
            out = graph.one("Reshape", [out, graph.ints(final)])
        return out
    m = math.prod(free)
    lhs = arrange(lhs, lb + lf + lc, [*batch, m, k], ls)
    rhs = arrange(rhs, rb + rc + rf, [*batch, k, n], rs)
    out = graph.one("MatMul", [lhs, rhs])
    final = [*batch, *free, *(rs[d] for d in rf)]
    if final != [*batch, m, n]:
        out = graph.one("Reshape", [out, graph.ints(final)])
    return out


def _gather(graph: _Graph, eqn: jcore.JaxprEqn, names: list[str]) -> str:
    """Only the embedding lookup ``table[ids]`` (row gather along axis 0)."""
    dn = eqn.params["dimension_numbers"]
    operand, indices = _shape(eqn.invars[0]), _shape(eqn.invars[1])
    row = (tuple(dn.collapsed_slice_dims) == (0,) and tuple(dn.start_index_map) == (0,)
           and not tuple(getattr(dn, "operand_batching_dims", ())) and indices[-1] == 1
           and tuple(eqn.params["slice_sizes"]) == (1, *operand[1:]))
    if not row:
        raise OnnxExportError(f"gather {dn} is not a row lookup; only embedding lookups are exported")
    ids = graph.one("Reshape", [names[1], graph.ints(indices[:-1])])
    return graph.one("Gather", [names[0], ids], axis=0)


_LOWERINGS: dict[str, Callable[[_Graph, jcore.JaxprEqn, list[str]], str | list[str]]] = {
    "square": _square, "rsqrt": _rsqrt, "integer_pow": _integer_pow, "ne": _ne,
    "and": lambda g, e, n: _logical(g, e, n, "And", "BitwiseAnd"),
    "or": lambda g, e, n: _logical(g, e, n, "Or", "BitwiseOr"),
    "convert_element_type": _convert, "reshape": _reshape, "broadcast_in_dim": _broadcast_in_dim,
    "transpose": _transpose, "squeeze": _squeeze, "expand_dims": _expand_dims, "slice": _slice,
    "concatenate": _concatenate, "reduce_sum": _reduce("ReduceSum"), "reduce_max": _reduce("ReduceMax"),
    "reduce_min": _reduce("ReduceMin"), "cumsum": _cumsum, "select_n": _select_n, "clamp": _clamp,
    "split": _split, "unstack": _unstack, "stack": _stack, "pad": _pad, "dot_general": _dot_general,
    "gather": _gather,
}
