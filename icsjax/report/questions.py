"""One section per question the report answers (README, "The report"): measured effects, and an answer that
follows from them.

Answers are assembled from the verdicts of the effects (lower, higher,
inconclusive), never written ahead of the numbers: swap two variants' labels
and the words swap with them. A question whose data the workdir lacks says
what is missing and how to record it.
"""

from __future__ import annotations

import dataclasses

import xarray as xr

from icsjax.norms import BATCH_NORM_KINDS
from icsjax.report import effects as fx
from icsjax.report import inference as tt
from icsjax.report import metrics as m
from icsjax.report import render as r
from icsjax.report.tables import definitions, effects_table, variant_table


@dataclasses.dataclass(frozen=True)
class Section:
  number: int
  question: str
  headline: str  # the answer in a sentence or two; also the summary at the top
  blocks: tuple
  effects: tuple = ()  # every effect the section states, in the order of its table


# --- turning verdicts into words

def overall(effects) -> str:
  """The verdict every effect shares, or "mixed"."""
  verdicts = {e.verdict for e in effects}
  return verdicts.pop() if len(verdicts) == 1 else "mixed" if verdicts else "not measured"


UNCLEAR = "is not clearly different (inconclusive: the interval includes no change)"
NOT_ESTIMABLE = "cannot be estimated (fewer than 2 paired seeds)"


def _words(lower, higher, unclear):
  return {"lower": lower, "higher": higher, "inconclusive": unclear,
          "too few seeds": NOT_ESTIMABLE}


def phrase(effects, lower: str, higher: str, unclear: str = UNCLEAR) -> str:
  """'<lower> (lr=0.1: x0.29 [0.28, 0.30]; lr=0.5: ...)' when every cell agrees,
  else each cell's verdict in turn; meant to end a sentence."""
  words = _words(lower, higher, unclear)
  verdict = overall(effects)
  if verdict in words:
    numbers = "; ".join(f"{e.cell_text()}: {e.text()}" if e.cell else e.text()
                        for e in effects)
    return _with_numbers(words[verdict], numbers)
  return "; ".join(_with_numbers(f"{words[e.verdict]} at {e.cell_text()}", e.text())
                   for e in effects)


def _with_numbers(words: str, numbers: str) -> str:
  """'is lower (x)'; 'is unclear (inconclusive; x)' rather than two brackets in a row."""
  if words.endswith(")"):
    return f"{words[:-1]}; {numbers})"
  return f"{words} ({numbers})"


# Words for lower / higher / inconclusive, for sentences that end in phrase().
ICS = ("reduces ICS", "increases ICS", "does not clearly change ICS (inconclusive)")
SPEED = ("is lower (it trains faster)", "is higher (it trains slower)")
WITH_DEPTH = ("shrinks", "grows", "does not clearly change (inconclusive)")
RUNNING_STATS = ("is negative (running statistics do worse)",
                 "is positive (running statistics do better)",
                 "is not clearly different from zero (inconclusive)")


def reading(effects, lower: str, higher: str, unclear: str = "inconclusive") -> str:
  """The verdict in a few words, without numbers (for the headline)."""
  words = _words(lower, higher, unclear)
  verdict = overall(effects)
  if verdict in words:
    return words[verdict]
  return "mixed (" + "; ".join(f"{words[e.verdict]} at {e.cell_text()}" for e in effects) + ")"


def missing_probe(metric) -> str:
  if not metric.cadence:  # e.g. no accuracy on a regression task
    return f"{metric.label} is not in this workdir's records, so it is left out."
  return (f"{metric.label} was not measured: its probe was off (`{metric.cadence}=0`). "
          f"Set `--config.{metric.cadence}` to a multiple of `scan_length` (the default "
          f"study uses 250) to record it.")


def no_baseline(ds: xr.Dataset) -> str:
  vs = ", ".join(f"`{v}`" for v in fx.variants(ds))
  if len(fx.variants(ds)) == 1:
    return (f"Only one variant ({vs}) is in this study, so there is nothing to compare it "
            f"with. To answer, sweep the norm with a baseline, e.g. "
            f"`--config.sweep.norm=\"('none','batchnorm')\"` (or `c.sweep.norm` in the "
            f"config file).")
  return (f"No variant `{fx.BASELINE}` (no norm) is in this study (variants: {vs}), so no "
          f"variant can be compared with the network without a norm. Add `none` to "
          f"`sweep.norm` to answer.")


