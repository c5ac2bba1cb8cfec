"""The service's own web pages: ``/`` (the runs) and ``/runs/{run_id}`` (one run's plots, findings and halt).

The pages are HTML shells and a few static files shipped in this package; the browser fills them from the
REST API (``/v1/...``), as any other client would. Nothing is built at run time and nothing is loaded
from another host.
"""

from nanwatch_service.web.pages import install

__all__ = ["install"]
