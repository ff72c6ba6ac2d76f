"""Batch launch of icsjax studies on Cloud TPU VMs with SkyPilot managed jobs.

Run from a checkout's root (the checkout is what reaches the VMs):
``python -m launch.tpu submit ...`` (README, "Run on TPU VMs"). Needs the
``launch`` extra (``pip install .[launch]``); only ``launch/skypilot.py``
imports SkyPilot, on first use.
"""


class LaunchError(ValueError):
  """Input that cannot be launched; the message names it and what is allowed,
  in one line, before anything is submitted."""
