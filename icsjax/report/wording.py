"""Every sentence the report's questions write, as a template with named fields.

A sentence that states a verdict takes its words from one branch set (what
"lower", "higher", "inconclusive", ... mean for that measure), so its wording
follows the numbers and never the other way round. tests/test_wording.py
renders every template with every branch of its set and reads the result for
leftover placeholders and contradictory clauses.
"""

from __future__ import annotations

import dataclasses
import math
import string

# What each verdict means, per kind of measure. "mixed" is never a branch: a
# sentence over several cells whose verdicts differ names each cell's verdict.
UNCLEAR = "is not clearly different (inconclusive: the interval includes no change)"
NOT_ESTIMABLE = "cannot be estimated (fewer than 2 paired seeds)"
BELOW_RESOLUTION = ("differs by less than one test example (below the test set's "
                    "resolution: no finding)")
VERDICTS = ("lower", "higher", "inconclusive", "too few seeds", "below resolution")


def _set(lower, higher, unclear=UNCLEAR):
  return {"lower": lower, "higher": higher, "inconclusive": unclear,
          "too few seeds": NOT_ESTIMABLE, "below resolution": BELOW_RESOLUTION}


def _glance(lower, higher, unclear):
  """Plain answers start a sentence, whatever the verdict."""
  return {"lower": lower, "higher": higher, "inconclusive": unclear,
          "too few seeds": "Cannot say: fewer than 2 seeds could be paired",
          "below resolution": "No finding: the difference is smaller than one test example"}


BRANCHES = {
    "change": _set("is lower", "is higher"),
    "ics": _set("reduces ICS", "increases ICS",
                "does not clearly change ICS (inconclusive: the interval includes no change)"),
    "speed": _set("is lower (it trains faster)", "is higher (it trains slower)"),
    "with_depth": _set("shrinks", "grows", "does not clearly change (inconclusive)"),
    "depth_gain": _set("falls (batch norm's advantage grows with depth)",
                       "rises (batch norm's advantage shrinks with depth)",
                       "does not clearly change with depth (inconclusive)"),
    "running_stats": _set("is negative (running statistics do worse)",
                          "is positive (running statistics do better)",
                          "is not clearly different from zero (inconclusive)"),
    "short": _set("lower", "higher", "inconclusive"),
    # Signal propagation at initialisation, from the per-layer factor (descriptive).
    "propagation": _set("the signal fades with depth, so deeper layers see ever weaker "
                        "inputs", "the signal grows with depth, so deeper layers see ever "
                        "larger inputs", "the signal keeps its scale through the layers"),
    # Question 5's parts: "<words> at test batch 1, 8; <words> at test batch 60".
    "running_minus_batch": _set("lower (running statistics worse)",
                                "higher (running statistics better)",
                                "inconclusive (the interval includes 0)"),
    "population": _set("lower (population statistics worse)",
                       "higher (population statistics better)",
                       "inconclusive (the interval includes 0)"),
    "shift_loss": _set("negative (accuracy rises under shift)",
                       "positive (accuracy falls under shift)",
                       "inconclusive (the interval includes 0)"),
    "shift_vs_baseline": _set("loses less accuracy than the baseline",
                              "loses more accuracy than the baseline",
                              "loses about as much accuracy as the baseline (inconclusive)"),
    "adapt": _set("negative (adaptation hurts)", "positive (adaptation helps)",
                  "inconclusive (the interval includes 0)"),
    # The plain answers at a glance: the start of a sentence, per verdict.
    "glance_ics": _glance("Yes, by Santurkar et al.'s gradient measure: with batch norm a "
                       "layer's gradient changes less when the layers before it are updated",
                       "No, the opposite, by Santurkar et al.'s gradient measure: with batch "
                       "norm a layer's gradient changes more when the layers before it are "
                       "updated",
                       "Not clearly, by Santurkar et al.'s gradient measure: with batch norm a "
                       "layer's gradient changes about as much when the layers before it are "
                       "updated"),
    "glance_noise": _glance("No: adding noise to batch norm's statistics (more shift by "
                         "construction) made early training faster, not slower",
                         "Consistent with it: adding noise to batch norm's statistics (more "
                         "shift by construction) made early training slower",
                         "Not detectably: adding noise to batch norm's statistics (more shift "
                         "by construction) did not clearly change early training speed"),
    "glance_depth": _glance("Yes: batch norm's advantage in early training grows with depth",
                         "No: batch norm's advantage in early training shrinks with depth",
                         "Not clearly: batch norm's advantage in early training does not "
                         "clearly change with depth"),
    "glance_sharpness": _glance("Smoother, measured scale-aware: batch norm lowers each "
                             "layer's sharpness relative to its weights' size",
                             "Not smoother, measured scale-aware: batch norm raises each "
                             "layer's sharpness relative to its weights' size",
                             "Not clearly smoother, measured scale-aware: batch norm does not "
                             "clearly change each layer's sharpness relative to its weights' "
                             "size"),
    "glance_test_time": _glance("Because a small test batch's own statistics differ from the "
                             "running ones: with running statistics the test accuracy is "
                             "lower",
                             "Because a small test batch's own statistics are noisy: with "
                             "running statistics the test accuracy is higher",
                             "Not detectably at this batch size: running and batch "
                             "statistics give about the same test accuracy"),
}


