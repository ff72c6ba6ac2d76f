"""One section per question the report answers (README, "The report"): measured
effects, and an answer that follows from them.

Answers are assembled from the verdicts of the effects (lower, higher,
inconclusive, below resolution), never written ahead of the numbers: swap two
variants' labels and the words swap with them. Each question rests on one
primary effect declared in advance (report.primary) whose verdict reads its
Holm-adjusted p-value; every other number is exploratory. Every sentence
comes from a template (report.wording). A question whose data the workdir
lacks says what is missing and how to record it.
"""

from __future__ import annotations

import dataclasses

import xarray as xr

from icsjax.norms import BATCH_NORM_KINDS
from icsjax.report import effects as fx
from icsjax.report import inference as tt
from icsjax.report import phases
from icsjax.report import metrics as m
from icsjax.report import render as r
from icsjax.report import trainability
from icsjax.report import primary as primary_lib
from icsjax.report.primary import smallest_defined_batch
from icsjax.report.tables import definitions, effects_table, variant_table
from icsjax.report.wording import BRANCHES, numbers, overall, say, words


@dataclasses.dataclass(frozen=True)
class Section:
  number: int
  question: str
  headline: str  # the answer, with its numbers: the section's first paragraph
  blocks: tuple
  effects: tuple = ()  # every effect the section states, in the order of its table
  glance: str = ""  # one or two plain sentences for "Answers at a glance"


# --- turning verdicts into words

def glance(primary, branches: str, claim: str) -> str:
  """The plain answer from a question's primary effect (one per cell)."""
  if not primary:
    return say("primary_missing", claim=claim)
  verdict = overall(primary)
  if verdict in BRANCHES[branches]:
    return say("glance", answer=words(branches, verdict), numbers=numbers(primary))
  lower_first = lambda t: t[:1].lower() + t[1:]
  cells = "; ".join(f"{e.cell_text()}: {lower_first(words(branches, e.verdict))} "
                    f"({numbers([dataclasses.replace(e, cell=())])})" for e in primary)
  return say("glance_mixed", cells=cells)


def missing_probe(metric) -> str:
  if not metric.cadence:  # e.g. no accuracy on a regression task
    return say("missing_record", label=metric.label)
  return say("missing_probe", label=metric.label, cadence=metric.cadence)


def no_baseline(ds: xr.Dataset) -> str:
  vs = ", ".join(f"`{v}`" for v in fx.variants(ds))
  return say("one_variant" if len(fx.variants(ds)) == 1 else "no_baseline", variants=vs)


def _figures(figs: dict, *names) -> list:
  return [r.Image(*figs[n]) for n in names if figs.get(n)]


def _available(metrics, ds):
  have = [x for x in metrics if x.available(ds)]
  notes = [r.Note(missing_probe(x)) for x in metrics if not x.available(ds)]
  return have, notes


def _body(ds, headline, details, effects, metrics, notes, figs, lead=()) -> list:
  out = [*lead, r.Para(f"**Answer.** {headline}")]
  if details:
    out.append(r.Bullets(tuple(details)))
  out += notes
  if effects:
    out += [r.Para("Paired effects (95% t intervals over seed indices; the primary effect's "
                   "verdict reads its Holm-adjusted p-value, the rest are exploratory):"),
            effects_table(effects)]
  if metrics:
    out += [r.Para("Per-variant values (mean [95% t interval] over seeds, not paired):"),
            variant_table(ds, metrics), r.Para("Measures:"), definitions(metrics)]
  return out + figs


def _compare(ds, metric, a, b, primary=()):
  """Effects of metric a vs b, the declared primary ones replaced by their adjusted twins."""
  es = fx.with_resolution(ds, fx.compare(ds, metric, a, b))
  return _use_primary(es, primary)


def _use_primary(es, primary):
  adjusted = {(e.metric.key, e.contrast, e.cell): e for e in primary}
  return [adjusted.get((e.metric.key, e.contrast, e.cell), e) for e in es]


