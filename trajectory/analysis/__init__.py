"""Old name of :mod:`trajectory.features` (kept so ``trajectory.analysis.real`` etc. still work)."""
import sys

import trajectory.features as _features

sys.modules[__name__] = _features