@dataclasses.dataclass(frozen=True)
class Template:
  text: str
  branches: str = ""  # the branch set its {verdict} field takes its words from


T = Template
TEMPLATES = {
    # --- shared
    "missing_record": T("{label} is not in this workdir's records, so it is left out."),
    "missing_probe": T("{label} was not measured: its probe was off (`{cadence}=0`). Set "
                       "`--config.{cadence}` to a multiple of `scan_length` (the default "
                       "study uses 250) to record it."),
    "one_variant": T("Only one variant ({variants}) is in this study, so there is nothing to "
                     "compare it with. To answer, sweep the norm with a baseline, e.g. "
                     "`--config.sweep.norm=\"('none','batchnorm')\"` (or `c.sweep.norm` in "
                     "the config file)."),
    "no_baseline": T("No variant `none` (no norm) is in this study (variants: {variants}), "
                     "so no variant can be compared with the network without a norm. Add "
                     "`none` to `sweep.norm` to answer."),
    "relative": T("Relative to `{baseline}`, the {label} of `{variant}` {phrase}.", "change"),
    "primary_missing": T("Its primary effect ({claim}) could not be estimated in this study."),
    "glance": T("{answer} ({numbers})."),
    "glance_mixed": T("It depends on the setting: {cells}."),
    "phases.agree": T("Over training, {label} of `{a}` vs `{b}`{where} reads the same in every "
                      "view: {views}."),
    "phases.opposite": T("Over training, {label} of `{a}` vs `{b}`{where} changes sign "
                         "({views}), so no single number answers it."),
    "phases.partly": T("Over training, {label} of `{a}` vs `{b}`{where} shows in some views "
                       "only ({views})."),
    "phases.unclear": T("Over training, {label} of `{a}` vs `{b}`{where} is inconclusive in "
                        "every view ({views})."),
    "phases.matched": T("at matched training loss {counts} of {levels} levels"),
    "phases.dropped": T("{count} matched-loss level(s) were left out: {why}."),
    "phases.glance_opposite": T("But the sign changes during training ({views}): the "
                                "average hides it."),
    "untrained": T("Failed to train in every seed: {settings}. Effects in those settings compare "
                   "with a network that did not learn (at chance or diverged), so read them "
                   "as such, not as a property of a trained network."),
    # --- Q1
    "q1.detail": T("Relative to `{baseline}`, by the {definition}, `{variant}` {phrase}.",
                   "ics"),
    "q1.head": T("`{variant}` vs `{baseline}`: {readings}."),
    "q1.reading": T("{reading} by the {definition}", "ics"),
    "q1.collapse": T("At initialisation, `{variant}`'s pre-activation variance across "
                     "examples goes from {first} in the first layer to {last} in layer "
                     "{layers} (×{factor} per layer): {verdict}.", "propagation"),
    "q1.saturation": T("Saturated units ({threshold}), averaged over training and layers: "
                       "{fractions}."),
    "q1.preact_drift": T("Batch norm does not stop the pre-normalisation inputs from moving: "
                         "their batch means drift by {drift} (in units of their initial "
                         "standard deviation, mean over layers and units) in `{variant}`, "
                         "against {baseline_drift} in `{baseline}`; what it fixes, by "
                         "construction, is the mean and variance of the normalised input."),
    "q1.by_construction": T("The normalised input's batch mean and variance are 0 and 1 by "
                            "construction (before the learned scale and shift), so a "
                            "distribution measure on them is not evidence; noisy batch norm's "
                            "extra drift is the noise it injects."),
    "q1.benefit": T("Does the benefit follow the shift? `{variant}`'s {label} relative to "
                    "`{baseline}` {phrase}.", "speed"),
    "q1.glance_benefit": T("Its early training loss relative to `none` {phrase}.", "speed"),
    # --- Q2
    "q2.detail": T("Relative to `{clean}`, the {label} of `{noisy}` {phrase}.", "change"),
    "q2.speed": T("Its {label} {phrase}.", "speed"),
    "q2.final": T("Its {label} {phrase}.", "change"),
    "q2.speed_vs_none": T("Relative to `{baseline}`, its {label} {phrase}.", "speed"),
    "q2.no_more_ics": T("The injected noise did not measurably raise ICS by any measure "
                        "recorded here, so `{noisy}` vs `{clean}` cannot test whether ICS "
                        "slows training."),
    "q2.slower": T("`{noisy}` has more ICS than `{clean}` {which} and trains slower early on: "
                   "in this study that is consistent with ICS slowing training, though the "
                   "noise could slow it by other means."),
    "q2.not_slower": T("`{noisy}` has more ICS than `{clean}` {which}, yet trains {how} early "
                       "on: in this study, added ICS did not slow training."),
    "q2.mixed": T("`{noisy}` has more ICS than `{clean}` {which}; whether it trains slower "
                  "differs between settings (see the table)."),
    "q2.not_measured": T("Not measured: this needs a noisy variant and its clean counterpart "
                         "in one study (e.g. `noisy_batchnorm` and `batchnorm`; variants "
                         "here: {variants}). Add `noisy_batchnorm` to `sweep.norm` (the "
                         "default study has both)."),
    # --- Q3
    "q3.not_measured": T("Not measured: every model in this study has depth {depth}, so the "
                         "effect of depth cannot be estimated. To answer, sweep it together "
                         "with the norm, e.g. `--config.sweep.depth=\"(2,8)\" "
                         "--config.sweep.norm=\"(none,batchnorm)\"` on the command line (or "
                         "`c.sweep.depth = (2, 8)` in a config file), and rerun."),
    "q3.detail": T("For `{variant}`, from depth {shallow} to {deep}, the {label} {phrase}.",
                   "with_depth"),
    "q3.reading": T("{label} {reading}", "with_depth"),
    "q3.head": T("`{variant}`, depth {shallow} to {deep}: {readings}."),
    "q3.interaction": T("The ratio of `{variant}`'s {label} to `{baseline}`'s, at depth {deep} "
                        "over depth {shallow}, {phrase}.", "depth_gain"),
    "q3.trained": T("At depth {depth}, lr {lr}: {counts}."),
    "q3.failed_glance": T("At depth {depth}, {failures}."),
    "q3.propagation": T("At initialisation, from the first to the last hidden layer, the "
                        "pre-activation variance across examples changes ×{factor} per layer "
                        "in `{variant}` at depth {depth}."),
    "q3.saturation": T("At depth {depth}, saturated units ({threshold}), averaged over "
                       "training and layers: {fractions}."),
    # --- Q4
    "q4.detail": T("Relative to `{baseline}`, `{variant}`'s {label} {phrase}.", "change"),
    "q4.reading": T("{label} {reading}", "short"),
    "q4.head": T("`{variant}` vs `{baseline}`: {readings}."),
    "q4.scale_note": T("The raw measures (β-smoothness, λ_max, gradient change) change when a "
                       "kernel followed by batch norm is rescaled, which leaves the network's "
                       "function unchanged; the scale-aware sharpness does not, and the "
                       "relative measures divide out training progress."),
    "q4.beyond_init": T("What batch norm adds beyond initialising well: against `none` "
                        "initialised with {init} (paired by seed index: same data order, "
                        "different initial weights), the {label} of `batchnorm` at the "
                        "default initialisation {phrase}.", "change"),
    "q4.lr_one": T("Only one learning rate was run, so usable learning rates cannot be "
                   "compared; sweep it, e.g. `--config.sweep.lr=\"(0.05,0.1,0.5,2)\"`."),
    "q4.lr_intro": T("Learning rates (a model trained unless it diverged or failed to beat "
                     "chance or the mean predictor, docs/measurements.md, \"Failure to "
                     "train\"): {sentences}"),
    "q4.lr_glance_every": T("Every seed trained at every lr ({lrs}) for {which}."),
    "q4.lr_every": T("`{variant}`{where}: every seed trained at every lr ({lrs})."),
    "q4.lr_range": T("`{variant}`{where}: every seed trained at lr = {good}; {failures}."),
    "q4.lr_none": T("`{variant}`{where}: no lr at which every seed trained; {failures}."),
    "q4.lr_no_limit": T("No model failed to train up to lr = {largest}, so this sweep does "
                        "not reach the largest usable rate; add larger ones to `sweep.lr` to "
                        "find it."),
    # --- Q5
    "q5.fallback": T("For `{variant}`, test accuracy with running (EMA) statistics minus that "
                     "with each test batch's own statistics {phrase}.", "running_stats"),
    "q5.fallback_head": T("`{variant}`: running vs per-batch statistics at test time: "
                          "{reading}.", "short"),
    "q5.glance_size": T("At test batches of {size} examples, "),
    "q5.modes": T("`{variant}`, test accuracy with running minus batch statistics: at the "
                  "last test-time step (step {last}): {grouped}.", "running_minus_batch"),
    "q5.modes_first": T("At the first test-time step (step {first}), for `{variant}`: "
                        "{grouped}.", "running_minus_batch"),
    "q5.population": T("Population minus running statistics, `{variant}`: {grouped}.",
                       "population"),
    "q5.undefined": T("For `{variant}`, batch statistics at test batch size {sizes} are "
                      "undefined (a unit normalised over a single element) and enter no "
                      "number."),
    "q5.one_step": T("Only one test-time step was recorded (step {last}), so whether the gap "
                     "differs early in training is not measured; set `test_time_every` to a "
                     "fraction of `steps` (a multiple of `scan_length`) to record earlier "
                     "ones."),
    "q5.no_gap": T("`{variant}` normalises nothing over the batch: its accuracy with running "
                   "and with batch statistics differs by at most {gap} over all models, test "
                   "batch sizes and steps (no train/eval-mode gap to explain)."),
    "q5.no_comparison": T("`{variant}` has no defined train/eval-mode comparison."),
    "q5.momentum_swept": T("`bn_momentum` is swept: every effect is given per momentum value "
                           "(`bn_momentum=` in the table)."),
    "q5.momentum_fixed": T("`bn_momentum` was not swept (fixed at {momentum}); sweep it, e.g. "
                           "`c.sweep.bn_momentum = (0.9, 0.99)`, to see how the EMA's decay "
                           "changes the gap."),
    "q5.shift": T("At severity {severity} without adaptation, `{variant}`'s accuracy lost to "
                  "shift is {grouped}.", "shift_loss"),
    "q5.shift_vs": T("Under shift (severity {severity}, no adaptation), `{variant}` {grouped} "
                     "(`{baseline}`; paired by seed).", "shift_vs_baseline"),
    "q5.no_shift_baseline": T("No `none` variant: the fall under shift cannot be compared "
                              "with a network without a norm."),
    "q5.adapt_one": T("with N={prior}, n={n}: {grouped}", "adapt"),
    "q5.adapt_glance": T("Adapting `{variant}`'s statistics at severity {severity}, {part}."),
    "q5.adapt": T("Re-estimating `{variant}`'s statistics on shifted test data (severity "
                  "{severity}), adapted minus unadapted accuracy is {parts}."),
    "q5.adapt_undefined": T("Full adaptation with N = 0 on a single example (n = 1) is "
                            "undefined for a dense batch norm and enters no number."),
    "q5.adapt_no_bn": T("No batch-norm variant: adaptation has nothing to re-estimate."),
    "q5.adapt_clean": T("The `clean` rows adapt on unshifted data: what adaptation costs when "
                        "nothing has shifted."),
    "q5.not_shifted": T("Shift and adaptation were not measured."),
    "q5.not_analysed": T("This workdir holds test-time records ({records}) but this report "
                         "does not analyse them yet: accuracy with recomputed population "
                         "statistics, by test batch size, and under shifted test inputs with "
                         "and without re-estimating the batch-norm statistics (docs/"
                         "measurements.md, \"Test time\") are left out, and this section "
                         "compares only the two test-time modes every run evaluates."),
    "q5.not_recorded": T("Not recorded in this workdir: accuracy with recomputed population "
                         "statistics, by test batch size, and under shifted test inputs with "
                         "and without re-estimating the batch-norm statistics (docs/"
                         "measurements.md, \"Test time\"). Without them this section compares "
                         "only the two test-time modes every run evaluates. Switch the "
                         "test-time evaluation on with `--config.test_time_every=500` (a "
                         "multiple of `scan_length`; the default study has it on) and rerun "
                         "to record them."),
    "q5.no_shift": T("Shifted test inputs were not evaluated (`adapt_sizes=()` or no "
                     "corruptions): set `shift_corruptions` and `adapt_sizes` (the default "
                     "study has both) to measure the fall under shift and what adaptation "
                     "recovers."),
    "q5.no_bn": T("No batch-norm variant is in this study: no test-time difference to "
                  "explain."),
    "q5.partial": T("Only partly answered; see below."),
}


