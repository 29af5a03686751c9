"""Saved Keras 3 models: every separable and depthwise layer of a file.

:func:`load_keras_layers` reads the ``SeparableConv1D``,
``SeparableConv2D``, ``DepthwiseConv1D`` and ``DepthwiseConv2D`` layers
(Keras's aliases such as ``SeparableConvolution2D`` included) out of a
``.keras`` archive, or a ``.weights.h5`` file with its model config, as linen
modules and their variables (:func:`load_keras_layers`) or as NNX layers
holding their weights (:func:`load_keras_nnx_layers`). It sits above the
layers, the one Keras module that imports them. h5py is imported when it
runs; Keras never.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from typing import Any, Mapping, Optional

import jax.numpy as jnp
import numpy as np

from sepconv_jax import _keras_serial
from sepconv_jax import _keras_weights
from sepconv_jax import _linen
from sepconv_jax import _nnx

# The linen layer of each Keras class (and alias) that has one.
_LAYER_CLASSES = {
    name: cls for cls in _linen.LAYERS
    for name in cls.FAMILY.keras_classes.get(cls.RANK, ())}
# The class each alias stands for.
_CANONICAL = {name: cls.FAMILY.keras_classes[cls.RANK][0]
              for name, cls in _LAYER_CLASSES.items()}
# The Keras classes we read, without their aliases, for messages.
_READ = ", ".join(dict.fromkeys(_CANONICAL.values()))

_MODEL_CLASSES = ("Functional", "Sequential", "Model")
_WEIGHTS_H5 = "model.weights.h5"


def _mentioned_layer(value: Any) -> Optional[str]:
  """The class of the first layer we read that a config holds, or None."""
  if isinstance(value, Mapping):
    if value.get("class_name") in _LAYER_CLASSES:
      return value["class_name"]
    values = value.values()
  elif isinstance(value, (list, tuple)):
    values = value
  else:
    return None
  return next(filter(None, map(_mentioned_layer, values)), None)


def _model_config(config: Any, path: str) -> dict:
  """A model config in any form -> ``{"class_name", "config", ...}``."""
  if isinstance(config, (str, os.PathLike)):
    text = os.fspath(config)
    if not text.lstrip().startswith("{"):
      if not os.path.isfile(text):
        raise FileNotFoundError(
            f"`config` (={text!r}) is neither JSON nor an existing file")
      with open(text) as f:
        text = f.read()
    try:
      config = json.loads(text)
    except ValueError as e:
      raise ValueError(f"`config` is not valid JSON: {e}") from None
  if not isinstance(config, Mapping):
    raise ValueError(
        f"`config` (={config!r}) must be a model config: model.to_json(),"
        " model.get_config(), or a path to a JSON file holding one"
    )
  if "class_name" in config and isinstance(config.get("config"), Mapping):
    return dict(config)
  if "layers" in config:  # A bare `model.get_config()`.
    class_name = ("Functional" if "input_layers" in config
                  or "output_layers" in config else "Sequential")
    return {"module": "keras", "class_name": class_name, "config": config}
  raise ValueError(
      f"`config` for {path!r} is not a Functional or Sequential model"
      f" config (keys: {sorted(config)})"
  )


def _read_vars(h5: Any, group_path: str, layer: str, file_path: str) -> list:
  """The datasets under ``<group_path>/vars``, in Keras's order."""
  if group_path not in h5 and "_layer_checkpoint_dependencies" in h5:
    group_path = group_path.replace("layers", "_layer_checkpoint_dependencies")
  if group_path not in h5 or "vars" not in h5[group_path]:
    raise ValueError(
        f"{file_path!r} holds no weights for layer {layer!r} at"
        f" {group_path + '/vars'!r}: do the weights and the model config"
        " belong together?"
    )
  group = h5[group_path]["vars"]
  saved_name = group.attrs.get("name")
  if isinstance(saved_name, bytes):
    saved_name = saved_name.decode()
  if saved_name is not None and saved_name != layer.rsplit("/", 1)[-1]:
    raise ValueError(
        f"{file_path!r} holds the weights of layer {saved_name!r} at"
        f" {group_path + '/vars'!r}, where the model config puts layer"
        f" {layer!r}: do the weights and the model config belong together?"
    )
  arrays = []
  for key in sorted(group, key=int):
    dataset = group[key]
    value = np.asarray(dataset[()])
    if dataset.attrs.get("dtype") in ("bfloat16", b"bfloat16"):
      value = value.view(jnp.bfloat16)
    arrays.append(value)
  return arrays


