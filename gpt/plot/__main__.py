"""`python -m gpt.plot`: the gpt-plot command."""
import sys

from .cli import main

sys.exit(main())
