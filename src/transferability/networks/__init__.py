"""Networks: the architecture registry and its families, the study's units, and the surgery that copies them."""
