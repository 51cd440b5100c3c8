import keras


class TiedDense(keras.layers.Layer):
    pass