def _walk(model: Mapping, h5: Any, group: str, prefix: str, found: dict,
          allow_frozen: bool, file_path: str) -> None:
  """Adds every layer we read of `model` (and its sub-models) to `found`,
  as ``(module, variables, keras_config)``."""
  class_name = model.get("class_name")
  if class_name not in _MODEL_CLASSES or not _keras_serial.is_builtin(model):
    where = f"layer {prefix[:-1]!r}" if prefix else "the model"
    raise ValueError(
        f"{where} in {file_path!r} is a {class_name!r}"
        f" (registered as {model.get('registered_name')!r}): only Functional"
        " and Sequential models can be searched for Keras layers"
    )
  layers = model["config"].get("layers")
  if not isinstance(layers, list):
    raise ValueError(
        f"the {class_name} model {prefix[:-1] or file_path!r} has no layer"
        " list in its config")
  used: dict[str, int] = {}
  for entry in layers:
    entry_class = entry.get("class_name", "")
    module_name = str(entry.get("module") or "")
    if class_name == "Sequential" and entry_class == "InputLayer":
      continue  # `Sequential.layers` leaves the input layer out.
    if module_name.startswith("keras.src.ops"):
      continue  # A functional op such as `keras.ops.add`: not a layer.
    # Keras names each layer's weight group after its class (not an alias
    # the config may name), in order.
    snake = _keras_serial.snake(_CANONICAL.get(entry_class, entry_class))
    if snake in used:
      used[snake] += 1
      snake = f"{snake}_{used[snake]}"
    else:
      used[snake] = 0
    path = f"{group}/layers/{snake}" if group else f"layers/{snake}"
    config = entry.get("config") or {}
    name = prefix + str(config.get("name", entry.get("name", snake)))
    inner = _mentioned_layer(config)
    if entry_class in _LAYER_CLASSES and _keras_serial.is_builtin(entry):
      try:
        module = _LAYER_CLASSES[entry_class].from_keras_config(
            config, allow_frozen=allow_frozen)
      except (TypeError, ValueError) as e:
        raise type(e)(f"layer {name!r} in {file_path!r}: {e}") from e
      weights = _read_vars(h5, path, name, file_path)
      try:
        params = _keras_weights.params_from_keras(weights, module=module)
      except ValueError as e:
        raise ValueError(f"layer {name!r} in {file_path!r}: {e}") from e
      found[name] = (module, {"params": params}, config)
    elif entry_class in _LAYER_CLASSES:
      raise ValueError(
          f"layer {name!r} in {file_path!r} is the custom class"
          f" {entry.get('registered_name')!r}, not Keras's {entry_class};"
          " it cannot be honoured"
      )
    elif entry_class in _MODEL_CLASSES and _keras_serial.is_builtin(entry):
      _walk(entry, h5, path, name + "/", found, allow_frozen, file_path)
    elif inner is not None:
      raise ValueError(
          f"layer {name!r} in {file_path!r} is a {entry_class!r} holding a"
          f" {inner}; load_keras_layers reads the {_READ} layers of"
          " Functional and Sequential models only"
      )
    elif not _keras_serial.is_builtin(entry) and path in h5 and any(
        key != "vars" for key in h5[path]):
      raise ValueError(
          f"layer {name!r} in {file_path!r} is the custom class"
          f" {entry.get('registered_name') or entry_class!r}, which holds"
          " sublayers that load_keras_layers cannot see into; any"
          f" {_READ} layer inside it would be missed. Port it by hand with"
          " the layer's from_keras_config and params_from_keras"
      )


def _load(path: str | os.PathLike, config: Any,
          allow_frozen: bool) -> dict[str, tuple]:
  """`load_keras_layers`, each layer with its Keras config as well."""
  try:
    import h5py  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ImportError(
        "`load_keras_layers` needs h5py: pip install h5py (or, in a"
        " checkout of sepconv_jax, its `keras` extra:"
        " pip install -e \".[keras]\")"
    ) from None
  file_path = os.fspath(path)
  if not os.path.exists(file_path):
    raise FileNotFoundError(f"`path` (={file_path!r}) does not exist")
  if os.path.isdir(file_path) or zipfile.is_zipfile(file_path):
    if config is not None:
      raise ValueError(
          f"`config` is only for .weights.h5 files; {file_path!r} is a Keras"
          " archive, which holds its own config"
      )
    if os.path.isdir(file_path):
      names = set(os.listdir(file_path))
      read = lambda n: open(os.path.join(file_path, n), "rb").read()  # pylint: disable=consider-using-with
    else:
      archive = zipfile.ZipFile(file_path)
      names, read = set(archive.namelist()), archive.read
    if "config.json" not in names:
      raise ValueError(
          f"`path` (={file_path!r}) is not a Keras 3 archive: it has no"
          f" config.json (it holds {sorted(names)[:8]})"
      )
    if _WEIGHTS_H5 not in names:
      raise ValueError(
          f"`path` (={file_path!r}) holds no {_WEIGHTS_H5} (it holds"
          f" {sorted(names)}); load_keras_layers reads HDF5 weights only,"
          " not npz or sharded weights: re-save with model.save(path)"
      )
    model = _model_config(read("config.json").decode(), file_path)
    h5 = h5py.File(io.BytesIO(read(_WEIGHTS_H5)), "r")
  elif h5py.is_hdf5(file_path):
    h5 = h5py.File(file_path, "r")
    if "model_weights" in h5 or "layer_names" in h5.attrs or (
        "model_config" in h5.attrs):
      h5.close()
      raise ValueError(
          f"`path` (={file_path!r}) is a legacy Keras 2 HDF5 file, which"
          " load_keras_layers does not read; load it with Keras and re-save"
          " it as .keras"
      )
    if config is None:
      h5.close()
      raise ValueError(
          f"`config` is needed for the weights file {file_path!r}: pass the"
          " model's config (model.to_json(), model.get_config(), or a JSON"
          " file), or load a .keras archive instead"
      )
    try:
      model = _model_config(config, file_path)
    except Exception:
      h5.close()
      raise
  else:
    raise ValueError(
        f"`path` (={file_path!r}) is neither a .keras archive nor a"
        " .weights.h5 file"
    )
  found: dict[str, tuple] = {}
  with h5:
    _walk(model, h5, "", "", found, allow_frozen, file_path)
  return found


