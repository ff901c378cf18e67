"""What every ``python -m xsmoe_ray.…`` command shares: user errors become one line and exit code 2.

A user error is bad input or a bad setting (a config key, a data file, a protocol setting, a cache
or backbone that does not fit): the message names what to fix, so a traceback would only hide it.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from typing import Callable

from xsmoe_ray.backbones import BackboneError
from xsmoe_ray.cache import CacheError
from xsmoe_ray.config import ConfigError
from xsmoe_ray.data.schema import DataError
from xsmoe_ray.recommender import RecommendError
from xsmoe_ray.runlock import RunLockedError
from xsmoe_ray.streaming import StreamError

USER_ERRORS = (ConfigError, DataError, StreamError, CacheError, BackboneError, RunLockedError, FileNotFoundError,
               RecommendError)


def run_guarded(action: Callable[[], object]) -> int:
    """Run ``action``; 0 when it returns, 2 (with ``error: …`` on stderr) on a user error."""
    try:
        action()
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
