"""Test set-up: Keras is the oracle, on its JAX backend, in a clean home.

Keras reads its backend and `keras.json` when first imported, so both are
fixed here, before any test module imports it. `KERAS_HOME` points at a
fresh folder so a developer's own `~/.keras/keras.json` (which may say
channels_first) cannot change what `data_format=None` means in the tests.
"""

import json
import os
import tempfile

os.environ["KERAS_BACKEND"] = "jax"
_KERAS_HOME = tempfile.mkdtemp(prefix="sepconv_jax_keras_home_")
with open(os.path.join(_KERAS_HOME, "keras.json"), "w") as f:
  json.dump({"backend": "jax", "image_data_format": "channels_last",
             "floatx": "float32", "epsilon": 1e-07}, f)
os.environ["KERAS_HOME"] = _KERAS_HOME