def fields(key: str) -> list[str]:
  return [f for _, f, _, _ in string.Formatter().parse(TEMPLATES[key].text) if f]


def words(branches: str, verdict: str) -> str:
  return BRANCHES[branches][verdict]


# --- verdicts of several effects (one per cell) in words

def overall(effects) -> str:
  """The verdict every effect shares, "mixed", or "not measured" (no effect)."""
  verdicts = {e.verdict for e in effects}
  return verdicts.pop() if len(verdicts) == 1 else "mixed" if verdicts else "not measured"


def numbers(effects) -> str:
  """'lr=0.1: ×0.29 [0.28, 0.30]; lr=0.5: ...': each cell's estimate and interval,
  and a primary effect's adjusted p-value."""
  def one(e):
    adjusted = (f", Holm-adjusted p = {e.adjusted_p:.2g}"
                if e.primary and math.isfinite(e.adjusted_p) else "")
    return (f"{e.cell_text()}: " if e.cell else "") + e.text() + adjusted
  return "; ".join(one(e) for e in effects)


def with_numbers(text: str, nums: str) -> str:
  """'is lower (x)'; 'is unclear (inconclusive; x)' rather than two brackets in a row."""
  if not nums:
    return text
  return f"{text[:-1]}; {nums})" if text.endswith(")") else f"{text} ({nums})"


