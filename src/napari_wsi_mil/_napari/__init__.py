"""Everything that imports napari or Qt: reader, sample data, layer builders, widgets.

Importing ``triton`` (which torch's compiler stack, and through it ``torchvision.ops``,
import on first use) after an OpenGL context exists crashes the process where OpenGL
is Mesa's llvmpipe: both bring their own LLVM. Inside napari the context always comes
first, and this plugin never uses ``torch.compile``, so torch is told that triton is
absent for this process (unless it was imported already).
"""

import sys

sys.modules.setdefault("triton", None)
