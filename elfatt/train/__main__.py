"""``python -m elfatt.train``."""

from elfatt.train.cli import main

raise SystemExit(main())
