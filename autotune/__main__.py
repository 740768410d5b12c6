"""`python -m autotune`: the kdsl-autotune command."""
import sys

from .cli import main

sys.exit(main())
