"""`python -m gpt.train`: the gpt-train command, and the torchrun entry point
(`torchrun --nproc_per_node=N -m gpt.train ...`)."""
import sys

from .cli import main

sys.exit(main())
