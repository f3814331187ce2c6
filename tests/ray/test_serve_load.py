"""/healthz stays fast while six clients flood the same replica with the largest image it accepts.

Images are decoded in a small bounded thread pool, not on the replica's event
loop, and the default ``serve.max_image_pixels`` is 1024x1024; before both, a
24 KB PNG of 4000x4000 held the loop ~0.4 s per request and /healthz took
0.5-2.5 s under this load. The flood runs in a child process (its threads
would otherwise compete with the measuring thread for this process's GIL).
p99 rests on >= 400 probes; a second attempt runs only if the first misses.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from ray import serve

from mlp.config import ServeConfig
from served import deploy_untrained  # tests/ is on sys.path while pytest runs

CLIENTS = 6
FLOOD_S = 8.0
WARMUP_S = 1.5
PAUSE_S = 0.005  # between two /healthz probes: ~150 samples a second, so p99 rests on more than 5 samples
MIN_SAMPLES = 400
ATTEMPTS = 2

FLOOD = """
import json, sys, threading, time
import httpx
url, path, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
body = open(path, "rb").read()
counts, lock, stop = {}, threading.Lock(), time.time() + seconds
def user():
    with httpx.Client(base_url=url, timeout=60) as http:
        while time.time() < stop:
            try:
                status = http.post("/predict", content=body, headers={"content-type": "image/png"}).status_code
            except httpx.HTTPError as err:
                status = type(err).__name__
            with lock:
                counts[status] = counts.get(status, 0) + 1
threads = [threading.Thread(target=user) for _ in range(int(sys.argv[4]))]
[t.start() for t in threads]
[t.join() for t in threads]
print(json.dumps(counts))
"""



@pytest.fixture(scope="module")
def url(tmp_path_factory):
    """One replica with the default image limits, serving an untrained model (decoding cost does not depend
    on the weights)."""
    tmp = tmp_path_factory.mktemp("serve-load")
    yield deploy_untrained(tmp, "load")
    serve.shutdown()


def noise_png(width: int, height: int) -> bytes:
    """RGBA noise: the most work per pixel (a big zlib stream, alpha flattening, conversion, framing)."""
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 4), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, "RGBA").save(out, format="PNG")
    return out.getvalue()


def flood_and_probe(http: httpx.Client, url: str, image: Path) -> tuple[np.ndarray, dict[str, int]]:
    """/healthz latencies (ms) while ``CLIENTS`` other clients post ``image`` back to back."""
    flood = subprocess.Popen([sys.executable, "-c", FLOOD, url, str(image), str(FLOOD_S), str(CLIENTS)],
                             stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(WARMUP_S)
        latencies, end = [], time.time() + FLOOD_S - WARMUP_S - 0.5
        while time.time() < end:
            start = time.perf_counter()
            assert http.get("/healthz").status_code == 200
            latencies.append((time.perf_counter() - start) * 1000)
            time.sleep(PAUSE_S)
        return np.array(latencies), json.loads(flood.communicate(timeout=120)[0])
    finally:
        flood.kill()


def test_healthz_p99_under_50ms_while_six_clients_post_the_largest_image(url, tmp_path):
    side = int(ServeConfig().max_image_pixels ** 0.5)
    largest = tmp_path / "largest.png"
    largest.write_bytes(noise_png(side, side))
    summaries = []
    with httpx.Client(base_url=url, timeout=60) as http:
        image = {"content-type": "image/png"}
        assert http.post("/predict", content=largest.read_bytes(), headers=image).status_code == 200
        one_more = http.post("/predict", content=noise_png(side + 1, side), headers=image)
        assert one_more.status_code == 413, "the flood image must be the largest accepted"
        # A second attempt only if the first misses: a burst of other work on a shared machine can stall any
        # process for 100 ms; decoding on the event loop misses both (p99 ~175 ms at this image size).
        for _ in range(ATTEMPTS):
            lat, counts = flood_and_probe(http, url, largest)
            summaries.append(f"/healthz n={len(lat)} p50={np.percentile(lat, 50):.1f} ms "
                             f"p99={np.percentile(lat, 99):.1f} ms max={lat.max():.1f} ms; flood answers {counts}")
            print(summaries[-1])
            if np.percentile(lat, 99) < 50:
                break
    summary = " | ".join(summaries)
    assert np.percentile(lat, 99) < 50, summary
    assert len(lat) >= MIN_SAMPLES, summary
    assert counts.get("200", 0) >= 20, f"the flood must really decode images: {summary}"
    assert set(counts) <= {"200", "503"}, summary  # 503: the decode pool was full, a quick refusal
