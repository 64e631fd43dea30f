"""The interactive API docs at /docs: Swagger UI, served from local files.

The Swagger UI assets come from the `swagger-ui-bundle` package (Apache-2.0;
its license ships in the package's dist-info), so the page works on a machine
without internet access. Without the package, /docs still answers, with a link
to the raw document.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
from pathlib import Path

from starlette.responses import FileResponse, HTMLResponse, Response

STATIC_DIR = Path(__file__).parent / "static"
ASSET_PREFIX = "/docs/static/"

# The only files served: Swagger UI's own and our initializer.
SWAGGER_ASSETS = (
    "swagger-ui.css",
    "swagger-ui-bundle.js",
    "swagger-ui-standalone-preset.js",
    "favicon-32x32.png",
    "favicon-16x16.png",
)
OWN_ASSETS = ("docs-init.js",)

PAGE = """<!DOCTYPE html>
<html lang="en">
  <head>
    <meta charset="UTF-8">
    <title>modelyard API</title>
    <link rel="stylesheet" type="text/css" href="/docs/static/swagger-ui.css">
    <link rel="icon" type="image/png" href="/docs/static/favicon-32x32.png" sizes="32x32">
    <style>body { margin: 0; }</style>
  </head>
  <body>
    <div id="swagger-ui"></div>
    <script src="/docs/static/swagger-ui-bundle.js" charset="UTF-8"></script>
    <script src="/docs/static/swagger-ui-standalone-preset.js" charset="UTF-8"></script>
    <script src="/docs/static/docs-init.js" charset="UTF-8"></script>
  </body>
</html>
"""

FALLBACK_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="UTF-8"><title>modelyard API</title></head>
<body><p>The interactive docs need the <code>swagger-ui-bundle</code> package.
The API is described by <a href="/openapi.json">/openapi.json</a>.</p></body></html>
"""


def swagger_ui_dir() -> Path | None:
    if importlib.util.find_spec("swagger_ui_bundle") is None:
        return None
    vendor = Path(str(importlib.resources.files("swagger_ui_bundle"))) / "vendor"
    found = sorted(vendor.glob("swagger-ui-*"))
    return found[-1] if found else None


class DocsPage:
    def __init__(self) -> None:
        self._assets: dict[str, Path] = {name: STATIC_DIR / name for name in OWN_ASSETS}
        swagger = swagger_ui_dir()
        if swagger is not None:
            self._assets.update({name: swagger / name for name in SWAGGER_ASSETS})
        self.available = swagger is not None

    def page(self) -> Response:
        return HTMLResponse(PAGE if self.available else FALLBACK_PAGE)

    def asset(self, path: str) -> Response | None:
        """The asset at `path` (under /docs/static/), or None when there is no such file."""
        file = self._assets.get(path.removeprefix(ASSET_PREFIX))
        if file is None or not file.is_file():
            return None
        return FileResponse(file, headers={"cache-control": "public, max-age=86400"})
