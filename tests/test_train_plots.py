"""The accuracy plot of scripts/train.py zooms on the range that matters.

In-process and cheap: `write_plots` is called on a made-up history, and the
figure's axes are read just before the script closes the figure.
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import pytest

pytest.importorskip("matplotlib")

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def train():
  name = "_train_script_for_plots"
  spec = importlib.util.spec_from_file_location(
      name, ROOT / "scripts" / "train.py")
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module  # Its dataclasses look their module up.
  try:
    spec.loader.exec_module(module)
    yield module
  finally:
    del sys.modules[name]


def _accuracy_axes(train, history, tmp_path, monkeypatch):
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  seen = []
  close = plt.close

  def record_then_close(fig):
    ax, = fig.axes
    seen.append([(a.get_ylim(), a.get_lines())
                 for a in [ax, *ax.child_axes]])
    close(fig)

  monkeypatch.setattr(plt, "close", record_then_close)
  paths = train.write_plots(history, str(tmp_path))
  assert [pathlib.Path(p).name for p in paths] == ["loss.png", "accuracy.png"]
  assert len(seen) == 2
  return seen[1]  # The accuracy figure's axes: the main one, then any inset.


def _history(train_acc, test_acc):
  return {"loss": [1.0, 0.5],
          "eval": [{"epoch": i + 1, "train_accuracy": a, "test_accuracy": b}
                   for i, (a, b) in enumerate(zip(train_acc, test_acc))]}


def _target_lines(lines):
  return [ln for ln in lines if list(ln.get_ydata()) == [0.97, 0.97]]


def test_a_run_that_reaches_the_target_is_zoomed_with_a_full_range_inset(
    train, tmp_path, monkeypatch):
  # The default run's shape: a low first epoch, then 0.93 to 1.0.
  history = _history([0.41, 0.93, 0.99, 1.0], [0.85, 0.93, 0.97, 0.98])
  axes = _accuracy_axes(train, history, tmp_path, monkeypatch)
  assert len(axes) == 2
  (main_ylim, main_lines), (inset_ylim, inset_lines) = axes
  assert main_ylim == pytest.approx((0.9, 1.005))  # 0.95-1 is half the axis.
  assert inset_ylim == pytest.approx((0.0, 1.01))  # The whole run.
  target = _target_lines(main_lines)
  assert [ln.get_label() for ln in target] == ["target test accuracy (0.97)"]
  assert len(_target_lines(inset_lines)) == 1


def test_a_short_run_below_the_zoom_keeps_its_own_range(
    train, tmp_path, monkeypatch):
  history = _history([0.2, 0.5], [0.3, 0.6])
  axes = _accuracy_axes(train, history, tmp_path, monkeypatch)
  assert len(axes) == 1  # No inset: nothing is hidden.
  (ylim, lines), = axes
  assert ylim == pytest.approx((0.15, 1.005))  # Lowest value less 0.05.
  assert len(_target_lines(lines)) == 1
