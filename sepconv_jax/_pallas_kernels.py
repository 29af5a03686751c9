"""The Pallas kernels of the "pallas" implementation.

Three kernels, each in a GPU form (Triton) and a TPU form (Mosaic) that
share their arithmetic and differ in how blocks arrive and leave:

* `forward`: for a block of output pixels it reads the input block with its
  halo once, computes the depthwise result for every channel in registers
  (GPU) or VMEM (TPU), multiplies it by the pointwise kernel on the tensor
  cores or the MXU (float32 accumulation), adds the bias and writes ``y``.
  The depthwise result never goes to device memory. Without a pointwise
  kernel it writes the depthwise result (plus bias) instead.
* `input_grad`: for a block of input pixels, ``dx = sum_t window_t(ct) @
  pkw[t]``, the transposed depthwise step of ``ct @ pointwise^T`` fused
  (`_pallas_layout.flipped_products`); each block reads its halo of the
  cotangent, so no two blocks write the same pixel.
* `param_grads`: for blocks of output pixels it recomputes the depthwise
  result and returns partial sums of the pointwise-kernel gradient
  ``depthwise(x)^T @ ct``, the depthwise-kernel gradient ``sum x_tap *
  (ct @ pointwise^T)`` and the bias gradient, reduced by XLA afterwards.
  GPU: each program loops over a group of pixel blocks (`Tiles.groups`
  partial sums); TPU: the pixel blocks are the innermost grid axis and the
  sums accumulate in the output block.

The inputs come laid out by `_pallas_layout` (padded, phased, in bounds).
Outputs: on GPU masked stores into the exact output; on TPU whole blocks of
a padded output that XLA slices. ``interpret=True`` runs a form on any
backend (`pl.pallas_call`'s interpreter), which is how CPU runs them.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as plgpu

from sepconv_jax import _pallas_layout

_F32 = jnp.float32
Geometry = _pallas_layout.Geometry


def _params(target: str, g: Geometry, semantics: tuple[str, ...],
            interpret: bool):
  if interpret:
    return None
  if target == "gpu":
    return plgpu.CompilerParams(num_warps=g.tiles.warps,
                                num_stages=g.tiles.stages)
  return pltpu.CompilerParams(dimension_semantics=semantics,
                              vmem_limit_bytes=g.tiles.vmem_limit or None)


def _chunks(total: int, size: int, body, init):
  """``body(offset, carry)`` over the chunks of ``range(total)``: a static
  offset when there is one chunk (Mosaic proves nothing of a dynamic lane
  offset that is not a multiple of 128), else a `lax.fori_loop`."""
  if total == size:
    return body(0, init)
  return lax.fori_loop(
      0, total // size,
      lambda i, carry: body(pl.multiple_of(i * size, size), carry), init)


def _ch(c, g: Geometry):
  """The element offset of channel block `c`: a static 0 when there is one
  block (Mosaic proves a block offset only a multiple of its lane tiling)."""
  if g.padded_channels == g.tiles.channels:
    return 0
  return c * g.tiles.channels


def _cost(flops: int, *arrays_and_shapes) -> pl.CostEstimate:
  """XLA's view of a kernel: its flops and the bytes of its operands and
  results (each read or written once)."""
  total = 0
  for a in arrays_and_shapes:
    size = 1
    for d in a.shape:
      size *= d
    total += size * jnp.dtype(a.dtype).itemsize
  return pl.CostEstimate(flops=int(flops), transcendentals=0,
                         bytes_accessed=int(total))


def _window(ref, lead, row, col, rows, cols, ch, chans):
  """A ``(rows * cols, chans)`` window of ``ref[*lead, row:, col:, ch:]``."""
  if rows == 1:
    return ref[(*lead, row, pl.ds(col, cols), pl.ds(ch, chans))]
  block = ref[(*lead, pl.ds(row, rows), pl.ds(col, cols), pl.ds(ch, chans))]
  return block.reshape(rows * cols, chans)


def _depthwise(x_ref, w_ref, ch, w_ch, g: Geometry, chans: int):
  """The depthwise result of a block, one ``(P, chans)`` float32 per m.

  Reads each tap's window of the (phased) input block once, for all M.
  """
  t_ = g.tiles
  d = [jnp.zeros((t_.rows * t_.cols, chans), _F32)
       for _ in range(g.multiplier)]
  for t, (a, b, oi, oj) in enumerate(g.taps):
    xt = _window(x_ref, (a, b), oi, oj, t_.rows, t_.cols, ch,
                 chans).astype(_F32)
    for m in range(g.multiplier):
      w = w_ref[t, m, pl.ds(w_ch, chans)].astype(_F32)
      d[m] = d[m] + xt * w[None, :]
  return d


def _dot(a, b, precision, contract=((1,), (0,))):
  return lax.dot_general(a, b, (contract, ((), ())), precision=precision,
                         preferred_element_type=_F32)


def _masked_store(ref, value, limits, offsets):
  """Stores `value` (the ref's block shape) where every index is in range.

  `limits` and `offsets` give, per axis, the array's size and the block's
  first index (None: no limit on that axis).
  """
  mask = None
  for axis, (limit, offset) in enumerate(zip(limits, offsets)):
    if limit is None:
      continue
    inside = offset + lax.broadcasted_iota(jnp.int32, value.shape,
                                           axis) < limit
    mask = inside if mask is None else mask & inside
  plgpu.store(ref, value, mask=mask)


def _x_spec(g: Geometry, index):
  """The (phased) input block with its halo, at the element offsets that
  ``index(*program_ids)`` gives as (n, row, col, channel)."""
  (sh, sw), (eh, ew) = g.cfg.strides, g.halo
  t_ = g.tiles

  def index_map(*ids):
    n, row, col, ch = index(*ids)
    return n, 0, 0, row, col, ch

  return pl.BlockSpec(
      (None, pl.Element(sh), pl.Element(sw), pl.Element(t_.rows + eh),
       pl.Element(t_.cols + ew), pl.Element(g.padded_channels)), index_map)


# ---------------------------------------------------------------------------
# Forward.


def _forward_kernel(*refs, g: Geometry, target: str, depthwise_only: bool,
                    has_bias: bool, precision, out_dtype):
  t_ = g.tiles
  rows, cols = t_.rows, t_.cols
  x_ref, w_ref, *rest = refs
  y_ref = rest.pop()
  b_ref = rest.pop() if has_bias else None
  rb_count, cb_count = g.blocks
  tile = pl.program_id(1)
  rb, cb = lax.div(tile, cb_count), lax.rem(tile, cb_count)
  last = pl.program_id(2)  # the filter block, or the channel block
  if depthwise_only:
    # The x and weights blocks are the channel block itself.
    d = _depthwise(x_ref, w_ref, 0, 0, g, t_.channels)
    for m in range(g.multiplier):
      if has_bias:
        d[m] = d[m] + b_ref[m, :].astype(_F32)[None, :]
      value = d[m].astype(out_dtype).reshape(1, rows, cols, t_.channels)
      if target == "gpu":
        _masked_store(y_ref.at[pl.ds(m, 1)], value,
                      (None, g.out[0], g.out[1], g.channels),
                      (0, rb * rows, cb * cols, last * t_.channels))
      else:
        y_ref[pl.ds(m, 1)] = value
    return
  (pk_ref,) = rest

  def chunk(ch, acc):
    d = _depthwise(x_ref, w_ref, ch, ch, g, t_.channels)
    for m in range(g.multiplier):
      pk = pk_ref[m, pl.ds(ch, t_.channels), :]
      acc = acc + _dot(d[m].astype(pk.dtype), pk, precision)
    return acc

  acc = _chunks(g.padded_channels, t_.channels, chunk,
                jnp.zeros((rows * cols, t_.filters), _F32))
  if has_bias:
    acc = acc + b_ref[0, :].astype(_F32)[None, :]
  value = acc.astype(out_dtype).reshape(rows, cols, t_.filters)
  if target == "gpu":
    _masked_store(y_ref, value, (g.out[0], g.out[1], g.filters),
                  (rb * rows, cb * cols, last * t_.filters))
  else:
    y_ref[...] = value


def forward(xs, w, pk, b, g: Geometry, *, target: str, interpret: bool,
            out_dtype) -> jax.Array:
  """The separable (or, with `pk` None, depthwise) forward pass.

  Args:
    xs: `_pallas_layout.phased_input`.
    w: `_pallas_layout.depthwise_weights`.
    pk: `_pallas_layout.pointwise_weights`, or None.
    b: `_pallas_layout.bias`, or None.
    g: the geometry, with the target's tiles.
    target: "gpu" or "tpu": which form.
    interpret: run it in Pallas's interpreter (any backend).
    out_dtype: the output's dtype.

  Returns:
    ``(N, H', W', F)``; for the depthwise step alone ``(N, M, H', W', C)``
    (XLA moves M after C). The TPU form's output is padded to its tiles.
  """
  t_ = g.tiles
  depthwise_only = pk is None
  rb_count, cb_count = g.blocks
  n = g.batch
  if depthwise_only:
    last = g.padded_channels // t_.channels
    x_spec = pl.BlockSpec(
        _x_spec(g, None).block_shape[:-1] + (pl.Element(t_.channels),),
        lambda i, tile, c: (i, 0, 0, lax.div(tile, cb_count) * t_.rows,
                            lax.rem(tile, cb_count) * t_.cols,
                            _ch(c, g)))
    specs = [x_spec, pl.BlockSpec((len(g.taps), g.multiplier, t_.channels),
                                  lambda i, tile, c: (0, 0, c))]
    if b is not None:
      specs.append(pl.BlockSpec((g.multiplier, t_.channels),
                                lambda i, tile, c: (0, c)))
    if target == "gpu":
      out_shape = (n, g.multiplier, *g.out, g.channels)
      out_spec = pl.BlockSpec(
          (None, pl.Element(g.multiplier), pl.Element(t_.rows),
           pl.Element(t_.cols), pl.Element(t_.channels)),
          lambda i, tile, c: (i, 0, lax.div(tile, cb_count) * t_.rows,
                              lax.rem(tile, cb_count) * t_.cols,
                              c * t_.channels))
    else:
      out_shape = (n, g.multiplier, *g.padded_out, g.padded_channels)
      out_spec = pl.BlockSpec(
          (None, g.multiplier, t_.rows, t_.cols, t_.channels),
          lambda i, tile, c: (i, 0, lax.div(tile, cb_count),
                              lax.rem(tile, cb_count), c))
    operands = [xs, w] + ([b] if b is not None else [])
  else:
    last = g.padded_filters // t_.filters
    specs = [
        _x_spec(g, lambda i, tile, f: (i, lax.div(tile, cb_count) * t_.rows,
                                       lax.rem(tile, cb_count) * t_.cols, 0)),
        pl.BlockSpec((len(g.taps), g.multiplier, g.padded_channels),
                     lambda i, tile, f: (0, 0, 0)),
        pl.BlockSpec((g.multiplier, g.padded_channels, t_.filters),
                     lambda i, tile, f: (0, 0, f)),
    ]
    if b is not None:
      specs.append(pl.BlockSpec((1, t_.filters), lambda i, tile, f: (0, f)))
    if target == "gpu":
      out_shape = (n, *g.out, g.filters)
      out_spec = pl.BlockSpec(
          (None, pl.Element(t_.rows), pl.Element(t_.cols),
           pl.Element(t_.filters)),
          lambda i, tile, f: (i, lax.div(tile, cb_count) * t_.rows,
                              lax.rem(tile, cb_count) * t_.cols,
                              f * t_.filters))
    else:
      out_shape = (n, *g.padded_out, g.padded_filters)
      out_spec = pl.BlockSpec(
          (None, t_.rows, t_.cols, t_.filters),
          lambda i, tile, f: (i, lax.div(tile, cb_count),
                              lax.rem(tile, cb_count), f))
    operands = [xs, w, pk] + ([b] if b is not None else [])
  kernel = functools.partial(
      _forward_kernel, g=g, target=target, depthwise_only=depthwise_only,
      has_bias=b is not None, precision=g.cfg.precision,
      out_dtype=jnp.dtype(out_dtype))
  out = jax.ShapeDtypeStruct(out_shape, out_dtype)
  pixels = n * g.out[0] * g.out[1]
  work = g.channels * g.multiplier
  flops = 2 * pixels * work * (len(g.taps) + (0 if depthwise_only
                                                else g.filters))
  return pl.pallas_call(
      kernel, out_shape=out,
      grid=(n, rb_count * cb_count, last), in_specs=specs,
      out_specs=out_spec, interpret=interpret, name="sepconv_forward",
      compiler_params=_params(target, g, ("parallel",) * 3, interpret),
      cost_estimate=_cost(flops, *operands, out),
  )(*operands)


# ---------------------------------------------------------------------------
# The input gradient.


def _input_grad_kernel(ct_ref, w_ref, dx_ref, *, g: Geometry, target: str,
                       depthwise_only: bool, precision, out_dtype):
  t_ = g.tiles
  rows, cols = t_.rows, t_.cols
  (dh, dw), (kh, kw) = g.cfg.dilation, g.kernel
  _, cb_count = g.input_blocks
  tile = pl.program_id(1)
  rb, cb = lax.div(tile, cb_count), lax.rem(tile, cb_count)
  c = pl.program_id(2)
  taps = [(i * dh, j * dw) for i in range(kh) for j in range(kw)]
  if depthwise_only:
    acc = jnp.zeros((rows * cols, t_.channels), _F32)
    for t, (oi, oj) in enumerate(taps):
      for m in range(g.multiplier):
        window = _window(ct_ref, (m,), oi, oj, rows, cols, 0, t_.channels)
        acc = acc + window.astype(_F32) * w_ref[t, m, :].astype(_F32)[None]
  else:
    chunk_size = t_.filters

    def chunk(f, acc):
      for t, (oi, oj) in enumerate(taps):
        window = _window(ct_ref, (), oi, oj, rows, cols, f, chunk_size)
        acc = acc + _dot(window, w_ref[t, pl.ds(f, chunk_size), :],
                         precision)
      return acc

    acc = _chunks(g.padded_filters, chunk_size, chunk,
                  jnp.zeros((rows * cols, t_.channels), _F32))
  value = acc.astype(out_dtype).reshape(rows, cols, t_.channels)
  if target == "gpu":
    _masked_store(dx_ref, value, (g.size[0], g.size[1], g.channels),
                  (rb * rows, cb * cols, c * t_.channels))
  else:
    dx_ref[...] = value


def input_grad(ctq, w, g: Geometry, *, target: str, interpret: bool,
               out_dtype) -> jax.Array:
  """The input's cotangent.

  Args:
    ctq: `_pallas_layout.dilated_cotangent`.
    w: `_pallas_layout.flipped_products`, or for the depthwise step alone
      `_pallas_layout.flipped_depthwise_weights`.
    g: the geometry, with the target's tiles for the input grid
      (``kernel="input_grad"``).
    target, interpret, out_dtype: as for `forward`.

  Returns:
    ``(N, H, W, C)`` (the TPU form padded to its tiles).
  """
  t_ = g.tiles
  depthwise_only = ctq.ndim == 5
  rb_count, cb_count = g.input_blocks
  (kh, kw), (dh, dw) = g.kernel, g.cfg.dilation
  eh, ew = (kh - 1) * dh, (kw - 1) * dw
  n = g.batch

  def at(tile):
    return lax.div(tile, cb_count) * t_.rows, lax.rem(tile, cb_count) * t_.cols

  if depthwise_only:
    ct_spec = pl.BlockSpec(
        (None, pl.Element(g.multiplier), pl.Element(t_.rows + eh),
         pl.Element(t_.cols + ew), pl.Element(t_.channels)),
        lambda i, tile, c: (i, 0, *at(tile), _ch(c, g)))
    w_spec = pl.BlockSpec((kh * kw, g.multiplier, t_.channels),
                          lambda i, tile, c: (0, 0, c))
  else:
    ct_spec = pl.BlockSpec(
        (None, pl.Element(t_.rows + eh), pl.Element(t_.cols + ew),
         pl.Element(g.padded_filters)),
        lambda i, tile, c: (i, *at(tile), 0))
    w_spec = pl.BlockSpec((kh * kw, g.padded_filters, t_.channels),
                          lambda i, tile, c: (0, 0, c))
  if target == "gpu":
    out_shape = (n, *g.size, g.channels)
    out_spec = pl.BlockSpec(
        (None, pl.Element(t_.rows), pl.Element(t_.cols),
         pl.Element(t_.channels)),
        lambda i, tile, c: (i, *at(tile), c * t_.channels))
  else:
    out_shape = (n, rb_count * t_.rows, cb_count * t_.cols, g.padded_channels)
    out_spec = pl.BlockSpec(
        (None, t_.rows, t_.cols, t_.channels),
        lambda i, tile, c: (i, lax.div(tile, cb_count),
                            lax.rem(tile, cb_count), c))
  kernel = functools.partial(
      _input_grad_kernel, g=g, target=target, depthwise_only=depthwise_only,
      precision=g.cfg.precision, out_dtype=jnp.dtype(out_dtype))
  out = jax.ShapeDtypeStruct(out_shape, out_dtype)
  per_pixel = (g.multiplier * g.channels if depthwise_only
               else g.filters * g.channels)
  flops = 2 * n * g.size[0] * g.size[1] * kh * kw * per_pixel
  return pl.pallas_call(
      kernel, out_shape=out,
      grid=(n, rb_count * cb_count, g.padded_channels // t_.channels),
      in_specs=[ct_spec, w_spec], out_specs=out_spec, interpret=interpret,
      name="sepconv_input_grad",
      compiler_params=_params(target, g, ("parallel",) * 3, interpret),
      cost_estimate=_cost(flops, ctq, w, out),
  )(ctq, w)


# ---------------------------------------------------------------------------
# The parameter gradients.


def _block_sums(x_ref, x_lead, w_ref, pk_ref, ct, row, col, ch, f, sums, *,
                g: Geometry, depthwise_only: bool, precision):
  """Adds one block of output pixels to the running sums.

  `ct` is the block's cotangent: ``(P, TF)``, or per m ``(P, TC)`` for the
  depthwise step alone. `sums` is ``(dpk[m], ddk[t][m], db)``.
  """
  t_ = g.tiles
  dpk, ddk, db = sums

  def window(t):
    a, b, oi, oj = g.taps[t]
    return _window(x_ref, (*x_lead, a, b), row + oi, col + oj, t_.rows,
                   t_.cols, ch, t_.channels).astype(_F32)

  # The taps stream: one window is live at a time (each is read twice, for
  # the depthwise result and for its kernel's gradient), which keeps the
  # GPU form's registers and the TPU form's VMEM small.
  if depthwise_only:
    gd = [c.astype(_F32) for c in ct]
    db = [s + jnp.sum(c, axis=0) for s, c in zip(db, gd)]
  else:
    db = db + jnp.sum(ct.astype(_F32), axis=0)
    d = [jnp.zeros((t_.rows * t_.cols, t_.channels), _F32)
         for _ in range(g.multiplier)]
    for t in range(len(g.taps)):
      xt = window(t)
      for m in range(g.multiplier):
        w = w_ref[t, m, pl.ds(ch, t_.channels)].astype(_F32)
        d[m] = d[m] + xt * w[None, :]
    gd, new_dpk = [], []
    for m in range(g.multiplier):
      pk = pk_ref[m, pl.ds(ch, t_.channels), pl.ds(f, t_.filters)]
      new_dpk.append(dpk[m] + _dot(d[m].astype(ct.dtype), ct, precision,
                                   ((0,), (0,))))
      gd.append(_dot(ct, pk, precision, ((1,), (1,))))
    dpk = new_dpk
  new_ddk = []
  for t in range(len(g.taps)):
    xt = window(t)
    new_ddk.append([ddk[t][m] + jnp.sum(xt * gd[m], axis=0)
                    for m in range(g.multiplier)])
  return dpk, new_ddk, db


def _zero_sums(g: Geometry, depthwise_only: bool):
  t_ = g.tiles
  vec = lambda size: jnp.zeros((size,), _F32)
  dpk = [jnp.zeros((t_.channels, t_.filters), _F32)
         for _ in range(0 if depthwise_only else g.multiplier)]
  ddk = [[vec(t_.channels) for _ in range(g.multiplier)] for _ in g.taps]
  db = ([vec(t_.channels) for _ in range(g.multiplier)] if depthwise_only
        else vec(t_.filters))
  return dpk, ddk, db


def _param_grads_gpu_kernel(x_ref, w_ref, *refs, g: Geometry,
                            depthwise_only: bool, precision):
  """One group of pixel blocks, one channel tile and one filter tile."""
  t_ = g.tiles
  if depthwise_only:
    ct_ref, ddk_ref, db_ref = refs
    pk_ref = dpk_ref = None
  else:
    pk_ref, ct_ref, dpk_ref, ddk_ref, db_ref = refs
  group, c, f = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  rb_count, cb_count = g.blocks
  total = g.batch * rb_count * cb_count
  per = -(-total // t_.groups)
  ch = c * t_.channels
  fo = f * t_.filters

  def body(k, sums):
    tile = jnp.minimum(group * per + k, total - 1)
    valid = (group * per + k < total).astype(_F32)
    n = lax.div(tile, rb_count * cb_count)
    rest = lax.rem(tile, rb_count * cb_count)
    row = lax.div(rest, cb_count) * t_.rows
    col = lax.rem(rest, cb_count) * t_.cols
    if depthwise_only:
      ct = [_window(ct_ref, (n, m), row, col, t_.rows, t_.cols, ch,
                    t_.channels) * valid.astype(ct_ref.dtype)
            for m in range(g.multiplier)]
    else:
      ct = _window(ct_ref, (n,), row, col, t_.rows, t_.cols, fo,
                   t_.filters) * valid.astype(ct_ref.dtype)
    return _block_sums(x_ref, (n,), w_ref, pk_ref, ct, row, col, ch, fo,
                       sums, g=g, depthwise_only=depthwise_only,
                       precision=precision)

  dpk, ddk, db = lax.fori_loop(0, per, body,
                               _zero_sums(g, depthwise_only))
  for m in range(g.multiplier):
    if not depthwise_only:
      dpk_ref[m] = dpk[m]
    for t in range(len(g.taps)):
      ddk_ref[t, m] = ddk[t][m]
    if depthwise_only:
      db_ref[m] = db[m]
  if not depthwise_only:
    db_ref[...] = db


def _param_grads_tpu_kernel(x_ref, w_ref, *refs, g: Geometry,
                            depthwise_only: bool, precision):
  """One pixel block of one channel tile and filter tile; the sums
  accumulate over the innermost grid axis, the pixel blocks."""
  t_ = g.tiles
  if depthwise_only:
    ct_ref, ddk_ref, db_ref = refs
    pk_ref = dpk_ref = None
  else:
    pk_ref, ct_ref, dpk_ref, ddk_ref, db_ref = refs
  tile = pl.program_id(2)
  # The x, weights and pointwise blocks are the channel tile itself.
  ch = 0

  @pl.when(tile == 0)
  def _():
    for ref in (dpk_ref, ddk_ref, db_ref):
      if ref is not None:
        ref[...] = jnp.zeros(ref.shape, ref.dtype)

  if depthwise_only:
    ct = [_window(ct_ref, (m,), 0, 0, t_.rows, t_.cols, 0, t_.channels)
          for m in range(g.multiplier)]
  else:
    ct = _window(ct_ref, (), 0, 0, t_.rows, t_.cols, 0, t_.filters)
  dpk, ddk, db = _block_sums(
      x_ref, (), w_ref, pk_ref, ct, 0, 0, ch, 0,
      _zero_sums(g, depthwise_only), g=g, depthwise_only=depthwise_only,
      precision=precision)
  for m in range(g.multiplier):
    if not depthwise_only:
      dpk_ref[m] += dpk[m]
    for t in range(len(g.taps)):
      ddk_ref[t, pl.ds(m, 1), :] += ddk[t][m][None, :]
    if depthwise_only:
      db_ref[pl.ds(m, 1), :] += db[m][None, :]
  if not depthwise_only:
    db_ref[...] += db[None, :]


def param_grads(xs, w, pk, ctp, g: Geometry, *, target: str,
                interpret: bool):
  """Partial sums of the kernels' and the bias's cotangents.

  Args:
    xs: `_pallas_layout.phased_input`.
    w: `_pallas_layout.depthwise_weights`.
    pk: `_pallas_layout.pointwise_weights`, or None (depthwise step alone).
    ctp: `_pallas_layout.output_cotangent`.
    g: the geometry, with the target's tiles.
    target, interpret: as for `forward`.

  Returns:
    ``(dpk, ddk, db)`` float32 partial sums, to be summed over their
    leading axes: ``dpk`` ``(groups, M, C_p, F_p)`` (None for the depthwise
    step alone), ``ddk`` ``(groups, filter blocks, taps, M, C_p)``, ``db``
    ``(groups, channel blocks, F_p)`` (every channel block holds the
    same sum), or ``(groups, M, C_p)`` for the depthwise step alone.
  """
  t_ = g.tiles
  depthwise_only = pk is None
  cblocks = g.padded_channels // t_.channels
  fblocks = 1 if depthwise_only else g.padded_filters // t_.filters
  taps, m = len(g.taps), g.multiplier
  rb_count, cb_count = g.blocks
  total = g.batch * rb_count * cb_count
  kernel_args = dict(g=g, depthwise_only=depthwise_only,
                     precision=g.cfg.precision)
  if target == "gpu":
    groups = t_.groups
    grid = (groups, cblocks, fblocks)
    # Whole arrays: each program reads the blocks of its group itself.
    whole = lambda a: pl.BlockSpec(a.shape, lambda *_: (0,) * a.ndim)
    specs = [whole(xs), whole(w)] + ([] if depthwise_only else [whole(pk)])
    specs.append(whole(ctp))
    shapes = [] if depthwise_only else [(groups, m, g.padded_channels,
                                         g.padded_filters)]
    out_specs = [] if depthwise_only else [pl.BlockSpec(
        (None, m, t_.channels, t_.filters), lambda q, c, f: (q, 0, c, f))]
    shapes.append((groups, fblocks, taps, m, g.padded_channels))
    out_specs.append(pl.BlockSpec((None, None, taps, m, t_.channels),
                                  lambda q, c, f: (q, f, 0, 0, c)))
    if depthwise_only:
      shapes.append((groups, m, g.padded_channels))
      out_specs.append(pl.BlockSpec((None, m, t_.channels),
                                    lambda q, c, f: (q, 0, c)))
    else:
      shapes.append((groups, cblocks, g.padded_filters))
      out_specs.append(pl.BlockSpec((None, None, t_.filters),
                                    lambda q, c, f: (q, c, f)))
    kernel = functools.partial(_param_grads_gpu_kernel, **kernel_args)
    semantics = ("parallel",) * 3
  else:
    grid = (cblocks, fblocks, total)

    def block(tile):
      n = lax.div(tile, rb_count * cb_count)
      rest = lax.rem(tile, rb_count * cb_count)
      return n, lax.div(rest, cb_count), lax.rem(rest, cb_count)

    def x_index(c, f, tile):
      n, rb, cb = block(tile)
      return n, rb * t_.rows, cb * t_.cols, 0

    specs = [_x_spec(g, x_index),
             pl.BlockSpec((taps, m, g.padded_channels),
                          lambda c, f, tile: (0, 0, 0))]
    if not depthwise_only:
      specs.append(pl.BlockSpec((m, t_.channels, t_.filters),
                                lambda c, f, tile: (0, c, f)))
      specs.append(pl.BlockSpec((None, t_.rows, t_.cols, t_.filters),
                                lambda c, f, tile: (*block(tile), f)))
    else:
      specs.append(pl.BlockSpec((None, m, t_.rows, t_.cols, t_.channels),
                                lambda c, f, tile: (block(tile)[0], 0,
                                                    *block(tile)[1:], c)))
    shapes = [] if depthwise_only else [(1, m, g.padded_channels,
                                         g.padded_filters)]
    out_specs = [] if depthwise_only else [pl.BlockSpec(
        (None, m, t_.channels, t_.filters), lambda c, f, tile: (0, 0, c, f))]
    shapes.append((1, fblocks, taps, m, g.padded_channels))
    out_specs.append(pl.BlockSpec((None, None, taps, m, t_.channels),
                                  lambda c, f, tile: (0, f, 0, 0, c)))
    if depthwise_only:
      shapes.append((1, m, g.padded_channels))
      out_specs.append(pl.BlockSpec((None, m, t_.channels),
                                    lambda c, f, tile: (0, 0, c)))
    else:
      shapes.append((1, cblocks, 1, g.padded_filters))
      out_specs.append(pl.BlockSpec((None, None, 1, t_.filters),
                                    lambda c, f, tile: (0, c, 0, f)))
    kernel = functools.partial(_param_grads_tpu_kernel, **kernel_args)
    semantics = ("parallel", "parallel", "arbitrary")
  operands = [xs, w] + ([] if depthwise_only else [pk]) + [ctp]
  if target == "tpu":
    # The channel block selects the TPU form's x and weights too.
    specs[0] = pl.BlockSpec(
        specs[0].block_shape[:-1] + (pl.Element(t_.channels),),
        lambda c, f, tile: (*x_index(c, f, tile)[:1], 0, 0,
                            *x_index(c, f, tile)[1:3], _ch(c, g)))
    specs[1] = pl.BlockSpec((taps, m, t_.channels),
                            lambda c, f, tile: (0, 0, c))
  out_shapes = [jax.ShapeDtypeStruct(s, _F32) for s in shapes]
  # The depthwise result recomputed and each tap's product with the
  # cotangent (2 x taps), and the two pointwise dots (dpk, g).
  work = g.channels * g.multiplier
  flops = 2 * g.batch * g.out[0] * g.out[1] * work * (
      2 * taps + (0 if depthwise_only else 2 * g.filters))
  outs = pl.pallas_call(
      kernel, out_shape=out_shapes,
      grid=grid, in_specs=specs, out_specs=out_specs, interpret=interpret,
      name="sepconv_param_grads",
      compiler_params=_params(target, g, semantics, interpret),
      cost_estimate=_cost(flops, *operands, *out_shapes),
  )(*operands)
  if depthwise_only:
    ddk, db = outs
    return None, ddk, db
  dpk, ddk, db = outs
  if target == "tpu":
    db = db[:, :, 0]
  return dpk, ddk, db
