"""`python -m exporter` runs the same command line as the console script."""

from exporter.cli import main

raise SystemExit(main())
