"""The run folder's file names, defined once.

    checkpoints/RUN/
      latest.pt        the newest checkpoint (`checkpoint.save_checkpoint`)
      best.pt          the checkpoint with the lowest validation loss (a hard link)
      shards/          a --fsdp run's tensors, which latest.pt and best.pt point to (`sharded`)
      config.json      the run's model and training options, written before the first step
      tokenizer.json   the vocabulary, as gpt-prepare wrote it
      metrics.jsonl    one JSON record per logged step and per evaluation
      progress.png     the loss curves, redrawn at every evaluation
      safetensors/     gpt-export's default output for the run
      hf/              gpt-export --format hf's default output (a Hugging Face folder)
      .lock            held (flock) by the gpt-train run writing the folder, its process id inside
      .previous-run/   an --overwrite run's predecessor, set aside until the new run saves
"""
from __future__ import annotations

from pathlib import Path

from data_prep.tokenize.tokenizer_file import TOKENIZER_FILE  # the one name, data folders' and runs'

LATEST, BEST = "latest.pt", "best.pt"
SHARDS_FOLDER = "shards"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
PICTURE_FILE = "progress.png"
EXPORT_FOLDER = "safetensors"
HF_EXPORT_FOLDER = "hf"
LOCK_FILE = ".lock"
PREVIOUS_RUN = ".previous-run"
DEFAULT_ROOT = Path("checkpoints")

# what a run writes in its folder; the export of its model too, which --overwrite must not
# leave behind as if it were the new run's
RUN_FILES = (LATEST, BEST, SHARDS_FOLDER, METRICS_FILE, CONFIG_FILE, TOKENIZER_FILE, PICTURE_FILE, EXPORT_FOLDER,
             HF_EXPORT_FOLDER)
