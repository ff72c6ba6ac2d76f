"""A local Cloud Storage emulator for tests, offline: gcp-storage-emulator in a
subprocess on a free port of 127.0.0.1, holding one bucket in memory.

`environment(url)` is what a process needs to use it instead of Google's
servers: gcsfs (hence epath's gs:// paths) reads STORAGE_EMULATOR_HOST,
tensorstore (hence orbax's checkpoints) TENSORSTORE_GCS_HTTP_URL. gcsfs's
extended filesystem asks Google's storage-layout API for the bucket's type,
which the emulator lacks (it warns and falls back on every call): its plain
filesystem is used instead. `running()` starts one and sets those variables
in this process (and so in its subprocesses) until it ends; the conftest
fixture `gcs_bucket` gives one per test session.

Two things Cloud Storage does that the emulator does not are added to it
(`serve`, the subprocess's entry point): a download names the object's
generation in its ``x-goog-generation`` header (tensorstore reads an
object's generation from there; without it the generation reads 0, and
orbax's next conditional write to that object, an OCDBT manifest updated by
a second commit of one checkpoint, fails "Malformed StorageGeneration"), and
an upload honours its ``ifGenerationMatch`` precondition (412 when the
object's generation differs; 0: when it exists), which the workdir lock and
tensorstore's manifest updates rely on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http
import os
import socket
import subprocess
import sys
import time
import urllib.request

BUCKET = "icsjax-test"
START_SECONDS = 30.0


@dataclasses.dataclass(frozen=True)
class Emulator:
  url: str  # http://127.0.0.1:PORT
  bucket: str

  def uri(self, *parts: str) -> str:
    """gs://BUCKET/part/part..."""
    return "/".join([f"gs://{self.bucket}", *parts])


def environment(url: str) -> dict[str, str]:
  return {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
          "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _wait_until_up(proc: subprocess.Popen, url: str) -> None:
  deadline = time.monotonic() + START_SECONDS
  while time.monotonic() < deadline:
    if proc.poll() is not None:
      raise RuntimeError(f"gcp-storage-emulator exited with {proc.returncode} at start")
    with contextlib.suppress(OSError):
      with urllib.request.urlopen(url + "/", timeout=1) as r:  # its health check
        if r.status == 200:
          return
    time.sleep(0.1)
  raise RuntimeError(f"gcp-storage-emulator did not answer at {url} within {START_SECONDS} s")


@contextlib.contextmanager
def running(bucket: str = BUCKET):
  """An emulator holding `bucket`, with this process's environment pointing at it."""
  port = _free_port()
  url = f"http://127.0.0.1:{port}"
  proc = subprocess.Popen(
      [sys.executable, os.path.abspath(__file__), str(port), bucket],
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  saved = {k: os.environ.get(k) for k in environment(url)}
  try:
    _wait_until_up(proc, url)
    os.environ.update(environment(url))
    yield Emulator(url, bucket)
  finally:
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
    proc.terminate()
    try:
      proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait()


def _object_name(request) -> str | None:
  if "name" in request.query:
    return request.query["name"][0]
  data = request.data if isinstance(request.data, dict) else {}
  return (data.get("meta") or {}).get("name") or data.get("name")


def _with_generation_header(download):
  def handler(request, response, storage, *args, **kwargs):
    download(request, response, storage, *args, **kwargs)
    with contextlib.suppress(Exception):  # a missing object: the 404 stands
      response["x-goog-generation"] = storage.get_file_obj(
          request.params["bucket_name"], request.params["object_id"])["generation"]
  return handler


def _with_precondition(insert):
  def handler(request, response, storage, *args, **kwargs):
    want = request.query.get("ifGenerationMatch", [None])[0]
    name = _object_name(request)
    if want is not None and name is not None and "upload_id" not in request.query:
      try:
        have = storage.get_file_obj(request.params["bucket_name"], name)["generation"]
      except Exception:  # the emulator's NotFound
        have = "0"
      if str(have) != str(want):
        response.status = http.HTTPStatus.PRECONDITION_FAILED
        response.json({"error": {"code": 412, "message": "Precondition Failed"}})
        return None
    return insert(request, response, storage, *args, **kwargs)
  return handler


def serve(port: int, bucket: str) -> None:
  """Runs the emulator (with the two additions above) until terminated."""
  from gcp_storage_emulator.handlers import objects
  objects.download = _with_generation_header(objects.download)
  objects.insert = _with_precondition(objects.insert)
  from gcp_storage_emulator import server  # its routes take the handlers at import
  server.create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket).run()


if __name__ == "__main__":
  import logging
  logging.disable(logging.CRITICAL)  # the emulator logs every missing object it is asked for
  serve(int(sys.argv[1]), sys.argv[2])
