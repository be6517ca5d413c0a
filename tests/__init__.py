"""The receiver's tests. Run them all from the repository's root with

    python3 -m unittest discover -s tests

or one module with `python3 -m unittest tests.test_signature`. The modules import each other's
helpers by their plain names (`from helpers import ...`), as `discover -s tests` runs them; this
makes the same names importable when they are run as the package `tests`.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)