def phase_views(ds, metric, a, b, matched_loss: bool = True) -> tuple[list[str], list, dict]:
  """Does the a-vs-b effect read the same early, late and at matched training loss?
  (sentences per cell, the effects behind them, {cell: phases.Agreement}). A loss
  measure is not read at matched loss: there it would equal by construction."""
  if not metric.available(ds) or metric.over_time is None:
    return [], [], {}
  by_cell = phases.views(ds, metric, a, b)
  matched = {ml.cell: ml for ml in phases.at_matched_loss(ds, metric, a, b)} \
      if "train_loss" in ds and matched_loss else {}
  sentences, effects, agreements = [], [], {}
  for cell, views in by_cell.items():
    if not matched_loss:
      views = {k: e for k, e in views.items() if k in phases.PHASES}
    if not views:
      continue
    effects += views.values()
    agreement = phases.agreement(views)
    agreements[cell] = agreement
    shown = [f"{e.verdict} {view} ({e.text()})" for view, e in views.items()
             if view in phases.PHASES]
    ml = matched.get(cell)
    if ml is not None and ml.effects:
      counts = ", ".join(f"{e_verdict} at {n}" for e_verdict, n in _tally(ml.effects))
      shown.append(say("phases.matched", counts=counts, levels=len(ml.levels)))
    where = f" at {fx.cell_text(cell)}" if cell else ""
    sentences.append(say(_KIND[agreement.kind], label=metric.label, a=a, b=b,
                         where=where, views="; ".join(shown)))
    if ml is not None and ml.dropped:
      sentences.append(say("phases.dropped", count=len(ml.dropped),
                           why="; ".join(why for _, why in ml.dropped[:2])))
  return sentences, effects, agreements


_KIND = {phases.AGREE: "phases.agree", phases.OPPOSITE: "phases.opposite",
         phases.PARTLY: "phases.partly", phases.UNCLEAR: "phases.unclear"}


def _tally(effects) -> list[tuple[str, int]]:
  verdicts = [e.verdict for e in effects]
  return [(v, verdicts.count(v)) for v in dict.fromkeys(verdicts)]


def _glance_phases(agreements: dict) -> str:
  """A warning for the plain answer when the primary effect changes sign over training."""
  opposite = [(cell, a) for cell, a in agreements.items() if a.kind == phases.OPPOSITE]
  if not opposite:
    return ""
  views = "; ".join((f"{fx.cell_text(cell)}: " if cell else "")
                    + ", ".join(f"{v} {view}" for view, v in a.verdicts
                                if view in phases.PHASES) for cell, a in opposite)
  return " " + say("phases.glance_opposite", views=views)


# --- the questions

def q1(ds, figs, info, primary=()) -> Section:
  """Does BN reduce internal covariate shift, by either definition?"""
  del info
  defs = ((m.MEDIAN_DRIFT, "distribution definition (Ioffe & Szegedy)"),
          (m.GRAD_ICS, "gradient definition (Santurkar et al.)"))
  have, notes = _available([d for d, _ in defs], ds)
  contrasts = fx.baseline_contrasts(ds)
  effects, details, headline, over_time, benefit = [], [], [], "", ""
  why = mechanism(ds)
  lead = [r.Para("**Why shift would matter.** " + " ".join(why))] if why else []
  for v, b in contrasts:
    readings = []
    for metric, name in defs:
      if metric not in have:
        continue
      es = _compare(ds, metric, v, b, primary)
      effects += es
      details.append(say("q1.detail", es, baseline=b, definition=name, variant=v))
      readings.append(say("q1.reading", es, definition=name.split(" (")[0]))
      if metric is m.GRAD_ICS:
        sentences, extra, agreements = phase_views(ds, metric, v, b)
        details += sentences
        effects += extra
        if v == primary_lib.BATCHNORM:
          over_time = _glance_phases(agreements)
    headline.append(say("q1.head", variant=v, baseline=b,
                        readings=", ".join(readings) or "not measured"))
    if m.EARLY_LOSS.available(ds):
      es = _compare(ds, m.EARLY_LOSS, v, b)
      effects += es
      details.append(say("q1.benefit", es, variant=v, label=m.EARLY_LOSS.label, baseline=b))
      if v == primary_lib.BATCHNORM:
        benefit = " " + say("q1.glance_benefit", es)
  if not contrasts:
    headline = [no_baseline(ds)]
  blocks = _body(ds, " ".join(headline), [d for d in details if d], effects, have, notes,
                 _figures(figs, "percentiles", "grad_ics",
                          *(() if _has_depth(ds) else ("propagation",))), lead)
  return Section(1, "Does batch norm reduce internal covariate shift, by either definition?",
                 " ".join(headline), tuple(blocks), tuple(effects),
                 glance(primary, "glance_ics", "gradient-ICS of `batchnorm` over `none`")
                 + over_time + benefit)


