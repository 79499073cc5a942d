"""Knowledge transfer across architectures: UFM, L2T-ww and L2T-www (exact bilevel meta-gradient)."""

from tl_jax.kt.bilevel import (METHODS, KTConfig, KTState, KnowledgeTransfer, cosine_per_epoch,
                               momentum_of, sgd_tx, softmax_ce, with_momentum)
from tl_jax.kt.meta_nets import MetaNetworks, count_meta_params, init_meta_params
from tl_jax.kt.pairs import PairSpec, all_to_all, feature_shapes, pairs_for_models, parse_pairs
from tl_jax.kt.resize import resize_bilinear

__all__ = [
    "METHODS", "KTConfig", "KTState", "KnowledgeTransfer", "cosine_per_epoch", "momentum_of",
    "sgd_tx", "softmax_ce", "with_momentum", "MetaNetworks", "count_meta_params", "init_meta_params", "PairSpec", "all_to_all",
    "feature_shapes", "pairs_for_models", "parse_pairs", "resize_bilinear",
]
