"""Everything a run leaves on disk, in one place: the run folder's layout and lock
(`layout`, `runs`, `run_folder`), the checkpoint format (`checkpoint`), the exported
safetensors folder (`export_folder`) and loading any of them as a model (`load`).

Training, sampling, evaluation and export all read and write through here; nothing else
spells out a file name or a checkpoint's keys.
"""
