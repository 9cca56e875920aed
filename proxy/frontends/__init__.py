"""Front-ends: listeners and the protocols clients speak, each turning bytes into requests for the core."""
