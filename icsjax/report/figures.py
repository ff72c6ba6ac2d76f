"""The report's figures, each a PNG drawn from the labelled records.

Every function takes the loaded Dataset and a folder, draws one figure when
the records it needs exist, and returns (file name, caption), or None.
Seed bands are the min-max range over seeds around the mean, so a single
outlying seed stays visible; lines of one variant keep one colour everywhere.
"""

from __future__ import annotations

import math
import textwrap
import warnings

import numpy as np
import xarray as xr
from matplotlib import ticker
from matplotlib.figure import Figure
from matplotlib.lines import Line2D  # no pyplot: no global state, Agg by default

from icsjax import records as records_lib
from icsjax import store
from icsjax.report import effects as fx
from icsjax.report import inference as tt
from icsjax.report import metrics
from icsjax.report import phases
from icsjax.report import stats

DPI = 110
PANEL = (4.3, 3.0)  # inches per panel: readable at a glance on a laptop screen


def _title(cell, *first) -> str:
  return ", ".join([str(f) for f in first] + ([fx.cell_text(cell)] if cell else []))


def colours(ds: xr.Dataset) -> dict[str, str]:
  return {v: f"C{i}" for i, v in enumerate(fx.variants(ds))}


def _grid(rows: int, cols: int, **kw):
  fig = Figure(figsize=(PANEL[0] * cols, PANEL[1] * rows + 0.6), dpi=DPI,
               layout="constrained")
  axes = fig.subplots(rows, cols, squeeze=False, **kw)
  return fig, axes


def _label_outer(axes, xlabel: str, ylabel: str):
  """Axis labels on the outer panels only: the left column and the bottom row."""
  for ax in axes[:, 0]:
    ax.set_ylabel(ylabel)
  for ax in axes[-1, :]:
    ax.set_xlabel(xlabel)


def _band(ax, values: xr.DataArray, colour: str, label: str):
  """Mean over seeds (the `model` dim) as a line, min-max over seeds as a band, against
  the other dim (a time axis)."""
  (time,) = [d for d in values.dims if d != "model"]
  x = values[time].values
  with np.errstate(all="ignore"):
    mean = values.mean("model").values
    lo, hi = values.min("model").values, values.max("model").values
  ax.plot(x, mean, color=colour, label=label, lw=1.6)
  if values.sizes["model"] > 1:
    ax.fill_between(x, lo, hi, color=colour, alpha=0.2, lw=0)


def _variant_bands(ax, ds, cell, values, colours):
  """One band per variant of `values(models of that variant and cell)`."""
  for v in fx.variants(ds):
    _band(ax, values(fx.select(ds, v, cell)), colours[v], v)


def _log_if_positive(ax, *arrays):
  """A log y axis when the values are positive and span more than a decade or so,
  with plain-number ticks (1, 2, 5 per decade when there are few decades)."""
  finite = np.concatenate([np.ravel(a)[np.isfinite(np.ravel(a))] for a in arrays])
  if not (finite.size and (finite > 0).all() and finite.max() / finite.min() > 20):
    return
  ax.set_yscale("log")
  low, high = ax.get_ylim()
  _plain_log_ticks(ax.yaxis, math.log10(high / low))


def _plain_log_ticks(axis, decades: float):
  subs = (1.0, 2.0, 5.0) if decades < 2.5 else (1.0,)
  axis.set_major_locator(ticker.LogLocator(subs=subs))
  axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
  axis.set_minor_formatter(ticker.NullFormatter())


def _legend(fig, axes):
  handles, labels = axes.flat[0].get_legend_handles_labels()
  if handles:
    fig.legend(handles, labels, loc="outside upper center", ncols=min(len(labels), 5),
               frameon=False, fontsize=10)


def _save(fig, folder, name: str) -> str:
  # Drawn into memory and written whole, as every workdir file is (a bucket too).
  store.write_atomic(folder / name, lambda f: fig.savefig(f, format=name.rsplit(".", 1)[-1]))
  return name


