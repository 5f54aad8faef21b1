"""Training: one loop for every network, its optimiser, its health checks, and the device it runs on."""