def _has_depth(ds) -> bool:
  """A depth sweep: question 3 then shows signal propagation per depth."""
  return "depth" in fx.label_levels(ds) and len(fx.level_values(ds, "depth")) > 1


def mechanism(ds) -> list[str]:
  """Why shift would be a problem, from what this study recorded: variance collapse
  at initialisation, saturation, and the drift batch norm does not remove."""
  out = []
  for v in fx.variants(ds):
    if v in BATCH_NORM_KINDS:
      continue
    part = fx.select(ds, v, ())
    collapse, factor = trainability.variance_collapse(part), trainability.propagation_factor(part)
    if factor is not None:
      first, last, layers = collapse
      out.append(say("q1.collapse", variant=v, first=f"{first:.3g}", last=f"{last:.3g}",
                     layers=layers, factor=f"{factor:.2g}",
                     verdict=trainability.propagation_verdict(factor)))
  sat = trainability.saturation_by_variant(ds)
  if sat:
    fractions = "; ".join(f"`{v}` {x:.1%}" for v, x in sat.items())
    out.append(say("q1.saturation", threshold=ds.attrs.get("saturation_threshold",
                                                            "per activation"),
                   fractions=fractions))
  drift = trainability.preact_drift_by_variant(ds)
  for v, b in fx.baseline_contrasts(ds):
    if v in BATCH_NORM_KINDS and v in drift and b in drift:
      out.append(say("q1.preact_drift", variant=v, baseline=b, drift=f"{drift[v]:.3g}",
                     baseline_drift=f"{drift[b]:.3g}"))
  if any(v in BATCH_NORM_KINDS for v in fx.variants(ds)):
    out.append(say("q1.by_construction"))
  return out


def _q2_conclusion(noisy, clean, ics_effects, speed) -> str:
  """What the noisy-vs-clean comparison says about ICS and training speed."""
  more = [es[0].metric.label for es in ics_effects if overall(es) == "higher"]
  others = [es[0].metric.label for es in ics_effects if overall(es) != "higher"]
  if not more:
    return say("q2.no_more_ics", noisy=noisy, clean=clean)
  which = f"by {' and '.join(more)}" + (f" (not by {' or '.join(others)})" if others else "")
  verdict = overall(speed)
  if verdict == "higher":
    return say("q2.slower", noisy=noisy, clean=clean, which=which)
  if verdict in ("lower", "inconclusive"):
    how = "faster" if verdict == "lower" else "no detectably slower (within the interval)"
    return say("q2.not_slower", noisy=noisy, clean=clean, which=which, how=how)
  return say("q2.mixed", noisy=noisy, clean=clean, which=which)