def _figures(figs: dict, *names) -> list:
  return [r.Image(*figs[n]) for n in names if figs.get(n)]


def _available(metrics, ds):
  have = [x for x in metrics if x.available(ds)]
  notes = [r.Note(missing_probe(x)) for x in metrics if not x.available(ds)]
  return have, notes


def _body(ds, headline, details, effects, metrics, notes, figs) -> list:
  out = [r.Para(f"**Answer.** {headline}")]
  if details:
    out.append(r.Bullets(tuple(details)))
  out += notes
  if effects:
    out += [r.Para("Paired effects (95% t intervals over seed indices):"),
            effects_table(effects)]
  if metrics:
    out += [r.Para("Per-variant values (mean [95% t interval] over seeds, not paired):"),
            variant_table(ds, metrics), r.Para("Measures:"), definitions(metrics)]
  return out + figs


# --- the questions

def q1(ds, figs, info) -> Section:
  """Does BN reduce internal covariate shift, by either definition?"""
  del info
  defs = ((m.MEDIAN_DRIFT, "distribution definition (Ioffe & Szegedy)"),
          (m.GRAD_ICS, "gradient definition (Santurkar et al.)"))
  have, notes = _available([d for d, _ in defs], ds)
  contrasts = fx.baseline_contrasts(ds)
  effects, details, headline = [], [], []
  for v, b in contrasts:
    readings = []
    for metric, name in defs:
      if metric not in have:
        continue
      es = fx.compare(ds, metric, v, b)
      effects += es
      details.append(f"Relative to `{b}`, by the {name}, `{v}` {phrase(es, *ICS)}.")
      readings.append(f"{reading(es, *ICS[:2])} by the {name.split(' (')[0]}")
    headline.append(f"`{v}` vs `{b}`: {', '.join(readings) or 'not measured'}.")
  if not contrasts:
    headline = [no_baseline(ds)]
  blocks = _body(ds, " ".join(headline), details, effects, have, notes,
                 _figures(figs, "percentiles", "grad_ics"))
  return Section(1, "Does batch norm reduce internal covariate shift, by either definition?",
                 " ".join(headline), tuple(blocks), tuple(effects))


def _q2_conclusion(noisy, clean, ics_effects, speed) -> str:
  """What the noisy-vs-clean comparison says about ICS and training speed."""
  more = [es[0].metric.label for es in ics_effects if overall(es) == "higher"]
  others = [es[0].metric.label for es in ics_effects if overall(es) != "higher"]
  if not more:
    return (f"The injected noise did not measurably raise ICS by any measure recorded here, "
            f"so `{noisy}` vs `{clean}` cannot test whether ICS slows training.")
  which = f"by {' and '.join(more)}" + (f" (not by {' or '.join(others)})" if others else "")
  verdict = overall(speed)
  if verdict == "higher":
    return (f"`{noisy}` has more ICS than `{clean}` {which} and trains slower early on: "
            f"consistent with ICS slowing training, though the noise could slow it by other "
            f"means.")
  if verdict in ("lower", "inconclusive"):
    how = "faster" if verdict == "lower" else "no detectably slower (within the interval)"
    return (f"`{noisy}` has more ICS than `{clean}` {which}, yet trains {how} early on: in "
            f"this study added ICS did not slow training, which argues against ICS being "
            f"what slows training (Santurkar et al.'s reading).")
  return (f"`{noisy}` has more ICS than `{clean}` {which}; whether it trains slower differs "
          f"between settings (see the table).")


