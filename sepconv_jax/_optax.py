"""Keras-style weight constraints as an optax transformation."""

from __future__ import annotations

from typing import Any, Callable, Mapping

import flax.linen as nn
from flax import nnx
import jax
import optax

ParamPath = tuple[str, ...]


def collect_constraints(model: Any, *args: Any, rngs: Any = None,
                        **kwargs: Any) -> dict[ParamPath, Callable]:
  """Finds the constraint of every param of every layer in `model`.

  Every submodule with a ``keras_constraints()`` method, such as the
  separable and depthwise layers at any nesting depth, reports its
  constraints.

  Args:
    model: a linen module, traced once with `jax.eval_shape` (nothing is
      computed), or an NNX module, whose submodules are simply walked.
    *args: for linen, sample inputs for ``model.init``; only their shapes
      matter. None for NNX.
    rngs: for linen, the ``rngs`` for ``model.init``; a fixed key by
      default.
    **kwargs: for linen, more keyword arguments for ``model.init``.

  Returns:
    A dict from the path of each constrained param (inside the ``params``
    collection for linen, e.g. ``("Block_0", "SeparableConv2D_0",
    "depthwise_kernel")``; inside ``nnx.state(model, nnx.Param)`` for NNX) to
    its constraint.
  """
  found: dict[ParamPath, Callable] = {}

  def record(path, module):
    for name, fn in module.keras_constraints().items():
      found[tuple(str(p) for p in path) + (name,)] = fn

  if isinstance(model, nnx.Module):
    for path, module in nnx.iter_modules(model):
      if hasattr(module, "keras_constraints"):
        record(path, module)
    return found

  def interceptor(next_fun, args_, kwargs_, context):
    module = context.module
    if context.method_name == "__call__" and hasattr(module,
                                                     "keras_constraints"):
      record(module.scope.path, module)
    return next_fun(*args_, **kwargs_)

  if rngs is None:
    rngs = jax.random.key(0)
  with nn.intercept_methods(interceptor):
    jax.eval_shape(lambda: model.init(rngs, *args, **kwargs))
  return found


def _path_names(path) -> ParamPath:
  """Dict and sequence keys of a pytree path; NNX's `.value` is skipped."""
  names = []
  for k in path:
    if isinstance(k, jax.tree_util.DictKey):
      names.append(str(k.key))
    elif isinstance(k, jax.tree_util.SequenceKey):
      names.append(str(k.idx))
  return tuple(names)


def apply_constraints(
    constraints: Mapping[ParamPath, Callable],
) -> optax.GradientTransformation:
  """Applies Keras constraints after the step, as Keras's optimizers do.

  Place it last in an `optax.chain`: it turns the incoming updates ``u``
  into ``constraint(p + u) - p`` for every constrained param ``p``, so that
  `optax.apply_updates` lands on the constrained weights. Other params keep
  their updates unchanged.

  Args:
    constraints: a dict from param paths to constraints, as returned by
      :func:`collect_constraints`.

  Returns:
    An `optax.GradientTransformation` whose ``update`` needs ``params``.

  Raises:
    ValueError: from ``update``, when ``params`` is missing or a path in
      `constraints` names no param (a constraint is never silently skipped).

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import sepconv_jax
    >>> model = sepconv_jax.SeparableConv2D(4, 3, pointwise_constraint="non_neg")
    >>> x = jnp.ones((1, 8, 8, 2))
    >>> params = model.init(jax.random.key(0), x)["params"]
    >>> tx = optax.chain(optax.sgd(0.1), sepconv_jax.apply_constraints(
    ...     sepconv_jax.collect_constraints(model, x)))
    >>> grads = jax.tree.map(jnp.ones_like, params)
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> params = optax.apply_updates(params, updates)
    >>> bool((params["pointwise_kernel"] >= 0).all())
    True
  """
  constraints = dict(constraints)

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError(
          "`params` (=None) must be given to the update of"
          " `apply_constraints`, which constrains params + updates"
      )
    seen = set()

    def constrain(path, update, param):
      fn = constraints.get(_path_names(path))
      if fn is None:
        return update
      seen.add(_path_names(path))
      stepped = optax.apply_updates(param, update)
      return (fn(stepped) - param).astype(update.dtype)

    updates = jax.tree_util.tree_map_with_path(constrain, updates, params)
    missing = sorted(set(constraints) - seen)
    if missing:
      raise ValueError(
          f"`constraints` (paths={missing}) name params that are not in"
          " `params`; were they collected from another model?"
      )
    return updates, state

  return optax.GradientTransformation(init_fn, update_fn)
