"""The mbsbench harness: profiling, data, training, evaluation and tracking of the variants."""
