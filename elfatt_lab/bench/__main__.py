"""``python -m elfatt_lab.bench``."""

from elfatt_lab.bench.cli import main

raise SystemExit(main())
