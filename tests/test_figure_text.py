"""Every figure of the report keeps its text readable: at the saved dpi each
drawn text lies inside the figure and no two texts intersect.

The study makes every figure draw: probes, test time with shifts and a learning
rate so large that every model at it diverges (the figures of a depth sweep are
checked on the default study in tests/test_answers.py)."""

import itertools

import matplotlib.text
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from conftest import tiny_config
from icsjax import analysis
from icsjax import runner
from icsjax.report import figures

# One worker builds the study (two compiled groups with every probe) and checks
# every figure of it.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("figure_text_study")]
TOLERANCE = 1.0  # pixels: extents are rounded to whole pixels when drawn


def drawn_texts(fig) -> list[tuple[str, object]]:
  """(text, window extent) of every non-empty text the figure draws, recorded while
  it draws: a text that is not drawn (a tick outside the view, a hidden label) does
  not count, whatever its stale position."""
  found = []
  original = matplotlib.text.Text.draw

  def draw(self, renderer):
    original(self, renderer)
    if self.get_visible() and self.get_text().strip():
      found.append((self.get_text(), self.get_window_extent(renderer)))

  matplotlib.text.Text.draw = draw
  try:
    FigureCanvasAgg(fig).draw()  # the renderer savefig uses, at the figure's dpi
  finally:
    matplotlib.text.Text.draw = original
  return found


def text_problems(fig) -> list[str]:
  """Each text outside the figure and each pair of texts that intersect, in words."""
  texts = drawn_texts(fig)
  box = fig.bbox
  out = [f"{t!r} outside the figure ({e.x0:.0f}, {e.y0:.0f}, {e.x1:.0f}, {e.y1:.0f} in "
         f"{box.width:.0f} x {box.height:.0f})"
         for t, e in texts if e.x0 < box.x0 - TOLERANCE or e.y0 < box.y0 - TOLERANCE
         or e.x1 > box.x1 + TOLERANCE or e.y1 > box.y1 + TOLERANCE]
  for (t1, e1), (t2, e2) in itertools.combinations(texts, 2):
    width = min(e1.x1, e2.x1) - max(e1.x0, e2.x0)
    height = min(e1.y1, e2.y1) - max(e1.y0, e2.y0)
    if width > TOLERANCE and height > TOLERANCE:
      out.append(f"{t1!r} and {t2!r} intersect ({width:.0f} x {height:.0f} pixels)")
  return out


def test_the_checker_sees_clipping_and_overlap():
  from matplotlib.figure import Figure
  fig = Figure(figsize=(3, 2), dpi=100)
  ax = fig.add_subplot()
  ax.set_xticks([])
  ax.set_yticks([])
  assert text_problems(fig) == []
  ax.text(0.5, 0.5, "one", transform=ax.transAxes)
  ax.text(0.5, 0.5, "two", transform=ax.transAxes)
  fig.text(0.98, 0.5, "far too long to fit")
  problems = text_problems(fig)
  assert "'one' and 'two' intersect" in problems[-1]
  assert any("'far too long to fit' outside the figure" in p for p in problems)
  assert len(problems) == 2


@pytest.fixture(scope="module")
def study(tmp_path_factory):
  c = tiny_config(steps=20, segment_steps=20, seeds=2, ics_every=10, landscape_every=10,
                  curvature_every=20, test_time_every=20, adapt_sizes=(1, 16),
                  checkpoint_segments=0)
  c.sweep.norm = ("none", "batchnorm")
  c.sweep.lr = (0.1, 1e30)  # the depth sweep's figures: tests/test_answers.py
  workdir = tmp_path_factory.mktemp("figure_text")
  runner.run(c, workdir, progress=False, log=lambda *_: None)
  return analysis.load(workdir)


@pytest.mark.parametrize("draw", figures.ALL, ids=lambda f: f.__name__)
def test_figure_text_is_inside_and_apart(study, draw, tmp_path, monkeypatch):
  saved = []
  save = figures._save
  monkeypatch.setattr(figures, "_save", lambda fig, folder, name: saved.append(fig) or
                      save(fig, folder, name))
  assert draw(study, tmp_path) is not None, "the study must make every figure draw"
  (fig,) = saved
  assert text_problems(fig) == []


def test_divergence_notes_of_several_variants_stay_apart(study, tmp_path, monkeypatch):
  """Every variant diverging at the same learning rate: one note each, none on another."""
  huge = study.lr.values > 1
  every = study.assign(diverged_step=study.diverged_step.copy(
      data=np.where(huge, 5, study.diverged_step.values)))
  saved = []
  save = figures._save
  monkeypatch.setattr(figures, "_save", lambda fig, folder, name: saved.append(fig) or
                      save(fig, folder, name))
  figures.lr_sensitivity(every, tmp_path)
  notes = [t for t, _ in drawn_texts(saved[0]) if "diverged" in t]
  assert set(notes) == {"batchnorm diverged: 2/2 at 1e+30", "none diverged: 2/2 at 1e+30"}
  assert text_problems(saved[0]) == []
