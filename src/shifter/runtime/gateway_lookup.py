"""The runtime's image lookup through the site's image gateway (``imageGateway`` set).

As NERSC's runtime does with ``shifterimg lookup``: ask the gateway for the id of the READY
image a tag names (``GET /api/lookup/<system>/docker/<tag>/`` with a fresh MUNGE credential of
this process), then read ``<imagePath>/<id>.json`` and ``<id>.squashfs`` from the system's shared
image path: every node reads the one copy.  The gateway answers only for images the caller may
use; the runtime checks the image's access list again from its metadata
(:mod:`shifter.runtime.images`): a root-owned launch acting for a user (Slurm, ``shifter --user``)
sends root's credential, and the metadata check is what binds it to the user.

Imported only when ``imageGateway`` is set: ``http.client`` and ``urllib.parse`` stay off the
launch path otherwise.
"""

from __future__ import annotations

from shifter.config.site import SiteConfig
from shifter.errors import StoreError


def lookup_id(config: SiteConfig, ref: str) -> str | None:
    """The id of the READY image ``docker:<ref>``; None when the gateway has none for this caller."""
    import http.client  # noqa: PLC0415
    from urllib.parse import quote, urlsplit  # noqa: PLC0415

    from shifter import _fastjson, munge  # noqa: PLC0415

    path = f"/api/lookup/{quote(config.system, safe='')}/docker/{quote(ref, safe='')}/"
    problems: list[str] = []
    for url in config.image_gateway:
        parts = urlsplit(url)
        kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        try:
            conn = kind(parts.hostname or "localhost", parts.port, timeout=config.gateway_timeout or 30)
            try:
                conn.request("GET", parts.path.rstrip("/") + path,
                             headers={"authentication": munge.encode(b"", config.munge_socket)})
                response = conn.getresponse()
                body = response.read()
            finally:
                conn.close()
        except OSError as err:
            problems.append(f"{url}: {err.__class__.__name__}")
            continue
        if response.status == 404:
            return None
        if response.status == 200:
            image_id = _fastjson.loads(body).get("id")
            if isinstance(image_id, str) and len(image_id) == 64:
                return image_id
        problems.append(f"{url}: HTTP {response.status}")
    raise StoreError(f"no image gateway answered the lookup of docker:{ref} ({'; '.join(problems)})",
                     hint="check imageGateway in udiRoot.conf, and that shifter-gateway and munged run")
