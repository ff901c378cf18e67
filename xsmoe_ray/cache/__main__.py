"""``python -m xsmoe_ray.cache`` (see :mod:`xsmoe_ray.cache.cli`)."""

import sys

from xsmoe_ray.cache.cli import main

sys.exit(main())
