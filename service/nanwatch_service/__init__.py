"""nanwatch service: ingest training numerics, detect NaN precursors, expose metrics, send halts.

``create_app(settings)`` builds the FastAPI application; nothing is built at import time, and nothing
here imports TensorFlow or Keras.
"""

from nanwatch_service.app import create_app
from nanwatch_service.settings import Settings

__all__ = ["Settings", "create_app"]
