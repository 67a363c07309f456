"""llmc.passes: generic passes, fusion passes and per-target pipelines.

Importing this package registers every pass with the pass manager."""

from . import canonicalize, constant_fold, cse, dce  # noqa: F401
from . import fuse_rms_norm  # noqa: F401
from . import fuse_rope  # noqa: F401
from . import fuse_attention  # noqa: F401
from . import fuse_mlp  # noqa: F401
from . import fuse_qkv  # noqa: F401
from . import fuse_lm_head_slice  # noqa: F401
from . import fuse_mc2  # noqa: F401
from . import vendor_norms  # noqa: F401
from . import vendor_layer  # noqa: F401
from . import vendor_io  # noqa: F401
from . import lora  # noqa: F401
from . import shard_tp  # noqa: F401
from . import pipelines  # noqa: F401
