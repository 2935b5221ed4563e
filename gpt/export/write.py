"""Writing an export folder, in either format, whole or not at all: beside its place, then
renamed into it."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, NamedTuple

from plumbing.output_folder import Writer, checked_output, first_inside, new_folder

from ..store import export_folder, hf_folder
from ..store.checkpoint import load_checkpoint
from ..store.export_folder import ExportError, write_export, written_by_export
from ..store.hf_folder import check_expressible, write_hf_folder, written_as_hf
from ..store.layout import EXPORT_FOLDER, HF_EXPORT_FOLDER
from ..store.load import model_from_checkpoint
from ..store.runs import resolve_checkpoint


class Format(NamedTuple):
    write: Callable  # (folder, model, tokenizer, source): the format's files, written into folder
    files: tuple[str, ...]
    folder: str  # its folder in the run folder, where --out is not given


FORMATS = {
    "safetensors": Format(write_export, (export_folder.WEIGHTS, export_folder.CONFIG, export_folder.TOKENIZER),
                          EXPORT_FOLDER),
    "hf": Format(write_hf_folder, hf_folder.FILES, HF_EXPORT_FOLDER),
}
EXPORT_FORMATS = tuple(FORMATS)
# --force replaces a folder of either format: both are gpt-export's, and nothing else is; and
# only with no other file inside (the user's, put there since)
EXPORTER = Writer("gpt-export", lambda path: written_by_export(path) or written_as_hf(path),
                  entries=lambda path: {name for f in FORMATS.values() for name in f.files})


def export_model(ckpt: str | Path | None, out: str | Path, force: bool = False, merge: bool = False,
                 format: str = "safetensors") -> Path:
    """Write the model of checkpoint `ckpt` (a file, a run folder or None: the newest run)
    into the folder `out`, in `format` (see FORMATS). An existing `out` is replaced only with
    `force`, and only once the new export is complete: it is written into a hidden folder
    beside it and renamed. A LoRA run is exported only with `merge`: its adapters folded into
    its base's weights, a model as large as the base that needs neither the base nor the
    adapters again. A model the format cannot express is refused before anything is written."""
    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r} (choose from {', '.join(FORMATS)})")
    path = resolve_checkpoint(ckpt)
    if first_inside(out, [path]) is not None:  # said before --force's refusal of a run folder, which it also is
        raise ExportError(f"--out {out} holds the checkpoint {path}, which replacing it would delete; "
                          "name a folder of its own for the export (the default is RUN/safetensors)")
    out = checked_output(out, force, EXPORTER, ExportError)
    state = load_checkpoint(path)
    lora = state.get("lora")
    if lora and not merge:
        raise ExportError(f"{path} holds LoRA adapters on {lora['base']['path']}; its export is the merged model "
                          f"(full size, needing neither the base nor the adapters): give --merge")
    model, tokenizer = model_from_checkpoint(state, "cpu", path)
    if format == "hf":
        check_expressible(model.config)
    source = {"checkpoint": str(path), "step": state.get("step"), "val_loss": state.get("val_loss")}
    if lora:  # what was merged: the adapters' shape and the exact base they were trained on
        source["merged_lora"] = {k: lora[k] for k in ("rank", "alpha", "targets", "base")}
    with new_folder(out, force, EXPORTER, ExportError) as tmp:
        FORMATS[format].write(tmp, model, tokenizer, source)
    return out
