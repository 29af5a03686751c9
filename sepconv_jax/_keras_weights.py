"""Keras weight lists: ``get_weights()`` to a layer's params and back.

Keras's layout is ours: the arrays are not transposed, only named (in the
order of the layer's :class:`~sepconv_jax._layers.Family`) and checked. A
separable layer's weights are ``[depthwise_kernel, pointwise_kernel(,
bias)]``, a depthwise layer's ``[kernel(, bias)]``, at any spatial rank.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sepconv_jax import _args
from sepconv_jax import _layers


class _Sizes(NamedTuple):
  """What fixes the weights' shapes; None while unknown."""

  kernel_size: tuple
  depth_multiplier: Optional[int]
  filters: Optional[int]


def _names(family: _layers.Family, use_bias: bool) -> list[str]:
  """A layer's param names, in Keras's order."""
  sizes = _Sizes((1,), 1, 1)
  return [family.param_names[w]
          for w in family.param_shapes(sizes, 1, use_bias)]


def _describe(family: _layers.Family) -> str:
  """A family's weight list in words: "[kernel(, bias)]"."""
  required, every = _names(family, False), _names(family, True)
  optional = "".join(f"(, {n})" for n in every if n not in required)
  return f"[{', '.join(required)}{optional}]"


def _infer_family(arrays: Sequence[np.ndarray]) -> tuple[_layers.Family, bool]:
  """The family and ``use_bias`` whose weights are these: of their count,
  the one whose ranks fit best (separable first, on a tie).

  Raises:
    ValueError: if no family has that many weights, or the first is no
      kernel.
  """
  ranks = [a.ndim for a in arrays]
  best, fits = None, -1
  if ranks and ranks[0] >= 3:
    sizes = _Sizes((1,) * (ranks[0] - 2), 1, 1)
    for family in _layers.FAMILIES:
      for use_bias in (False, True):
        shapes = family.param_shapes(sizes, 1, use_bias).values()
        expected = [len(s) for s in shapes]
        fit = sum(e == r for e, r in zip(expected, ranks))
        if len(expected) == len(ranks) and fit > fits:
          best, fits = (family, use_bias), fit
  if best is None:
    raise ValueError(
        f"`weights` (={len(arrays)} arrays of shapes {_shapes(arrays)}) must"
        " be, in the order of Keras's get_weights(), "
        + " or ".join(f"a {f.name} layer's {_describe(f)}"
                      for f in _layers.FAMILIES)
        + ", kernels of rank 3 or more (a 1-, 2- or 3-D layer)"
    )
  return best


# A float64 Keras layer ported with JAX's default (x64 off) has float32
# weights: Keras made its variables with JAX.
_X64_HINT = (
    "; JAX's 64-bit types are off (its default), so the weights were made"
    " 32-bit: enable them with jax.config.update(\"jax_enable_x64\", True)"
    " before any array is created (Keras's weights included), or port the"
    " layer as float32: from_keras_config({**config, \"dtype\": \"float32\"}),"
    " or for a linen module module.clone(dtype=jnp.float32,"
    " param_dtype=jnp.float32)"
)


