"""``python -m elfatt.bench``."""

from elfatt.bench.cli import main

raise SystemExit(main())
