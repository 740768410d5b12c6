"""`python -m engine` is the `kdsl-llm` command."""
from .cli import main

raise SystemExit(main())
