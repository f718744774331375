"""``python -m pyfastopt.study``."""

from .cli import main

raise SystemExit(main())