def phrase(effects, branches: str) -> str:
  """The verdict's words with every cell's numbers when all cells agree, else each
  cell's verdict in turn; meant to end a sentence."""
  verdict = overall(effects)
  if verdict in BRANCHES[branches]:
    return with_numbers(words(branches, verdict), numbers(effects))
  if verdict == "not measured":
    return "was not measured"
  return "; ".join(with_numbers(f"{words(branches, e.verdict)} at {e.cell_text()}",
                                numbers([dataclasses.replace(e, cell=())]))
                   for e in effects)


def reading(effects, branches: str = "short") -> str:
  """The verdict in a few words, without numbers."""
  verdict = overall(effects)
  if verdict in BRANCHES[branches]:
    return words(branches, verdict)
  if verdict == "not measured":
    return "not measured"
  return "mixed (" + "; ".join(f"{words(branches, e.verdict)} at {e.cell_text()}"
                               for e in effects) + ")"


def say(key: str, effects=None, **values) -> str:
  """Template `key` with its fields filled. Of a branch set's fields, {phrase}
  (words and numbers) and {reading} (words) come from `effects`; {verdict} is
  given as a verdict name and turned into its words."""
  t = TEMPLATES[key]
  need = set(fields(key))
  if "phrase" in need:
    values["phrase"] = phrase(effects, t.branches)
  if "reading" in need:
    values["reading"] = reading(effects, t.branches)
  if "verdict" in need and t.branches in BRANCHES:
    values["verdict"] = words(t.branches, values["verdict"])
  missing = need - set(values)
  if missing:
    raise KeyError(f"template {key!r} needs {sorted(missing)}")
  return t.text.format(**values)