def _check_weights(arrays: Mapping[str, np.ndarray], family: _layers.Family,
                   layer: Any, where: Mapping[str, str]) -> None:
  """Checks the dtypes and shapes of named weights against each other.

  Args:
    arrays: arrays by param name, in Keras's order.
    family: the layer's family.
    layer: None, or the layer whose configuration fixes the shapes.
    where: each param's place in the caller's input, for the messages.

  Raises:
    ValueError: naming the weight, the expected shape and the shape given.
  """
  for name, a in arrays.items():
    if not jnp.issubdtype(a.dtype, jnp.floating):
      raise ValueError(
          f"`{name}` ({where[name]}, dtype={a.dtype}, shape={a.shape}) must"
          " be a floating-point array"
      )
  kernel = family.param_names["depthwise"]
  want_dtype = (jnp.dtype(layer.param_dtype) if layer is not None
                else arrays[kernel].dtype)
  for name, a in arrays.items():
    if a.dtype != want_dtype:
      reason = ("the module's `param_dtype`" if layer is not None
                else f"the dtype of {kernel}")
      raise ValueError(
          f"`{name}` ({where[name]}, dtype={a.dtype}, shape={a.shape}) must"
          f" have dtype {want_dtype}, {reason}"
          + (_X64_HINT if want_dtype.itemsize == 8
             and a.dtype.itemsize < 8 and not jax.config.jax_enable_x64
             else "")
      )

  if layer is not None:
    cfg = layer._config()  # pylint: disable=protected-access
    sizes = _Sizes(cfg.kernel_size, cfg.depth_multiplier, cfg.filters)
  else:
    rank = arrays[kernel].ndim - 2
    sizes = _Sizes((None,) * rank, None, None)
  channels = None

  def check(name, expected, layout):
    in_channels = f"in_channels={'?' if channels is None else channels}"
    known = [f"kernel_size={_args.shape_pattern(sizes.kernel_size)}",
             f"depth_multiplier={sizes.depth_multiplier or '?'}"]
    if "filters" in family.arguments:
      known.append(f"filters={sizes.filters or '?'}")
    if layer is not None:
      sizes_are = (f"the module's {', '.join(known)} and the weights'"
                   f" {in_channels}")
    else:
      ordered = known[:1] + [in_channels] + known[1:]
      sizes_are = f"the weights' {', '.join(ordered)}"
    _args.check_shape(name, arrays[name].shape, expected,
                      f"Keras's {layout} with {sizes_are}", where[name],
                      hint=layout_hint)

  # The kernel fixes the sizes the others follow; a size still unknown
  # after it (the filters) is read off the first weight that shows it.
  shape = arrays[kernel].shape
  # A kernel in PyTorch's or Flax's grouped layout reads as a wrong Keras
  # kernel: every shape message then says how it was read.
  layout_hint = _args.kernel_layout_hint(where[kernel], shape,
                                         len(sizes.kernel_size))
  check(kernel, sizes.kernel_size + (None, sizes.depth_multiplier),
        family.layouts["depthwise"])
  sizes = sizes._replace(kernel_size=shape[:-2], depth_multiplier=shape[-1])
  channels = shape[-2]
  for w, name in family.param_names.items():
    if name == kernel or name not in arrays:
      continue
    expected = family.param_shapes(sizes, channels, True)[w]
    check(name, expected, family.layouts[w])
    if None in expected:
      sizes = sizes._replace(
          filters=arrays[name].shape[expected.index(None)])


def _shapes(arrays: Sequence[Any]) -> list:
  return [tuple(np.shape(a)) for a in arrays]


def params_from_keras(weights: Sequence[Any], *,
                      module: Any = None) -> dict[str, jax.Array]:
  """Turns a Keras layer's ``get_weights()`` list into the layer's params.

  Args:
    weights: the list, in the order of Keras's ``get_weights()`` (numpy or
      JAX arrays): ``[depthwise_kernel, pointwise_kernel(, bias)]`` for a
      separable layer, ``[kernel(, bias)]`` for a depthwise one. Without
      `module`, the ranks tell which.
    module: optionally the layer (linen or NNX, of any family) the params
      are for; then the count, every shape (but the input channels) and
      the dtype (``param_dtype``) are checked against it too.

  Returns:
    The ``params`` dict, e.g. ``{"depthwise_kernel", "pointwise_kernel"(,
    "bias")}``, ready for ``module.apply({"params": params}, x)``.

  Raises:
    TypeError: if `weights` is not a list or tuple.
    ValueError: for a count or ranks that fit no layer (or not `module`),
      or a weight whose shape does not fit the others (or `module`),
      naming the weight, the expected shape and the shape it got; for a
      non-float dtype or one that differs between the weights (or from
      `module`'s ``param_dtype``).

  Example:
    >>> import numpy as np
    >>> import sepconv_jax
    >>> weights = [np.ones((3, 3, 4, 2), np.float32),
    ...            np.ones((1, 1, 8, 16), np.float32),
    ...            np.zeros((16,), np.float32)]
    >>> params = sepconv_jax.params_from_keras(weights)
    >>> {k: v.shape for k, v in params.items()}
    {'depthwise_kernel': (3, 3, 4, 2), 'pointwise_kernel': (1, 1, 8, 16), 'bias': (16,)}
    >>> depthwise = [np.ones((5, 4, 2), np.float32), np.zeros((8,), np.float32)]
    >>> params = sepconv_jax.params_from_keras(depthwise)
    >>> {k: v.shape for k, v in params.items()}
    {'kernel': (5, 4, 2), 'bias': (8,)}
  """
  if not isinstance(weights, (list, tuple)):
    raise TypeError(
        f"`weights` (a {type(weights).__name__}) must be a list of arrays in"
        " the order of Keras's get_weights()"
    )
  arrays = [np.asarray(w) for w in weights]
  if module is None:
    family, use_bias = _infer_family(arrays)
  else:
    family, use_bias = module.FAMILY, module.use_bias
  names = _names(family, use_bias)
  if len(arrays) != len(names):
    raise ValueError(
        f"`weights` (={len(arrays)} arrays of shapes {_shapes(arrays)}) must"
        f" hold {len(names)} arrays, in the order of Keras's get_weights():"
        f" {', '.join(names)} (use_bias={use_bias})"
    )
  named = dict(zip(names, arrays))
  _check_weights(named, family, module,
                 {n: f"weights[{i}]" for i, n in enumerate(names)})
  return {name: jnp.asarray(a) for name, a in named.items()}


