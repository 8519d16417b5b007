"""The benchmark: the peers' attention mechanisms that ELFATT is timed and compared against."""
