"""The OpenAPI document is the truth: schemathesis, with every check, against a live Serve deployment.

Schemathesis (``--checks all``) generates requests from ``/openapi.json``:
schema-valid ones must be answered 2xx with a body matching the documented
response schema, schema-invalid ones must be refused, and every status, content
type and header must be documented. Two things are configured, neither of
which lets bad input through:

* PNG/JPEG bodies come from a strategy that makes real images (random size,
  mode and pixels); schemathesis would otherwise send random bytes as a "valid"
  ``image/png``, which no server can decode.
* 413 counts as refusing an invalid request (a batch above ``max_instances``),
  beside schemathesis' default list of rejection codes.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ElementTree

import pytest
from ray import serve

from mlp.checkpoint import save_checkpoint
from mlp.config import Config
from mlp.model import build_model
from mlp.registry import make_provenance, promote
from serve.app import build_from_config
from serve.options import http_options
from s3server import free_port  # tests/ is on sys.path while pytest runs

MIN_CASES = 500
HOOKS = '''
import io, random
import schemathesis
from hypothesis import strategies as st
from PIL import Image

BANDS = {"L": 1, "RGB": 3, "RGBA": 4, "P": 1}

@st.composite
def images(draw, fmt):
    mode = draw(st.sampled_from(["L", "RGB", "RGBA", "P"] if fmt == "PNG" else ["L", "RGB"]))
    width, height = draw(st.integers(1, 64)), draw(st.integers(1, 64))
    pixels = random.Random(draw(st.integers(0, 2**32 - 1))).randbytes(width * height * BANDS[mode])
    out = io.BytesIO()
    Image.frombytes(mode, (width, height), pixels).save(out, format=fmt)
    return out.getvalue()

schemathesis.openapi.media_type("image/png", images("PNG"))
schemathesis.openapi.media_type("image/jpeg", images("JPEG"))
'''
CONFIG = '''
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]
'''



@pytest.fixture(scope="module")
def url(tmp_path_factory):
    """An untrained model (the contract does not depend on the weights), batches of at most 4 instances
    (so that no schema-valid batch can reach ``max_body_bytes``, which JSON Schema cannot express)."""
    tmp = tmp_path_factory.mktemp("serve-openapi")
    cfg = Config.from_dict({"data": {"dataset": "fashion-mnist"}, "registry": {"path": str(tmp / "registry")},
                            "serve": {"port": free_port(), "min_replicas": 1, "max_replicas": 1,
                                      "max_instances": 4, "access_log": False}})
    checkpoint = save_checkpoint(tmp / "checkpoint", build_model(cfg.model, seed=0), cfg, {"epoch": 0})
    promote(cfg.registry.path, "mlp", checkpoint, {}, make_provenance(cfg, str(checkpoint)))
    serve.start(http_options=http_options(cfg.serve))
    serve.run(build_from_config(cfg), name="openapi", route_prefix="/")
    yield f"http://127.0.0.1:{cfg.serve.port}"
    serve.shutdown()


def test_schemathesis_finds_nothing_with_every_check(url, tmp_path):
    (tmp_path / "hooks.py").write_text(HOOKS)
    (tmp_path / "schemathesis.toml").write_text(CONFIG)
    junit = tmp_path / "junit.xml"
    command = [sys.executable, "-m", "schemathesis.cli", "--config-file", "schemathesis.toml", "--no-color",
               "run", f"{url}/openapi.json", "--checks", "all", "--max-examples", "500", "--seed", "0",
               "--workers", "2", "--generation-database", "none", "--continue-on-failure",
               "--report", "junit", "--report-junit-path", str(junit)]
    run = subprocess.run(command, cwd=tmp_path, env={**os.environ, "SCHEMATHESIS_HOOKS": "hooks.py"},
                         capture_output=True, text=True, timeout=300)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-6000:]
    suite = ElementTree.parse(junit).getroot()
    assert (suite.get("failures"), suite.get("errors"), suite.get("tests")) == ("0", "0", "7"), output[-3000:]
    counted = re.search(r"(\d+) generated, (\d+) passed", output)
    assert counted and counted.group(1) == counted.group(2), output[-3000:]
    assert int(counted.group(1)) >= MIN_CASES, output[-3000:]
    print(counted.group(0))
