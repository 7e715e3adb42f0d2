"""Multi-stage runs built from the ortho_* commands: the demo and the label-efficiency experiment."""
