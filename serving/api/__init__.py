"""HTTP layer: thin routes over `serving.service`."""
