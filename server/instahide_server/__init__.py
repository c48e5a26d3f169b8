"""The instahide gRPC server: InstaHide encoding streams on CPU or CUDA."""

__version__ = "0.1.0"
