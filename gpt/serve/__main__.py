"""`python -m gpt.serve`: the gpt-serve command."""
import sys

from .cli import main

sys.exit(main())
