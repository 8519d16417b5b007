"""Data sets generated locally: the Long Range Arena's ListOps and Pathfinder, with an on-disk cache."""

from elfatt_lab.data.cache import cached
from elfatt_lab.data.listops import evaluate_listops, generate_listops
from elfatt_lab.data.pathfinder import generate_pathfinder

__all__ = ["cached", "evaluate_listops", "generate_listops", "generate_pathfinder"]
