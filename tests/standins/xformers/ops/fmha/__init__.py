from . import attn_bias  # noqa: F401
from .. import memory_efficient_attention  # noqa: F401
