"""``data.sample_users``: a uniform random sample of users, taken after loading, before the stream.

The sample is drawn without replacement from the distinct user ids *sorted as strings*, with
``numpy.random.default_rng(data.sample_seed)``: it depends only on the set of user ids and the
seed, not on file order or on ``run.seed`` (so every seed of a multi-seed study sees the same
users). Every interaction of a sampled user is kept, the item catalogue is unchanged, users are
recoded densely in their previous order. The rows of the other users are counted in the load
report as ``not_in_user_sample`` (so ``rows_read == interactions + sum(dropped)`` still holds) and
a note gives users and interactions before and after. ``data.sample_users`` and
``data.sample_seed`` are data settings, so they are part of the prepared directory's fingerprint.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from xsmoe_ray.data.schema import Dataset

REASON = "not_in_user_sample"


def sample_users(ds: Dataset, n: int, seed: int = 0) -> Dataset:
    """``ds`` restricted to ``n`` users drawn uniformly (module docstring); ``n`` <= 0: all users."""
    if n <= 0:
        return ds
    report = ds.report
    users_before, rows_before = ds.n_users, ds.interactions.num_rows
    if n >= users_before:
        report.notes.append(f"data.sample_users={n:,} is not below the {users_before:,} users: all kept")
        return ds
    by_id = pc.sort_indices(ds.user_ids).to_numpy()  # user codes in the order of their ids
    chosen = by_id[np.random.default_rng(seed).choice(users_before, size=n, replace=False)]
    keep_user = np.zeros(users_before, dtype=bool)
    keep_user[chosen] = True
    user = ds.column("user")
    keep = keep_user[user]
    new_code = (np.cumsum(keep_user) - 1).astype(np.int32)
    table = ds.interactions.filter(pa.array(keep))
    table = table.set_column(0, "user", pa.array(new_code[user[keep]], pa.int32()))
    report.drop(REASON, int((~keep).sum()))
    report.interactions = table.num_rows
    report.users = n
    report.notes.append(f"data.sample_users={n:,} (data.sample_seed={seed}): kept {n:,} of {users_before:,} users "
                        f"and {table.num_rows:,} of {rows_before:,} interactions")
    user_ids = ds.user_ids.take(pa.array(np.flatnonzero(keep_user)))
    return dataclasses.replace(ds, interactions=table, user_ids=user_ids)
