"""Every path the pipeline reads or writes, spelled once, as dvc.yaml declares them.

Stages and the library take their defaults from here; tests/test_paths.py checks that each `deps`/`outs`
entry of dvc.yaml is one of these and that nothing here is missing from dvc.yaml.
"""

from __future__ import annotations

from pathlib import Path

PARAMS_FILE = Path("params.yaml")
DVC_FILE = Path("dvc.yaml")
LIBRARIES_FILE = Path("libraries.yaml")  # the library versions the stages are built with (ta/libraries.py)
DEEPSPEED_CONFIG = Path("ds_config_zero2.json")

# data
RAW_DIR = Path("data/raw")
PREPARED_DIR = Path("data/prepared")
SFT_TRAIN = PREPARED_DIR / "sft_train.jsonl"
SFT_EVAL = PREPARED_DIR / "sft_eval.jsonl"
PREF_TRAIN = PREPARED_DIR / "pref_train.jsonl"
PREF_EVAL = PREPARED_DIR / "pref_eval.jsonl"
REJECTS = PREPARED_DIR / "rejects.jsonl"
PROCESSED_FILE = Path("data/processed_data.jsonl")  # the guide's Alpaca-form output

# self-instruct: generated pairs, a person's decisions on them, and what generating them cost
PROMPTS_DIR = Path("prompts/selfinstruct")  # editable prompt templates, one folder per language
SELFINSTRUCT_DIR = Path("data/selfinstruct")
REVIEW_FILE = SELFINSTRUCT_DIR / "review.jsonl"  # git-tracked: one row per pair, status and note; prepare reads it
RESPONSE_CACHE = SELFINSTRUCT_DIR / "responses.jsonl"  # every reply by request key: a rerun costs nothing
SELFINSTRUCT_REJECTS = SELFINSTRUCT_DIR / "rejects.jsonl"  # every generated pair the filters dropped, with why

# models
BASE_DIR = Path("models/base")
BASE_INFO = BASE_DIR / "base.json"
SFT_DIR = Path("models/sft")
DPO_DIR = Path("models/dpo")
MERGED_DIR = Path("models/merged")
GGUF_DIR = Path("models/gguf")
MODELFILE = Path("models/ollama/Modelfile")

# training state
SFT_CHECKPOINTS = Path("checkpoints/sft")
DPO_CHECKPOINTS = Path("checkpoints/dpo")
SFT_LIVE = Path("dvclive/sft")
DPO_LIVE = Path("dvclive/dpo")

# metrics and plot data
METRICS_DIR = Path("metrics")
PREPARE_METRICS = METRICS_DIR / "prepare.json"
PREPARE_SOURCES = METRICS_DIR / "prepare_sources.json"  # per-source counts: tracked, not a metric (dvc exp show)
SELFINSTRUCT_METRICS = METRICS_DIR / "selfinstruct.json"
OPENINGS_PLOT = METRICS_DIR / "prepare_openings.csv"
LENGTHS_PLOT = METRICS_DIR / "prepare_lengths.csv"
GGUF_METRICS = METRICS_DIR / "gguf.json"
QUANTIZE_METRICS = METRICS_DIR / "quantize.json"
EVAL_METRICS = METRICS_DIR / "eval.json"
EVAL_TIMING = METRICS_DIR / "eval_timing.json"  # seconds per artifact: a metric that changes every run
EVAL_INTERVALS = METRICS_DIR / "eval_intervals.json"  # bootstrap intervals: tracked, not a metric (dvc exp show)
SAMPLES_MD = METRICS_DIR / "samples.md"
SAMPLES_JSON = METRICS_DIR / "samples.json"
EVAL_PLOTS_DIR = METRICS_DIR / "eval_plots"
HARNESS_METRICS = METRICS_DIR / "harness.json"

GGUF_STEM = "teachingassistant"


def gguf_file(kind: str, gguf_dir: Path = GGUF_DIR) -> Path:
    """The GGUF of one type: models/gguf/teachingassistant-<kind>.gguf (kind: f16, bf16, q8_0, q4_k_m, ...)."""
    return gguf_dir / f"{GGUF_STEM}-{kind}.gguf"
