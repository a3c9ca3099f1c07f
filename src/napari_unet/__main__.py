"""``python -m napari_unet``: the same command line as ``napari-unet``."""

import sys

from napari_unet.cli import main

if __name__ == "__main__":
    sys.exit(main())
