"""The feature store: versioned feature views, their registry, the offline store, point-in-time retrieval.

    FeatureView       a named, owned FeatureSpec over a lake kind; version = spec.version
    FeatureRegistry   views, version history, lineage and materialization runs, in control.db
    materialize       lake → window_features per (tenant, device) → a Parquet snapshot per run
    point_in_time     labels (tenant, device, ts) → features as of ts, by event or arrival time
    OnlineStore       the latest vector per (view, version, tenant, device) in SQLite; newer wins
    FeatureService    registry + online store + data dir, as the hub and its API hold them
    build_dataset     labels + a view → a versioned training snapshot with its lineage (datasets.py)

Features are `protocol.features.window_features`, the code the agent runs before inference.
Errors are FeatureError subclasses (errors.py).
"""

from .datasets import DatasetIntegrityError, build_dataset, get_dataset, list_datasets, load_dataset
from .definitions import ENTITY, FeatureView
from .errors import FeatureConflictError, FeatureError, InvalidFeatureViewError, UnknownFeatureError
from .offline import compute_features, feature_schema, materialize, view_dir
from .online import OnlineBackend, OnlineStore
from .registry import FeatureRegistry, RegisteredView, RunFile, RunRecord
from .retrieval import SEMANTICS, point_in_time
from .service import FeatureService

__all__ = [
    "ENTITY", "SEMANTICS", "DatasetIntegrityError", "FeatureConflictError", "FeatureError", "FeatureRegistry",
    "FeatureService", "FeatureView", "InvalidFeatureViewError", "OnlineBackend", "OnlineStore", "RegisteredView", "RunFile", "RunRecord",
    "UnknownFeatureError",
    "build_dataset", "compute_features", "feature_schema", "get_dataset", "list_datasets", "load_dataset", "materialize", "point_in_time",
    "view_dir",
]
