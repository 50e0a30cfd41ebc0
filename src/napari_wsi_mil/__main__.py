"""``python -m napari_wsi_mil`` is ``wsi-mil`` (and ``torchrun -m napari_wsi_mil pretrain``)."""

import sys

from napari_wsi_mil.cli import main

sys.exit(main())