def q2(ds, figs, info, primary=()) -> Section:
  """Is ICS what slows training? (noisy BN: high ICS, yet trains like BN?)"""
  del figs, info  # its figures (curves, percentiles) stand in the sections before it
  ics_metrics = (m.MEDIAN_DRIFT, m.GRAD_ICS)
  have, notes = _available(list(ics_metrics) + [m.EARLY_LOSS, m.FINAL_ACCURACY], ds)
  pairs = fx.noisy_contrasts(ds)
  effects, details, headline = [], [], []
  for noisy, clean in pairs:
    ics = [_compare(ds, x, noisy, clean) for x in ics_metrics if x in have]
    speed = _compare(ds, m.EARLY_LOSS, noisy, clean, primary)
    effects += [e for es in ics for e in es] + speed
    for es in ics:
      details.append(say("q2.detail", es, clean=clean, label=es[0].metric.label,
                         noisy=noisy))
    details.append(say("q2.speed", speed, label=m.EARLY_LOSS.label))
    sentences, extra, _ = phase_views(ds, m.EARLY_LOSS, noisy, clean, matched_loss=False)
    details += sentences
    effects += extra
    if m.FINAL_ACCURACY in have:
      final = _compare(ds, m.FINAL_ACCURACY, noisy, clean)
      effects += final
      details.append(say("q2.final", final, label=m.FINAL_ACCURACY.label))
    if fx.BASELINE in fx.variants(ds):
      base = _compare(ds, m.EARLY_LOSS, noisy, fx.BASELINE)
      effects += base
      details.append(say("q2.speed_vs_none", base, baseline=fx.BASELINE,
                         label=m.EARLY_LOSS.label))
    headline.append(_q2_conclusion(noisy, clean, ics, speed))
  if not pairs:
    headline = [say("q2.not_measured",
                    variants=", ".join(f"`{v}`" for v in fx.variants(ds)))]
    have = []
  blocks = _body(ds, " ".join(headline), [d for d in details if d], effects, have, notes, [])
  text = (glance(primary, "glance_noise", "early loss of `noisy_batchnorm` over `batchnorm`")
          if pairs else headline[0])
  return Section(2, "Is ICS what slows training? (Noisy BN: more ICS, yet trains like BN?)",
                 " ".join(headline), tuple(blocks), tuple(effects), text)


def q3(ds, figs, info, primary=()) -> Section:
  """Does depth amplify the shift and its effect on training?"""
  question = "Does depth amplify the shift and its effect on training?"
  depths = fx.level_values(ds, "depth") if "depth" in fx.label_levels(ds) else []
  if len(depths) < 2:
    text = say("q3.not_measured", depth=info["config"].get("depth", "?"))
    return Section(3, question, text, (r.Para(f"**Answer.** {text}"),), glance=text)
  deep, shallow = max(depths), min(depths)
  have, notes = _available([m.MEDIAN_DRIFT, m.GRAD_ICS, m.EARLY_LOSS], ds)
  effects, details, headline = [], [], []
  trained = trainability.by_depth(ds)
  details += [say("q3.trained", depth=d, lr=fx.value_text(lr), counts=c)
              for (d, lr), c in trained.items()]
  for v in fx.variants(ds):
    for d in depths:
      factor = trainability.propagation_factor(fx.select(ds, v, (("depth", d),)))
      if factor is not None:
        details.append(say("q3.propagation", factor=f"{factor:.2g}", variant=v, depth=d))
  for d in depths:
    sat = trainability.saturation_by_variant(fx.select(ds, None, (("depth", d),)))
    if sat:
      details.append(say("q3.saturation", depth=d, threshold=ds.attrs.get(
          "saturation_threshold", "per activation"), fractions="; ".join(
              f"`{v}` {x:.1%}" for v, x in sat.items())))
  by_metric = {x: fx.compare(ds, x, deep, shallow, level="depth")
               for x in (m.MEDIAN_DRIFT, m.GRAD_ICS) if x in have}
  for v in fx.variants(ds):
    readings = []
    for metric, all_es in by_metric.items():
      es = [e for e in all_es if e.contrast.startswith(f"{v}: ")]
      effects += es
      details.append(say("q3.detail", es, variant=v, shallow=shallow, deep=deep,
                         label=metric.label))
      readings.append(say("q3.reading", es, label=metric.label))
    if readings:
      headline.append(say("q3.head", variant=v, shallow=shallow, deep=deep,
                          readings=", ".join(readings)))
  for v, b in fx.baseline_contrasts(ds):
    es = _use_primary(fx.depth_interaction(ds, m.EARLY_LOSS, v, b, deep, shallow), primary)
    effects += es
    details.append(say("q3.interaction", es, variant=v, label=m.EARLY_LOSS.label, baseline=b,
                       deep=deep, shallow=shallow))
  failures = trainability.failure_glance(ds, deep)
  headline = ([failures] if failures else []) + headline
  text = glance(primary, "glance_depth", "depth interaction of the early-loss ratio")
  if failures:
    text = f"{failures} {text}"
  blocks = _body(ds, " ".join(headline), details, effects, have, notes,
                 _figures(figs, "propagation"))
  return Section(3, question, " ".join(headline), tuple(blocks), tuple(effects), text)


