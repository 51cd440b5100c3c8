import keras


class EmbeddingTranspose(keras.layers.Layer):
    pass
