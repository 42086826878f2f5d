"""The cache entry that many tests read: the synthetic dataset embedded by efficientnet_lite0.

conftest's ``effnet_entry`` fixture writes it once per test session through `fmcache embed`;
a test that writes to a cache works on a copy of it.
"""

from __future__ import annotations

N = 16
SYNTHETIC_OPTIONS = {"size": str(N), "image_size": "48"}
# the same dataset on the command line
SYNTHETIC_ARGS = ("-d", "synthetic", *(a for k, v in SYNTHETIC_OPTIONS.items() for a in ("-o", f"{k}={v}")))
# four chunks of four rows, one batch each: a run with this geometry reproduces the entry bit for bit
BATCH_SIZE = 4
CHUNK_ROWS = 4