LANDSCAPE = (  # metric; scale-aware and relative measures first
    m.SCALED_SHARPNESS, m.GRAD_PREDICTIVENESS_RELATIVE, m.LOSS_VARIATION_RELATIVE,
    m.GRAD_PREDICTIVENESS, m.BETA_SMOOTHNESS, m.LOSS_VARIATION, m.LAMBDA_MAX,
    m.LAYER_LAMBDA_MAX)


DEFAULT_INIT = {"init": "lecun_normal", "init_gain": 1.0}


def beyond_init(ds) -> tuple[list[str], list]:
  """What batch norm at the default initialisation adds over a network without a norm
  at each other initialisation the study has: (sentences, effects)."""
  levels = [k for k in DEFAULT_INIT if k in fx.label_levels(ds)]
  if not levels or "batchnorm" not in fx.variants(ds) or fx.BASELINE not in fx.variants(ds):
    return [], []
  default = {k: DEFAULT_INIT[k] for k in levels}
  none = fx.select(ds, fx.BASELINE, ())
  settings = dict.fromkeys(zip(*(none[k].values.tolist() for k in levels)))
  out, effects = [], []
  for setting in settings:
    other = dict(zip(levels, setting))
    if other == default:
      continue
    init = ", ".join(f"{k}={fx.value_text(v)}" for k, v in other.items())
    for metric in (m.EARLY_LOSS, m.FINAL_ACCURACY):
      if not metric.available(ds):
        continue
      es = fx.with_resolution(ds, fx.compare_across(
          ds, metric, {fx.VARIANT: "batchnorm", **default}, {fx.VARIANT: fx.BASELINE, **other}))
      effects += es
      out.append(say("q4.beyond_init", es, label=metric.label, init=init))
  return out, effects


