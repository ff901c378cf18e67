"""Backbone layer-output cache (DESIGN.md §5 first bullet, §6 "Cache build").

The cache holds, per modality, one pooled state of every backbone layer ``l_0 … l_M`` for every
item (``cache.pooling`` = ``cls`` | ``mean``), so layer grouping is chosen at load time. Modules,
each importing only the ones above it in this list (no import cycles; tests/test_cache_imports.py):

* :mod:`xsmoe_ray.backbones` (outside the package) — loading encoders, the demo backbones, pooling;
* :mod:`.layout` — format version, file names, manifest read/write, specs and their differences,
  content hashes, errors;
* :mod:`.load` — ``open_cache``, ``group_index``, ``load_grouped``, ``check_cache``;
* :mod:`.build` — the Ray Data build (CPU stage, ``LayerEncoder`` actor pool, atomic commit, lock);
* :mod:`.cli` / ``__main__`` — ``python -m xsmoe_ray.cache``.

This file only re-exports the public names; modules of the package import from the submodules,
never from here.
"""

from xsmoe_ray.cache.layout import (COMPARED_FIELDS, FORMAT_VERSION, MANIFEST, CacheError, CacheMismatchError,
                                    content_hashes, full_spec, read_manifest, read_prepared, request_spec,
                                    requested_modalities, spec_differences)
from xsmoe_ray.cache.load import Cache, check_cache, group_index, load_grouped, open_cache
from xsmoe_ray.cache.build import BuildReport, build_cache  # noqa: E402  (after the modules it imports)

__all__ = ["COMPARED_FIELDS", "FORMAT_VERSION", "MANIFEST", "BuildReport", "Cache", "CacheError",
           "CacheMismatchError", "build_cache", "check_cache", "content_hashes", "full_spec", "group_index",
           "load_grouped", "open_cache", "read_manifest", "read_prepared", "request_spec", "requested_modalities",
           "spec_differences"]
