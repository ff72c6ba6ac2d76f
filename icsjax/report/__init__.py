"""The study report: figures, report.md and a self-contained report.html.

  python -m icsjax.report WORKDIR      # or a parent folder of a study's shards

``write(workdir)`` loads the workdir's records (``icsjax.analysis.load``),
draws the figures its records allow, answers each of the five questions (README,
"The report") with seed-paired effects, and writes WORKDIR/report/.
"""

from __future__ import annotations

import xarray as xr

from icsjax import store
from icsjax import workdir_path
from icsjax import write_errors

from icsjax.report import primary
from icsjax.report import questions
from icsjax.report import render as r
from icsjax.report import study_info
from icsjax.report import trainability

REPORT_DIR = "report"
TITLE = "icsjax study report"


def sections(ds: xr.Dataset, info: dict, figs: dict | None = None) -> list:
  """The question sections (questions.Section: headline, blocks, effects) of a study;
  `info` is study_info.read(workdir)."""
  family = primary.family(ds)
  return [q(ds, figs or {}, info, family.get(i + 1, []))
          for i, q in enumerate(questions.ALL)]


def build(ds: xr.Dataset, info: dict, figs: dict) -> list:
  """Every block of the report, in reading order."""
  secs = sections(ds, info, figs)
  out = [r.Para(f"Workdir: `{info.get('workdir', '?')}`."), *study_info.warnings(ds, info),
         r.Heading("Answers at a glance"),
         r.Bullets(tuple(f"**Q{s.number}. {s.question}** {s.glance}" for s in secs)),
         r.Para(primary.family_note(secs)),
         *([r.Note(note)] if (note := trainability.untrained_note(ds)) else []),
         *study_info.blocks(ds, info), r.Heading("Training")]
  out += [r.Image(*figs[n]) for n in ("curves",) if figs.get(n)]
  if info.get("summary"):
    out += [r.Para("Final metrics per variant (`summary.txt`, mean ± std over seeds):"),
            r.Code(info["summary"])]
  for s in secs:
    out += [r.Heading(f"Q{s.number}. {s.question}"), *s.blocks]
  return out


def write(workdir, *, dataset: xr.Dataset | None = None, out=None):
  """Writes the report of `workdir` into `out` (default WORKDIR/report); returns the
  path of report.md. `dataset` replaces the loaded records (e.g. a relabelled copy)."""
  # Imported here: `icsjax.main` imports this package before the run, and neither
  # matplotlib nor the loaders are needed until the run is over.
  from icsjax import analysis
  from icsjax.report import figures
  workdir = workdir_path.path(workdir)
  folder = workdir_path.path(out) if out is not None else workdir / REPORT_DIR
  with write_errors.writing(folder):
    folder.mkdir(parents=True, exist_ok=True)
  ds = analysis.load(workdir) if dataset is None else dataset
  info = study_info.read(workdir)
  info["workdir"] = str(workdir)
  info["partial"] = study_info.progress(ds)
  ds = study_info.readable_part(ds)
  info["summary"] = study_info.summary_text(workdir)
  figs = {}
  for draw in figures.ALL:
    drawn = draw(ds, folder)
    if drawn is not None:
      figs[draw.__name__] = drawn
  blocks = build(ds, info, figs)
  md, html = folder / "report.md", folder / "report.html"
  store.write_atomic(md, lambda f: f.write(r.markdown(TITLE, blocks).encode()))
  store.write_atomic(html, lambda f: f.write(r.html_page(TITLE, blocks, folder).encode()))
  return md
