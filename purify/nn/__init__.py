"""purify.nn: layers built only on purify's public API."""
from purify.nn.linear import Linear, MLP
from purify.nn.embed import Embed, EmbedLookupStyle
from purify.nn.dropout import dropout
from purify.nn.attention import MultiHeadAttention
from purify.nn.recurrent import (RNNCore, VanillaRNN, LSTM, LSTMState, GRU, add_batch,
                                 static_unroll, dynamic_unroll)

__all__ = ["Linear", "MLP"]
__all__ += ["Embed", "EmbedLookupStyle", "dropout", "MultiHeadAttention"]
__all__ += ["RNNCore", "VanillaRNN", "LSTM", "LSTMState", "GRU", "add_batch",
            "static_unroll", "dynamic_unroll"]
