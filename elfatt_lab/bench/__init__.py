"""The benchmark: ELFATT timed against every mechanism of :mod:`elfatt_lab.attention`, side by side in one run."""
