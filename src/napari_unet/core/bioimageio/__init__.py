"""bioimage.io model packages: export (:mod:`.export`) and import (:mod:`.load`).

``bioimageio.core`` and ``bioimageio.spec`` are an optional extra (``napari-unet[bioimageio]``),
imported only inside the functions that need them; :mod:`.architecture` (the network class a
package's ``pytorch_state_dict`` weights name) needs torch only.
"""

from __future__ import annotations

PACKAGE_SUFFIXES = (".zip",)
RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
EXTRA_HINT = "install the bioimageio extra: pip install 'napari-unet[bioimageio]'"


def is_package(path: object) -> bool:
    """Whether ``path`` names a bioimage.io package (a ``.zip``) or its description file."""
    text = str(path).lower()
    return (
        text.endswith(PACKAGE_SUFFIXES)
        or text.endswith(tuple("/" + n for n in RDF_NAMES))
        or text in RDF_NAMES
        or text.endswith(".bioimageio.yaml")
    )
