"""``python -m elfatt_lab.train``."""

from elfatt_lab.train.cli import main

raise SystemExit(main())