def q2(ds, figs, info) -> Section:
  """Is ICS what slows training? (noisy BN: high ICS, yet trains like BN?)"""
  del figs, info  # its figures (curves, percentiles) stand in the sections before it
  ics_metrics = (m.MEDIAN_DRIFT, m.GRAD_ICS)
  have, notes = _available(list(ics_metrics) + [m.EARLY_LOSS, m.FINAL_ACCURACY], ds)
  pairs = fx.noisy_contrasts(ds)
  effects, details, headline = [], [], []
  for noisy, clean in pairs:
    ics = [fx.compare(ds, x, noisy, clean) for x in ics_metrics if x in have]
    speed = fx.compare(ds, m.EARLY_LOSS, noisy, clean)
    effects += [e for es in ics for e in es] + speed
    for es in ics:
      details.append(f"Relative to `{clean}`, the {es[0].metric.label} of `{noisy}` "
                     f"{phrase(es, 'is lower', 'is higher')}.")
    details.append(f"Its {m.EARLY_LOSS.label} {phrase(speed, *SPEED)}.")
    if m.FINAL_ACCURACY in have:
      final = fx.compare(ds, m.FINAL_ACCURACY, noisy, clean)
      effects += final
      details.append(f"Its {m.FINAL_ACCURACY.label} {phrase(final, 'is lower', 'is higher')}.")
    if fx.BASELINE in fx.variants(ds):
      base = fx.compare(ds, m.EARLY_LOSS, noisy, fx.BASELINE)
      effects += base
      details.append(f"Relative to `{fx.BASELINE}`, its {m.EARLY_LOSS.label} "
                     f"{phrase(base, *SPEED)}.")
    headline.append(_q2_conclusion(noisy, clean, ics, speed))
  if not pairs:
    headline = [f"Not measured: this needs a noisy variant and its clean counterpart in one "
                f"study (e.g. `noisy_batchnorm` and `batchnorm`; variants here: "
                f"{', '.join(f'`{v}`' for v in fx.variants(ds))}). Add `noisy_batchnorm` "
                f"to `sweep.norm` (the default study has both)."]
    have = []
  blocks = _body(ds, " ".join(headline), details, effects, have, notes, [])
  return Section(2, "Is ICS what slows training? (Noisy BN: more ICS, yet trains like BN?)",
                 " ".join(headline), tuple(blocks), tuple(effects))


def q3(ds, figs, info) -> Section:
  """Does depth amplify the shift and its effect on training?"""
  del figs
  question = "Does depth amplify the shift and its effect on training?"
  depths = fx.level_values(ds, "depth") if "depth" in fx.label_levels(ds) else []
  if len(depths) < 2:
    depth = info["config"].get("depth", "?")
    text = (f"Not measured: every model in this study has depth {depth}, so the effect of "
            f"depth cannot be estimated. To answer, sweep it together with the norm, e.g. "
            f"`--config.sweep.depth=\"(2,4,8)\" --config.sweep.norm=\"(none,batchnorm)\"` "
            f"on the command line (or `c.sweep.depth = (2, 4, 8)` in a config file), and "
            f"rerun.")
    return Section(3, question, text, (r.Para(f"**Answer.** {text}"),))
  deep, shallow = max(depths), min(depths)
  have, notes = _available([m.MEDIAN_DRIFT, m.GRAD_ICS, m.EARLY_LOSS], ds)
  effects, details, headline = [], [], []
  by_metric = {x: fx.compare(ds, x, deep, shallow, level="depth")
               for x in (m.MEDIAN_DRIFT, m.GRAD_ICS) if x in have}
  for v in fx.variants(ds):
    readings = []
    for metric, all_es in by_metric.items():
      es = [e for e in all_es if e.contrast.startswith(f"{v}: ")]
      effects += es
      details.append(f"For `{v}`, from depth {shallow} to {deep}, the {metric.label} "
                     f"{phrase(es, *WITH_DEPTH)}.")
      readings.append(f"{metric.label} {reading(es, *WITH_DEPTH[:2])}")
    headline.append(f"`{v}`, depth {shallow} to {deep}: {', '.join(readings)}.")
  for v, b in fx.baseline_contrasts(ds):
    es = fx.depth_interaction(ds, m.EARLY_LOSS, v, b, deep, shallow)
    effects += es
    gains, loses = f"falls: `{v}` gains more over `{b}`", f"rises: `{v}` gains less over `{b}`"
    details.append(f"The ratio of `{v}`'s {m.EARLY_LOSS.label} to `{b}`'s, at depth {deep} "
                   f"over depth {shallow}, {phrase(es, gains, loses, WITH_DEPTH[2])}.")
    headline.append(f"`{v}`'s training advantage over `{b}` "
                    f"{reading(es, 'grows', 'shrinks', WITH_DEPTH[2])} with depth.")
  blocks = _body(ds, " ".join(headline), details, effects, have, notes, [])
  return Section(3, question, " ".join(headline), tuple(blocks), tuple(effects))


