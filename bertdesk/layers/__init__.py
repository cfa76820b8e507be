"""BERT building blocks as Keras 3 layers (backend-neutral: `keras.ops`; the
backend-specific code lives in modules that say why: `random_bits`, raw random
bits for dropout masks, `fused_kernels`, PyTorch's single-kernel ops, and
`packed_tokens`, eager PyTorch's batches without their padding)."""

from bertdesk.layers.bert_dropout import BertDropout
from bertdesk.layers.bert_embeddings import BertEmbeddings
from bertdesk.layers.bert_encoder_block import BertEncoderBlock
from bertdesk.layers.bert_masked_lm_head import BertMaskedLMHead
from bertdesk.layers.bert_nsp_head import BertNSPHead
from bertdesk.layers.bert_pooler import BertPooler
from bertdesk.layers.bert_self_attention import BertSelfAttention
from bertdesk.layers.packed_tokens import PackedTokens

__all__ = [
    "BertDropout",
    "BertEmbeddings",
    "BertEncoderBlock",
    "BertMaskedLMHead",
    "BertNSPHead",
    "BertPooler",
    "BertSelfAttention",
    "PackedTokens",
]
