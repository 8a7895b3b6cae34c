"""RCA: weakly supervised semantic segmentation with regional semantic contrast and aggregation.

The library behind the three pipeline stages in ``stages/``. See README.md for the data flow.
"""

__version__ = "0.1.0"
