"""nanwatch client: stream a training job's numerics to the nanwatch service and obey its halts.

``nanwatch.Monitor`` serves any training loop; ``nanwatch.keras.NanWatchCallback`` is the one-line Keras
callback. Importing ``nanwatch`` loads neither TensorFlow nor the service's web stack.
"""

from nanwatch.monitor import Halt, Monitor
from nanwatch.protocol import PROTOCOL_VERSION, ProtocolError

__all__ = ["PROTOCOL_VERSION", "Halt", "Monitor", "ProtocolError"]
__version__ = "0.1.0"
