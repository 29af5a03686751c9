"""A short demo: a small Flax model built from SeparableConv2D, jit-trained.

It learns to tell which quadrant of a noisy 16x16 image holds a bright
square, prints the params pytree shapes, and prints the loss (with the
layers' regularization penalties) going down. Constraints are applied after
every step by `sepconv_jax.apply_constraints`, as Keras would.

Run: python scripts/demo.py [--steps 60]
"""

from __future__ import annotations

import argparse

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

import sepconv_jax


class TinyNet(nn.Module):
  """Two separable blocks and a linear head over the flattened features."""

  @nn.compact
  def __call__(self, x):
    x = sepconv_jax.SeparableConv2D(
        16, 3, padding="same", activation="relu",
        depthwise_regularizer="l2", pointwise_constraint="max_norm")(x)
    x = sepconv_jax.SeparableConv2D(
        32, 3, strides=2, padding="same", activation="relu",
        depth_multiplier=2)(x)
    x = x.reshape(x.shape[0], -1)
    return nn.Dense(4)(x)


def make_batch(key, batch=64, size=16):
  """Images with a bright 4x4 square in one of four quadrants."""
  k_label, k_noise, k_pos = jax.random.split(key, 3)
  labels = jax.random.randint(k_label, (batch,), 0, 4)
  images = 0.3 * jax.random.normal(k_noise, (batch, size, size, 3))
  offsets = jax.random.randint(k_pos, (batch, 2), 0, size // 2 - 4)
  rows = (labels // 2) * (size // 2) + offsets[:, 0]
  cols = (labels % 2) * (size // 2) + offsets[:, 1]
  ii = jnp.arange(size)
  inside = ((ii[None, :, None] >= rows[:, None, None])
            & (ii[None, :, None] < rows[:, None, None] + 4)
            & (ii[None, None, :] >= cols[:, None, None])
            & (ii[None, None, :] < cols[:, None, None] + 4))
  return images + 2.0 * inside[..., None], labels


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=60)
  args = parser.parse_args()

  model = TinyNet()
  key = jax.random.key(0)
  sample, _ = make_batch(key)
  params = model.init(key, sample)["params"]
  print("params pytree shapes:")
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    print(f"  {jax.tree_util.keystr(path):55s} {leaf.shape}")

  tx = optax.chain(
      optax.adam(3e-3),
      sepconv_jax.apply_constraints(
          sepconv_jax.collect_constraints(model, sample)),
  )
  opt_state = tx.init(params)

  def loss_fn(params, images, labels):
    logits, state = model.apply({"params": params}, images,
                                mutable=["losses"])
    data_loss = optax.softmax_cross_entropy_with_integer_labels(
        logits, labels).mean()
    return data_loss + sepconv_jax.regularization_loss(state), data_loss

  @jax.jit
  def train_step(params, opt_state, key):
    images, labels = make_batch(key)
    (loss, data_loss), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, images, labels)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, data_loss

  first = None
  for step in range(args.steps):
    params, opt_state, loss, data_loss = train_step(
        params, opt_state, jax.random.fold_in(key, step))
    first = float(loss) if first is None else first
    if step % 10 == 0 or step == args.steps - 1:
      print(f"step {step:3d}  loss {float(loss):.4f}"
            f"  (cross-entropy {float(data_loss):.4f})")
  print(f"loss went from {first:.4f} to {float(loss):.4f}")


if __name__ == "__main__":
  main()
