"""Validate TFLite Micro models: inspection, a sandboxed TFLM probe, profile admission.

Kept free of imports so the probe subprocess starts fast; import the submodules directly.
"""