def load_keras_layers(path: str | os.PathLike, config: Any = None, *,
                      allow_frozen: bool = False) -> dict[str, tuple]:
  """Reads every separable and depthwise layer out of a saved Keras 3 model.

  The layers are Keras's ``SeparableConv1D``, ``SeparableConv2D``,
  ``DepthwiseConv1D`` and ``DepthwiseConv2D`` (and their aliases), each
  read as the linen layer of the same name.

  Needs h5py (``pip install h5py``, or the ``keras`` extra of a checkout:
  ``pip install -e ".[keras]"``); Keras itself is not needed.

  Args:
    path: a ``.keras`` archive (what ``model.save("m.keras")`` writes), or a
      ``.weights.h5`` file (``model.save_weights``), which needs `config`.
    config: for a ``.weights.h5`` file only: its model's config, as
      ``model.to_json()`` (a JSON string), ``json.loads`` of it,
      ``model.get_config()``, or the path of a JSON file holding one.
    allow_frozen: accept layers saved with ``trainable=False`` (see
      :meth:`SeparableConv2D.from_keras_config`).

  Returns:
    ``{layer_name: (module, variables)}`` for every such layer, in the
    model's layer order, nested Functional and Sequential models included:
    their layers are named ``"outer/inner"``. ``variables`` is
    ``{"params": ...}`` for ``module.apply``.

  Raises:
    FileNotFoundError: if `path` (or a `config` path) does not exist.
    ImportError: if h5py is not installed.
    ValueError: for a file that is not a Keras 3 archive or weights file
      (legacy Keras 2 ``.h5`` files included), a missing or unwanted
      `config`, weights that do not match the config, a layer whose config
      cannot be honoured (the message names the layer), or one inside a
      layer that cannot be searched (a wrapper such as
      ``TimeDistributed``, or a custom class holding sublayers).
  """
  return {name: (module, variables) for name, (module, variables, _)
          in _load(path, config, allow_frozen).items()}


# The NNX layer of each linen layer class.
_NNX_CLASSES = {cls: getattr(_nnx, cls.__name__) for cls in _linen.LAYERS}


def load_keras_nnx_layers(path: str | os.PathLike, config: Any = None, *,
                          allow_frozen: bool = False) -> dict[str, Any]:
  """Reads every separable and depthwise layer of a saved model as NNX layers.

  As :func:`sepconv_jax.load_keras_layers`, but each layer comes back as the
  NNX layer of the same name (``sepconv_jax.nnx.SeparableConv2D``, ...),
  holding Keras's weights. Its ``in_channels``, which the NNX constructor
  needs and a Keras config does not hold, is read off the saved depthwise
  kernel.

  Args:
    path: a ``.keras`` archive, or a ``.weights.h5`` file with `config`.
    config: for a ``.weights.h5`` file only: its model's config.
    allow_frozen: accept layers saved with ``trainable=False``.

  Returns:
    ``{layer_name: layer}`` in the model's layer order, nested models'
    layers named ``"outer/inner"``.

  Raises:
    As :func:`sepconv_jax.load_keras_layers`.

  Example:
    ``layers = sepconv_jax.nnx.load_keras_layers("model.keras")``, then
    ``y = layers["block1_sepconv1"](x)``.
  """
  from flax import nnx  # pylint: disable=g-import-not-at-top
  layers = {}
  for name, (module, variables, keras_config) in _load(
      path, config, allow_frozen).items():
    params = variables["params"]
    kernel = params[module.FAMILY.param_names["depthwise"]]
    # Built abstractly (the initializers draw nothing: Keras's weights
    # replace every param), then filled in.
    layer = nnx.eval_shape(lambda: _NNX_CLASSES[type(module)].from_keras_config(  # pylint: disable=cell-var-from-loop
        keras_config, in_channels=kernel.shape[-2], rngs=nnx.Rngs(0),
        allow_frozen=allow_frozen))
    state = nnx.state(layer)
    assert set(state) == set(params), (sorted(state), sorted(params))
    for param, value in params.items():
      getattr(layer, param).set_value(value)
    layers[name] = layer
  return layers
