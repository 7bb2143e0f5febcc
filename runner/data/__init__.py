"""Training data: read any supported file, validate every row (file:line reasons), detect the
format, render rows into tokens with the loss mask, and report token-length statistics.
Reading and validating needs no tokenizer and no torch; tokenizing uses ``datasets``.
"""

from affiner.runner.data.formats import RowProblem
from affiner.runner.data.prepare import DataError, load_rows, prepare_data, render_example
from affiner.runner.data.render import encode_causal, encode_classification

__all__ = [
    "DataError",
    "RowProblem",
    "encode_causal",
    "encode_classification",
    "load_rows",
    "prepare_data",
    "render_example",
]
