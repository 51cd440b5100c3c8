import keras


class ConvTranspose(keras.layers.Layer):
    pass
