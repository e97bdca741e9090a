"""Measuring samplers: one pipeline from a model and a plan to numbers.

- ``cache``: a model's samples under a plan, as grey levels, chunk by chunk on disk (``generate``);
- ``reference``: the shipped feature networks' reference statistics and the data floor;
- ``score``: FID (with bootstrap errors), IS, KID, precision/recall of samples (``metrics`` holds
  the formulas, ``features`` the feature networks, ``inception`` the standard FID Inception);
- ``report``: the one markdown table writer, CSV and JSON files, the FID plot;
- the commands' measurements: ``evaluate`` (eval), ``bench``, ``demo`` and ``exact`` (the
  exact-denoiser benchmark, and demo --exact).
"""

from . import bench, demo, exact, features, inception, metrics, report
from .cache import cache_key, chunk_files, generate, missing_chunks
from .evaluate import eval_table, evaluate, report_plan
from .reference import FEATURE_NET_FOR, Reference, floor_at, feature_net_for, floor_for, load_reference, reference_for
from .report import table, write_csv, write_json
from .score import compare_to_best, features_of, score, score_features, score_samples

__all__ = ["generate", "cache_key", "chunk_files", "missing_chunks", "Reference", "load_reference", "reference_for",
           "feature_net_for", "floor_at", "floor_for", "FEATURE_NET_FOR", "score", "score_features", "score_samples",
           "features_of", "compare_to_best", "evaluate", "eval_table", "report_plan", "table", "write_csv",
           "write_json", "bench", "demo", "exact", "features", "inception", "metrics", "report"]
