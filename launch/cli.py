"""What launch's command lines share: one-line refusals and the bucket check."""

from __future__ import annotations

import argparse
import sys

from launch import LaunchError

USER_ERROR = 2  # as icsjax.main: a mistake on the command line, said in one line


class Parser(argparse.ArgumentParser):
  """argparse, with its errors raised as LaunchError (one line, no usage block)."""

  def error(self, message):
    raise LaunchError(f"{message} ({self.prog} --help lists the arguments)")


def bucket(text: str) -> str:
  """A gs:// folder, without a trailing slash."""
  if not text.startswith("gs://") or len(text.rstrip("/")) <= len("gs://"):
    raise LaunchError(f"--bucket={text} must be a Google Cloud Storage folder, "
                      f"gs://BUCKET[/FOLDER], e.g. gs://my-bucket/icsjax")
  return text.rstrip("/")


def run(main, argv=None) -> int:
  """Runs main(argv); a LaunchError ends it with its line and exit code 2."""
  try:
    return main(sys.argv[1:] if argv is None else argv) or 0
  except LaunchError as e:
    print("error: " + " ".join(str(e).split()), file=sys.stderr)
    return USER_ERROR
