import keras


class TiedLayer(keras.layers.Layer):
    pass