LANDSCAPE = (  # metric, what a lower and a higher value mean (variant vs none)
    (m.GRAD_PREDICTIVENESS, "makes the gradient more predictive (smaller change along the "
                            "update)", "makes the gradient less predictive"),
    (m.BETA_SMOOTHNESS, "lowers the effective β-smoothness (a smoother landscape)",
     "raises the effective β-smoothness (a less smooth landscape)"),
    (m.LOSS_VARIATION, "reduces the loss variation along the update",
     "increases the loss variation along the update"),
    (m.LAMBDA_MAX, "lowers the sharpness λ_max", "raises the sharpness λ_max"),
)


def _rate_range(usable: list, lrs: list) -> str:
  """'0.05 to 2' when the usable rates are consecutive in the sorted sweep, else a list."""
  at = [lrs.index(x) for x in usable]
  if len(usable) > 2 and at == list(range(at[0], at[-1] + 1)):
    return f"{usable[0]:g} to {usable[-1]:g}"
  return ", ".join(f"{x:g}" for x in usable)


def _learning_rates(ds) -> str:
  """Per variant (and cell of the other labels), the learning rates at which every seed
  trained, and how many failed at the others; whether the sweep found a limit."""
  if "lr" not in fx.label_levels(ds) or len(fx.level_values(ds, "lr")) < 2:
    return ("Only one learning rate was run, so usable learning rates cannot be compared; "
            "sweep it, e.g. `--config.sweep.lr=\"(0.05,0.1,0.5,2)\"`.")
  reasons = fx.failure_reasons(ds)
  sentences = []
  for v in fx.variants(ds):
    for cell in fx.cells(ds, "lr"):
      part = fx.select(ds, v, cell)
      if not part.sizes["model"]:
        continue
      lrs = sorted(fx.level_values(part, "lr"))
      at = {lr: fx.select(part, None, (("lr", lr),)) for lr in lrs}
      usable = [lr for lr in lrs if fx.failed(at[lr]) == 0]
      name = f"`{v}`" + (f" ({fx.cell_text(cell)})" if cell else "")
      trained = (f"every seed trained at every lr ({_rate_range(lrs, lrs)})"
                 if len(usable) == len(lrs) else
                 f"every seed trained at lr = {_rate_range(usable, lrs)}" if usable else
                 "no lr at which every seed trained")
      failures = "; ".join(f"at lr = {lr:g}: {fx.failures_text(at[lr], reasons)}"
                           for lr in lrs if lr not in usable)
      sentences.append(f"{name}: {trained}" + (f"; {failures}." if failures else "."))
  text = ("Learning rates (a model trained unless it diverged or failed to beat chance or "
          "the mean predictor, docs/measurements.md, \"Failure to train\"): "
          + " ".join(sentences))
  if fx.failed(ds) == 0:
    text += (f" No model failed to train up to lr = {max(fx.level_values(ds, 'lr')):g}, so "
             f"this sweep does not reach the largest usable rate; add larger ones to "
             f"`sweep.lr` to find it.")
  return text


def q4(ds, figs, info) -> Section:
  """What does BN do to the loss landscape and to usable learning rates?"""
  del info
  landscape = [x for x, _, _ in LANDSCAPE]
  have, notes = _available(landscape + [m.EARLY_LOSS, m.FINAL_ACCURACY], ds)
  contrasts = fx.baseline_contrasts(ds)
  effects, details, headline = [], [], []
  for v, b in contrasts:
    readings = []
    for metric, lower, higher in LANDSCAPE:
      if metric in have:
        es = fx.compare(ds, metric, v, b)
        effects += es
        unclear = f"does not clearly change the {metric.label} (inconclusive)"
        details.append(f"Relative to `{b}`, `{v}` {phrase(es, lower, higher, unclear)}.")
        readings.append(f"{metric.label} {reading(es, 'lower', 'higher')}")
    for metric in (x for x in (m.EARLY_LOSS, m.FINAL_ACCURACY) if x in have):
      es = fx.compare(ds, metric, v, b)
      effects += es
      details.append(f"Relative to `{b}`, the {metric.label} of `{v}` "
                     f"{phrase(es, 'is lower', 'is higher')}.")
      readings.append(f"{metric.label} {reading(es, 'lower', 'higher')}")
    headline.append(f"`{v}` vs `{b}`: " + "; ".join(readings) + ".")
  if not contrasts:
    headline = [no_baseline(ds)]
  details.append(_learning_rates(ds))
  blocks = _body(ds, " ".join(headline), details, effects, have, notes,
                 _figures(figs, "lr_sensitivity", "landscape", "curvature"))
  return Section(4, "What does batch norm do to the loss landscape and to usable learning "
                 "rates?", " ".join(headline), tuple(blocks), tuple(effects))


