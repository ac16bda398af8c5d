"""`python -m listener` is the same as the `evolution-listener` console script."""

from listener.cli import main

raise SystemExit(main())
