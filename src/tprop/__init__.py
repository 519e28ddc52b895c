"""tprop: blocked target propagation and truncated BPTT for recurrent language models."""

__version__ = "0.1.0"
