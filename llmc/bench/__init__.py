"""`llmc bench-model DIR [DIR ...]`: what each saved model buys in speed and memory against the
first (the dense baseline), measured in one process on one device (docs/performance.md).
`measure.py` times one model; `compare.py` makes the ratios and the table; `cli.py` is the
command."""
