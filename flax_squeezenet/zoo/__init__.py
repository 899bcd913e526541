"""The models: stage descriptions, the layer plan every part of the zoo walks, XLA:CPU speed forms, the
linen and NNX modules, the per-layer summary and the XLA options to jit them with."""
