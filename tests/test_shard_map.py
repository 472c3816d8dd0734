"""shard_map: params replicated, state replicated (per-shard writes refused), RNG
refused. The cases need 4 CPU devices, so they run in a child pytest with XLA_FLAGS."""
import os
import re
import pathlib
import subprocess
import sys


def test_shard_map_cases_in_a_4_device_process():
  here = pathlib.Path(__file__).resolve().parent
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
  r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                      str(here / "_shard_map_cases.py")], env=env, capture_output=True, text=True,
                     cwd=here.parent, timeout=600)
  assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
  assert re.search(r"\b5 passed", r.stdout), r.stdout[-2000:]