def curves(ds, folder):
  """Training loss and test accuracy over training, per variant, one column per cell."""
  if "train_loss" not in ds:
    return None
  cs, col = fx.cells(ds), colours(ds)
  window = max(1, ds.sizes["step"] // 60)
  has_test = "test_accuracy_eval_mode" in ds
  fig, axes = _grid(2 if has_test else 1, len(cs), sharex=True)
  for j, cell in enumerate(cs):
    ax_loss = axes[0, j]
    _variant_bands(ax_loss, ds, cell, lambda p: p.train_loss.rolling(
        step=window, center=True, min_periods=1).mean(), col)
    if has_test:
      _variant_bands(axes[1, j], ds, cell, lambda p: p.test_accuracy_eval_mode, col)
    _log_if_positive(ax_loss, ds.train_loss.values)
    ax_loss.set_title(_title(cell))
    ax_loss.set_ylabel(f"training loss\n(minibatch, mean of {window} steps)")
    if has_test:
      axes[1, j].set_ylabel("test accuracy\n(running statistics)")
      axes[1, j].set_ylim(top=1.0)
    axes[-1, j].set_xlabel("training step")
  _legend(fig, axes)
  caption = ("Training loss (minibatch, moving average) and test accuracy "
             "(eval mode) over training. Line: mean over seeds; band: min-max over seeds.")
  return _save(fig, folder, "curves.png"), caption


def _stacked_notes(ax, notes, width: int = 34, size: float = 8):
  """(text, colour) notes one above the other at the lower left, inside the axes:
  wherever the points lie, notes never run into each other or off the figure."""
  up = 0.0  # points above the corner
  for text, colour in notes:
    text = textwrap.fill(text, width)
    ax.annotate(text, (0.02, 0.02), xycoords="axes fraction", xytext=(0, up),
                textcoords="offset points", fontsize=size, color=colour, va="bottom")
    up += 1.3 * size * (text.count("\n") + 1)


def lr_sensitivity(ds, folder):
  """Final test accuracy against the learning rate, with 95% t intervals over seeds."""
  if "lr" not in fx.label_levels(ds) or len(fx.level_values(ds, "lr")) < 2 or \
      "test_accuracy_eval_mode" not in ds:
    return None
  cs, col, vs = fx.cells(ds, "lr"), colours(ds), fx.variants(ds)
  fig, axes = _grid(1, len(cs))
  for j, cell in enumerate(cs):
    ax = axes[0, j]
    notes = []
    for i, v in enumerate(vs):
      xs, ys, err, diverged = [], [], [], []
      for lr in fx.level_values(ds, "lr"):
        sel = fx.select(ds, v, cell + (("lr", lr),))
        iv = stats.t_interval(metrics.FINAL_ACCURACY.compute(sel).values)
        # Offsets on the log axis keep error bars of variants apart.
        xs.append(lr * 10 ** (0.03 * (i - (len(vs) - 1) / 2)))
        ys.append(iv.mean)
        err.append(iv.mean - iv.low if math.isfinite(iv.low) else 0.0)
        k = fx.diverged(sel)
        if k:
          diverged.append(f"{k}/{sel.sizes['model']} at {lr:g}")
      ax.errorbar(xs, ys, yerr=err, color=col[v], marker="o", capsize=3, label=v)
      if diverged:
        notes.append((f"{v} diverged: {', '.join(diverged)}", col[v]))
    _stacked_notes(ax, notes)
    ax.set_xscale("log")
    ax.set_xticks(fx.level_values(ds, "lr"))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("final test accuracy")
    ax.set_title(_title(cell))
  _legend(fig, axes)
  caption = ("Learning-rate sensitivity: final test accuracy (eval mode) per learning rate; "
             "point: mean over seeds, bar: 95% t interval over seeds (diverged seeds left "
             "out and counted).")
  return _save(fig, folder, "lr_sensitivity.png"), caption


def _monitored_layer(part: xr.Dataset):
  """The deepest layer with records for these models (Ioffe Fig. 1: the last hidden)."""
  finite = np.isfinite(part.monitor_percentiles).any(
      [d for d in part.monitor_percentiles.dims if d != "layer"])
  names = part.layer.values[finite.values]
  return names[-1] if names.size else None


def percentiles(ds, folder):
  """Ioffe & Szegedy Fig. 1: 15/50/85th percentiles of a tracked unit's nonlinearity
  input over training; one column per variant, one row per cell, first seed."""
  if "monitor_percentiles" not in ds:
    return None
  cs, vs = fx.cells(ds), fx.variants(ds)
  fig, axes = _grid(len(cs), len(vs), sharex=True, sharey=True)
  unit = ds.tracked_unit.values[0]
  seed = min(fx.level_values(ds, fx.SEED))
  styles = {0.15: ":", 0.5: "-", 0.85: "--"}
  layers = set()
  for i, cell in enumerate(cs):
    for j, v in enumerate(vs):
      ax = axes[i, j]
      part = fx.select(ds, v, cell + ((fx.SEED, seed),))
      layer = _monitored_layer(part)
      if layer is None:
        ax.set_axis_off()
        continue
      layers.add(str(layer))
      trace = part.monitor_percentiles.sel(layer=layer, tracked_unit=unit).isel(model=0)
      for q in trace["quantile"].values:
        ax.plot(part.record_step.values, trace.sel(quantile=q).values, color="C0" if
                q == 0.5 else "C7", ls=styles.get(round(float(q), 2), "-"),
                label=f"{q:.0%} percentile")
      ax.set_title(_title(cell, v), fontsize=10)
  _label_outer(axes, "training step", "nonlinearity input")
  _legend(fig, axes)
  caption = (f"Distribution of one unit's nonlinearity input over training (Ioffe & Szegedy "
             f"2015, Fig. 1): 15th, 50th and 85th percentiles over the fixed monitor set "
             f"(monitor mode: {ds.attrs.get('monitor_mode', '?')}), tracked unit {unit} of "
             f"layer {', '.join(sorted(layers))}, seed {seed}.")
  return _save(fig, folder, "percentiles.png"), caption


def grad_ics(ds, folder):
  """Gradient-ICS |G-G'|/|G| over training, per weight layer after the first."""
  if "ics_grad_diff_relative" not in ds:
    return None
  cs, col = fx.cells(ds), colours(ds)
  layers = ds.weight_layer.values[1:]  # the first layer's G' is G by definition
  if not layers.size:
    return None
  fig, axes = _grid(len(cs), len(layers), sharex=True, sharey=True)
  for i, cell in enumerate(cs):
    for j, layer in enumerate(layers):
      ax = axes[i, j]
      _variant_bands(ax, ds, cell,
                     lambda p, w=layer: p.ics_grad_diff_relative.sel(weight_layer=w), col)
      ax.set_title(_title(cell, layer), fontsize=10)
  _label_outer(axes, "training step", r"$\|G - G'\| \,/\, \|G\|$")
  _legend(fig, axes)
  caption = ("Gradient-ICS (Santurkar et al. 2018, Def. 2.1): relative change of a layer's "
             "gradient when the layers before it take this step's update, per weight layer "
             "(the first layer has none by definition). Line: mean over seeds; band: "
             "min-max over seeds.")
  return _save(fig, folder, "grad_ics.png"), caption


def landscape(ds, folder):
  """Santurkar et al. Fig. 4: along the update, the range over step sizes of the loss
  and of the gradient change, and the effective beta-smoothness."""
  panels = [(name, label) for name, label in (
      ("landscape_loss", r"loss $L(\theta - \eta d)$" "\n" r"(range over $\eta$)"),
      ("landscape_grad_diff",
       r"$\|\nabla L(\theta) - \nabla L(\theta - \eta d)\|$" "\n" r"(range over $\eta$)"),
      ("landscape_beta_smoothness", r"effective $\beta$-smoothness")) if name in ds]
  if not panels:
    return None
  cs, col = fx.cells(ds), colours(ds)
  fig, axes = _grid(len(cs), len(panels), sharex=True)
  for i, cell in enumerate(cs):
    for j, (name, label) in enumerate(panels):
      ax = axes[i, j]
      for v in fx.variants(ds):
        part = fx.select(ds, v, cell)
        x = part.landscape_step.values
        if "lr_multiple" in part[name].dims:
          with np.errstate(all="ignore"):
            per_eta = part[name].mean("model")
            lo, hi = per_eta.min("lr_multiple").values, per_eta.max("lr_multiple").values
          ax.fill_between(x, lo, hi, color=col[v], alpha=0.3, lw=0, label=v)
          ax.plot(x, lo, color=col[v], lw=0.8)
          ax.plot(x, hi, color=col[v], lw=0.8)
        else:
          _band(ax, part[name], col[v], v)
      _log_if_positive(ax, ds[name].values)
      ax.set_ylabel(label, fontsize=9)
      ax.set_title(_title(cell), fontsize=10)
      if i == len(cs) - 1:
        ax.set_xlabel("training step")
  _legend(fig, axes)
  multiples = ", ".join(f"{m:g}" for m in ds.lr_multiple.values) if "lr_multiple" in ds \
      else "?"
  caption = ("Loss landscape along the update d = -update/lr (Santurkar et al. 2018, Fig. 4), "
             f"at step sizes eta = ({multiples}) x lr, on each probe step's batch. Bands of "
             "the first two panels: range over eta of the seed mean; beta-smoothness: mean "
             "and min-max over seeds.")
  return _save(fig, folder, "landscape.png"), caption


def curvature(ds, folder):
  """Largest Hessian eigenvalue over training with the edge-of-stability threshold."""
  if "hessian_lambda_max" not in ds:
    return None
  cs, col = fx.cells(ds), colours(ds)
  fig, axes = _grid(1, len(cs), sharey=True)
  for j, cell in enumerate(cs):
    ax = axes[0, j]
    _variant_bands(ax, ds, cell, lambda p: p.hessian_lambda_max, col)
    if "eos_threshold" in ds:
      thresholds = np.unique(fx.select(ds, None, cell).eos_threshold.values)
      for t in thresholds[np.isfinite(thresholds)]:
        ax.axhline(t, color="k", ls="--", lw=1)
        ax.annotate(f"edge of stability: {t:g}", (0.02, t), xycoords=("axes fraction",
                    "data"), xytext=(0, -3), textcoords="offset points", va="top",
                    fontsize=9)
    ax.set_title(_title(cell))
    ax.set_xlabel("training step")
    ax.set_ylabel(r"Hessian $\lambda_{\max}$")
  _log_if_positive(axes[0, 0], ds.hessian_lambda_max.values,
                   ds.eos_threshold.values if "eos_threshold" in ds else [])
  _legend(fig, axes)
  caption = ("Sharpness: largest Hessian eigenvalue (Lanczos) on the fixed probe batch; dashed: "
             "the edge-of-stability threshold (2/lr for SGD, (2+2 momentum)/lr with "
             "momentum; Cohen et al. 2021), above which gradient descent on a quadratic "
             "diverges. Line: mean over seeds; band: min-max over seeds.")
  return _save(fig, folder, "curvature.png"), caption


def _masked_band(ax, x, values: np.ndarray, colour, label, lw=1.6, alpha=0.15, **kw):
  """Mean over seeds (axis 0) as a line with markers and the min-max band; entries that
  are NaN for every seed (undefined) are left out, never drawn."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: undefined
    mean = np.nanmean(values, 0)
    lo, hi = np.nanmin(values, 0), np.nanmax(values, 0)
  ok = np.isfinite(mean)
  x = np.asarray(x)[ok]
  ax.plot(x, mean[ok], color=colour, label=label, marker="o", ms=4, lw=lw, **kw)
  if values.shape[0] > 1:
    ax.fill_between(x, lo[ok], hi[ok], color=colour, alpha=alpha, lw=0)


def test_time_modes(ds, folder):
  """Test accuracy against the test batch size, per statistics mode (batch, running,
  population) and variant, at the first and last test-time step; undefined left out."""
  if not tt.has_stats(ds):
    return None
  cs, vs, ss = fx.cells(ds), fx.variants(ds), tt.steps(ds)
  acc, _ = tt.stats_accuracy(ds)
  sizes = ds.test_batch_size.values
  rows = [(cell, s) for cell in cs for s in ss]
  # Own y range per panel: the gap between modes is what each panel shows.
  fig, axes = _grid(len(rows), len(vs), sharex=True)
  mode_colour = {"batch": "C3", "running": "C0", "population": "C2"}
  for i, (cell, step) in enumerate(rows):
    for j, v in enumerate(vs):
      ax = axes[i, j]
      part = acc.isel(model=np.flatnonzero(_mask(ds, v, cell))).sel(test_time_step=step)
      for mode in ds.stats_mode.values.tolist():
        vals = part.sel(stats_mode=mode).transpose("model", "test_batch_size").values
        label = {"batch": "batch statistics (train mode)",
                 "running": "running statistics (eval mode)",
                 "population": "population statistics (Alg. 2)"}.get(mode, mode)
        # batch drawn widest, so that lines that coincide (no batch norm) stay visible
        _masked_band(ax, sizes, vals, mode_colour.get(mode, "k"), label,
                     lw={"batch": 3.2, "running": 2.0}.get(mode, 1.4),
                     ls="--" if mode == "population" else "-")
      ax.set_xscale("log")
      ax.set_xticks(sizes)
      ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda x, _: f"{x:g}"))
      ax.xaxis.set_minor_formatter(ticker.NullFormatter())
      ax.set_title(_title(cell, v, f"step {step}"), fontsize=10)
  _label_outer(axes, "test batch size (log scale)", "test accuracy")
  _legend(fig, axes)
  caption = ("Test accuracy against the test batch size with each test batch normalised by "
             "its own statistics (train mode), by the running statistics (eval mode) and by "
             "population statistics recomputed after training (Ioffe & Szegedy Alg. 2), at "
             f"the first and the last test-time step (steps {', '.join(map(str, ss))}). "
             "Undefined entries (batch statistics of a single element) are left out; where a "
             "variant has no batch norm the three lines coincide. Each panel has its own "
             "accuracy scale. Line: "
             "mean over seeds; band: min-max over seeds.")
  return _save(fig, folder, "test_time_modes.png"), caption


def _mask(ds, variant, cell):
  mask = ds[fx.VARIANT].values == variant
  for k, val in cell:
    mask &= ds[k].values == val
  return mask


def shift_adaptation(ds, folder):
  """Accuracy against the severity (0: clean) per corruption, without adaptation and with
  full adaptation at every prior N, at the last test-time step."""
  if not tt.has_shift(ds):
    return None
  acc, _ = tt.shift_accuracy(ds)
  acc = acc.sel(test_time_step=ds.test_time_step.values.max())
  cs, vs, col = fx.cells(ds), fx.variants(ds), colours(ds)
  shifted = [c for c in ds.corruption.values.tolist() if c != "clean"]
  sev = ds.severity.values
  x = np.concatenate([[0], sev])
  n = ds.adapt_n.values.max()  # the largest n: full adaptation is defined there
  priors = ds.adapt_prior.values.tolist()
  styles = ["--", ":", "-."]
  fig, axes = _grid(len(cs), len(shifted), sharex=True, sharey=True)
  for i, cell in enumerate(cs):
    for j, corruption in enumerate(shifted):
      ax = axes[i, j]
      for v in vs:
        part = acc.isel(model=np.flatnonzero(_mask(ds, v, cell)))
        settings = [("none", None)] + ([("full", p) for p in priors]
                                       if v in tt.bn_variants(ds) else [])
        for k, (kind, prior) in enumerate(settings):
          a = part.sel(adapt=kind, adapt_n=n).isel(adapt_prior=0) if prior is None else \
              part.sel(adapt=kind, adapt_n=n, adapt_prior=prior)
          clean = a.sel(corruption="clean").isel(severity=0).values[:, None]
          vals = np.concatenate([clean, a.sel(corruption=corruption)
                                 .transpose("model", "severity").values], 1)
          _masked_band(ax, x, vals, col[v], None, alpha=0.15 if prior is None else 0.07,
                       ls="-" if prior is None else styles[(k - 1) % len(styles)])
      ax.set_xticks(x)
      ax.set_xticklabels(["clean"] + [str(s) for s in sev])
      ax.set_title(_title(cell, corruption), fontsize=10)
  _label_outer(axes, "severity", "test accuracy")
  # Colour: the variant; line style: the adaptation (batch-norm variants only).
  handles = [Line2D([], [], color=col[v], marker="o", ms=4, label=v) for v in vs]
  handles += [Line2D([], [], color="k", ls="-", label="no adaptation")]
  if tt.bn_variants(ds):
    handles += [Line2D([], [], color="k", ls=styles[k % len(styles)],
                       label=f"adapted, N={p:g}, n={n}") for k, p in enumerate(priors)]
  fig.legend(handles=handles, loc="outside upper center", ncols=min(len(handles), 7),
             frameon=False, fontsize=10)
  caption = ("Test accuracy under shifted test inputs against the severity (left: clean), "
             "per corruption, at the last test-time step: without adaptation (solid; running "
             "statistics) and, for batch-norm variants, with the statistics re-estimated on "
             f"n = {n} shifted test examples and mixed with the running ones by the prior "
             "N/(N+n) (Schneider et al. 2020; N = 0: full adaptation). Line: mean over "
             "seeds; band: min-max over seeds.")
  return _save(fig, folder, "shift_adaptation.png"), caption


STYLES = ("-", "--", ":", "-.")


def propagation(ds, folder):
  """Signal propagation at initialisation (each layer's pre-activation variance across
  monitor examples) and saturation over training, per variant and depth."""
  if "monitor_preact_var" not in ds or "saturated_fraction" not in ds or \
      0 not in ds.record_step.values:
    return None
  col = colours(ds)
  depths = fx.level_values(ds, "depth") if "depth" in fx.label_levels(ds) else [None]
  style = {d: STYLES[i % len(STYLES)] for i, d in enumerate(depths)}
  cs = fx.cells(ds, "depth")
  fig, axes = _grid(1, 1 + len(cs))
  ax = axes[0, 0]
  for v in fx.variants(ds):
    for d in depths:
      part = fx.select(ds, v, (("depth", d),) if d is not None else ())
      var = part.monitor_preact_var.sel(record_step=0).mean("model").values
      var = var[np.isfinite(var)]
      if var.size:
        ax.plot(np.arange(1, var.size + 1), var, style[d], color=col[v], marker="o", ms=3,
                label=v if d == depths[0] else None)
  ax.set_yscale("log")
  ax.set_xlabel("hidden layer")
  ax.set_ylabel("pre-activation variance\nacross examples, at step 0")
  ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
  for j, cell in enumerate(cs, start=1):
    ax = axes[0, j]
    for v in fx.variants(ds):
      for d in depths:
        part = fx.select(ds, v, cell + ((("depth", d),) if d is not None else ()))
        if part.sizes["model"]:
          _band(ax, part.saturated_fraction.mean("layer", skipna=True), col[v], None)
          ax.lines[-1].set_linestyle(style[d])
    ax.set_title(_title(cell), fontsize=10)
    ax.set_xlabel("training step")
    ax.set_ylabel("fraction of saturated units")
  if depths != [None]:
    for d in depths:
      axes[0, 0].plot([], [], style[d], color="0.3", label=f"depth {d}")
  _legend(fig, axes)
  threshold = ds.attrs.get("saturation_threshold", "per activation")
  caption = ("Left: each hidden layer's pre-activation variance across the monitor "
             "examples at initialisation (mean over models; log scale): a fall with depth "
             "is a signal that fades before it reaches the output. Right: the fraction of "
             f"saturated units ({threshold}) over training, mean over layers. Line style: "
             "depth; line: mean over seeds; band: min-max over seeds.")
  return _save(fig, folder, "propagation.png"), caption


# The ratios whose sign the phases can flip, in the order of the figure's columns.
KEY_RATIOS = (metrics.BETA_SMOOTHNESS, metrics.GRAD_PREDICTIVENESS, metrics.GRAD_ICS,
              metrics.LOSS_VARIATION)


def _phase_boundaries(ax, last: float):
  """Dotted lines at T/4 (end of the early phase) and T/2 (start of the late one)."""
  for frac, name in ((0.25, "T/4"), (0.5, "T/2")):
    ax.axvline(last * frac, color="0.45", ls=":", lw=1)
    ax.annotate(name, (last * frac, 1), xycoords=("data", "axes fraction"), xytext=(2, -2),
                textcoords="offset points", ha="left", va="top", fontsize=8, color="0.35")


def ratio_over_time(ds, folder):
  """Each key ratio of every variant against `none` per probe step: geometric mean over
  seeds of the per-seed ratio, min-max over seeds, phase boundaries marked."""
  ms = [m for m in KEY_RATIOS if m.available(ds)]
  contrasts = fx.baseline_contrasts(ds)
  if not ms or not contrasts or records_lib.PER_STEP_AXIS not in ds.coords:
    return None
  cs, col = fx.cells(ds), colours(ds)
  last = float(ds[records_lib.PER_STEP_AXIS].max())
  fig, axes = _grid(len(cs), len(ms), sharex=True)
  for i, cell in enumerate(cs):
    for j, m in enumerate(ms):
      ax = axes[i, j]
      shown = []
      for a, b in contrasts:
        logs = phases.ratio_over_time(ds, m, a, b, cell)
        ratios = np.exp(logs.values)
        with warnings.catch_warnings():
          warnings.simplefilter("ignore", RuntimeWarning)  # a step no seed has: left out
          mean = np.exp(np.nanmean(logs.values, 0))
          lo, hi = np.nanmin(ratios, 0), np.nanmax(ratios, 0)
        ok = np.isfinite(mean)
        x = logs[m.over_time.time].values[ok]
        ax.plot(x, mean[ok], color=col[a], label=f"{a} / {b}", marker="o", ms=3, lw=1.6)
        if logs.sizes[fx.SEED] > 1:
          ax.fill_between(x, lo[ok], hi[ok], color=col[a], alpha=0.2, lw=0)
        shown += [lo[ok], hi[ok], mean[ok]]
      ax.axhline(1, color="k", lw=0.8)
      _phase_boundaries(ax, last)
      finite = np.concatenate(shown + [[1.0]])
      finite = finite[np.isfinite(finite) & (finite > 0)]
      ax.set_yscale("log")
      ax.set_ylim(finite.min() / 1.3, finite.max() * 1.3)
      _plain_log_ticks(ax.yaxis, math.log10(finite.max() / finite.min()))
      ax.set_title(_title(cell, m.quantity or m.label), fontsize=10)
  _label_outer(axes, "training step", "ratio to none (log scale)")
  _legend(fig, axes)
  caption = ("Key landscape and gradient-ICS ratios of each variant against `none` per probe "
             "step: line, geometric mean over seed indices of the paired ratio; band, min-max "
             "over seeds; solid line: no change (1). Dotted: the phase boundaries T/4 (the "
             "early phase ends) and T/2 (the late phase starts), T the last training step. "
             "A single average over all steps hides a ratio that crosses 1.")
  return _save(fig, folder, "ratio_over_time.png"), caption


ALL = (curves, lr_sensitivity, percentiles, grad_ics, landscape, curvature, ratio_over_time,
       test_time_modes, shift_adaptation, propagation)
