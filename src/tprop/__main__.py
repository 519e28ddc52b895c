"""`python -m tprop …` is `tprop …` (and what `torchrun -m tprop` runs)."""

import sys

from tprop.cli import main

sys.exit(main())
