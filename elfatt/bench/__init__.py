"""The benchmark: ELFATT timed against every mechanism of :mod:`elfatt.attention`, side by side in one run."""
