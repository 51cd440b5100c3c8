"""A projection onto the vocabulary that computes with an embedding table."""

from __future__ import annotations

import keras
from keras import ops

from keras_tether._validation import check_positive_number
from keras_tether.layers._tied_layer import TiedLayer


@keras.saving.register_keras_serializable(package="keras_tether")
class EmbeddingTranspose(TiedLayer):
    """Output projection tied to the table of an `Embedding` layer.

    `EmbeddingTranspose(source)` maps hidden states `h` of size `output_dim`
    to one logit per token of the vocabulary, `logits = dot(h, transpose(E))`
    (plus this layer's own bias when `use_bias=True`), where `E` is the
    `source` layer's embedding table of shape `(input_dim, output_dim)`, read
    live at every call. This is the weight tying of language models' input
    and output embeddings: gradients from both layers reach the one table, so
    the two stay tied through training. With `logit_soft_cap=cap` the logits
    become `cap * tanh(logits / cap)`, applied after the bias.

    The projection runs in `logits_dtype`, which becomes the layer's
    `compute_dtype` (the dtype policy's compute dtype when `None`): under a
    mixed-precision policy, `logits_dtype="float32"` multiplies float32
    hidden states by the unrounded float32 table and returns float32 logits.

    `keras.layers.ReversibleEmbedding` is an `Embedding`, so it can be a
    source: with the same `logit_soft_cap`, the result equals its
    `call(h, reverse=True)` when its `tie_weights=True` (under a
    mixed-precision policy it returns float32 logits even with
    `reverse_dtype=None`; pass `logits_dtype="float32"` to match). This
    layer always reads the `embeddings` table; the separate
    `reverse_embeddings` matrix of a `ReversibleEmbedding` with
    `tie_weights=False` is not used (nor listed in this layer's weights). An
    unbuilt source is built when this layer is created, since its table's
    shape is known from `input_dim` and `output_dim`. A LoRA-enabled source
    is read with its low-rank update; a quantized source is refused.

    Args:
        source: A `keras.layers.Embedding` (or subclass, such as
            `keras.layers.ReversibleEmbedding`) that owns the table.
        use_bias: Boolean, whether the layer adds its own bias vector of size
            `input_dim` (one value per token). Defaults to `False`.
        bias_initializer: Initializer for the bias vector.
        bias_regularizer: Regularizer function applied to the bias vector.
        bias_constraint: Constraint function applied to the bias vector.
        logit_soft_cap: Positive float, or `None` (default) for no cap. If
            set, the logits are mapped to
            `logit_soft_cap * tanh(logits / logit_soft_cap)`.
        logits_dtype: Floating-point dtype name, or `None` (default) for the
            dtype policy's compute dtype. The dtype the projection is
            computed in and the logits are returned in.
        activity_regularizer: Regularizer function applied to the output.
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Call arguments:
        inputs: A floating-point tensor whose last dimension is the source's
            `output_dim`.

    Input shape:
        N-D tensor with shape `(batch_size, ..., output_dim)`.

    Output shape:
        N-D tensor with shape `(batch_size, ..., input_dim)`.

    Example:

    >>> import keras
    >>> from keras_tether.layers import EmbeddingTranspose
    >>> embedding = keras.layers.Embedding(input_dim=100, output_dim=8)
    >>> head = EmbeddingTranspose(embedding, use_bias=True)
    >>> tokens = keras.Input(shape=(5,), dtype="int32")
    >>> logits = head(embedding(tokens))
    >>> model = keras.Model(tokens, logits)
    >>> tuple(model.output.shape)
    (None, 5, 100)
    >>> model.count_params()  # 100*8 table once + 100 biases
    900

    References:
        - [Press & Wolf, 2017](https://arxiv.org/abs/1608.05859)
        - [Inan et al., 2017](https://arxiv.org/abs/1611.01462)
    """

    source_types = (keras.layers.Embedding,)

    def __init__(
        self,
        source: keras.layers.Embedding,
        use_bias: bool = False,
        bias_initializer="zeros",
        bias_regularizer=None,
        bias_constraint=None,
        logit_soft_cap: float | None = None,
        logits_dtype: str | None = None,
        activity_regularizer=None,
        **kwargs,
    ):
        if logit_soft_cap is not None:
            logit_soft_cap = check_positive_number(logit_soft_cap, "logit_soft_cap")
        if logits_dtype is not None:
            logits_dtype = _float_dtype(logits_dtype)
        super().__init__(
            source=source,
            use_bias=use_bias,
            bias_initializer=bias_initializer,
            bias_regularizer=bias_regularizer,
            bias_constraint=bias_constraint,
            activity_regularizer=activity_regularizer,
            **kwargs,
        )
        self.logit_soft_cap = logit_soft_cap
        self.logits_dtype = logits_dtype
        self.input_spec = keras.layers.InputSpec(min_ndim=2)
        if not source.built:
            source.build()

    def build(self, input_shape):
        source = self.source
        if input_shape[-1] is not None and input_shape[-1] != source.output_dim:
            raise ValueError(
                f"Layer '{self.name}' projects onto the embedding table of "
                f"layer '{source.name}', of shape "
                f"{(source.input_dim, source.output_dim)}, so its input's last "
                f"dimension must be output_dim={source.output_dim}. Received: "
                f"input_shape={tuple(input_shape)}"
            )
        self.add_own_bias(source.input_dim)
        self.input_spec = keras.layers.InputSpec(
            min_ndim=2, axes={-1: source.output_dim}
        )

    @property
    def embeddings(self):
        """The source's table, shape `(input_dim, output_dim)`."""
        if not self.source.built:
            self.source.build()
        return self.read_source_weight("embeddings")

    @property
    def compute_dtype(self) -> str:
        """The dtype of the projection: `logits_dtype`, else the policy's."""
        # Keras reads variables and casts inputs in this dtype, so a float32
        # `logits_dtype` sees the table unrounded under a mixed policy.
        return self.logits_dtype or super().compute_dtype

    def shared_variables(self) -> list:
        source = self.source
        unused = getattr(source, "reverse_embeddings", None)
        return [w for w in source.weights if w is not unused]

    def call(self, inputs):
        dtype = self.compute_dtype
        inputs = ops.cast(inputs, dtype)
        table = ops.cast(self.embeddings, dtype)
        logits = ops.matmul(inputs, ops.transpose(table))
        if self.bias is not None:
            logits = ops.add(logits, ops.cast(self.bias, dtype))
        if self.logit_soft_cap is not None:
            cap = self.logit_soft_cap
            logits = ops.multiply(ops.tanh(ops.divide(logits, cap)), cap)
        return logits

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.source.input_dim,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "logit_soft_cap": self.logit_soft_cap,
                "logits_dtype": self.logits_dtype,
            }
        )
        return config


def _float_dtype(dtype) -> str:
    try:
        name = keras.backend.standardize_dtype(dtype)
    except ValueError:
        name = None
    if name is None or not keras.backend.is_float_dtype(name):
        raise ValueError(
            "Expected `logits_dtype` to be a floating-point dtype such as "
            f"'float32', or None. Received: logits_dtype={dtype!r}"
        )
    return name
