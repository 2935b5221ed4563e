"""`python -m gpt.prune`: the gpt-prune command."""
import sys

from .cli import main

sys.exit(main())