TEST_TIME_DIM = "test_time_step"


def _not_analysed(ds) -> str:
  """What the section cannot say yet, and whether the workdir holds the records for it."""
  wanted = ("accuracy with recomputed population statistics, by test batch size, and under "
            "shifted test inputs with and without re-estimating the batch-norm statistics "
            "(docs/measurements.md, \"Test time\")")
  recorded = sorted(str(k) for k, v in ds.data_vars.items() if TEST_TIME_DIM in v.dims)
  if recorded:
    return (f"This workdir holds test-time records ({', '.join(f'`{k}`' for k in recorded)}) "
            f"but this report does not analyse them yet: {wanted} are left out, and this "
            f"section compares only the two test-time modes every run evaluates.")
  return (f"Not recorded in this workdir: {wanted}. Without them this section compares only "
          f"the two test-time modes every run evaluates. Switch the test-time evaluation on "
          f"with `--config.test_time_every=500` (a multiple of `scan_length`; the default "
          f"study has it on) and rerun to record them.")


def _q5_fallback(ds, question) -> Section:
  """Without test-time records: eval mode against train mode at the training batch size."""
  bn = [v for v in fx.variants(ds) if v in BATCH_NORM_KINDS]
  have, notes = _available([m.TEST_MODE_GAP], ds)
  effects, details, headline = [], [], []
  for v in bn if have else []:
    es = fx.within(ds, m.TEST_MODE_GAP, v)
    effects += es
    details.append(f"For `{v}`, test accuracy with running (EMA) statistics minus that with "
                   f"each test batch's own statistics {phrase(es, *RUNNING_STATS)}.")
    headline.append(f"`{v}`: running vs per-batch statistics at test time: "
                    f"{reading(es, 'worse', 'better')}.")
  if not bn:
    headline.append("No batch-norm variant is in this study: no test-time difference to "
                    "explain.")
  headline.append("Only partly answered; see below.")
  details.append(_not_analysed(ds))
  blocks = _body(ds, " ".join(headline), details, effects, have, notes, [])
  return Section(5, question, " ".join(headline), tuple(blocks), tuple(effects))


def q5(ds, figs, info) -> Section:
  """Why does a BN model behave differently at test time, and what helps?"""
  question = "Why does a batch-norm model behave differently at test time, and what helps?"
  if not tt.has_stats(ds):
    return _q5_fallback(ds, question)
  head, glance, details, effects, tables = tt.part_modes(ds, info.get("config", {}))
  if not tt.bn_variants(ds):
    glance = head = ["No batch-norm variant is in this study: no train/eval-mode gap to "
                     "explain."]
  figures = _figures(figs, "test_time_modes")
  if tt.has_shift(ds):
    for part in (tt.part_shift, tt.part_adapt):
      h, g, d, e, t = part(ds)
      head, glance, details, effects, tables = (head + h, glance + g, details + d,
                                                effects + e, tables + t)
    figures += _figures(figs, "shift_adaptation")
  else:
    details.append(tt.no_shift())
    glance.append("Shift and adaptation were not measured.")
  blocks = [r.Para(f"**Answer.** {' '.join(head)}"),
            *([r.Bullets(tuple(details))] if details else []), *tables,
            r.Para("Measures:"), definitions(tt.METRICS), *figures]
  return Section(5, question, " ".join(glance), tuple(blocks), tuple(effects))


ALL = (q1, q2, q3, q4, q5)
