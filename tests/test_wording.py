"""Every sentence template of the report, rendered for each branch of its verdict
set: no placeholder left, no empty field, no clause that contradicts its branch."""

import re
import string

import pytest

from icsjax.report import wording as w

# A plausible value for every field a template names.
SAMPLES = {
    "variant": "batchnorm", "baseline": "none", "clean": "batchnorm",
    "noisy": "noisy_batchnorm", "label": "early training loss",
    "definition": "gradient definition (Santurkar et al.)", "numbers": "lr=0.1: ×0.5 [0.4, 0.6]",
    "readings": "reduces ICS by the gradient definition", "cells": "lr=0.1: lower (×0.5)",
    "variants": "`none`, `batchnorm`", "cadence": "ics_every", "claim": "gradient-ICS",
    "early": "lower", "late": "higher", "early_end": 750, "late_start": 1500, "levels": 5,
    "count": 2, "first": "0.92", "last": "1e-09", "layers": 8, "factor": "0.06",
    "threshold": "sigmoid |z| > 4", "fractions": "`none` 12.0%; `batchnorm` 0.5%",
    "drift": "0.31", "baseline_drift": "4.3", "which": "by gradient-ICS", "how": "faster",
    "depth": 8, "shallow": 3, "deep": 8, "lr": "0.1", "counts": "`none` trained in 0/5 seeds",
    "failures": "`none` trained in 0/10 models", "lrs": "0.1, 0.5", "good": "0.1",
    "bad": "16", "largest": "0.5", "where": " at depth=8", "size": 8,
    "answer": "Yes, by the gradient measure", "gap": "0", "sizes": "1", "momentum": "0.99",
    "severity": 5, "prior": "16", "n": 16, "part": "with N=0, n=16: positive at blur",
    "parts": "with N=0, n=16: positive at blur", "records": "`shift_accuracy`",
    "why": "seed 0 (none) never reaches it", "which": "`none` (depth=3), `batchnorm`",
    "settings": "`none` at depth=8, lr=0.1", "init": "init_gain=4", "a": "batchnorm", "b": "none",
    "views": "lower early (×0.67 [0.53, 0.85]); higher late (×3.3 [2.4, 4.5])",
    "sentences": "`none`: every seed trained at every lr (0.1, 0.5).",
}

OPPOSITE = {"lower": "higher", "higher": "lower"}


def _fields(text):
  return [f for _, f, _, _ in string.Formatter().parse(text) if f]


def _renderings(key):
  """(branch, sentence) for every branch of the template's set (one rendering if none)."""
  t = w.TEMPLATES[key]
  needs = set(_fields(t.text))
  plain = {k: v for k, v in SAMPLES.items() if k in needs}
  if not t.branches:
    yield None, w.say(key, **plain)
    return
  for verdict, words in w.BRANCHES[t.branches].items():
    values = dict(plain)
    if "verdict" in needs:
      values["verdict"] = verdict
    if "phrase" in needs:
      values["phrase"] = f"{words} (lr=0.1: ×0.5 [0.4, 0.6])"
    if "grouped" in needs:  # report.inference.grouped: "<words> at <values>"
      values["grouped"] = f"{words} at test batch 8, 60"
    if "reading" in needs:
      values["reading"] = words
    yield verdict, w.TEMPLATES[key].text.format(**values) if (
        needs & {"phrase", "reading", "grouped"}) else w.say(key, **values)


@pytest.mark.parametrize("key", sorted(w.TEMPLATES))
def test_every_template_renders_for_every_branch(key):
  for verdict, text in _renderings(key):
    assert not re.search(r"[{}]", text), (key, verdict, text)
    assert "None" not in text and "nan" not in text.lower().split(), (key, text)
    prose = re.sub(r"`[^`]*`", "`code`", text)  # code spans may hold anything
    assert "  " not in prose and " ." not in prose and "()" not in prose, (key, text)
    if w.TEMPLATES[key].branches:
      mine = w.BRANCHES[w.TEMPLATES[key].branches][verdict]
      assert mine in text
      # No branch's words stand beside another branch's words of the same set.
      others = {v for k, v in w.BRANCHES[w.TEMPLATES[key].branches].items() if k != verdict}
      assert not any(o in text for o in others if o not in mine), (key, verdict, text)


@pytest.mark.parametrize("branches", sorted(w.BRANCHES))
def test_each_branch_set_covers_every_verdict_and_opposites_differ(branches):
  words = w.BRANCHES[branches]
  assert set(words) == set(w.VERDICTS)
  assert len(set(words.values())) == len(words), "two verdicts read the same"
  assert words["lower"] != words["higher"]


@pytest.mark.parametrize("branches", [b for b in w.BRANCHES if b.startswith("glance_")])
def test_plain_answers_are_sentences(branches):
  for verdict, words in w.BRANCHES[branches].items():
    text = w.say("glance", answer=words, numbers="lr=0.1: ×0.5 [0.4, 0.6]")
    assert text[0].isupper() and text.endswith(")."), (branches, verdict, text)


def test_a_template_with_a_missing_field_is_refused():
  with pytest.raises(KeyError, match="needs"):
    w.say("q1.head", variant="batchnorm")


def test_every_template_is_used():
  """A template nobody says is dead text that the branch test would keep alive."""
  import pathlib
  import icsjax.report
  folder = pathlib.Path(icsjax.report.__file__).parent
  code = "\n".join(p.read_text() for p in folder.glob("*.py") if p.name != "wording.py")
  unused = [k for k in w.TEMPLATES if f'"{k}"' not in code]
  assert not unused