def q4(ds, figs, info, primary=()) -> Section:
  """What does BN do to the loss landscape and to usable learning rates?"""
  del info
  have, notes = _available(list(LANDSCAPE) + [m.EARLY_LOSS, m.FINAL_ACCURACY], ds)
  contrasts = fx.baseline_contrasts(ds)
  effects, details, headline, over_time = [], [], [], ""
  for v, b in contrasts:
    readings = []
    for metric in [x for x in LANDSCAPE if x in have]:
      es = _compare(ds, metric, v, b, primary)
      effects += es
      details.append(say("q4.detail", es, baseline=b, variant=v, label=metric.label))
      readings.append(say("q4.reading", es, label=metric.label))
      if metric in (m.SCALED_SHARPNESS, m.BETA_SMOOTHNESS, m.GRAD_PREDICTIVENESS_RELATIVE):
        sentences, extra, agreements = phase_views(ds, metric, v, b)
        details += sentences
        effects += extra
        if metric is m.SCALED_SHARPNESS and v == primary_lib.BATCHNORM:
          over_time = _glance_phases(agreements)
    for metric in (x for x in (m.EARLY_LOSS, m.FINAL_ACCURACY) if x in have):
      es = _compare(ds, metric, v, b)
      effects += es
      details.append(say("relative", es, baseline=b, label=metric.label, variant=v))
      readings.append(say("q4.reading", es, label=metric.label))
    headline.append(say("q4.head", variant=v, baseline=b, readings="; ".join(readings)))
  if not contrasts:
    headline = [no_baseline(ds)]
  if any(x in have for x in LANDSCAPE):
    details.append(say("q4.scale_note"))
  sentences, extra = beyond_init(ds)
  details += sentences
  effects += extra
  details.append(trainability.learning_rates_text(ds))
  blocks = _body(ds, " ".join(headline), [d for d in details if d], effects, have, notes,
                 _figures(figs, "lr_sensitivity", "ratio_over_time", "landscape", "curvature"))
  text = glance(primary, "glance_sharpness",
                "scale-aware sharpness of `batchnorm` over `none`") + over_time
  text += " " + trainability.learning_rates_glance(ds)
  return Section(4, "What does batch norm do to the loss landscape and to usable learning "
                 "rates?", " ".join(headline), tuple(blocks), tuple(effects), text)


def _q5_fallback(ds, question, primary) -> Section:
  """Without test-time records: eval mode against train mode at the training batch size."""
  bn = [v for v in fx.variants(ds) if v in BATCH_NORM_KINDS]
  have, notes = _available([m.TEST_MODE_GAP], ds)
  effects, details, headline = [], [], []
  for v in bn if have else []:
    es = _use_primary(fx.with_resolution(ds, fx.within(ds, m.TEST_MODE_GAP, v)), primary)
    effects += es
    details.append(say("q5.fallback", es, variant=v))
    headline.append(say("q5.fallback_head", es, variant=v))
  if not bn:
    headline.append(say("q5.no_bn"))
  headline.append(say("q5.partial"))
  details.append(tt.not_analysed(ds))
  blocks = _body(ds, " ".join(headline), details, effects, have, notes, [])
  text = " ".join(headline) if not bn else glance(primary, "glance_test_time",
                                                   "running minus batch statistics")
  return Section(5, question, " ".join(headline), tuple(blocks), tuple(effects), text)


def q5(ds, figs, info, primary=()) -> Section:
  """Why does a BN model behave differently at test time, and what helps?"""
  question = "Why does a batch-norm model behave differently at test time, and what helps?"
  if not tt.has_stats(ds):
    return _q5_fallback(ds, question, primary)
  head, glance_parts, details, effects, tables = tt.part_modes(ds, info.get("config", {}))
  effects = _use_primary(fx.with_resolution(ds, effects), primary)
  if not tt.bn_variants(ds):
    glance_parts = head = [say("q5.no_bn")]
  figures = _figures(figs, "test_time_modes")
  if tt.has_shift(ds):
    for part in (tt.part_shift, tt.part_adapt):
      h, g, d, e, t = part(ds)
      head, glance_parts, details, effects, tables = (
          head + h, glance_parts + g, details + d,
          effects + fx.with_resolution(ds, e), tables + t)
    figures += _figures(figs, "shift_adaptation")
  else:
    head.append(say("q5.not_shifted"))
    details.append(tt.no_shift())
  blocks = [r.Para(f"**Answer.** {' '.join(head)}"),
            *([r.Bullets(tuple(details))] if details else []), *tables,
            r.Para("Measures:"), definitions(tt.METRICS), *figures]
  text = head[0]
  if tt.bn_variants(ds):
    size = smallest_defined_batch(ds)
    text = glance(primary, "glance_test_time", "running minus batch statistics")
    if size:
      text = say("q5.glance_size", size=size) + text[0].lower() + text[1:]
  return Section(5, question, " ".join(head), tuple(blocks), tuple(effects), text)


ALL = (q1, q2, q3, q4, q5)
