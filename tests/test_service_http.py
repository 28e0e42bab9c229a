"""Not a test module any more: tests/test_providers.py still imports `jpeg` from here. The service's HTTP tests are
tests/integration/test_service_http.py and tests/unit/test_app.py; delete this file once that import reads
`from tests.helpers import photo_jpeg`.
"""

from __future__ import annotations

from tests.helpers import photo_jpeg as jpeg

__all__ = ["jpeg"]
