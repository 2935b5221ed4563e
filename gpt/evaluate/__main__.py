"""`python -m gpt.evaluate`: the gpt-eval command."""
import sys

from .cli import main

sys.exit(main())
