"""Event-time stream processing on the hub: epoch-aligned windows per key, watermarks, lateness, durable state.

    StreamProcessor     windows per key over protocol.Readings; fires, updates, rejects too-late rows (engine.py)
    Windows             tumbling or sliding, epoch-aligned
    WindowResult        one emission (revision 1 = fired, 2+ = update), LateRows: too-late rows per key
    StreamState         the SQLite state file behind StreamProcessor.open / checkpoint (state.py)
    FeatureAggregate    protocol.features.window_features as the aggregate, bit for bit (features.py)

The rules (watermark, lateness, idle flush, restart, hazards) are in engine.py's docstring.
"""

from .engine import LateRows, StreamOutput, StreamProcessor, WindowResult, Windows
from .errors import StreamConfigError, StreamError, StreamKeyError
from .features import FeatureAggregate, WindowFeatures, feature_windows
from .state import StreamState

__all__ = [
    "FeatureAggregate", "LateRows", "StreamConfigError", "StreamError", "StreamKeyError", "StreamOutput",
    "StreamProcessor", "StreamState", "WindowFeatures", "WindowResult", "Windows", "feature_windows",
]