def params_to_keras(params: Mapping[str, Any], *,
                    module: Any = None) -> list[np.ndarray]:
  """Turns a layer's params into Keras's ``set_weights()`` list.

  Args:
    params: the ``params`` dict, or the variables ``{"params": ...}``
      holding it.
    module: optionally the layer (linen or NNX) the params belong to, to
      check them against. Without it, the names tell the family:
      ``depthwise_kernel`` a separable layer, ``kernel`` a depthwise one.

  Returns:
    The arrays in Keras's order, as numpy arrays, e.g.
    ``[depthwise_kernel, pointwise_kernel(, bias)]`` for
    ``keras.layers.SeparableConv2D.set_weights()``.

  Raises:
    TypeError: if `params` is not a mapping.
    ValueError: for missing or unknown params, and for shapes or dtypes that
      do not fit (naming the param, the expected and the actual shape).

  Example:
    >>> import jax.numpy as jnp
    >>> import sepconv_jax
    >>> params = {"depthwise_kernel": jnp.ones((3, 3, 2, 1)),
    ...           "pointwise_kernel": jnp.ones((1, 1, 2, 4))}
    >>> [w.shape for w in sepconv_jax.params_to_keras(params)]
    [(3, 3, 2, 1), (1, 1, 2, 4)]
  """
  if not isinstance(params, Mapping):
    raise TypeError(
        f"`params` (a {type(params).__name__}) must be a mapping of param"
        " names to arrays"
    )
  if set(params) == {"params"} and isinstance(params["params"], Mapping):
    params = params["params"]
  if module is not None:
    family = module.FAMILY
  else:
    found = [f for f in _layers.FAMILIES
             if f.param_names["depthwise"] in params]
    if not found:
      raise ValueError(
          f"`params` (keys={sorted(params)}) must hold "
          + " or ".join(f"a {f.name} layer's {_describe(f)}"
                        for f in _layers.FAMILIES)
      )
    family = found[0]
  required, every = _names(family, False), _names(family, True)
  optional = [n for n in every if n not in required]
  unknown = sorted(set(params) - set(every))
  missing = [n for n in required if n not in params]
  if module is not None:
    if module.use_bias:
      missing += [n for n in optional if n not in params]
    else:
      unknown += [n for n in optional if n in params]
  if unknown or missing:
    raise ValueError(
        f"`params` (keys={sorted(params)}) must hold {', '.join(required)}"
        f" and, if the layer has one, {', '.join(optional)}"
        + (f"; unknown: {unknown}" if unknown else "")
        + (f"; missing: {missing}" if missing else "")
    )
  named = {n: np.asarray(params[n]) for n in every if n in params}
  _check_weights(named, family, module, {n: f"params[{n!r}]" for n in named})
  return list(named.values())
