"""Test time (docs/measurements.md, "Test time"): the registry entry of
icsjax.inference, the statistics modes, shifted inputs and BN adaptation."""

from icsjax import fields as f
from icsjax import inference
from icsjax import shifts
from icsjax import tfds_data
from icsjax.records.kind import RecordKind


def _corruptions(v):
  return f.distinct_tuple(lambda u: u in shifts.CORRUPTIONS,
                          f"names among {', '.join(shifts.CORRUPTIONS)}", empty_ok=True)(v)


def check(static, config, sizes, where):
  from icsjax.data import IMAGE_DATASETS
  n_train, n_test = sizes["train"], sizes["test"]
  for name in ("test_batch_sizes", "adapt_sizes"):
    if any(b > n_test for b in config[name]):
      raise f.fail(name, tuple(config[name]), f"must be <= {n_test}, the test set size{where}")
  if config.adapt_set == "separate" and any(n > n_train for n in config.adapt_sizes):
    raise f.fail("adapt_sizes", tuple(config.adapt_sizes), f"must be <= {n_train}, the "
                 f"training set size (adapt_set='separate' adapts on training examples){where}")
  if config.tfds_corruptions and static["dataset"] not in tfds_data.CORRUPTED_DATASETS:
    raise f.fail("tfds_corruptions", tuple(config.tfds_corruptions),
                 f"must be () for dataset={static['dataset']!r}: TFDS has corrupted test sets "
                 f"of {', '.join(tfds_data.CORRUPTED_DATASETS)} only{where}")
  image_only = shifts.needs_images(config.shift_corruptions)
  if image_only and static["dataset"] not in IMAGE_DATASETS:
    raise f.fail("shift_corruptions", tuple(config.shift_corruptions),
                 f"may not hold {', '.join(image_only)} for dataset={static['dataset']!r} "
                 f"(image corruptions need one of {', '.join(IMAGE_DATASETS)}){where}")


def coords(spec) -> dict:
  """{name: (dims, values)}: the test-time records' axes, and masks of their defined
  entries (False: batch statistics of a one-element set, holding UNDEFINED_FILL)."""
  run = spec.run
  sizes, priors = list(run.test_batch_sizes), [float(p) for p in run.adapt_priors]
  coords = {"stats_mode": (["stats_mode"], list(inference.STATS_MODES)),
            "test_batch_size": (["test_batch_size"], sizes),
            "stats_mode_defined": (["stats_mode", "test_batch_size"],
                                   inference.stats_mode_defined(spec, sizes))}
  if run.adapt_sizes:
    coords.update({
        "corruption": (["corruption"], shifts.corruption_coords(run)),
        "severity": (["severity"], list(run.shift_severities)),
        "adapt": (["adapt"], list(inference.ADAPT_KINDS)),
        "adapt_n": (["adapt_n"], list(run.adapt_sizes)),
        "adapt_prior": (["adapt_prior"], priors),
        "shift_defined": (["adapt", "adapt_n", "adapt_prior"],
                          inference.shift_defined(spec, run.adapt_sizes, priors))})
  return coords


def attrs(spec) -> dict:
  """How the test-time records were measured, for the records' attributes."""
  run, b = spec.run, spec.batch_size
  adapted_on = ("the evaluated batch itself" if run.adapt_set == "test_batch" else
                "the first adapt_n training examples under the same shift")
  return {
      "test_time_examples": "at test batch size (or adapt_n) b: the first floor(n_test/b)*b "
                            "test examples, the same for every mode, shift and adaptation",
      "population_statistics": f"Ioffe Alg. 2 over the first {run.population_batches} "
                               f"training minibatches of {b} (examples in order, wrapping "
                               "around), train-mode forward, variance x m/(m-1)",
      "adaptation": f"adapt_set={run.adapt_set!r}: statistics of {adapted_on}, mixed as "
                    "mean = (N mu_s + n mu_t)/(N + n), likewise the (biased) variance; "
                    "N = adapt_prior, n = adapt_n; one forward pass",
      "test_time_undefined_fill": inference.UNDEFINED_FILL,
      "test_time_undefined": "entries whose stats_mode_defined / shift_defined is False "
                             "(batch statistics of a one-element set) hold the fill, not a "
                             "measurement"}


ADAPT_SETS = ("test_batch", "separate")

KIND = RecordKind(
    name="test_time", title="test-time evaluation", cadence="test_time_every",
    compute=inference.records,
    fields={
        "test_time_every": f.Field("run", f.integer(0), "steps between test-time evaluations: "
                                   "statistics modes, shifted inputs, BN adaptation (0: off)"),
        "test_batch_sizes": f.Field("run", f.distinct_tuple(f.is_positive_int,
                                                            "positive integers"),
                                    "test batch sizes of the statistics modes (batch "
                                    "statistics depend on them)"),
        "population_batches": f.Field("run", f.integer(1), "training minibatches (of "
                                      "batch_size) that population statistics average over "
                                      "(Ioffe Alg. 2)"),
        "shift_corruptions": f.Field("run", _corruptions, "input shifts of the test set, each "
                                     "at every severity (the clean set is always evaluated)"),
        "tfds_corruptions": f.Field("run", f.distinct_tuple(
            lambda u: u in tfds_data.CIFAR10_CORRUPTIONS,
            f"names among {', '.join(tfds_data.CIFAR10_CORRUPTIONS)}", empty_ok=True),
            "dataset=cifar10: TFDS cifar10_corrupted test sets (CIFAR-10-C) at every "
            "severity, as corruptions tfds_<name>"),
        "shift_severities": f.Field("run", f.distinct_tuple(f.is_severity, "integers 1..5"),
                                    "severities of every shift (1..5, as CIFAR-10-C)"),
        "adapt_sizes": f.Field("run", f.distinct_tuple(f.is_positive_int, "positive integers",
                                                       empty_ok=True),
                               "n: shifted examples BN statistics are adapted on; also the "
                               "batch size of the shifted evaluation (empty: no shift "
                               "evaluation)"),
        "adapt_priors": f.Field("run", f.distinct_tuple(f.is_prior, "finite numbers >= 0"),
                                "N: prior strength of the source statistics, weight N/(N+n) "
                                "(0: full adaptation)"),
        "adapt_set": f.Field("run", f.choice(ADAPT_SETS), "statistics of the evaluated batch "
                             "itself (test_batch) or of n shifted training examples "
                             "(separate)"),
    },
    dims={**{f"stats_mode_{m}": ("stats_mode", "test_batch_size") for m in ("loss", "accuracy")},
          **{f"shift_{m}": ("corruption", "severity", "adapt", "adapt_n", "adapt_prior")
             for m in ("loss", "accuracy")}},
    check=check, coords=coords, attrs=attrs,
    prepare_data=shifts.with_shifted_sets,
)
