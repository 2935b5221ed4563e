"""`python -m gpt.sample`: the gpt-sample command."""
import sys

from .cli import main

sys.exit(main())
