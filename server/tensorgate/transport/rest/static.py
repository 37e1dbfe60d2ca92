"""The browser page's files, read once from the package and served from memory."""

from __future__ import annotations

from importlib import resources

from tensorgate.transport.rest.routes import NoRoute

_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".svg": b"image/svg+xml",
}


class StaticFiles:
    """`/` is index.html; `/static/<name>` any other file of the static folder."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[bytes, bytes]] = {}
        folder = resources.files("tensorgate.transport.rest") / "static"
        for entry in folder.iterdir():
            suffix = "." + entry.name.rsplit(".", 1)[-1]
            if entry.is_file() and suffix in _TYPES:
                self.files["/static/" + entry.name] = (entry.read_bytes(), _TYPES[suffix])
        if "/static/index.html" in self.files:
            self.files["/"] = self.files["/static/index.html"]

    def get(self, path: str) -> tuple[bytes, bytes]:
        found = self.files.get(path)
        if found is None:
            raise NoRoute(f"no route for {path}")
        return found
