"""What launch's command lines share: one-line refusals and the bucket check."""

from __future__ import annotations

import argparse
import re
import sys

from launch import LaunchError

USER_ERROR = 2  # as icsjax.main: a mistake on the command line, said in one line


class Parser(argparse.ArgumentParser):
  """argparse, with its errors raised as LaunchError (one line, no usage block)."""

  def error(self, message):
    raise LaunchError(f"{message} ({self.prog} --help lists the arguments)")


# A bucket's name as GCS allows it, then folders of plain characters: the bucket
# goes into the jobs' shell lines unquoted.
BUCKET = re.compile(r"gs://[a-z0-9][a-z0-9._-]{1,220}[a-z0-9](/[A-Za-z0-9._=+-]+)*")


def bucket(text: str) -> str:
  """A gs:// folder, without a trailing slash."""
  if not BUCKET.fullmatch(text.rstrip("/")):
    raise LaunchError(f"--bucket={text} must be a Google Cloud Storage folder, "
                      f"gs://BUCKET[/FOLDER] (lowercase letters, digits, . _ - in the "
                      f"bucket's name), e.g. gs://my-bucket/icsjax")
  return text.rstrip("/")


def run(main, argv=None) -> int:
  """Runs main(argv); a LaunchError ends it with its line and exit code 2."""
  try:
    return main(sys.argv[1:] if argv is None else argv) or 0
  except LaunchError as e:
    print("error: " + " ".join(str(e).split()), file=sys.stderr)
    return USER_ERROR
