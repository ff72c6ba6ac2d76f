"""Batch launch of icsjax studies on Cloud TPU VMs with SkyPilot managed jobs.

Run from a checkout's root (the checkout is what reaches the VMs):
``python -m launch.tpu submit ...`` (README, "Run on TPU VMs"). Needs the
``launch`` extra (``pip install .[launch]``); only ``launch.tpu`` and
``launch.prepare_data`` import SkyPilot, and only to render and submit tasks.
"""


class LaunchError(ValueError):
  """Input that cannot be launched; the message names it and what is allowed,
  in one line, before anything is submitted."""
