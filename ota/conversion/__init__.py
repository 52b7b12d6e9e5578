"""Convert trained models to what devices run (full-integer int8 TFLite).

TensorFlow is imported only inside the conversion functions: importing this package is cheap.
"""
