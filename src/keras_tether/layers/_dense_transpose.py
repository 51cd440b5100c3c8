import keras


class DenseTranspose(keras.layers.Layer):
    pass
