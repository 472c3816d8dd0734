"""purify.nn: layers built only on purify's public API."""
from purify.nn.linear import Linear, MLP
from purify.nn.basic import Flatten, Reshape, Bias, BatchApply
from purify.nn.conv import (ConvND, Conv1D, Conv2D, Conv3D, ConvNDTranspose, Conv1DTranspose,
                              Conv2DTranspose, Conv3DTranspose, DepthwiseConv1D, DepthwiseConv2D,
                              DepthwiseConv3D, SeparableDepthwiseConv2D, variance_scaling, pad)
from purify.nn.pool import avg_pool, max_pool, AvgPool, MaxPool
from purify.nn.embed import Embed, EmbedLookupStyle
from purify.nn.dropout import dropout
from purify.nn.attention import MultiHeadAttention
from purify.nn.recurrent import (RNNCore, VanillaRNN, LSTM, LSTMState, GRU, Conv1DLSTM,
                                 Conv2DLSTM, Conv3DLSTM, DeepRNN,
                                 deep_rnn_with_skip_connections, ResetCore, IdentityCore,
                                 add_batch, static_unroll, dynamic_unroll)
from purify.nn.moving_averages import ExponentialMovingAverage, EMAParamsTree
from purify.nn.spectral_norm import SpectralNorm, SNParamsTree
from purify.nn.norm import (LayerNorm, InstanceNorm, RMSNorm, GroupNorm, BatchNorm,
                            get_channel_index)
from purify.nn.transformer import TransformerBlock, Transformer, TransformerLM
from purify.nn.sequential import Sequential
from purify.nn.resnet import (ResNet, ResNet18, ResNet34, ResNet50, ResNet101, ResNet152,
                              ResNet200, BlockGroup, BlockV1, BlockV2)
from purify.nn.mobilenet import MobileNetV1
from purify.nn.vqvae import VectorQuantizer, VectorQuantizerEMA

__all__ = ["Linear", "MLP", "Flatten", "Reshape", "Bias", "BatchApply"]
__all__ += ["ConvND", "Conv1D", "Conv2D", "Conv3D", "ConvNDTranspose", "Conv1DTranspose",
            "Conv2DTranspose", "Conv3DTranspose", "DepthwiseConv1D", "DepthwiseConv2D",
            "DepthwiseConv3D", "SeparableDepthwiseConv2D", "variance_scaling", "pad",
            "avg_pool", "max_pool", "AvgPool", "MaxPool"]
__all__ += ["Embed", "EmbedLookupStyle", "dropout", "MultiHeadAttention"]
__all__ += ["RNNCore", "VanillaRNN", "LSTM", "LSTMState", "GRU", "Conv1DLSTM", "Conv2DLSTM",
            "Conv3DLSTM", "DeepRNN", "deep_rnn_with_skip_connections", "ResetCore",
            "IdentityCore", "add_batch", "static_unroll", "dynamic_unroll"]
__all__ += ["ExponentialMovingAverage", "EMAParamsTree", "SpectralNorm", "SNParamsTree",
            "LayerNorm", "InstanceNorm", "RMSNorm", "GroupNorm", "BatchNorm",
            "get_channel_index"]
__all__ += ["Sequential", "ResNet", "ResNet18", "ResNet34", "ResNet50", "ResNet101",
            "ResNet152", "ResNet200", "BlockGroup", "BlockV1", "BlockV2"]
__all__ += ["TransformerBlock", "Transformer", "TransformerLM"]
__all__ += ["MobileNetV1", "VectorQuantizer", "VectorQuantizerEMA"]
